"""JSON Lines files: the one reader (every error names the file and line) and the writer.

Prompt sets, preference data, reward references, labelling batches and SFT data are all JSONL; each caller
passes a ``parse`` that turns one record into what it needs and raises ``ValueError`` saying what is wrong,
and the reader puts ``file:line:`` in front. With ``on_error="skip"`` bad lines are skipped and reported in one
warning with their count and line numbers: data is never dropped silently.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ON_ERROR = ("raise", "skip")
T = TypeVar("T")


def read_jsonl(
    path: str | os.PathLike,
    parse: Callable[[Any], T] = lambda record: record,
    on_error: str = "raise",
    *,
    skip_blank: bool = False,
    objects_only: bool = True,
) -> list[T]:
    """Parse each line of a JSONL file with ``parse``, one policy for syntax and content errors alike.

    Args:
        path: the file.
        parse: turns one record into a result; raises ``ValueError`` saying what is wrong with it. The default
            keeps the record as it is.
        on_error: ``"raise"`` stops at the first bad line (not JSON, not a JSON object, empty, or rejected by
            ``parse``) with ``ValueError("file:line: why")``; ``"skip"`` skips bad lines and warns once with
            their count, numbers and reasons.
        skip_blank: pass over blank lines instead of treating them as bad (a hand-written file's trailing
            newline, a blank line between groups).
        objects_only: a line must hold a JSON object; ``False`` lets ``parse`` see any JSON value (e.g. a prompt
            set of bare strings).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: a bad line (``on_error="raise"``), or an unknown ``on_error``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such JSONL file: {str(path)!r}.")
    results, skipped = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if skip_blank and not line.strip():
            continue
        try:
            results.append(parse(_record(line, objects_only)))
        except ValueError as err:
            if on_error == "raise":
                raise ValueError(f"{path}:{number}: {err}.") from err
            skipped.append(f"line {number}: {err}")
    if skipped:
        shown = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        warnings.warn(f"{path}: skipped {len(skipped)} of {len(lines)} lines ({shown}).", stacklevel=2)
    return results


def write_jsonl(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write one JSON object per line (UTF-8, non-ASCII kept readable), creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def _record(line: str, objects_only: bool) -> Any:
    """One line's JSON value; ``ValueError`` for an empty line, bad JSON or (``objects_only``) a non-object."""
    if not line.strip():
        raise ValueError("empty line")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from err
    if objects_only and not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got a {type(record).__name__}")
    return record
