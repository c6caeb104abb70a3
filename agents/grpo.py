"""GRPO (Shao et al. 2024): advantages normalised within each group of completions, KL in the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.group import GroupAgent, GroupConfig


@dataclass
class GRPOConfig(GroupConfig):
    """GRPO settings (on top of :class:`~agents.group.GroupConfig`)."""

    group_size: int = 8
    """Completions sampled per prompt."""
    batch_size: int = 16
    """Finished episodes per iteration: ``batch_size / group_size`` prompts."""
    scale_rewards: bool = True
    """Divide by the group's reward std (the original GRPO); ``False`` only subtracts the group mean, which
    avoids over-weighting prompts whose completions all score nearly the same (Dr. GRPO)."""


class GRPO(GroupAgent):
    """Group Relative Policy Optimization: ``A_i = (r_i − mean(r_group)) / std(r_group)`` for every token of
    completion ``i``, a clipped surrogate, and ``β·KL(π‖π_ref)`` added to the loss."""

    config_class = GRPOConfig
    algo = "grpo"
    config: GRPOConfig

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        groups = scores.view(-1, self.config.group_size)  # (B, G)
        centred = groups - groups.mean(dim=1, keepdim=True)
        if self.config.scale_rewards:
            centred = centred / (groups.std(dim=1, keepdim=True) + 1e-4)
        return centred.flatten()
