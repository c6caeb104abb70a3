"""The reward-model registry: names, saved directories and callables made into checked reward models.

A name given to [make_reward_model][reward_models.registry.make_reward_model] is looked up in three places, in order:
the built-in registry, the ``textgym.reward_models`` entry-point group of installed packages (read only when a name is
not built in), and the file system (a saved reward-model directory). Every family is imported only when its name is
first used.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reward_models.base import REWARD_CONFIG, RewardFn, RewardModel

ENTRY_POINT_GROUP = "textgym.reward_models"
"""Entry-point group through which other packages add reward models: ``name = "pkg.module:factory"``."""

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
    "reasoning-gym": "reward_models.reasoning_gym:ReasoningGymScore",
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
    """The names [make_reward_model][reward_models.registry.make_reward_model] accepts: built-in, registered and
    installed through entry points."""
    return sorted(set(_REGISTRY) | {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def make_reward_model(spec: str | os.PathLike | RewardFn | RewardModel, **kwargs: Any) -> RewardModel:
    """Build a checked [RewardModel][reward_models.base.RewardModel] from a name, a saved model directory, or any
    batched callable.

    Args:
        spec: a registered name (see [registered_names][reward_models.registry.registered_names]), the path of a
            reward-model directory (see [load_reward_model][reward_models.registry.load_reward_model]), a
            [RewardModel][reward_models.base.RewardModel], or any callable ``(prompts, completions) -> scores``.
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
      ([reward_models.learned.EncoderHeadReward][reward_models.learned.EncoderHeadReward]).
    - ``config.json`` of a ``*ForSequenceClassification`` architecture: a Hugging Face classifier, e.g. one
      trained by ``textgym reward train --backbone lm`` or by TRL's ``RewardTrainer``
      ([reward_models.hf_classifier.HFClassifierReward][reward_models.hf_classifier.HFClassifierReward]).

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
