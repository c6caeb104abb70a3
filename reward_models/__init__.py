"""Reward models: anything that scores ``(prompts, completions)`` in a batch.

The protocol is a plain callable ``(prompts: list[str], completions: list[str]) -> array of float``, one score per pair.
[make_reward_model][reward_models.registry.make_reward_model] turns a registered name, a saved reward-model directory or
any such callable into a [RewardModel][reward_models.base.RewardModel], which checks every batch it returns (count,
shape, finiteness), so a broken reward model fails loudly at the step that called it instead of training on garbage.
Other packages add names through the ``textgym.reward_models`` entry-point group.

Every family (lexicon, rules, metrics, hf_classifier, learned) and the training code are imported only when
used, so ``import reward_models`` stays light: no torch, no transformers.
"""

from __future__ import annotations

from reward_models.base import BatchedRewardModel, Normalization, RewardFn, RewardModel
from reward_models.registry import (
    ENTRY_POINT_GROUP,
    load_reward_model,
    make_reward_model,
    register_reward_model,
    registered_names,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchedRewardModel",
    "Normalization",
    "RewardFn",
    "RewardModel",
    "load_reward_model",
    "make_reward_model",
    "register_reward_model",
    "registered_names",
]
