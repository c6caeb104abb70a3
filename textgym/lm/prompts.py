"""Prompt sets, and how a model's tokenizer turns a prompt into tokens and ends a reply.

* Prompt sets: the shipped ones by name, or the user's own list, ``.txt`` or ``.jsonl`` file.
* [encode_prompt][textgym.lm.prompts.encode_prompt]: a prompt's token ids exactly as TextGen's observations hold them
  (SFT trains on the same ids, so a tuned model continues the env's observations the way it was taught);
* [stop_token_ids][textgym.lm.prompts.stop_token_ids]: the tokens that end a reply (EOS, the generation config's EOS
  ids, the chat template's end-of-turn token); [pad_token_id][textgym.lm.prompts.pad_token_id]: the token that pads.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgym.lm.jsonl import read_jsonl

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_DIR = Path(__file__).parents[1] / "data" / "prompts"
DEFAULT_PROMPTS = "openings"
"""Openings of reviews and stories, of mixed sentiment, to be continued (the default of TextGen-v0)."""


def shipped_prompt_sets() -> list[str]:
    """Names of the prompt sets that ship with textgym."""
    return sorted(path.stem for path in PROMPT_DIR.glob("*.txt"))


def load_prompts(prompts: str | os.PathLike | Sequence[str] | None = None) -> list[str]:
    """Load a prompt set.

    Args:
        prompts: ``None`` for the default set; the name of a shipped set
            ([shipped_prompt_sets][textgym.lm.prompts.shipped_prompt_sets]); a ``.txt`` file (one prompt per line, blank
            lines skipped); a ``.jsonl`` file (one object with a ``"prompt"`` string per line, or one JSON string per
            line); or a list of strings.

    Raises:
        ValueError: the set is empty, or a file line is malformed (the message names the file and line).
        FileNotFoundError: the name is neither a shipped set nor an existing file.
    """
    if prompts is None:
        prompts = DEFAULT_PROMPTS
    if isinstance(prompts, (str, os.PathLike)):
        loaded = _load_prompt_file(_find_prompt_file(prompts))
        source = str(prompts)
    else:
        loaded = list(prompts)
        source = "the prompt list"
        for i, prompt in enumerate(loaded):
            if not isinstance(prompt, str):
                raise TypeError(f"Prompt {i} of the prompt list is a {type(prompt).__name__}, not a str.")
    if not loaded:
        raise ValueError(f"No prompts in {source}: an environment needs at least one prompt.")
    return loaded


def _find_prompt_file(prompts: str | os.PathLike) -> Path:
    path = Path(prompts).expanduser()
    if path.is_file():
        return path
    shipped = PROMPT_DIR / f"{prompts}.txt"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"No prompt file {str(prompts)!r}, and no shipped prompt set of that name "
        f"(shipped: {shipped_prompt_sets()}). Pass a .txt or .jsonl path, a shipped name, or a list of strings."
    )


def _load_prompt_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, _prompt_of, skip_blank=True, objects_only=False)
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _prompt_of(record: Any) -> str:
    """A prompt-set line's prompt: a JSON string, or an object's ``"prompt"`` string."""
    prompt = record.get("prompt") if isinstance(record, dict) else record
    if not isinstance(prompt, str):
        raise ValueError('expected a JSON string or an object with a "prompt" string')
    return prompt


SPLITS = ("train", "test")
TEST_FRACTION = 0.2
"""The share of a prompt set that [split_prompts][textgym.lm.prompts.split_prompts] puts in the test split."""


def in_test_split(key: str) -> bool:
    """Whether the instance named ``key`` (a prompt's text, or a procedural instance's description) belongs to
    the test split: a stable hash, so a prompt keeps its split when the set around it grows or is reordered."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


def split_prompts(prompts: Sequence[str], split: str | None) -> list[str]:
    """The ``"train"`` or ``"test"`` part of a prompt set (about 80% / 20%, disjoint; see
    [in_test_split][textgym.lm.prompts.in_test_split]), or all of it for ``split=None``.

    Raises:
        ValueError: an unknown split name, or a split that holds none of the prompts.
    """
    if split is None:
        return list(prompts)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}.")
    chosen = [p for p in prompts if in_test_split(p) == (split == "test")]
    if not chosen:
        raise ValueError(
            f"The {split!r} split of this prompt set is empty ({len(prompts)} prompts, about {TEST_FRACTION:.0%} go "
            "to 'test'): pass more prompts, or split=None to use them all."
        )
    return chosen


# --- tokens of prompts and replies --------------------------------------------------------------------------------
def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str | Sequence[dict[str, str]], chat_template: bool = False
) -> list[int]:
    """A prompt's token ids as TextGen's observations hold them (before any ``max_prompt_tokens`` truncation).

    Args:
        tokenizer: the model's tokenizer.
        prompt: a text (one user message), or chat messages ``[{"role": ..., "content": ...}, ...]``.
        chat_template: wrap the messages in the tokenizer's chat template, opening the assistant's turn;
            without it a text is tokenized as it is, with the tokenizer's special tokens (e.g. BOS), and
            messages are their contents joined by newlines.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if chat_template:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in messages)
    return list(tokenizer(text)["input_ids"])


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, model_dir: str | os.PathLike | None = None, chat_template: bool = False
) -> list[int]:
    """The tokens that end a reply, sorted: the tokenizer's EOS, every ``eos_token_id`` of the model's
    ``generation_config.json`` (one id or a list, as Llama-3's ``<|eot_id|>``), and with ``chat_template`` the
    template's end-of-turn token ([end_of_turn_token_id][textgym.lm.prompts.end_of_turn_token_id], e.g. ChatML's
    ``<|im_end|>``).

    Reads ``generation_config.json`` from ``model_dir`` if it has one; loads no weights.
    """
    ids = {tokenizer.eos_token_id}
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    if chat_template:
        ids.add(end_of_turn_token_id(tokenizer))
    return sorted(int(i) for i in ids if i is not None)


def end_of_turn_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>``), found by rendering a conversation; ``None`` without a template or such a token."""
    if not tokenizer.chat_template:
        return None
    marker = "textgym-reply-marker"
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # a template may refuse this conversation (e.g. it wants a system message first)
        return None
    if marker not in text:
        return None
    after = tokenizer(text[text.rindex(marker) + len(marker) :], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return next((int(i) for i in after if i in special), None)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token; many causal LM tokenizers (GPT-2's) have none, and then EOS pads (else 0)."""
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    return 0
