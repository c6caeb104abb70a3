"""The one JSONL reader (textgym.lm.jsonl): every bad line named by file and line, or skipped and reported."""

from __future__ import annotations

import json

import pytest

from textgym.lm.jsonl import read_jsonl, write_jsonl


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_round_trip_keeps_records_and_non_ascii(tmp_path):
    records = [{"prompt": "Café ☕", "n": 1}, {"prompt": "b", "n": [2, 3]}]
    write_jsonl(tmp_path / "new" / "r.jsonl", records)
    assert read_jsonl(tmp_path / "new" / "r.jsonl") == records
    assert "Café ☕" in (tmp_path / "new" / "r.jsonl").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "not valid JSON"),
        ("", "empty line"),
        ("   ", "empty line"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('"text"', "expected a JSON object, got a str"),
    ],
)
def test_a_bad_line_raises_naming_file_and_line(tmp_path, line, why):
    path = write(tmp_path / "bad.jsonl", ['{"a": 1}', line, '{"a": 3}'])
    with pytest.raises(ValueError, match=why) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_parse_errors_are_named_by_line_too(tmp_path):
    def parse(record):
        if "a" not in record:
            raise ValueError('"a" is missing')
        return record["a"]

    path = write(tmp_path / "r.jsonl", ['{"a": 1}', '{"a": 2}', '{"b": 3}'])
    with pytest.raises(ValueError, match=r'r\.jsonl:3: "a" is missing'):
        read_jsonl(path, parse)


def test_skip_reports_every_skipped_line_once(tmp_path):
    lines = ['{"a": 1}', "oops", "", "[1]", '{"a": 5}']
    path = write(tmp_path / "mixed.jsonl", lines)
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 lines \(line 2: not valid JSON.*line 3: empty.*line 4: exp"):
        assert read_jsonl(path, lambda r: r["a"], on_error="skip") == [1, 5]


def test_blank_lines_and_non_objects_where_the_caller_allows_them(tmp_path):
    path = write(tmp_path / "prompts.jsonl", [json.dumps("plain"), "", json.dumps({"prompt": "obj"})])
    assert read_jsonl(path, skip_blank=True, objects_only=False) == ["plain", {"prompt": "obj"}]
    with pytest.raises(ValueError, match=r"prompts\.jsonl:2: empty line"):
        read_jsonl(path, objects_only=False)


def test_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"on_error must be one of \('raise', 'skip'\)"):
        read_jsonl(write(tmp_path / "r.jsonl", ['{"a": 1}']), on_error="ignore")
    with pytest.raises(FileNotFoundError, match="No such JSONL file"):
        read_jsonl(tmp_path / "missing.jsonl")
