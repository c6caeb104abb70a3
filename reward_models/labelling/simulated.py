"""A simulated rater panel: people's labels, imitated from a gold score, written where people's go.

Each of ``N`` raters ranks an item's completions by a noisy utility

    u_k = g_k / τ + b_r · z(len_k) / τ + G_k,    G_k ~ Gumbel(0, 1) independent,

``g_k`` being the gold score of completion ``k``, ``τ`` the rater's temperature (in the gold's units), ``b_r`` the
rater's own bias toward longer (``b_r > 0``) or shorter completions, drawn once per rater from ``N(0, bias²)``,
and ``z(len_k)`` the completion's length in characters standardised within the item. Ordering by ``u`` draws a
Plackett–Luce ranking, whose pairwise marginals are Bradley–Terry's: ``P(k ≻ j) = σ((g_k − g_j) / τ)`` for an
unbiased rater. With probability ``random_answers`` a rater answers with a uniformly random order instead (a
careless or adversarial answer).

The labels go into a ``LabelStore`` (``reward_models.labelling.storage``) under the raters' names
(``sim-0``, ``sim-1``, ...), in the format people's labels take, so ``textgym label stats`` and ``export`` and
every later step read them alike. Each answer is a pure function of ``(seed, rater, item id)``: a run stopped
half-way and labelled again gives the same labels.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reward_models.base import RewardFn
from reward_models.labelling.storage import LabelStore, Task

SIM_RATERS = re.compile(r"^sim:([1-9][0-9]*)$")


@dataclass(frozen=True)
class RaterNoise:
    """How simulated raters depart from the gold (see the module docstring)."""

    temperature: float = 0.05
    """``τ``, in gold units: two completions whose gold differs by ``τ`` are ordered right 73% of the time."""
    random_answers: float = 0.0
    """The share of answers that are a uniformly random order."""
    bias: float = 0.0
    """The standard deviation of the raters' length biases ``b_r`` (gold units per standard deviation of length)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"rater temperature must be positive, got {self.temperature}.")
        if not 0 <= self.random_answers <= 1:
            raise ValueError(f"random_answers is a share, in [0, 1]; got {self.random_answers}.")
        if self.bias < 0:
            raise ValueError(f"rater bias is a standard deviation, >= 0; got {self.bias}.")


def parse_raters(spec: str) -> int:
    """The panel size of ``"sim:N"``; 0 for ``"human"``. ``ValueError`` for anything else."""
    if spec == "human":
        return 0
    match = SIM_RATERS.match(spec)
    if not match:
        raise ValueError(f"raters must be 'human' or 'sim:N' (N simulated raters, N >= 1), got {spec!r}.")
    return int(match.group(1))


class SimulatedPanel:
    """``size`` simulated raters judging by ``gold`` with ``noise``.

    Args:
        gold: the reward model whose scores the raters follow (a task's gold score).
        size: the number of raters.
        noise: their temperature, random answers and biases.
        seed: seeds the biases and every answer.
    """

    def __init__(self, gold: RewardFn, size: int, noise: RaterNoise | None = None, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"a simulated panel needs at least one rater, got {size}.")
        self.gold, self.noise, self.seed = gold, noise or RaterNoise(), seed
        self.names = [f"sim-{r}" for r in range(size)]
        self.biases = np.random.default_rng([seed, 0x6B1A5]).normal(0.0, self.noise.bias, size)  # (R,)

    def rank(self, rater: int, task: Task, gold_scores: Sequence[float]) -> list[list[int]]:
        """Rater ``rater``'s ranking of the task's shown completions (best first, one per group), given their gold
        scores in the order of ``task.shown``."""
        rng = np.random.default_rng([self.seed, rater, zlib.crc32(task.item.id.encode())])
        shown = np.asarray(task.shown)
        if rng.random() < self.noise.random_answers:
            return [[int(i)] for i in rng.permutation(shown)]
        lengths = np.array([len(task.item.completions[i]) for i in shown], dtype=np.float64)
        z = (lengths - lengths.mean()) / lengths.std() if lengths.std() > 0 else np.zeros_like(lengths)
        utility = (np.asarray(gold_scores, dtype=np.float64) + self.biases[rater] * z) / self.noise.temperature
        utility += rng.gumbel(size=len(shown))  # a Plackett–Luce draw
        return [[int(shown[k])] for k in np.argsort(-utility, kind="stable")]

    def label(self, store: LabelStore, tasks: Sequence[Task], budget: int, overlap: int = 1) -> int:
        """Answer ``tasks`` in order, each by ``overlap`` raters (taken in turn from the panel), until ``store``
        holds ``budget`` labels; return the labels added. Answers already in the store are kept, so a stopped
        labelling continues where it stopped."""
        if not 1 <= overlap <= len(self.names):
            raise ValueError(f"overlap must be between 1 and the panel's {len(self.names)} raters, got {overlap}.")
        needed = budget - len(store.labels())
        if needed <= 0:
            return 0
        plan = []  # (rater, task) in the order they are answered
        for t, task in enumerate(tasks):
            for rater in ((t * overlap + j) % len(self.names) for j in range(overlap)):
                if self.names[rater] not in store.raters_of[task.item.id]:
                    plan.append((rater, task))
        plan = plan[:needed]
        shown = ((task.item.prompt, task.item.completions[i]) for _, task in plan for i in task.shown)
        texts = list(dict.fromkeys(shown))
        scores = np.asarray(self.gold([p for p, _ in texts], [c for _, c in texts]), dtype=np.float64)
        score_of = dict(zip(texts, scores))  # each text scored once, however many raters see it
        for rater, task in plan:
            gold = [score_of[(task.item.prompt, task.item.completions[i])] for i in task.shown]
            store.submit(self.names[rater], task, self.rank(rater, task, gold))
        return len(plan)
