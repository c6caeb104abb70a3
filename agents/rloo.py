"""RLOO (Ahmadian et al. 2024): REINFORCE with the mean reward of the other completions as the baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.group import GroupAgent, GroupConfig
from agents.losses import MinibatchCounts, clipped_surrogate, completion_mean_share


@dataclass
class RLOOConfig(GroupConfig):
    """RLOO settings (those of [GroupConfig][agents.group.GroupConfig])."""


class RLOO(GroupAgent):
    """REINFORCE Leave-One-Out: the reward is the task score minus ``β·KL(π‖π_ref)`` of the completion, and
    ``A_i = R_i − mean_{j≠i} R_j`` over the other completions of the same prompt; the loss is the clipped
    surrogate (plain REINFORCE when ``epochs=1`` and one minibatch, where the ratio is 1). With ``turn_credit``
    each turn's reward is its task reward less ``β·KL`` of its tokens, and the baseline is per turn
    ([turn_advantages][agents.group.turn_advantages])."""

    config_class = RLOOConfig
    algo = "rloo"
    config: RLOOConfig
    kl_in_reward = True

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        g = self.config.group_size
        rewards = (scores - self.kl_coef * kl).view(-1, g)  # (B, G)
        others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
        return (rewards - others_mean).flatten()

    def policy_loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        counts: MinibatchCounts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        per_token, clipped, approx_kl = clipped_surrogate(
            logprobs, old_logprobs, advantages, self.config.clip_range
        )  # (B, T); the KL is already in the reward
        return completion_mean_share(per_token, mask, counts), clipped, approx_kl  # this pass's share
