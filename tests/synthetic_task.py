"""The synthetic task the learning tests share: say "yes" at every step, with a word-level tiny model."""

from __future__ import annotations

WORDS = ["yes", "no", "maybe", "say", "please", "ok", "fine", "sure", "nope", "well"]
NEW_TOKENS = 6


def yes_rate(prompts: list[str], completions: list[str]) -> list[float]:
    """Share of "yes" among the completion's steps. A random policy scores about 1/16, the best policy 1."""
    return [c.split().count("yes") / NEW_TOKENS for c in completions]
