"""Does active selection of comparisons (``textgym label serve --strategy ...``) beat random selection?

A simulation with a gold reward standing in for the rater, as ``textgym reward synth`` does: the shipped 320
openings with 8 SmolLM2 completions each (``reward_models/data/openings_smollm2_completions.jsonl``), gold =
VADER positivity of the completion, the rater answering by the gold score (a flip with probability
``--flip-prob``). Prompts are split in half: comparisons are chosen from the first half's pairs, accuracy is
measured on the second half's clear-cut pairs (gold gap > ``--min-gap``, as the shipped model was).

For each strategy and seed: ``--start`` random comparisons, then rounds that train an ensemble of
``--members`` reward models on the labels so far (one on all of them, the others on bootstrap resamples) and
add the comparisons the strategy ranks first, until each N of ``--sizes``. At every N a reward model trained
on the N labels is scored on the held-out pairs. The reward model is the MiniLM-head one of ``textgym reward
train --backbone minilm --no-use-prompt`` (frozen encoder, 256-unit head, Bradley–Terry loss, AdamW 1e-3, 30
epochs), trained here on the cached embeddings.

    python benchmarks/active_labelling.py --seeds 5 --plot docs/active_labelling.png
"""

from __future__ import annotations

import argparse
import json
import random
import time
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from reward_models.labelling.selection import pair_disagreement, pair_uncertainty
from reward_models.learned import SHIPPED_DIR, ScalarHead, SentenceEncoder
from reward_models.registry import make_reward_model
from textgym.lm.jsonl import read_jsonl

STRATEGIES = ("random", "uncertainty", "disagreement")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--start", type=int, default=50, help="random comparisons before the first selection")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--members", type=int, default=4, help="ensemble size for the selection")
    parser.add_argument("--flip-prob", type=float, default=0.0, help="rater noise")
    parser.add_argument("--min-gap", type=float, default=0.8, help="held-out pairs: gold gap above this")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default=None, help="write the accuracy-vs-N plot (PNG) here")
    parser.add_argument("--json", default=None, help="write the raw results here")
    return parser.parse_args()


