"""Tiny stand-ins for real Hugging Face checkpoints: saved in bfloat16, with dropout, GPT-2 style, BOS-adding.

Each builder writes a model directory from one of the session's tiny models (``tests/conftest.py``), so the
tests exercise what real checkpoints bring without downloading any.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_bf16_copy(model_dir: str, out_dir: Path) -> str:
    """The model of ``model_dir`` re-saved in bfloat16, as most released checkpoints are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(torch.bfloat16).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    return str(out_dir)


def save_with_attention_dropout(model_dir: str, out_dir: Path, dropout: float = 0.3) -> str:
    """The Llama of ``model_dir`` with attention dropout (active in train mode only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lm.config.attention_dropout = dropout
    lm.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return str(out_dir)


def make_gpt2_model(words_model_dir: str, out_dir: Path, dropout: float = 0.1) -> str:
    """A tiny GPT-2 (learned positions, dropout) with the word-level tokenizer of ``words_model_dir``, but no
    chat template and no pad token, as GPT-2's own tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = AutoTokenizer.from_pretrained(words_model_dir).backend_tokenizer
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    assert tokenizer.pad_token_id is None and not tokenizer.chat_template
    config = GPT2Config(
        vocab_size=backend.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def save_with_bos_tokenizer(model_dir: str, out_dir: Path) -> str:
    """The model of ``model_dir`` whose tokenizer puts BOS in front of every text, as Llama's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    tokenizer.save_pretrained(out_dir)
    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).save_pretrained(out_dir)
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    assert reloaded("hello")["input_ids"][0] == tokenizer.bos_token_id
    return str(out_dir)


def add_generation_eos(model_dir: str, out_dir: Path, eos_token_ids: list[int]) -> str:
    """The model of ``model_dir`` whose generation_config.json lists several EOS ids (as Llama-3 chat's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    GenerationConfig(eos_token_id=eos_token_ids).save_pretrained(out_dir)
    return str(out_dir)
