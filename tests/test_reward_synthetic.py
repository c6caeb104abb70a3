"""Synthetic feedback: gold-labelled pairs and rankings, label noise, sampling from an LM."""

from __future__ import annotations

import pytest

from reward_models.preferences import load_preferences
from reward_models.synthetic import sample_completions, synthesize_preferences
from textgym.lm.jsonl import write_jsonl


def by_length(prompts, completions):
    return [float(len(c)) for c in completions]


PROMPTS = ["p", "q"]
COMPLETIONS = [["aa", "a", "aaa", "a"], ["bbbb", "bb"]]  # one duplicate


def test_pairs_follow_the_gold_and_skip_ties():
    records, stats = synthesize_preferences(PROMPTS, COMPLETIONS, gold=by_length, kind="pairs", min_gap=0)
    assert stats.duplicates_dropped == 1 and stats.records == stats.pairs == len(records) == 4
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in records)
    _, gapped = synthesize_preferences(PROMPTS, COMPLETIONS, gold=by_length, min_gap=1.5)
    assert gapped.pairs == 2 and gapped.ties_skipped == 2  # only gaps of 2 kept


def test_rankings_expand_to_gold_ordered_pairs(tmp_path):
    records, stats = synthesize_preferences(PROMPTS, COMPLETIONS, gold=by_length, kind="rankings")
    assert records[0] == {"prompt": "p", "completions": ["aa", "a", "aaa"], "ranking": [2, 0, 1]}
    assert stats.records == 2 and stats.pairs == 4
    write_jsonl(tmp_path / "r.jsonl", records)
    assert all(len(p.chosen) > len(p.rejected) for p in load_preferences(tmp_path / "r.jsonl"))


@pytest.mark.parametrize("kind", ["pairs", "rankings"])
def test_label_noise_is_seeded_and_about_the_asked_rate(kind):
    prompts = [f"p{i}" for i in range(300)]
    completions = [["a", "aa"] for _ in prompts]
    records, stats = synthesize_preferences(prompts, completions, gold=by_length, kind=kind, flip_prob=0.2, seed=1)
    wrong = sum(
        (r["chosen"] == "a") if kind == "pairs" else (r["completions"][r["ranking"][0]] == "a") for r in records
    )
    assert wrong == stats.flipped and 0.13 < wrong / len(records) < 0.27
    assert synthesize_preferences(prompts, completions, gold=by_length, kind=kind, flip_prob=0.2, seed=1)[0] == records


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind must be"):
        synthesize_preferences(PROMPTS, COMPLETIONS, gold=by_length, kind="triples")
    with pytest.raises(ValueError, match="flip_prob"):
        synthesize_preferences(PROMPTS, COMPLETIONS, gold=by_length, flip_prob=0.7)
    with pytest.raises(ValueError, match="one list each"):
        synthesize_preferences(PROMPTS, COMPLETIONS[:1], gold=by_length)
    records, stats = synthesize_preferences(["p"], [["same", "same"]], gold=by_length)
    assert records == [] and stats.prompts_skipped == 1


def test_sampling_from_a_tiny_lm_is_seeded(tiny_model_dir):
    kwargs = dict(num_completions=3, model=tiny_model_dir, max_new_tokens=5, batch_size=2, device="cpu", progress=False)
    first = sample_completions(["The movie was", "I think", "Once"], seed=0, **kwargs)
    assert [len(group) for group in first] == [3, 3, 3]
    assert all(isinstance(text, str) for group in first for text in group)
    assert sample_completions(["The movie was", "I think", "Once"], seed=0, **kwargs) == first
