"""GRPO (Shao et al. 2024): advantages normalised within each group of completions, KL in the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.group import GroupAgent, GroupConfig
from agents.losses import MinibatchCounts, clipped_surrogate, completion_mean_share, masked_mean_share

LOSS_TYPES = ("sequence", "token")


@dataclass
class GRPOConfig(GroupConfig):
    """GRPO settings (on top of [GroupConfig][agents.group.GroupConfig])."""

    group_size: int = 8
    """Completions sampled per prompt."""
    batch_size: int = 16
    """Finished episodes per iteration: ``batch_size / group_size`` prompts."""
    scale_rewards: bool = True
    """Divide by the group's reward std (the original GRPO); ``False`` only subtracts the group mean, which
    avoids over-weighting prompts whose completions all score nearly the same (Dr. GRPO). Not applied with
    ``turn_credit`` (a std that holds the episode's own reward would bias its turn baseline)."""
    kl_estimator: str = "k3"
    """GRPO's KL term in the loss uses k3 (non-negative, unbiased); see [AgentConfig][agents.config.AgentConfig]."""
    loss_type: str = "sequence"
    """``"sequence"``: average each completion's tokens, then the completions (the original GRPO: every
    completion weighs the same, so long ones' tokens weigh less); ``"token"``: average all tokens of the
    minibatch (DAPO: every token weighs the same)."""
    clip_range_high: float | None = None
    """Upper clip of the ratio, ``1 + clip_range_high`` (DAPO's ε_high, e.g. 0.28); ``None``: ``clip_range``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        if self.clip_range_high is not None and self.clip_range_high <= 0:
            raise ValueError(f"clip_range_high must be positive (or None), got {self.clip_range_high}.")


class GRPO(GroupAgent):
    """Group Relative Policy Optimization: ``A_i = (r_i − mean(r_group)) / std(r_group)`` for every token of
    completion ``i``, a clipped surrogate, and ``β·KL(π‖π_ref)`` added to the loss. With ``turn_credit`` the
    advantages are per turn instead ([turn_advantages][agents.group.turn_advantages]), neither centred on a mean
    that holds the episode's own reward nor scaled by a std that does."""

    config_class = GRPOConfig
    algo = "grpo"
    config: GRPOConfig

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        groups = scores.view(-1, self.config.group_size)  # (B, G)
        centred = groups - groups.mean(dim=1, keepdim=True)
        if self.config.scale_rewards:
            centred = centred / (groups.std(dim=1, keepdim=True) + 1e-4)
        return centred.flatten()

    def policy_loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        counts: MinibatchCounts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        per_token, clipped, approx_kl = clipped_surrogate(
            logprobs, old_logprobs, advantages, c.clip_range, c.clip_range_high
        )  # (B, T)
        if ref_logprobs is not None:
            per_token = per_token + self.kl_coef * self.kl_penalty(logprobs, ref_logprobs)
        if c.loss_type == "token":  # this process's share of the minibatch's mean (docstring of GroupAgent)
            return masked_mean_share(per_token, mask, counts), clipped, approx_kl
        return completion_mean_share(per_token, mask, counts), clipped, approx_kl
