"""Preference data: pairs and rankings read from JSONL, checked line by line, split by prompt.

Two record formats, one JSON object per line:

- a pair, TRL's format: ``{"prompt": str, "chosen": str, "rejected": str}``, with an optional numeric
  ``"margin"`` (how clearly ``chosen`` wins; the loss then asks for at least that score gap);
- a ranking: ``{"prompt": str, "completions": [str, ...], "ranking": [int, ...]}``, ``ranking`` holding the
  indices of ``completions`` from best to worst. It expands into all ``K (K - 1) / 2`` ordered pairs, as in
  InstructGPT, and training keeps the pairs of one prompt in one batch.

Other keys are ignored. A bad line (not JSON, missing or mistyped fields, ``chosen == rejected``, an invalid
ranking, an empty line) raises ``ValueError`` naming the file and line, or with ``on_error="skip"`` is skipped
and reported in one warning with the count and the line numbers: data is never dropped silently.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, combinations
from typing import Any

from textgym.lm.jsonl import read_jsonl


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` was preferred over ``rejected`` as a completion of ``prompt``."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    """The score gap the Bradley–Terry loss asks for on this pair (TRL's optional ``margin`` field)."""


def load_preferences(
    paths: str | os.PathLike | Sequence[str | os.PathLike], on_error: str = "raise"
) -> list[PreferencePair]:
    """Read preference pairs and rankings from one or more JSONL files (see the module docstring).

    Args:
        paths: a JSONL file or a list of them.
        on_error: ``"raise"`` stops at the first bad line; ``"skip"`` skips bad lines and warns once per file
            with their count and line numbers.

    Raises:
        ValueError: a bad line (``on_error="raise"``), or no pair at all.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    pairs: list[PreferencePair] = []
    for path in paths:
        pairs.extend(chain.from_iterable(read_jsonl(path, parse_preference_record, on_error)))
    if not pairs:
        raise ValueError(f"No preference pairs in {[str(p) for p in paths]}.")
    return pairs


def expand_ranking(prompt: str, completions: Sequence[str], ranking: Sequence[int]) -> list[PreferencePair]:
    """All ordered pairs of a ranking: each completion is preferred over every one ranked below it.

    Args:
        prompt: the prompt the completions continue.
        completions: ``K >= 2`` distinct completions.
        ranking: the indices of ``completions`` from best to worst, a permutation of ``range(K)``.
    """
    if len(completions) < 2:
        raise ValueError(f"a ranking needs at least 2 completions, got {len(completions)}.")
    if sorted(ranking) != list(range(len(completions))):
        raise ValueError(
            f"ranking must list each index of completions (0..{len(completions) - 1}) once, best first; "
            f"got {list(ranking)}."
        )
    if len(set(completions)) != len(completions):
        raise ValueError("completions of a ranking must differ; remove the duplicates.")
    ordered = [completions[i] for i in ranking]
    return [PreferencePair(prompt, better, worse) for better, worse in combinations(ordered, 2)]


def split_by_prompt(
    pairs: Sequence[PreferencePair], eval_fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Split pairs into train and held-out sets by prompt, so no held-out prompt is seen in training.

    Args:
        pairs: the pairs.
        eval_fraction: the share of prompts held out, in ``[0, 1)``; 0 holds out nothing.
        seed: seeds which prompts are held out.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    prompts = list(dict.fromkeys(pair.prompt for pair in pairs))  # first-appearance order: reproducible
    if eval_fraction == 0:
        return list(pairs), []
    if len(prompts) < 2:
        raise ValueError(
            "A held-out split needs pairs of at least 2 different prompts; pass eval_fraction=0 to train on all."
        )
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: min(max(1, round(eval_fraction * len(prompts))), len(prompts) - 1)])
    return [p for p in pairs if p.prompt not in held_out], [p for p in pairs if p.prompt in held_out]


def parse_preference_record(record: dict[str, Any]) -> list[PreferencePair]:
    """The pairs of one pair or ranking record (see the module docstring); ``ValueError`` says what is wrong."""
    prompt = _text(record, "prompt")
    if "chosen" in record or "rejected" in record:
        chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
        if chosen == rejected:
            raise ValueError("chosen and rejected are the same text, so the pair says nothing; remove it")
        margin = record.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            raise ValueError(f'"margin" must be a finite number, got {margin!r}')
        return [PreferencePair(prompt, chosen, rejected, float(margin))]
    if "completions" in record or "ranking" in record:
        completions, ranking = record.get("completions"), record.get("ranking")
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            raise ValueError('"completions" must be a list of strings')
        if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
            raise ValueError('"ranking" must be a list of indices into "completions", best first')
        return expand_ranking(prompt, completions, ranking)
    raise ValueError(
        'expected a pair {"prompt", "chosen", "rejected"} or a ranking {"prompt", "completions", "ranking"}; '
        f"got the keys {sorted(record)}"
    )


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if isinstance(value, list):
        raise ValueError(
            f'"{key}" is a list (the conversational format); only plain text is supported, so put the text itself'
        )
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, got {type(value).__name__ if key in record else "nothing"}')
    return value