def fit(features: torch.Tensor, pairs: np.ndarray, epochs: int, seed: int) -> ScalarHead:
    """A head trained with the Bradley–Terry loss on ``pairs`` ``(P, 2)`` of (winner, loser) row indices."""
    torch.manual_seed(seed)
    head = ScalarHead(features.shape[1], 256, 0.1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    head.train()
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(pairs)), max(1, len(pairs) // 32)):
            winners, losers = features[pairs[batch, 0]], features[pairs[batch, 1]]  # (B, D) each
            loss = -F.logsigmoid(head(winners) - head(losers)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def ensemble(
    features: torch.Tensor, labelled: np.ndarray, args: argparse.Namespace, seed: int, rng: np.random.Generator
) -> list[ScalarHead]:
    """``--members`` heads: one trained on all the labels, the others on bootstrap resamples of them."""
    resamples = [np.arange(len(labelled))] + [
        rng.integers(0, len(labelled), len(labelled)) for _ in range(args.members - 1)
    ]
    return [fit(features, labelled[rows], args.epochs, seed * 100 + m) for m, rows in enumerate(resamples)]


def scores_of(head: ScalarHead, features: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return head(features).numpy()  # (N,)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    groups = read_jsonl(SHIPPED_DIR / "openings_smollm2_completions.jsonl", lambda r: (r["prompt"], r["completions"]))
    texts = [c for _, completions in groups for c in dict.fromkeys(completions)]
    prompt_of = [p for p, (_, completions) in enumerate(groups) for _ in dict.fromkeys(completions)]
    gold = np.asarray(make_reward_model("vader")([""] * len(texts), texts))
    features = SentenceEncoder()(texts)  # (N, 384), the frozen MiniLM, computed once
    rows_of: dict[int, list[int]] = {}
    for row, p in enumerate(prompt_of):
        rows_of.setdefault(p, []).append(row)
    prompts = list(rows_of)
    random.Random(0).shuffle(prompts)
    pool_prompts, test_prompts = prompts[: len(prompts) // 2], prompts[len(prompts) // 2 :]
    pool = np.array([pair for p in pool_prompts for pair in combinations(rows_of[p], 2)])  # (P, 2) candidates
    test = np.array(
        [
            (i, j) if gold[i] > gold[j] else (j, i)
            for p in test_prompts
            for i, j in combinations(rows_of[p], 2)
            if abs(gold[i] - gold[j]) > args.min_gap
        ]
    )
    print(f"{len(texts)} completions embedded in {time.perf_counter() - start:.0f} s; {len(pool)} candidate pairs,")
    print(f"{len(test)} held-out pairs (gold gap > {args.min_gap}) of {len(test_prompts)} other prompts")

    def accuracy(head: ScalarHead) -> float:
        s = scores_of(head, features)
        return float(np.mean(s[test[:, 0]] > s[test[:, 1]]))

    results = {s: {n: [] for n in args.sizes} for s in STRATEGIES}
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            rng = np.random.default_rng(seed)
            noise = np.random.default_rng(10_000 + seed)  # the rater's flips: the same per pair whatever the order
            flips = noise.random(len(pool)) < args.flip_prob
            chosen = list(rng.choice(len(pool), args.start, replace=False))  # the same start for every strategy
            for n in sorted(args.sizes):
                while len(chosen) < n:
                    rest = np.setdiff1d(np.arange(len(pool)), chosen)
                    take = min(n - len(chosen), len(rest))
                    if strategy == "random":
                        picked = rng.choice(rest, take, replace=False)
                    else:
                        heads = ensemble(features, label(pool, gold, flips, chosen), args, seed, rng)
                        s = np.stack([scores_of(h, features) for h in heads])  # (M, N)
                        gaps = s[:, pool[rest, 0]] - s[:, pool[rest, 1]]  # (M, R)
                        value = pair_uncertainty(gaps) if strategy == "uncertainty" else pair_disagreement(gaps)
                        picked = rest[np.argsort(-value, kind="stable")[:take]]
                    chosen += list(picked)
                acc = accuracy(fit(features, label(pool, gold, flips, chosen), args.epochs, seed * 100))
                results[strategy][n].append(acc)
                print(f"seed {seed} {strategy:<12} N={n:<4} held-out accuracy {acc:.3f}", flush=True)

    print(f"\nheld-out pairwise accuracy, mean ± std over {args.seeds} seeds ({time.perf_counter() - start:.0f} s):")
    print("N      " + "".join(f"{s:>22}" for s in STRATEGIES))
    for n in args.sizes:
        cells = "".join(f"{np.mean(results[s][n]):>15.3f} ± {np.std(results[s][n]):.3f}" for s in STRATEGIES)
        print(f"{n:<7}{cells}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "results": results}, file, indent=2)
    if args.plot:
        plot(results, args)


def label(pool: np.ndarray, gold: np.ndarray, flips: np.ndarray, chosen: list[int]) -> np.ndarray:
    """The simulated rater's answers: each chosen pair as (winner, loser) by gold score, flipped where noisy;
    a gold tie goes to the first."""
    pairs = pool[chosen]  # (C, 2)
    first_wins = (gold[pairs[:, 0]] >= gold[pairs[:, 1]]) ^ flips[chosen]
    return np.where(first_wins[:, None], pairs, pairs[:, ::-1])


def plot(results: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, by_n in results.items():
        mean = np.array([np.mean(by_n[n]) for n in args.sizes])
        std = np.array([np.std(by_n[n]) for n in args.sizes])
        ax.plot(args.sizes, mean, marker="o", label=strategy)
        ax.fill_between(args.sizes, mean - std, mean + std, alpha=0.15)
    ax.set_xscale("log")
    ax.set_xticks(args.sizes, [str(n) for n in args.sizes])
    ax.minorticks_off()
    ax.set_xlabel("comparisons labelled (N)")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title(f"Active vs random selection ({args.seeds} seeds, gold = VADER)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
