"""The model cache (textgym.lm.models): a cached model is used only when complete, and a build never leaves half
a model in place, alone or racing another process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from textgym.lm import models
from textgym.lm.models import _build_atomically, load_causal_lm, load_tokenizer, missing_model_files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def copy_model(source, out, only=None):
    """What a build writes: the whole tiny model, or ``only`` some of its files (a build cut short)."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if only is None or path.name in only:
            shutil.copy(path, out / path.name)


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_missing_files_are_named(tiny_model_dir, tmp_path):
    assert missing_model_files(Path(tiny_model_dir)) == []
    copy_model(Path(tiny_model_dir), tmp_path / "half", only=TOKENIZER_FILES)
    assert missing_model_files(tmp_path / "half") == ["config.json", "model.safetensors"]
    assert missing_model_files(tmp_path / "none") == ["the directory"]


def test_a_cached_folder_holding_only_the_tokenizer_is_rebuilt(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTGYM_CACHE", str(tmp_path))
    copy_model(Path(tiny_model_dir), tmp_path / "tiny", only=TOKENIZER_FILES)  # what a race once left
    assert models.tiny_model_dir() == tmp_path / "tiny"
    assert missing_model_files(tmp_path / "tiny") == []
    assert load_causal_lm("tiny").config.vocab_size == len(load_tokenizer("tiny"))
    assert leftovers(tmp_path) == []


def test_a_build_that_leaves_files_out_caches_nothing(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match=r"left out config\.json, model\.safetensors; nothing was cached"):
        _build_atomically(target, lambda out: copy_model(Path(tiny_model_dir), out, only=TOKENIZER_FILES))
    assert not target.exists() and leftovers(tmp_path) == []


def test_a_concurrent_build_that_finished_first_is_kept(tiny_model_dir, tmp_path):
    target = tmp_path / "model"

    def build(out):
        copy_model(Path(tiny_model_dir), target)  # another process renames its finished build into place
        (target / "winner").touch()
        copy_model(Path(tiny_model_dir), out)

    _build_atomically(target, build)
    assert (target / "winner").exists() and missing_model_files(target) == []
    assert leftovers(tmp_path) == []


def test_a_half_folder_written_meanwhile_is_replaced(tiny_model_dir, tmp_path):
    target = tmp_path / "model"

    def build(out):
        copy_model(Path(tiny_model_dir), target, only=TOKENIZER_FILES)  # a non-atomic writer, cut short
        copy_model(Path(tiny_model_dir), out)
        (out / "ours").touch()

    _build_atomically(target, build)
    assert (target / "ours").exists() and missing_model_files(target) == []
    assert leftovers(tmp_path) == []
