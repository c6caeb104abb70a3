"""``rounds.csv`` and ``rounds.png`` of an RLHF run: one row per finished round, and gold and proxy against labels."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

COLUMNS = (
    "round", "labels", "pairs", "rl_tokens", "gold_score", "proxy_reward", "kl", "distinct_2", "ref_perplexity",
    "rm_eval_accuracy", "rm_gold_accuracy", "sample_seconds", "label_seconds", "reward_model_seconds", "rl_seconds",
)  # fmt: skip
"""The columns of ``rounds.csv`` (round 0 is the starting policy): labels and pairs used so far, RL env tokens so
far, the test split's mean gold score and reward-model score, the KL to the starting model (nats per completion),
distinct-2, the starting model's perplexity of the completions, the reward model's pairwise accuracy on held-out
labels and against the gold's preferences on the round's unlabelled items, and each stage's seconds."""


def write_rounds(out: str | Path, rounds: int) -> list[dict[str, Any]]:
    """Rewrite ``rounds.csv`` and ``rounds.png`` from the finished rounds' ``metrics.json``; return the rows."""
    out = Path(out)
    rows = []
    for n in range(rounds + 1):
        path = out / f"round-{n}" / "metrics.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            rows.append({key: metrics.get(key, math.nan) for key in COLUMNS})
    tmp = out / "rounds.csv.tmp"
    with open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "rounds.csv")
    if rows:
        plot_rounds(rows, out / "rounds.png")
    return rows


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> None:
    """Gold score and proxy reward against the labels used (left), and the KL they cost (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["labels"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(labels, [r["gold_score"] for r in rows], marker="o", label="gold score")
    proxy = left.twinx()
    proxy.plot(labels, [r["proxy_reward"] for r in rows], marker="s", color="tab:orange", label="reward model")
    left.set(xlabel="labels used", ylabel="gold score (test split)", title="gold and proxy by labels")
    proxy.set_ylabel("reward-model score (its own round's model)")
    left.legend(loc="upper left")
    proxy.legend(loc="lower right")
    right.plot([math.sqrt(max(r["kl"], 0.0)) for r in rows], [r["gold_score"] for r in rows], marker="o")
    for r in rows:
        right.annotate(f"r{r['round']}", (math.sqrt(max(r["kl"], 0.0)), r["gold_score"]))
    right.set(xlabel="√KL to the starting policy (√nats)", ylabel="gold score", title="gold against distance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
