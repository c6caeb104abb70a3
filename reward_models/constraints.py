"""Length and format constraints stated in the prompt, scored with partial credit and a degeneracy gate.

The prompt states the constraints in a fixed phrasing (what
[Constraints.describe][reward_models.constraints.Constraints.describe] writes and
[parse_constraints][reward_models.constraints.parse_constraints] reads), so the reward model needs nothing but the
prompt and works on its own, e.g. to score a TRL run::

    Write about the ocean in 20 words, as 3 bullet points.
    Write about gardening in 15 words, as a JSON object with the keys "title" and "summary".
    Write about coffee in 25 words, ending with a period.

Each constraint scores in ``[0, 1]``; the satisfaction is their mean:

- words ``N`` (``in N words``): 1 within ``max(1, round(N / 10))`` words of ``N``, then falling linearly to 0 at
  ``N`` words beyond that;
- bullets ``k`` (``as k bullet points``): ``max(0, 1 − |b − k| / k) · b / lines``, where ``b`` of the ``lines``
  non-empty lines start with ``-``, ``*``, ``•`` or a number and ``.`` or ``)``;
- JSON keys (``as a JSON object with the keys "a" and "b"``): if the text (a Markdown code fence allowed) is one
  JSON object, the wanted keys it has over all the keys wanted or present; else 0;
- period (``ending with a period``): 1 if the text, trailing spaces stripped, ends with ``.``; else 0.

Words are runs of letters and digits (``don't`` and ``well-known`` are one word); markers, braces and quotes are
not words, and in a JSON object only the values' words count, not the keys.

**The gate.** The satisfaction is multiplied by a degeneracy gate in ``[0, 1]``, so that repeating one word until the
count is right earns nothing: ``gate="fluency"`` (default) is
[reward_models.fluency.Fluency][reward_models.fluency.Fluency], the reference LM's mean log-likelihood of the completion
times a distinct-2 factor; ``gate="distinct"`` is the distinct-2 factor alone (no model: fast, for tests and quick
runs); ``gate=None`` scores the constraints alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
"""A word: letters and digits, with inner apostrophes or hyphens (``don't``, ``well-known``)."""
BULLET = re.compile(r"^(?:[-*•]|\d+[.)])\s+\S")
"""A bullet line: ``-``, ``*``, ``•`` or a number with ``.`` or ``)``, a space, then text."""
GATES = ("fluency", "distinct", None)

_WORDS = re.compile(r"\bin (\d+) words\b")
_BULLETS = re.compile(r"\bas (\d+) bullet points\b")
_JSON = re.compile(r'\bas a JSON object with the keys? ((?:"[^"]+"(?:, | and )?)+)')
_PERIOD = re.compile(r"\bending with a period\b")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class Constraints:
    """What a completion must satisfy; ``None`` / ``False`` leaves a constraint out.

    Args:
        words: the target word count.
        bullets: the number of bullet points.
        json_keys: the keys of the JSON object the completion must be.
        period: whether the completion must end with a period.
    """

    words: int | None = None
    bullets: int | None = None
    json_keys: tuple[str, ...] | None = None
    period: bool = False

    def __post_init__(self) -> None:
        if self.words is not None and self.words < 1:
            raise ValueError(f"words must be at least 1, got {self.words}.")
        if self.bullets is not None and self.bullets < 1:
            raise ValueError(f"bullets must be at least 1, got {self.bullets}.")
        if self.json_keys is not None and (not self.json_keys or not all(k and '"' not in k for k in self.json_keys)):
            raise ValueError(f"json_keys must be non-empty strings without quotes, got {self.json_keys!r}.")
        if self.bullets is not None and self.json_keys is not None:
            raise ValueError("A completion cannot be both bullet points and a JSON object; choose one.")
        if self.words is None and self.bullets is None and self.json_keys is None and not self.period:
            raise ValueError("Constraints need at least one constraint.")

    def describe(self) -> str:
        """The constraints as the prompt states them, e.g. ``in 20 words, as 3 bullet points``."""
        parts = []
        if self.words is not None:
            parts.append(f"in {self.words} words")
        if self.bullets is not None:
            parts.append(f"as {self.bullets} bullet points")
        if self.json_keys is not None:
            keys = [f'"{k}"' for k in self.json_keys]
            listed = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
            parts.append(f"as a JSON object with the key{'s' if len(keys) > 1 else ''} {listed}")
        if self.period:
            parts.append("ending with a period")
        return ", ".join(parts)

    def scores(self, completion: str) -> dict[str, float]:
        """Each constraint's score in ``[0, 1]`` (see the module docstring), by constraint name."""
        scores = {}
        obj = parse_json_object(completion) if self.json_keys is not None else None
        if self.words is not None:
            text = " ".join(str(v) for v in obj.values()) if obj is not None else completion
            scores["words"] = length_score(count_words(text), self.words)
        if self.bullets is not None:
            lines = [line.strip() for line in completion.splitlines() if line.strip()]
            found = sum(bool(BULLET.match(line)) for line in lines)
            scores["bullets"] = max(0.0, 1 - abs(found - self.bullets) / self.bullets) * found / max(len(lines), 1)
        if self.json_keys is not None:
            wanted = set(self.json_keys)
            scores["json"] = 0.0 if obj is None else len(wanted & set(obj)) / len(wanted | set(obj))
        if self.period:
            scores["period"] = float(completion.rstrip().endswith("."))
        return scores

    def satisfaction(self, completion: str) -> float:
        """The mean of the constraints' scores, in ``[0, 1]``."""
        scores = self.scores(completion)
        return sum(scores.values()) / len(scores)


def parse_constraints(prompt: str) -> Constraints:
    """The constraints a prompt states in [Constraints.describe][reward_models.constraints.Constraints.describe]'s
    phrasing.

    Raises:
        ValueError: the prompt states none (the message shows the phrasing).
    """
    words, bullets, keys = _WORDS.search(prompt), _BULLETS.search(prompt), _JSON.search(prompt)
    try:
        return Constraints(
            words=int(words.group(1)) if words else None,
            bullets=int(bullets.group(1)) if bullets else None,
            json_keys=tuple(re.findall(r'"([^"]+)"', keys.group(1))) if keys else None,
            period=bool(_PERIOD.search(prompt)),
        )
    except ValueError as err:
        raise ValueError(
            f"The prompt {prompt[:100]!r} states no valid length or format constraint ({err}). State them as "
            '"in 20 words", "as 3 bullet points", "as a JSON object with the keys "a" and "b"" or "ending with a '
            'period".'
        ) from err


def count_words(text: str) -> int:
    """Words in ``text`` (see [WORD][reward_models.constraints.WORD])."""
    return len(WORD.findall(text))


def length_score(length: int, target: int) -> float:
    """1 within ``max(1, round(target / 10))`` of ``target``, then linearly down to 0 at ``target`` beyond that."""
    tolerance = max(1, round(target / 10))
    return max(0.0, 1 - max(abs(length - target) - tolerance, 0) / target)


def parse_json_object(text: str) -> dict[str, Any] | None:
    """``text`` as a JSON object (inside a Markdown code fence or not), or ``None`` if it is not one."""
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class ConstraintSatisfaction:
    """The registered reward model ``"constraints"``: satisfaction of the prompt's constraints × a degeneracy gate.

    Args:
        gate: ``"fluency"`` (the reference LM's fluency with a distinct-2 factor), ``"distinct"`` (the distinct-2
            factor alone) or ``None`` (no gate); see the module docstring.
        fluency_kwargs: arguments of [reward_models.fluency.Fluency][reward_models.fluency.Fluency] (e.g. ``model``,
            ``low``, ``high``).
        min_distinct: for ``gate="distinct"``: the distinct-2 ratio of words at and above which the gate is 1.
    """

    __name__ = "constraints"

    def __init__(
        self, gate: str | None = "fluency", fluency_kwargs: dict[str, Any] | None = None, min_distinct: float = 0.5
    ) -> None:
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}.")
        if fluency_kwargs and gate != "fluency":
            raise ValueError(f"fluency_kwargs were given with gate={gate!r}; they apply to gate='fluency' only.")
        if not 0 < min_distinct <= 1:
            raise ValueError(f"min_distinct must be in (0, 1], got {min_distinct}.")
        self.gate = gate
        self.min_distinct = min_distinct
        self.fluency = None
        if gate == "fluency":
            from reward_models.fluency import Fluency

            self.fluency = Fluency(**(fluency_kwargs or {}))

    def satisfaction(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The constraints' satisfaction alone, without the gate."""
        return np.array([parse_constraints(p).satisfaction(c) for p, c in zip(prompts, completions, strict=True)])

    def gates(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The degeneracy gate of each completion, in ``[0, 1]`` (ones with ``gate=None``)."""
        if self.gate == "fluency":
            return np.asarray(self.fluency(prompts, completions), dtype=np.float64)
        if self.gate == "distinct":
            from reward_models.fluency import repetition_factor

            return repetition_factor(completions, self.min_distinct)
        return np.ones(len(completions))

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        satisfaction = self.satisfaction(prompts, completions)  # parses every prompt first: a bad one fails early
        return satisfaction * self.gates(prompts, completions)
