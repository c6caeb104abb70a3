"""The labels folder: an append-only log of answers, each fsynced before the page is told it is saved.

    labels/meta.json      {"data": "batch.jsonl", "data_sha256": "...", "created": "..."}: the batch it belongs to
    labels/items.jsonl    a copy of that batch file, so stats and export need nothing else
    labels/labels.jsonl   one JSON object per event, in the order they were accepted:
        {"event": "label", "rater": "alice", "item": "7", "shown": [0, 1, 2, 3], "ranking": [[2], [0, 3], [1]],
         "flags": {"1": "nonsense"}, "comment": "", "time": "2026-01-01T12:00:00.000Z"}
        {"event": "undo", "rater": "alice", "item": "7", "time": "..."}

``ranking`` lists groups of completion indices (into the item's ``completions``) from best to worst; a group of
more than one is a tie. An ``undo`` withdraws that rater's latest remaining label. Opening a folder replays the
log, so a restarted server resumes each rater where they stopped; a last line cut short by a kill (never
acknowledged, since the answer is acknowledged only after ``fsync``) is dropped with a warning. A folder made
for another batch file (another SHA-256) is refused.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reward_models.labelling.items import Item, file_digest

META_FILE = "meta.json"
LABELS_FILE = "labels.jsonl"
ITEMS_FILE = "items.jsonl"
FLAG_REASONS = ("unsafe", "nonsense", "other")
MAX_COMMENT = 2000


class LabelError(ValueError):
    """An answer the store refuses; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Task:
    """What one rater is asked about one item: the completions shown (all K, or two in pairwise mode)."""

    item: Item
    shown: tuple[int, ...]


def check_answer(task: Task, ranking: Any, flags: Any, comment: Any) -> tuple[list[list[int]], dict[str, str], str]:
    """Validate an answer to ``task``; return it normalised or raise `LabelError` (400) saying why.

    ``ranking`` is a list of groups (lists of completion indices, best first; a group is a tie) or a flat list
    of indices (no ties); together they must hold each shown index exactly once.
    """
    if not isinstance(ranking, list) or not ranking:
        raise LabelError('"ranking" must be a non-empty list of completion indices (or of lists of them, for ties)')
    groups = [group if isinstance(group, list) else [group] for group in ranking]
    flat = [i for group in groups for i in group]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in flat) or any(not g for g in groups):
        raise LabelError('"ranking" must hold completion indices (integers), each group non-empty')
    if sorted(flat) != sorted(task.shown):
        raise LabelError(
            f'"ranking" must be a permutation of the shown completions {sorted(task.shown)} (each exactly once, '
            f"ties grouped), got {ranking}"
        )
    if flags is None:
        flags = {}
    if not isinstance(flags, dict) or not all(
        isinstance(k, str) and k.isdigit() and int(k) in task.shown and v in FLAG_REASONS for k, v in flags.items()
    ):
        raise LabelError(f'"flags" must map shown completion indices (as strings) to one of {FLAG_REASONS}')
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise LabelError(f'"comment" must be a string of at most {MAX_COMMENT} characters')
    return [list(g) for g in groups], dict(flags), comment


