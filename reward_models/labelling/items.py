"""The batch to label: one JSON object per line, a prompt and its K completions.

    {"id": "opt-7", "prompt": "The film was", "completions": [" great.", " dull.", " long."]}

``id`` is optional (default: the line number, as a string) and must be unique; ``completions`` holds at least
two distinct strings. `load_items` reports the first bad line as ``file:line: why`` before anything is
served, and `file_digest` fingerprints the file so a labels folder is never mixed with another batch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textgym.lm.jsonl import read_jsonl, write_jsonl


@dataclass(frozen=True)
class Item:
    """A prompt and the completions a rater orders."""

    id: str
    prompt: str
    completions: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "completions": list(self.completions)}


def parse_item(record: dict[str, Any]) -> Item:
    """One item from a JSON object; ``ValueError`` says what is wrong (the id is filled in by `load_items`)."""
    prompt, completions, item_id = record.get("prompt"), record.get("completions"), record.get("id", "")
    if not isinstance(prompt, str):
        raise ValueError('"prompt" must be a string')
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise ValueError('"completions" must be a list of strings')
    if len(completions) < 2:
        raise ValueError(f'"completions" needs at least 2 texts to compare, got {len(completions)}')
    if len(set(completions)) != len(completions):
        raise ValueError('"completions" holds the same text twice; remove the duplicate')
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise ValueError(f'"id" must be a string or an integer, got {item_id!r}')
    return Item(str(item_id), prompt, tuple(completions))


def load_items(path: str | os.PathLike) -> list[Item]:
    """Read and check a batch file.

    Raises:
        ValueError: ``file:line: why`` for the first bad line (not JSON, missing fields, fewer than two distinct
            completions, a repeated id), or no item at all.
    """
    items = read_jsonl(path, parse_item)  # an empty line is an error there, so index + 1 is the line number
    seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        if not item.id:
            items[number - 1] = item = Item(str(number), item.prompt, item.completions)
        if item.id in seen:
            raise ValueError(f"{path}:{number}: id {item.id!r} is already used on line {seen[item.id]}; give another.")
        seen[item.id] = number
    if not items:
        raise ValueError(f"{path}: no items to label.")
    return items


def write_items(path: str | os.PathLike, prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> int:
    """Write a batch file from prompts and their sampled completions (duplicates dropped); return the items
    written (prompts left with fewer than two distinct completions are skipped)."""
    records = []
    for prompt, group in zip(prompts, completions, strict=True):
        distinct = list(dict.fromkeys(group))
        if len(distinct) >= 2:
            records.append({"id": str(len(records) + 1), "prompt": prompt, "completions": distinct})
    write_jsonl(path, records)
    return len(records)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
