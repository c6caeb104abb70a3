"""The reward-model protocol, the checking wrapper, a base class for model-backed rewards, and the registry.

A name given to :func:`make_reward_model` is looked up in three places, in order: the built-in registry, the
``textgym.reward_models`` entry-point group of installed packages (read only when a name is not built in), and
the file system (a saved reward-model directory).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from textgym.models import resolve_device

ENTRY_POINT_GROUP = "textgym.reward_models"
"""Entry-point group through which other packages add reward models: ``name = "pkg.module:factory"``."""

REWARD_CONFIG = "reward_model.json"
"""The file that marks a directory as a textgym reward model that is not a plain HF classifier."""


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

    Subclasses implement :meth:`score_batch`. Calling the model splits the input into chunks of
    ``batch_size`` pairs, so a vector env that ends many episodes in one step never needs more memory than one
    chunk, and maps the raw scores through :attr:`normalization` when it is set.

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


_REGISTRY: dict[str, str | Callable[..., RewardFn]] = {
    "vader": "reward_models.lexicon:VaderPositivity",
    "keywords": "reward_models.rules:KeywordCoverage",
    "exact-match": "reward_models.rules:ExactMatch",
    "length": "reward_models.rules:LengthTarget",
    "format": "reward_models.rules:FormatMatch",
    "rouge": "reward_models.metrics:Rouge",
    "hf-classifier": "reward_models.hf_classifier:HFClassifierReward.load",
    "positivity-minilm": "reward_models.learned:positivity_minilm",
    "concepts": "reward_models.concepts:Concepts",
    "concept-coverage": "reward_models.concepts:ConceptCoverage",
    "verifiable": "reward_models.verifiable:Verifiable",
    "fluency": "reward_models.fluency:Fluency",
    "constraints": "reward_models.constraints:ConstraintSatisfaction",
    "fluent-positivity": "reward_models.proxy:FluentPositivity",
    "proxy-positivity": "reward_models.proxy:proxy_positivity",
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
    """The names :func:`make_reward_model` accepts: built-in, registered and installed through entry points."""
    return sorted(set(_REGISTRY) | {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def make_reward_model(spec: str | os.PathLike | RewardFn | RewardModel, **kwargs: Any) -> RewardModel:
    """Build a checked :class:`RewardModel` from a name, a saved model directory, or any batched callable.

    Args:
        spec: a registered name (see :func:`registered_names`), the path of a reward-model directory (see
            :func:`load_reward_model`), a :class:`RewardModel`, or any callable ``(prompts, completions) ->
            scores``.
        kwargs: passed to the registered factory or the directory loader; not accepted with a callable.
    """
    if isinstance(spec, (str, os.PathLike)):
        factory = _find_factory(str(spec))
        if factory is not None:
            return RewardModel(factory(**kwargs), name=str(spec))
        if Path(spec).expanduser().is_dir():
            return RewardModel(load_reward_model(spec, **kwargs), name=str(spec))
        raise KeyError(
            f"Unknown reward model {str(spec)!r}: not a registered name (registered: {registered_names()}), and "
            "not an existing directory. Pass a registered name, the directory of a saved reward model, or any "
            "callable (prompts, completions) -> scores."
        )
    if kwargs:
        raise TypeError("reward_model_kwargs are only accepted together with a registered reward model name.")
    if isinstance(spec, RewardModel):
        return spec
    if callable(spec):
        return RewardModel(spec)
    raise TypeError(f"reward_model must be a registered name, a path or a callable; got {type(spec).__name__}.")


def load_reward_model(path: str | os.PathLike, **kwargs: Any) -> RewardFn:
    """Load a reward model saved in a directory, choosing the loader by what the directory holds.

    - ``reward_model.json``: a textgym learned model with a frozen encoder and a small head
      (:class:`reward_models.learned.EncoderHeadReward`).
    - ``config.json`` of a ``*ForSequenceClassification`` architecture: a Hugging Face classifier, e.g. one
      trained by ``textgym reward train --backbone lm`` or by TRL's ``RewardTrainer``
      (:class:`reward_models.hf_classifier.HFClassifierReward`).

    Args:
        path: the directory.
        kwargs: passed to the loader (e.g. ``batch_size``, ``device``).

    Raises:
        FileNotFoundError: the directory does not exist or holds no reward model.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Reward model directory {str(path)!r} does not exist.")
    if (path / REWARD_CONFIG).is_file():
        from reward_models.learned import EncoderHeadReward

        return EncoderHeadReward.load(path, **kwargs)
    architectures = _architectures(path / "config.json")
    if any(arch.endswith("ForSequenceClassification") for arch in architectures):
        from reward_models.hf_classifier import HFClassifierReward

        return HFClassifierReward.load(path, **kwargs)
    found = f"a config.json for {architectures}" if architectures else "neither reward_model.json nor config.json"
    hint = (
        f" To turn this model into a reward model, train a scalar head on it: `textgym reward train --backbone lm "
        f"--model {path} --data prefs.jsonl --out DIR`."
        if architectures
        else ""
    )
    raise FileNotFoundError(
        f"{str(path)!r} is not a reward model directory: it holds {found}. A reward model directory holds "
        f"{REWARD_CONFIG} (saved by `textgym reward train --backbone minilm`) or a Hugging Face "
        f"AutoModelForSequenceClassification (`model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`).{hint}"
    )


def _architectures(config_file: Path) -> list[str]:
    """The ``architectures`` a Hugging Face ``config.json`` declares (none if the file is missing)."""
    if not config_file.is_file():
        return []
    try:
        return list(json.loads(config_file.read_text()).get("architectures") or [])
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{config_file} is not a JSON object; rewrite it with `config.save_pretrained`.") from err


def _find_factory(name: str) -> Callable[..., RewardFn] | None:
    """The factory registered under ``name``, imported on first use; entry points are read only if needed."""
    if name not in _REGISTRY:
        entry_point = next(
            (ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name), None
        )
        if entry_point is None:
            return None
        try:
            _REGISTRY[name] = entry_point.load()
        except Exception as err:
            raise ImportError(
                f"Reward model {name!r} is declared by the entry point {entry_point.value!r} (group "
                f"{ENTRY_POINT_GROUP!r}) of an installed package, but loading it failed: {err}. Reinstall or fix "
                "that package."
            ) from err
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, _, attrs = factory.partition(":")  # entry-point syntax: "package.module:Class.method"
        factory = _REGISTRY[name] = functools.reduce(getattr, attrs.split("."), importlib.import_module(module))
    return factory
