"""LM-policy agents that learn through textgym's environments.

For now: the batched, KV-cached rollout engine every LM agent collects its experience with.
"""

from __future__ import annotations

from agents.rollout import RolloutBatch, RolloutCollector, SamplingConfig, sample_tokens

__all__ = ["RolloutBatch", "RolloutCollector", "SamplingConfig", "sample_tokens"]
