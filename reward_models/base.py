"""The reward-model protocol, the checking wrapper and the registry of names."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


class RewardFn(Protocol):
    """Anything that scores completions of prompts, one float per pair, in one batched call."""

    def __call__(self, prompts: list[str], completions: list[str]) -> Sequence[float] | np.ndarray: ...


class RewardModel:
    """A named, checked, batched reward callable.

    Wraps a :class:`RewardFn` and returns a float64 array of one finite score per pair, or raises
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


_REGISTRY: dict[str, str | Callable[..., RewardFn]] = {
    "vader": "reward_models.lexicon:VaderPositivity",
}


def register_reward_model(name: str, factory: str | Callable[..., RewardFn]) -> None:
    """Register a reward model under ``name``.

    Args:
        name: the name users pass as ``reward_model=`` to ``gym.make``.
        factory: a callable building the reward function from keyword arguments, or its import path
            ``"package.module:attr"`` (imported only when first used).
    """
    _REGISTRY[name] = factory


def registered_names() -> list[str]:
    """The names :func:`make_reward_model` accepts."""
    return sorted(_REGISTRY)


def make_reward_model(spec: str | RewardFn | RewardModel, **kwargs: Any) -> RewardModel:
    """Build a checked :class:`RewardModel` from a registered name or any batched callable.

    Args:
        spec: a registered name (see :func:`registered_names`), a :class:`RewardModel`, or any callable
            ``(prompts, completions) -> scores``.
        kwargs: passed to the registered factory; not accepted with a callable.
    """
    if isinstance(spec, RewardModel):
        if kwargs:
            raise TypeError("reward_model_kwargs are only accepted together with a registered reward model name.")
        return spec
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            raise KeyError(f"Unknown reward model {spec!r}. Registered: {registered_names()}, or pass any callable.")
        factory = _REGISTRY[spec]
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return RewardModel(factory(**kwargs), name=spec)
    if callable(spec):
        if kwargs:
            raise TypeError("reward_model_kwargs are only accepted together with a registered reward model name.")
        return RewardModel(spec)
    raise TypeError(f"reward_model must be a registered name or a callable; got {type(spec).__name__}.")
