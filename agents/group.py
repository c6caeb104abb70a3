"""What GRPO and RLOO share: several completions per prompt, and a baseline from the other members of a group.

Both are critic-free: a completion's advantage compares its reward with the rewards of the other completions
of the same prompt, so no value head is trained. They differ only in how the advantage is formed and where
the KL to the reference enters (:class:`~agents.grpo.GRPO`: in the loss; :class:`~agents.rloo.RLOO`: in the
reward).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from agents.base import AgentConfig, LMAgent, clipped_surrogate, masked_mean
from agents.rollout import RolloutBatch


@dataclass
class GroupConfig(AgentConfig):
    """Settings of the group methods (on top of :class:`~agents.base.AgentConfig`)."""

    group_size: int = 4
    """Completions sampled per prompt; ``batch_size`` must be a multiple of it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2 or self.batch_size % self.group_size:
            raise ValueError(f"group_size must be >= 2 and divide batch_size={self.batch_size}, got {self.group_size}.")


class GroupAgent(LMAgent):
    """Collects ``batch_size / group_size`` prompts ``group_size`` times each, and updates with per-episode
    advantages from :meth:`advantages`."""

    config: GroupConfig
    kl_in_loss: ClassVar[bool] = True

    def collect(self) -> RolloutBatch:
        c = self.config
        pool = self.envs.prompts
        n = c.batch_size // c.group_size
        chosen = self.rng.choice(len(pool), size=n, replace=len(pool) < n)  # distinct prompts when there are enough
        return self.collector.collect_prompts([pool[i] for i in chosen for _ in range(c.group_size)])

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """Per-episode advantages ``(E,)`` from task scores and KL to the reference, both ``(E,)``."""
        raise NotImplementedError

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, float]:
        c = self.config
        ids, attn = batch.input_ids, batch.attention_mask
        width = batch.completion_ids.shape[1]
        mask = batch.completion_mask.float()  # (E, T)
        old_logprobs = batch.logprobs * mask  # the sampler's log-probs are π_old's: no extra forward pass
        ref_logprobs = self.reference_logprobs(batch)
        kl = torch.zeros_like(mask[:, 0]) if ref_logprobs is None else ((old_logprobs - ref_logprobs) * mask).sum(1)
        advantages = self.advantages(batch.returns.float(), kl)[:, None].expand_as(mask)  # (E, T)

        stats: dict[str, list[float]] = defaultdict(list)  # metric name -> one value per minibatch
        for _ in range(c.epochs):
            for index in self.minibatches(len(batch)):
                m = mask[index]
                with self.autocast():
                    new = self.policy.evaluate(ids[index], attn[index], width, c.temperature)
                per_token, clipped, approx_kl = clipped_surrogate(
                    new.logprobs, old_logprobs[index], advantages[index], c.clip_range
                )
                if self.kl_in_loss and ref_logprobs is not None:  # k3 estimator of KL(π‖π_ref): unbiased, always >= 0
                    log_ratio_ref = ref_logprobs[index] - new.logprobs
                    per_token = per_token + self.kl_coef * (log_ratio_ref.exp() - log_ratio_ref - 1)
                per_token = per_token - c.ent_coef * new.entropy
                loss = masked_mean(per_token, m, dim=1).mean()  # each completion weighs the same
                stats["train/grad_norm"].append(self.optimizer_step(loss))
                stats["train/policy_loss"].append(loss.item())
                stats["train/entropy"].append(masked_mean(new.entropy, m).item())
                stats["train/clip_fraction"].append(masked_mean(clipped, m).item())
                stats["train/approx_kl"].append(masked_mean(approx_kl, m).item())
        return {
            **{name: float(np.mean(values)) for name, values in stats.items()},
            "train/kl_ref": float("nan") if ref_logprobs is None else kl.mean().item(),
            "train/kl_coef": self.kl_coef,
        }
