"""RLOO (Ahmadian et al. 2024): REINFORCE with the mean reward of the other completions as the baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.group import GroupAgent, GroupConfig


@dataclass
class RLOOConfig(GroupConfig):
    """RLOO settings (those of :class:`~agents.group.GroupConfig`)."""


class RLOO(GroupAgent):
    """REINFORCE Leave-One-Out: the reward is the task score minus ``β·KL(π‖π_ref)`` of the completion, and
    ``A_i = R_i − mean_{j≠i} R_j`` over the other completions of the same prompt."""

    config_class = RLOOConfig
    algo = "rloo"
    kl_in_loss = False
    config: RLOOConfig

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        g = self.config.group_size
        rewards = (scores - self.kl_coef * kl).view(-1, g)  # (B, G)
        others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
        return (rewards - others_mean).flatten()
