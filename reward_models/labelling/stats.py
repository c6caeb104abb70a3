"""What a labels folder holds: counts, each rater's progress, and how much raters agree.

Agreement is measured on comparisons: every two completions ``i, j`` of an item that two raters both saw make
one unit, each rater's value being ``i`` better (1), a tie (0) or ``j`` better (-1). ``pairwise_agreement`` is
the share of (unit, two raters) cases where both said the same; ``krippendorff_alpha`` is Krippendorff's α
(ordinal) on those units, from the ``krippendorff`` package: 1 is perfect agreement, 0 what chance gives.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from reward_models.labelling.items import load_items
from reward_models.labelling.storage import ITEMS_FILE, LABELS_FILE, standing_labels


def open_folder(out_dir: str | os.PathLike) -> tuple[dict, list[dict[str, Any]]]:
    """A labels folder's items ``{id: Item}`` and standing labels; ``FileNotFoundError`` if it is not one."""
    out_dir = Path(out_dir)
    if not (out_dir / ITEMS_FILE).is_file():
        raise FileNotFoundError(f"{str(out_dir)!r} is not a labels folder (no {ITEMS_FILE}); give the --out of serve.")
    items = {item.id: item for item in load_items(out_dir / ITEMS_FILE)}
    return items, standing_labels(out_dir / LABELS_FILE)


def comparisons(label: dict[str, Any]) -> dict[tuple[int, int], int]:
    """``{(i, j): 1 | 0 | -1}`` for every two shown completions ``i < j``: ``i`` better, a tie, ``j`` better."""
    rank = {i: position for position, group in enumerate(label["ranking"]) for i in group}
    return {(i, j): (rank[i] < rank[j]) - (rank[i] > rank[j]) for i, j in combinations(sorted(rank), 2)}


def label_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Counts, per-rater progress and agreement of a labels folder (a JSON-able dict)."""
    items, labels = open_folder(out_dir)
    per_rater = Counter(label["rater"] for label in labels)
    raters_per_item = Counter(label["item"] for label in labels)
    units: dict[tuple[str, int, int], dict[str, int]] = defaultdict(dict)
    for label in labels:
        for (i, j), value in comparisons(label).items():
            units[(label["item"], i, j)][label["rater"]] = value
    shared = [values for values in units.values() if len(values) >= 2]
    agree = [a == b for values in shared for a, b in combinations(values.values(), 2)]
    return {
        "items": len(items),
        "labels": len(labels),
        "items_labelled": len(raters_per_item),
        "items_with_several_raters": sum(1 for n in raters_per_item.values() if n >= 2),
        "flagged_labels": sum(1 for label in labels if label["flags"]),
        "labels_with_ties": sum(1 for label in labels if any(len(group) > 1 for group in label["ranking"])),
        "raters": {
            rater: {"labels": n, "last": max(lb["time"] for lb in labels if lb["rater"] == rater)}
            for rater, n in sorted(per_rater.items())
        },
        "agreement": {
            "units": len(shared),
            "pairwise_agreement": sum(agree) / len(agree) if agree else None,
            "krippendorff_alpha": _alpha(shared, sorted(per_rater)),
        },
    }


def _alpha(units: list[dict[str, int]], raters: list[str]) -> float | None:
    if not units:
        return None
    import krippendorff
    import numpy as np

    data = np.full((len(raters), len(units)), np.nan)  # (raters, units), nan where a rater did not judge
    for u, values in enumerate(units):
        for rater, value in values.items():
            data[raters.index(rater), u] = value
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return 1.0  # every judgement the same value: α is undefined (0/0), agreement is complete
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def format_stats(stats: dict[str, Any]) -> str:
    """The stats as a few readable lines."""
    agreement = stats["agreement"]
    lines = [
        f"{stats['labels']} labels on {stats['items_labelled']} of {stats['items']} items "
        f"({stats['items_with_several_raters']} with several raters); {stats['flagged_labels']} flagged, "
        f"{stats['labels_with_ties']} with ties",
        *(f"  {rater}: {r['labels']} labels, last at {r['last']}" for rater, r in stats["raters"].items()),
    ]
    if agreement["units"]:
        lines.append(
            f"agreement on {agreement['units']} comparisons seen by several raters: pairwise "
            f"{agreement['pairwise_agreement']:.3f}, "
            f"Krippendorff's alpha (ordinal) {agreement['krippendorff_alpha']:.3f}"
        )
    else:
        lines.append("agreement: no comparison was seen by two raters yet (serve with --overlap 2 or more)")
    return "\n".join(lines)
