"""LM-policy agents that learn through textgym's environments.

* [RolloutCollector][agents.rollout.RolloutCollector]: the batched, KV-cached rollout engine every agent collects
  experience with;
* [SFT][agents.sft.SFT]: supervised instruction tuning;
* [PPO][agents.ppo.PPO] (value head, GAE, KL penalty to a frozen reference), [GRPO][agents.grpo.GRPO] and
  [RLOO][agents.rloo.RLOO].
"""

from __future__ import annotations

from agents.grpo import GRPO, GRPOConfig
from agents.ppo import PPO, PPOConfig
from agents.rloo import RLOO, RLOOConfig
from agents.rollout import RolloutBatch, RolloutCollector
from agents.sampling import SamplingConfig, sample_tokens
from agents.sft import SFT, SFTConfig

__all__ = [
    "GRPO",
    "PPO",
    "RLOO",
    "SFT",
    "GRPOConfig",
    "PPOConfig",
    "RLOOConfig",
    "RolloutBatch",
    "RolloutCollector",
    "SFTConfig",
    "SamplingConfig",
    "sample_tokens",
]
