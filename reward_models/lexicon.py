"""Lexicon rewards: sentiment scores from a fixed word list, no model, fast on CPU."""

from __future__ import annotations

import numpy as np


class VaderPositivity:
    """Positivity of the completion: VADER's compound sentiment score, in [-1, 1].

    The reward of the classic "continue the text positively" RLHF task. Only the completion is scored, so a
    negative prompt continued positively earns a high reward.
    """

    __name__ = "vader"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(text)["compound"] for text in completions])
