"""Rule-based task rewards: keyword coverage, exact match against a reference, length and format targets.

No model and no torch: exact, fast, and impossible to over-optimise in the way a learned reward can be (though
a policy can still game a loose rule). Per-prompt data (references, keywords) is a dict ``prompt -> value`` or
a JSONL file of ``{"prompt": ..., "<field>": ...}`` lines; a prompt without an entry raises, naming it.

    gym.make("TextGen-v0", prompts="qa.jsonl", reward_model="exact-match",
             reward_model_kwargs={"references": "qa.jsonl"})
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from textgym.lm.jsonl import read_jsonl

References = Mapping[str, Any] | str | os.PathLike
"""Per-prompt data: a dict ``prompt -> value``, or a JSONL file with ``prompt`` and one field per line."""


def load_references(references: References, field: str) -> dict[str, list[Any]]:
    """Per-prompt values as ``prompt -> list of values`` (a single value becomes a one-item list).

    Args:
        references: a dict ``prompt -> value or list of values``, or a JSONL file whose lines hold ``"prompt"``
            and ``field``.
        field: the JSONL key of the value (e.g. ``"reference"``, ``"keywords"``).
    """
    if isinstance(references, (str, os.PathLike)):

        def parse(record: dict[str, Any]) -> tuple[str, Any]:
            if not isinstance(record.get("prompt"), str) or field not in record:
                raise ValueError(f'expected {{"prompt": str, "{field}": ...}}')
            return record["prompt"], record[field]

        references = dict(read_jsonl(references, parse))
    if not isinstance(references, Mapping):
        raise TypeError(
            f"references must be a dict prompt -> {field} or a JSONL path; got {type(references).__name__}."
        )
    return {prompt: value if isinstance(value, list) else [value] for prompt, value in references.items()}


def lookup(table: Mapping[str, Any], prompts: Sequence[str], what: str) -> list[Any]:
    """``table[prompt]`` for each prompt; a missing one raises, naming it and how many prompts have an entry."""
    missing = next((p for p in prompts if p not in table), None)
    if missing is not None:
        raise ValueError(
            f"No {what} for the prompt {missing!r} ({len(table)} prompts have one). Give every prompt of the "
            f"environment's prompt set a {what}."
        )
    return [table[p] for p in prompts]


class KeywordCoverage:
    """The share of required keywords (concepts) a completion mentions, in ``[0, 1]``.

    Args:
        keywords: one list for every prompt, or per prompt (a dict ``prompt -> list``, or a JSONL file with a
            ``"keywords"`` list per line). A concept is a word or phrase, or a list of alternatives (synonyms,
            inflections), covered when any alternative appears as a whole word.
        case_sensitive: match case exactly (default: ignore case).
    """

    __name__ = "keywords"

    def __init__(self, keywords: Sequence[str | Sequence[str]] | References, case_sensitive: bool = False) -> None:
        flags = 0 if case_sensitive else re.IGNORECASE
        if isinstance(keywords, (Mapping, str, os.PathLike)):
            per_prompt = load_references(keywords, "keywords")
            self._shared = None
            self._per_prompt = {p: _concept_patterns(k, flags) for p, k in per_prompt.items()}
        else:
            self._shared = _concept_patterns(list(keywords), flags)
            self._per_prompt = {}

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        concepts = [self._shared] * len(prompts) if self._shared else lookup(self._per_prompt, prompts, "keywords")
        return np.array(
            [sum(bool(p.search(c)) for p in pats) / len(pats) for pats, c in zip(concepts, completions, strict=True)]
        )


def _concept_patterns(concepts: list[str | Sequence[str]], flags: int) -> list[re.Pattern[str]]:
    if not concepts:
        raise ValueError("KeywordCoverage needs at least one keyword per prompt.")
    patterns = []
    for concept in concepts:
        alternatives = [concept] if isinstance(concept, str) else list(concept)
        if not alternatives or not all(isinstance(a, str) and a.strip() for a in alternatives):
            raise ValueError(f"A keyword must be a non-empty string or a list of them; got {concept!r}.")
        joined = "|".join(re.escape(a.strip()) for a in alternatives)
        patterns.append(re.compile(rf"(?<!\w)(?:{joined})(?!\w)", flags))  # whole words: "cat" not in "concat"
    return patterns


class ExactMatch:
    """1 if the completion equals a reference answer of its prompt, else 0.

    Args:
        references: per prompt, a reference or a list of accepted ones (a dict, or a JSONL file with
            ``"reference"`` per line).
        normalize: compare as SQuAD does (lower case, no punctuation, no articles, single spaces); else compare
            the texts with surrounding whitespace stripped.
    """

    __name__ = "exact-match"

    def __init__(self, references: References, normalize: bool = True) -> None:
        self._clean = normalize_answer if normalize else str.strip
        self._references = {
            p: {self._clean(r) for r in refs} for p, refs in load_references(references, "reference").items()
        }

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        references = lookup(self._references, prompts, "reference")
        return np.array([float(self._clean(c) in refs) for refs, c in zip(references, completions, strict=True)])


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


class LengthTarget:
    """How close the completion's length is to a target, in ``[0, 1]``: 1 within ``tolerance``, falling
    linearly to 0 at a distance of ``target`` beyond it.

    Args:
        target: the wanted length.
        unit: ``"words"`` (whitespace-separated) or ``"chars"``.
        tolerance: the distance from ``target`` that still scores 1.
    """

    __name__ = "length"

    def __init__(self, target: int, unit: str = "words", tolerance: int = 0) -> None:
        if unit not in ("words", "chars"):
            raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}.")
        if target < 1 or tolerance < 0:
            raise ValueError(f"target must be >= 1 and tolerance >= 0; got target={target}, tolerance={tolerance}.")
        self.target, self.unit, self.tolerance = target, unit, tolerance

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        lengths = np.array([len(c.split()) if self.unit == "words" else len(c) for c in completions], dtype=float)
        excess = np.maximum(np.abs(lengths - self.target) - self.tolerance, 0)
        return np.maximum(1 - excess / self.target, 0)


class FormatMatch:
    """1 if the completion (surrounding whitespace stripped) matches a regular expression, else 0.

    Args:
        pattern: a Python regular expression.
        mode: ``"fullmatch"`` (the whole completion must match) or ``"search"`` (anywhere in it).
    """

    __name__ = "format"

    def __init__(self, pattern: str, mode: str = "fullmatch") -> None:
        if mode not in ("fullmatch", "search"):
            raise ValueError(f"mode must be 'fullmatch' or 'search', got {mode!r}.")
        try:
            compiled = re.compile(pattern, re.DOTALL)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {err}.") from err
        self._match = getattr(compiled, mode)

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.array([float(self._match(c.strip()) is not None) for c in completions])
