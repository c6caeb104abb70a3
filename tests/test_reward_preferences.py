"""Preference JSONL: pairs, rankings expanded to all ordered pairs, bad lines reported by file:line, splits."""

from __future__ import annotations

import json

import pytest

from reward_models.preferences import PreferencePair, expand_ranking, load_preferences, split_by_prompt
from textgym.lm.jsonl import write_jsonl


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_pairs_and_rankings(tmp_path):
    path = write_lines(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "P", "chosen": "good", "rejected": "bad", "margin": 0.5, "extra": "ignored"},
            {"prompt": "Q", "completions": ["x", "y", "z"], "ranking": [2, 0, 1]},
        ],
    )
    pairs = load_preferences(path)
    assert pairs[0] == PreferencePair("P", "good", "bad", 0.5)
    assert [(p.chosen, p.rejected) for p in pairs[1:]] == [("z", "x"), ("z", "y"), ("x", "y")]


def test_ranking_of_k_gives_k_choose_2_pairs_in_rank_order():
    completions = [f"c{i}" for i in range(5)]
    pairs = expand_ranking("p", completions, [4, 3, 2, 1, 0])
    assert len(pairs) == 10
    assert all(int(p.chosen[1]) > int(p.rejected[1]) for p in pairs)  # c4 is best, c0 worst


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("", "empty line"),
        ("[1, 2]", "expected a JSON object"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "same text"),
        ({"prompt": "p", "chosen": "a"}, '"rejected" must be a string'),
        ({"chosen": "a", "rejected": "b"}, '"prompt" must be a string'),
        ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "conversational"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "margin"),
        ({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 0]}, "each index"),
        ({"prompt": "p", "completions": ["a", "a"], "ranking": [0, 1]}, "must differ"),
        ({"prompt": "p", "completions": ["a"], "ranking": [0]}, "at least 2"),
        ({"prompt": "p", "text": "a"}, "expected a pair"),
    ],
)
def test_bad_lines_raise_with_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, line])
    with pytest.raises(ValueError, match=message) as err:
        load_preferences(path)
    assert f"{path}:2:" in str(err.value)


def test_skip_mode_reports_every_skipped_line(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_lines(tmp_path / "mixed.jsonl", [good, "oops", good, {"prompt": "p", "chosen": "a", "rejected": "a"}])
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 lines \(line 2: not valid JSON.*line 4: chosen and rejected"):
        assert len(load_preferences(path, on_error="skip")) == 2
    with pytest.raises(ValueError, match="on_error must be"):
        load_preferences(path, on_error="ignore")


def test_no_pairs_at_all_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="No preference pairs"):
        with pytest.warns(UserWarning):
            load_preferences(write_lines(tmp_path / "junk.jsonl", ["x"]), on_error="skip")
    with pytest.raises(FileNotFoundError, match="No such JSONL"):
        load_preferences(tmp_path / "missing.jsonl")


def test_split_is_by_prompt_and_seeded():
    pairs = [PreferencePair(f"p{i}", f"a{j}", f"b{j}") for i in range(20) for j in range(3)]
    train, held = split_by_prompt(pairs, 0.25, seed=1)
    assert len(held) == 15 and len(train) == 45
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert split_by_prompt(pairs, 0.25, seed=1) == (train, held)
    assert split_by_prompt(pairs, 0.0) == (pairs, [])
    with pytest.raises(ValueError, match="at least 2 different prompts"):
        split_by_prompt(pairs[:3], 0.5)


def test_write_then_load_round_trip(tmp_path):
    records = [{"prompt": "Über", "chosen": "schön", "rejected": "hässlich"}]
    write_jsonl(tmp_path / "out" / "p.jsonl", records)
    assert load_preferences(tmp_path / "out" / "p.jsonl") == [PreferencePair("Über", "schön", "hässlich")]