class LabelStore:
    """The labels of one batch: appends durably, keeps each rater's answers in memory for the server.

    Thread-safe: one lock covers the check, the append and the fsync, so concurrent answers can neither be lost
    nor accepted twice.

    Args:
        out_dir: the labels folder (created if missing).
        data_path: the batch file, fingerprinted into ``meta.json``.
        items: the batch's items.

    Raises:
        ValueError: the folder belongs to another batch file, or its log has a bad line (``file:line``).
    """

    def __init__(self, out_dir: str | os.PathLike, data_path: str | os.PathLike, items: Sequence[Item]) -> None:
        self.out_dir = Path(out_dir)
        self.items = {item.id: item for item in items}
        self._lock = threading.Lock()
        self._seq = 0  # acceptance order of the standing labels
        self.answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        """Each rater's standing labels, oldest first (undone ones removed)."""
        self.raters_of: dict[str, set[str]] = defaultdict(set)
        """For each item id, the raters with a standing label on it."""
        digest = file_digest(data_path)
        meta_path = self.out_dir / META_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("data_sha256") != digest:
                raise ValueError(
                    f"{self.out_dir} holds labels of another batch file ({meta.get('data')!r}, SHA-256 "
                    f"{str(meta.get('data_sha256'))[:12]}...) than {str(data_path)!r} ({digest[:12]}...). Pass a new "
                    "--out folder, or the batch file those labels were made on."
                )
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.out_dir / ITEMS_FILE, Path(data_path).read_text(encoding="utf-8"))
            meta = {"data": str(data_path), "data_sha256": digest, "created": _now()}
            _write_atomically(meta_path, json.dumps(meta, indent=2) + "\n")
        self.path = self.out_dir / LABELS_FILE
        for record in read_log(self.path, repair=True):
            self._apply(record)
        self._file = open(self.path, "a", encoding="utf-8")  # kept open; closed by close()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def answered(self, rater: str) -> set[str]:
        """Ids of the items ``rater`` has a standing label on."""
        return {record["item"] for record in self.answers.get(rater, [])}

    def submit(self, rater: str, task: Task, ranking: Any, flags: Any = None, comment: Any = None) -> dict[str, Any]:
        """Check, append and fsync one label; return the record written.

        Raises:
            LabelError: 400 for a malformed answer, 409 if ``rater`` already answered the item.
        """
        ranking, flags, comment = check_answer(task, ranking, flags, comment)
        record = {
            "event": "label",
            "rater": rater,
            "item": task.item.id,
            "shown": list(task.shown),
            "ranking": ranking,
            "flags": flags,
            "comment": comment,
        }
        with self._lock:
            if rater in self.raters_of[task.item.id]:
                raise LabelError(f"rater {rater!r} already answered item {task.item.id!r}; undo it first", 409)
            record["time"] = _now()
            self._append(record)
        return record

    def undo(self, rater: str) -> dict[str, Any]:
        """Withdraw ``rater``'s latest standing label; return it. ``LabelError`` (409) if there is none."""
        with self._lock:
            if not self.answers.get(rater):
                raise LabelError(f"rater {rater!r} has no answer to undo", 409)
            last = self.answers[rater][-1]
            self._append({"event": "undo", "rater": rater, "item": last["item"], "time": _now()})
        return {k: v for k, v in last.items() if k != "_seq"}

    def labels(self) -> list[dict[str, Any]]:
        """Every standing label, in the order accepted."""
        with self._lock:
            standing = sorted((r for rs in self.answers.values() for r in rs), key=lambda r: r["_seq"])
        return [{k: v for k, v in r.items() if k != "_seq"} for r in standing]

    def _append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # on disk before the caller acknowledges it
        self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        rater, item = record["rater"], record["item"]
        if record["event"] == "label":
            self._seq += 1
            self.answers[rater].append({**record, "_seq": self._seq})
            self.raters_of[item].add(rater)
        else:
            last = self.answers[rater].pop()
            self.raters_of[last["item"]].discard(rater)


def read_log(path: str | os.PathLike, repair: bool = False) -> list[dict[str, Any]]:
    """The events of a ``labels.jsonl``; an unfinished last line (a kill mid-write) is ignored with a warning,
    and with ``repair`` cut off the file so appends start on a clean line.

    Raises:
        ValueError: ``file:line: why`` for a bad line elsewhere, or an undo with nothing to undo.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        tail = data[cut:][:80]
        warnings.warn(f"{path}: dropping an unfinished last line (never acknowledged): {tail!r}", stacklevel=3)
        if repair:
            with open(path, "r+b") as file:
                file.truncate(cut)
                os.fsync(file.fileno())
        data = data[:cut]
    events, depth = [], defaultdict(int)
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            if record.get("event") not in ("label", "undo") or not isinstance(record.get("rater"), str):
                raise ValueError(f"not a label or undo event: {line[:80]!r}")
            depth[record["rater"]] += 1 if record["event"] == "label" else -1
            if depth[record["rater"]] < 0:
                raise ValueError(f"undo by {record['rater']!r} with no label left to undo")
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: {err}. The labels log is damaged; restore it from a copy.") from err
        events.append(record)
    return events


def standing_labels(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The labels of a log with the undone ones removed, in the order accepted (what stats and export read)."""
    stacks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    order = []
    for index, record in enumerate(read_log(path)):
        if record["event"] == "label":
            stacks[record["rater"]].append((index, record))
        else:
            stacks[record["rater"]].pop()
    for stack in stacks.values():
        order += stack
    return [record for _, record in sorted(order, key=lambda pair: pair[0])]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
