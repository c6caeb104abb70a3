"""Concept coverage (CommonGen-like): does one fluent sentence use all the given concepts?

* ``concept-coverage`` ([ConceptCoverage][reward_models.concepts.ConceptCoverage]): the share of the concepts the
  completion uses, any inflection counting (``throw`` is covered by *threw* and *throwing*, ``child`` by *children*),
  the inflections being lemminflect's (a lexicon of English inflections shipped in its PyPI package).
* ``concepts`` ([Concepts][reward_models.concepts.Concepts]): that coverage times the completion's fluency
  ([reward_models.fluency][reward_models.fluency]), the ``ConceptCoverage-v0`` task's reward and gold score.

The concepts are read from the prompt (the comma-separated words after the last colon of its last non-blank
line, a final period dropped: ``"... uses all of these words: dog, swim, boat."``) unless given::

    reward = make_reward_model("concepts")
    reward(["Write one sentence that uses all of these words: dog, swim, boat."],
           ["I saw a dog swimming near the boat."])

**Why the fluency is measured without the prompt.** Under the instruction, a bare list of the concept words is a likely
continuation (the language model copies what it has just read: ``"dog, swim, boat"`` scores a mean log-prob of −2.3 per
token after the prompt, better than a real sentence's −2.9), so a gate that reads the prompt would let the list through.
After the neutral [FLUENCY_CONTEXT][reward_models.concepts.FLUENCY_CONTEXT] instead, the list scores −7.4 and a plain
sentence about −3.7 to −4.3 (SmolLM2-135M-Instruct), and the gate tells them apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

FLUENCY_CONTEXT = "Here is a sentence:"
"""What the fluency gate conditions the completion on, instead of the prompt (see the module docstring)."""


def parse_concepts(prompt: str) -> list[str]:
    """The concepts a prompt asks for: the comma-separated words after the last colon of its last line."""
    lines = [line for line in prompt.splitlines() if line.strip()]
    if not lines or ":" not in lines[-1]:
        raise ValueError(
            f"Cannot read the concepts of the prompt {prompt!r}: its last line must end with a colon and a "
            "comma-separated list of words (or pass concepts=[...] to the reward model)."
        )
    concepts = [c.strip().lower() for c in lines[-1].rsplit(":", 1)[1].strip().removesuffix(".").split(",")]
    if not all(concepts):
        raise ValueError(f"The prompt {prompt!r} lists an empty concept.")
    return concepts


@lru_cache(maxsize=4096)
def inflections(concept: str) -> frozenset[str]:
    """The concept and every inflection lemminflect knows of it, as any part of speech (lowercase)."""
    from lemminflect import getAllInflections

    forms = {concept.lower()}
    for variants in getAllInflections(concept.lower()).values():
        forms.update(v.lower() for v in variants)
    return frozenset(forms)


def words_of(text: str) -> set[str]:
    """The lowercase words of a text (letters and inner apostrophes)."""
    return set(re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()))


def coverage(concepts: Sequence[str], completion: str) -> float:
    """The share of ``concepts`` that ``completion`` uses, in any inflection, as whole words."""
    words = words_of(completion)
    return sum(bool(inflections(c) & words) for c in concepts) / len(concepts)


class ConceptCoverage:
    """The share of the concepts a completion uses, any inflection counting; in ``[0, 1]``.

    Args:
        concepts: the same concepts for every prompt; ``None`` reads each prompt's own
            ([parse_concepts][reward_models.concepts.parse_concepts]).
    """

    __name__ = "concept-coverage"

    def __init__(self, concepts: Sequence[str] | None = None) -> None:
        if concepts is not None and (isinstance(concepts, str) or not concepts):
            raise ValueError(f"concepts must be a non-empty list of words or None, got {concepts!r}.")
        self.concepts = None if concepts is None else [c.lower() for c in concepts]

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.array(
            [coverage(self.concepts or parse_concepts(p), c) for p, c in zip(prompts, completions)], dtype=np.float64
        )


class Concepts:
    """Concept coverage gated by fluency: ``coverage × fluency``, in ``[0, 1]``.

    The fluency is [reward_models.fluency.Fluency][reward_models.fluency.Fluency] of the completion after
    [FLUENCY_CONTEXT][reward_models.concepts.FLUENCY_CONTEXT] (not after the prompt; see the module docstring), with its
    default range: a mean log-prob of −6 nats per token or less scores 0, −3.5 or more scores 1. Plain sentences (−3.7
    to −4.3) pass, about 0.7 to 0.9; a bare word list (−7.4) does not.

    Args:
        concepts: as for [ConceptCoverage][reward_models.concepts.ConceptCoverage].
        model: the language model that judges fluency (``None``: the embedded SmolLM2-135M-Instruct; ``"tiny"``
            or a local directory otherwise).
        device: where the fluency model runs; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        batch_size: completions the fluency model scores per forward pass.
        **fluency_kwargs: more [Fluency][reward_models.fluency.Fluency] arguments (``low``, ``high``,
            ``min_distinct``) to override the defaults.
    """

    __name__ = "concepts"

    def __init__(
        self,
        concepts: Sequence[str] | None = None,
        model: str | None = None,
        device: str | None = None,
        batch_size: int = 16,
        **fluency_kwargs: Any,
    ) -> None:
        from reward_models.fluency import Fluency

        self.coverage = ConceptCoverage(concepts)
        self.fluency = Fluency(model=model, device=device, batch_size=batch_size, **fluency_kwargs)

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        covered = self.coverage(prompts, completions)
        scores = np.zeros(len(completions))
        if covered.any():  # the language model runs only on completions that use a concept
            rows = np.flatnonzero(covered)
            texts = [" " + completions[i].strip() for i in rows]
            scores[rows] = covered[rows] * np.asarray(self.fluency([FLUENCY_CONTEXT] * len(rows), texts))
        return scores
