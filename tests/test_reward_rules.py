"""Rule-based rewards and the ROUGE metric: exact values, per-prompt references, errors naming the cause."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from reward_models import make_reward_model


def test_keyword_coverage_counts_concepts_as_whole_words():
    model = make_reward_model("keywords", keywords=["cat", ["dog", "puppy"], "red ball"])
    scores = model(["p"] * 4, ["A cat and a puppy.", "concatenate", "The DOG chased the red ball, cat!", ""])
    np.testing.assert_allclose(scores, [2 / 3, 0, 1, 0])


def test_keyword_coverage_per_prompt_from_jsonl(tmp_path):
    path = tmp_path / "concepts.jsonl"
    path.write_text(json.dumps({"prompt": "P", "keywords": ["sun", "sea"]}) + "\n")
    model = make_reward_model("keywords", keywords=str(path))
    np.testing.assert_allclose(model(["P"], ["The sun."]), [0.5])
    with pytest.raises(ValueError, match=r"No keywords for the prompt 'Q' \(1 prompts have one\)"):
        model(["Q"], ["x"])


def test_exact_match_normalises_like_squad():
    model = make_reward_model("exact-match", references={"Capital of France?": ["Paris", "Paris, France"]})
    scores = model(["Capital of France?"] * 4, [" paris.", "The Paris", "Lyon", " Paris France!"])
    np.testing.assert_array_equal(scores, [1, 1, 0, 1])
    strict = make_reward_model("exact-match", references={"q": "Paris"}, normalize=False)
    np.testing.assert_array_equal(strict(["q", "q"], [" Paris ", "paris"]), [1, 0])


def test_bad_reference_file_names_the_line(tmp_path):
    path = tmp_path / "refs.jsonl"
    path.write_text('{"prompt": "q", "reference": "a"}\n{"prompt": "r"}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: expected"):
        make_reward_model("exact-match", references=str(path))


def test_length_and_format_targets():
    length = make_reward_model("length", target=4, tolerance=1)
    np.testing.assert_allclose(length(["p"] * 4, ["a b c d", "a b c", "a b", "a b c d e f g h i j"]), [1, 1, 0.75, 0])
    chars = make_reward_model("length", target=10, unit="chars")
    np.testing.assert_allclose(chars(["p"], ["12345"]), [0.5])
    fmt = make_reward_model("format", pattern=r"\d+(\.\d+)?")
    np.testing.assert_array_equal(fmt(["p"] * 3, [" 42 ", "3.14", "about 3"]), [1, 1, 0])
    search = make_reward_model("format", pattern=r"\d", mode="search")
    np.testing.assert_array_equal(search(["p"], ["about 3"]), [1])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        make_reward_model("format", pattern="(")
    with pytest.raises(ValueError, match="unit must be"):
        make_reward_model("length", target=3, unit="tokens")


def test_rouge_scores_against_the_best_reference():
    pytest.importorskip("rouge_score")
    model = make_reward_model("rouge", references={"q": ["the cat sat on the mat", "a dog"]})
    scores = model(["q", "q", "q"], ["the cat sat on the mat", "the cats sat", "zebra"])
    assert scores[0] == pytest.approx(1.0) and 0 < scores[1] < 1 and scores[2] == 0


def test_rouge_without_its_package_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_rouge(name, *args, **kwargs):
        if name.startswith("rouge_score"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rouge)
    with pytest.raises(ModuleNotFoundError, match="pip install rouge-score"):
        make_reward_model("rouge", references={"q": "a"})
