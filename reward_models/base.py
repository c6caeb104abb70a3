"""The reward-model protocol, the checking wrapper, and a base class for model-backed rewards.

Names, saved directories and callables become reward models in [reward_models.registry][reward_models.registry].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from textgym.lm.models import resolve_device

REWARD_CONFIG = "reward_model.json"
"""The file that marks a directory as a textgym reward model that is not a plain HF classifier."""


class RewardFn(Protocol):
    """Anything that scores completions of prompts, one float per pair, in one batched call."""

    def __call__(self, prompts: list[str], completions: list[str]) -> Sequence[float] | np.ndarray: ...


class RewardModel:
    """A named, checked, batched reward callable.

    Wraps a [RewardFn][reward_models.base.RewardFn] and returns a float64 array of one finite score per pair, or raises
    ``ValueError`` naming the reward model and what it returned wrong.
    """

    def __init__(self, fn: RewardFn, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"A reward model must be callable as fn(prompts, completions); got {type(fn).__name__}.")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
        raw = self.fn(list(prompts), list(completions))
        try:
            scores = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Reward model {self.name!r} must return numbers, one per completion; got {type(raw).__name__}."
            ) from err
        if scores.shape != (len(completions),):
            raise ValueError(
                f"Reward model {self.name!r} returned shape {scores.shape} for {len(completions)} completions; "
                f"it must return one score per completion, shape ({len(completions)},)."
            )
        if not np.all(np.isfinite(scores)):
            bad = [completions[i] for i in np.flatnonzero(~np.isfinite(scores))[:3]]
            raise ValueError(f"Reward model {self.name!r} returned NaN or inf for completions {bad!r}.")
        return scores

    def __repr__(self) -> str:
        return f"RewardModel({self.name!r})"


@dataclass(frozen=True)
class Normalization:
    """Maps a raw score ``s`` to ``(s - mean) / std``, so rewards of different models share one scale.

    Learned models store the statistics of their training completions, which puts a policy's rewards near
    mean 0 and std 1 at the start of RL whatever the raw logit scale of the model happens to be.
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"Normalization needs a finite mean and a finite std > 0; got {self}.")

    @classmethod
    def of(cls, scores: np.ndarray) -> Normalization:
        """The mean and std of ``scores`` (std floored at 1e-6, so constant scores stay finite)."""
        scores = np.asarray(scores, dtype=np.float64)
        return cls(mean=float(scores.mean()), std=max(float(scores.std()), 1e-6))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return (scores - self.mean) / self.std

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class BatchedRewardModel:
    """Base class of reward models backed by a neural network: a name, batching, a device, normalisation.

    Subclasses implement [score_batch][reward_models.base.BatchedRewardModel.score_batch]. Calling the model splits the
    input into chunks of ``batch_size`` pairs, so a vector env that ends many episodes in one step never needs more
    memory than one chunk, and maps the raw scores through `normalization` when it is set.

    Args:
        batch_size: pairs scored per forward pass.
        device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        normalization: statistics to standardise raw scores with, or ``None`` for raw scores.
        name: the name errors and logs use.
    """

    def __init__(
        self,
        batch_size: int = 64,
        device: str | None = None,
        normalization: Normalization | None = None,
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.normalization = normalization
        self.__name__ = name or type(self).__name__  # what RewardModel names the model by

    def score_batch(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Raw scores of at most ``batch_size`` pairs, one float each."""
        raise NotImplementedError

    def raw_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Scores before normalisation, computed ``batch_size`` pairs at a time."""
        step = self.batch_size
        chunks = [
            np.asarray(self.score_batch(list(prompts[i : i + step]), list(completions[i : i + step])), np.float64)
            for i in range(0, len(completions), step)
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        scores = self.raw_scores(prompts, completions)
        return self.normalization(scores) if self.normalization else scores
