"""Labels to the preference files ``textgym reward train`` reads
([reward_models.preferences][reward_models.preferences]).

- ``pairs``: ``{"prompt", "chosen", "rejected"}`` for every two shown completions in different rank groups;
  tied completions make no pair (a tie says neither is better, which the Bradley–Terry loss cannot use).
- ``rankings``: ``{"prompt", "completions", "ranking"}`` with the shown completions and their order, best
  first; a label holding a tie cannot be written as a ranking, so it is left out and counted (export such
  labels as ``pairs``, which keeps their untied comparisons).

Each label is one record (or its pairs), several raters of one item giving several; ``"rater"`` and ``"item"``
ride along (the loader ignores them). Flagged labels are kept by default, since a completion flagged unsafe
or nonsense is usually ranked last and that is what the reward model should learn; ``flagged="drop"``
leaves out every label with a flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from reward_models.labelling.stats import open_folder
from textgym.lm.jsonl import write_jsonl

FORMATS = ("pairs", "rankings")
FLAGGED = ("keep", "drop")


@dataclass
class ExportStats:
    labels: int = 0
    """Standing labels in the folder."""
    records: int = 0
    """Records written."""
    tied_labels_skipped: int = 0
    """``rankings``: labels left out because they hold a tie."""
    tied_pairs_skipped: int = 0
    """``pairs``: comparisons left out because the two completions were tied."""
    flagged_skipped: int = 0
    """Labels left out because they carry a flag (``flagged="drop"``)."""


def export_labels(
    out_dir: str | os.PathLike, fmt: str = "pairs", flagged: str = "keep"
) -> tuple[list[dict[str, Any]], ExportStats]:
    """The preference records of a labels folder (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}.")
    if flagged not in FLAGGED:
        raise ValueError(f"flagged must be one of {FLAGGED}, got {flagged!r}.")
    items, labels = open_folder(out_dir)
    stats, records = ExportStats(labels=len(labels)), []
    for label in labels:
        item = items[label["item"]]
        if label["flags"] and flagged == "drop":
            stats.flagged_skipped += 1
            continue
        extra = {"rater": label["rater"], "item": item.id}
        groups = [[item.completions[i] for i in group] for group in label["ranking"]]
        if fmt == "rankings":
            if any(len(group) > 1 for group in groups):
                stats.tied_labels_skipped += 1
                continue
            shown = [item.completions[i] for i in label["shown"]]
            ranking = [label["shown"].index(group[0]) for group in label["ranking"]]
            records.append({"prompt": item.prompt, "completions": shown, "ranking": ranking, **extra})
            continue
        for better, worse in combinations(range(len(groups)), 2):
            records += [
                {"prompt": item.prompt, "chosen": c, "rejected": r, **extra}
                for c in groups[better]
                for r in groups[worse]
            ]
        stats.tied_pairs_skipped += sum(len(g) * (len(g) - 1) // 2 for g in groups)
    stats.records = len(records)
    return records, stats


def write_export(
    out_dir: str | os.PathLike, out: str | os.PathLike, fmt: str = "pairs", flagged: str = "keep"
) -> ExportStats:
    """Export a labels folder to a JSONL file; return what was written and left out."""
    records, stats = export_labels(out_dir, fmt, flagged)
    if not records:
        raise ValueError(f"{out_dir}: no label to export as {fmt} ({stats}); nothing written.")
    write_jsonl(out, records)
    return stats
