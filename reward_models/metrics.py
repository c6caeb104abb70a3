"""Reference-based text metrics as rewards, from well-kept packages, imported only when used.

ROUGE comes from Google's ``rouge-score`` package (pure Python; it pulls ``nltk``, ``absl-py`` and ``six``), an
optional dependency: ``pip install rouge-score``.
"""

from __future__ import annotations

import numpy as np

from reward_models.rules import References, load_references, lookup

ROUGE_VARIANTS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
"""The ``rouge-score`` variants: unigram and bigram overlap, the longest common subsequence, and its summary-level
form over newline-separated sentences."""


class Rouge:
    """ROUGE F-measure of the completion against its prompt's reference(s), in ``[0, 1]`` (best reference).

    Args:
        references: per prompt, a reference text or a list of them (a dict, or a JSONL file with
            ``"reference"`` per line).
        variant: one of [ROUGE_VARIANTS][reward_models.metrics.ROUGE_VARIANTS].
        use_stemmer: compare word stems (Porter), so "cats" matches "cat".
    """

    __name__ = "rouge"

    def __init__(self, references: References, variant: str = "rougeL", use_stemmer: bool = True) -> None:
        try:
            from rouge_score.rouge_scorer import RougeScorer
        except ImportError as err:
            raise ModuleNotFoundError(
                "The 'rouge' reward model needs the optional package rouge-score: `pip install rouge-score`."
            ) from err
        if variant not in ROUGE_VARIANTS:
            raise ValueError(f"variant must be one of {ROUGE_VARIANTS}, got {variant!r}.")
        self._scorer = RougeScorer([variant], use_stemmer=use_stemmer)
        self._variant = variant
        self._references = load_references(references, "reference")

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        references = lookup(self._references, prompts, "reference")
        return np.array(
            [
                max(self._scorer.score(ref, c)[self._variant].fmeasure for ref in refs)
                for refs, c in zip(references, completions, strict=True)
            ]
        )
