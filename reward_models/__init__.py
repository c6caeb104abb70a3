"""Reward models: anything that scores ``(prompts, completions)`` in a batch.

The protocol is a plain callable ``(prompts: list[str], completions: list[str]) -> array of float``, one score
per pair. :func:`make_reward_model` turns a registered name or any such callable into a
:class:`RewardModel`, which checks every batch it returns (count, shape, finiteness), so a broken reward
model fails loudly at the step that called it instead of training on garbage.

Built-in names are imported lazily, so ``import reward_models`` stays light.
"""

from __future__ import annotations

from reward_models.base import RewardFn, RewardModel, make_reward_model, register_reward_model, registered_names

__all__ = ["RewardFn", "RewardModel", "make_reward_model", "register_reward_model", "registered_names"]
