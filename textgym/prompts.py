"""Prompt sets: the shipped ones by name, or the user's own list, ``.txt`` or ``.jsonl`` file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

PROMPT_DIR = Path(__file__).parent / "data" / "prompts"
DEFAULT_PROMPTS = "openings"
"""Openings of reviews and stories, of mixed sentiment, to be continued (the default of TextGen-v0)."""


def shipped_prompt_sets() -> list[str]:
    """Names of the prompt sets that ship with textgym."""
    return sorted(path.stem for path in PROMPT_DIR.glob("*.txt"))


def load_prompts(prompts: str | os.PathLike | Sequence[str] | None = None) -> list[str]:
    """Load a prompt set.

    Args:
        prompts: ``None`` for the default set; the name of a shipped set (:func:`shipped_prompt_sets`); a
            ``.txt`` file (one prompt per line, blank lines skipped); a ``.jsonl`` file (one object with a
            ``"prompt"`` string per line, or one JSON string per line); or a list of strings.

    Raises:
        ValueError: the set is empty, or a file line is malformed (the message names the file and line).
        FileNotFoundError: the name is neither a shipped set nor an existing file.
    """
    if prompts is None:
        prompts = DEFAULT_PROMPTS
    if isinstance(prompts, (str, os.PathLike)):
        loaded = _load_prompt_file(_find_prompt_file(prompts))
        source = str(prompts)
    else:
        loaded = list(prompts)
        source = "the prompt list"
        for i, prompt in enumerate(loaded):
            if not isinstance(prompt, str):
                raise TypeError(f"Prompt {i} of the prompt list is a {type(prompt).__name__}, not a str.")
    if not loaded:
        raise ValueError(f"No prompts in {source}: an environment needs at least one prompt.")
    return loaded


def _find_prompt_file(prompts: str | os.PathLike) -> Path:
    path = Path(prompts).expanduser()
    if path.is_file():
        return path
    shipped = PROMPT_DIR / f"{prompts}.txt"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"No prompt file {str(prompts)!r}, and no shipped prompt set of that name "
        f"(shipped: {shipped_prompt_sets()}). Pass a .txt or .jsonl path, a shipped name, or a list of strings."
    )


def _load_prompt_file(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    loaded = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}).") from err
        prompt = record.get("prompt") if isinstance(record, dict) else record
        if not isinstance(prompt, str):
            raise ValueError(f'{path}:{number}: expected a JSON string or an object with a "prompt" string.')
        loaded.append(prompt)
    return loaded
