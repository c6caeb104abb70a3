"""Verifiable instructions: rewards computed from the instruction itself (copy, reverse, sort words, count a
letter, add or multiply numbers), exact (sparse) or with partial credit (dense).

The expected answer is computed from the prompt, so the reward model needs no reference data: any prompt with a line in
one of [INSTRUCTIONS][reward_models.verifiable.INSTRUCTIONS]' forms can be scored, the last such line being the question
(the ``VerifiableInstructions-v0`` task writes them with
[instruction_prompt][reward_models.verifiable.instruction_prompt])::

    reward = make_reward_model("verifiable", mode="partial")
    reward(["Write these words in reverse order: red cat sun"], ["sun cat red"])

**The answer** is the first non-blank line of the completion, stripped. For the word instructions it is
compared as its sequence of lowercase words (punctuation between words is ignored: ``"sun, cat, red."`` is
``sun cat red``); for the number instructions as its characters, commas, spaces and a final period dropped.

**Modes.** ``"exact"``: 1 when the answer equals the expected one, else 0. ``"partial"``:
``max(0, 1 − edit_distance(answer, expected) / len(expected))``, the edit distance counted over words (word
instructions) or digits (number instructions). Dividing by the expected length, not the longer of the two, is
what keeps it from being gamed: an empty answer scores 0 (it is ``len(expected)`` deletions away), an answer
written twice scores 0 (``len(expected)`` insertions), and every word or character of padding costs as much as
a wrong one; text after the first line is never read, so it neither helps nor hurts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

MODES = ("exact", "partial")

INSTRUCTIONS = {
    "copy": "Copy these words in the same order: {words}",
    "reverse": "Write these words in reverse order: {words}",
    "sort": "Sort these words in alphabetical order: {words}",
    "count": 'How many times does the letter "{letter}" appear in these words: {words}',
    "add": "What is {a} + {b}?",
    "multiply": "What is {a} * {b}?",
}
"""The instruction forms, by kind."""
EXAMPLES = {
    "copy": {"words": "one two three"},
    "reverse": {"words": "one two three"},
    "sort": {"words": "one two three"},
    "count": {"letter": "o", "words": "one two"},
    "add": {"a": 2, "b": 3},
    "multiply": {"a": 2, "b": 3},
}
"""The worked example each prompt opens with, by kind: it shows the model the form of the answer."""
WORD_KINDS = ("copy", "reverse", "sort")
KINDS = tuple(INSTRUCTIONS)

_PATTERNS = {
    kind: re.compile(
        "^"
        + re.escape(form)
        .replace(r"\{words\}", r"(?P<words>[a-z ]+)")
        .replace(r"\{letter\}", r"(?P<letter>[a-z])")
        .replace(r"\{a\}", r"(?P<a>\d+)")
        .replace(r"\{b\}", r"(?P<b>\d+)")
        + "$"
    )
    for kind, form in INSTRUCTIONS.items()
}


def instruction_prompt(kind: str, **fields: object) -> str:
    """The prompt of one instruction, e.g. ``instruction_prompt("add", a=12, b=30)``: a worked example of the
    same kind ([EXAMPLES][reward_models.verifiable.EXAMPLES]), then the instruction, each followed by ``Answer:``."""
    if kind not in INSTRUCTIONS:
        raise ValueError(f"Unknown instruction kind {kind!r}; the kinds are {list(KINDS)}.")
    example = INSTRUCTIONS[kind].format(**EXAMPLES[kind])
    return f"{example}\nAnswer: {_solve(kind, EXAMPLES[kind])}\n\n{INSTRUCTIONS[kind].format(**fields)}\nAnswer:"


def parse_instruction(prompt: str) -> tuple[str, dict[str, str]]:
    """The kind and fields of the instruction a prompt asks: its last line in one of
    [INSTRUCTIONS][reward_models.verifiable.INSTRUCTIONS]' forms (an example before it is not the question)."""
    for line in reversed(prompt.splitlines()):
        for kind, pattern in _PATTERNS.items():
            match = pattern.match(line.strip())
            if match:
                return kind, match.groupdict()
    raise ValueError(
        f"The prompt {prompt!r} is not a verifiable instruction: one of its lines must be one of the forms of "
        f"reward_models.verifiable.INSTRUCTIONS, {list(INSTRUCTIONS.values())}."
    )


def expected_answer(prompt: str) -> str:
    """The exact answer to an instruction prompt (the task's scripted solver)."""
    return _solve(*parse_instruction(prompt))


def _solve(kind: str, fields: dict[str, object]) -> str:
    if kind in WORD_KINDS or kind == "count":
        words = str(fields["words"]).split()
        if kind == "copy":
            return " ".join(words)
        if kind == "reverse":
            return " ".join(reversed(words))
        if kind == "sort":
            return " ".join(sorted(words))
        return str("".join(words).count(str(fields["letter"])))
    a, b = int(str(fields["a"])), int(str(fields["b"]))
    return str(a + b if kind == "add" else a * b)


def answer_line(completion: str) -> str:
    """The answer a completion gives: its first non-blank line, stripped ("" when there is none)."""
    return next((line.strip() for line in completion.splitlines() if line.strip()), "")


def answer_units(answer: str, kind: str) -> list[str]:
    """What is compared: lowercase words (word instructions) or characters without commas, spaces and a final
    period (number instructions)."""
    if kind in WORD_KINDS:
        return re.findall(r"[a-z]+", answer.lower())
    return list(answer.replace(",", "").replace(" ", "").removesuffix("."))


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two sequences (insertions, deletions and substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class Verifiable:
    """Scores completions of verifiable instructions against the answer computed from each prompt.

    Args:
        mode: ``"exact"`` (1 or 0) or ``"partial"`` (``1 − edit distance / expected length``, at least 0); see
            the module docstring for how the answer is read and why padding cannot raise the partial score.
    """

    def __init__(self, mode: str = "exact") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.__name__ = f"verifiable-{mode}"

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        scores = np.zeros(len(completions))
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            kind, _ = parse_instruction(prompt)
            expected = answer_units(expected_answer(prompt), kind)
            given = answer_units(answer_line(completion), kind)
            if self.mode == "exact":
                scores[i] = float(given == expected)
            else:
                scores[i] = max(0.0, 1.0 - edit_distance(given, expected) / len(expected))
        return scores
