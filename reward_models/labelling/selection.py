"""Which comparisons a rater sees first: at random, or where a reward model (or an ensemble) learns most.

With ``M`` reward models scoring two completions ``i, j`` of a prompt, each member's preference is
``p_m = σ(r_m(i) - r_m(j))`` (scores are the models' standardised ones) and

- ``uncertainty`` is ``1 - |2 p̄ - 1|``, ``p̄`` the members' mean: 1 when the ensemble is at 50/50, 0 when sure;
- ``disagreement`` is the standard deviation of the ``p_m`` across members (needs ``M >= 2``): high where
  members that fit the labels so far equally well predict differently (query by committee).

An item's priority is its best pair's in pairwise mode (that pair is the one shown) and the mean over its
pairs when the rater ranks all K. Items are ordered once, when the server starts; to select again after
training on the new labels, restart it with the new model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from reward_models.base import RewardFn
from reward_models.labelling.items import Item
from reward_models.labelling.storage import Task

STRATEGIES = ("random", "uncertainty", "disagreement")
MODES = ("rank", "pairs")


def pair_uncertainty(gaps: np.ndarray) -> np.ndarray:
    """``(M, P)`` score gaps ``r_m(i) - r_m(j)`` -> ``(P,)`` uncertainty in ``[0, 1]``."""
    mean_p = (1 / (1 + np.exp(-gaps))).mean(0)  # (P,)
    return 1 - np.abs(2 * mean_p - 1)


def pair_disagreement(gaps: np.ndarray) -> np.ndarray:
    """``(M, P)`` score gaps -> ``(P,)`` standard deviation of the members' preference probabilities."""
    if gaps.shape[0] < 2:
        raise ValueError("disagreement needs an ensemble of at least 2 reward models; pass several --reward-model")
    return (1 / (1 + np.exp(-gaps))).std(0)


def order_tasks(
    items: Sequence[Item],
    strategy: str = "random",
    mode: str = "rank",
    reward_models: Sequence[RewardFn] = (),
    seed: int = 0,
) -> list[Task]:
    """One task per item, most informative first (``random``: a seeded shuffle).

    Args:
        items: the batch.
        strategy: one of `STRATEGIES`; all but ``random`` need ``reward_models``.
        mode: ``"rank"`` shows all completions; ``"pairs"`` shows two (random ones, or the most informative).
        reward_models: reward models scoring ``(prompts, completions)``; an ensemble for ``disagreement``.
        seed: seeds the shuffle and random pairs (also the tie-break between equal priorities).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)  # random order, and the tie-break of the others
    pairs = [list(combinations(range(len(item.completions)), 2)) for item in items]
    if strategy == "random":
        return [
            Task(items[i], tuple(rng.choice(pairs[i])) if mode == "pairs" else tuple(range(len(items[i].completions))))
            for i in order
        ]
    if not reward_models:
        raise ValueError(f"strategy {strategy!r} needs at least one reward model (--reward-model).")
    prompts = [item.prompt for item in items for _ in item.completions]
    completions = [c for item in items for c in item.completions]
    scores = np.stack([np.asarray(model(prompts, completions), dtype=np.float64) for model in reward_models])  # (M, N)
    measure = pair_uncertainty if strategy == "uncertainty" else pair_disagreement
    tasks, start = [], 0
    for item, item_pairs in zip(items, pairs, strict=True):
        s = scores[:, start : start + len(item.completions)]  # (M, K)
        start += len(item.completions)
        value = measure(np.stack([s[:, i] - s[:, j] for i, j in item_pairs], axis=1))  # (P,)
        if mode == "pairs":
            best = int(np.argmax(value))
            tasks.append((float(value[best]), Task(item, item_pairs[best])))
        else:
            tasks.append((float(value.mean()), Task(item, tuple(range(len(item.completions))))))
    rank = {i: r for r, i in enumerate(order)}
    by_priority = sorted(range(len(items)), key=lambda i: (-tasks[i][0], rank[i]))
    return [tasks[i][1] for i in by_priority]
