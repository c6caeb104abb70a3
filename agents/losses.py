"""The pieces of the updates' losses, pure functions of tensors: masked means over the completion tokens (and each
process's share of them in a distributed run), whitening, the KL estimators, PPO's clipped surrogate, and the
running statistics that normalise rewards."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textgym.lm import distributed as dist

KL_ESTIMATORS = ("k1", "k2", "k3")


def in_batch_order(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The rows of a minibatch that covers the whole batch (``rows[i]`` is episode ``index[i]``'s), put back in
    the batch's order."""
    ordered = torch.empty_like(rows)
    ordered[index] = rows
    return ordered


@dataclass
class RunningMoments:
    """Running count, mean and variance of a stream of values (Chan et al.'s parallel update)."""

    count: float = 0.0
    mean: float = 0.0
    var: float = 1.0

    def update(self, values: torch.Tensor) -> None:
        n = values.numel()
        if n == 0:
            return
        batch_mean, batch_var = values.float().mean().item(), values.float().var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (self.count * self.var + n * batch_var + delta**2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return max(math.sqrt(self.var), 1e-4)  # a constant reward must not divide by zero


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from the sampled tokens' log-probs (Schulman, "Approximating KL")."""
    log_ratio = logprobs - ref_logprobs  # log π/π_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # r − 1 − log r with r = π_ref/π
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}.")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over ``dim``, or all)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def completion_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each completion's masked tokens, then over the completions that have any: every completion
    weighs the same, whatever its length."""
    has_tokens = (mask.sum(dim=1) > 0).float()  # (E,)
    return (masked_mean(values, mask, dim=1) * has_tokens).sum() / has_tokens.sum().clamp(min=1)


@dataclass(frozen=True)
class MinibatchCounts:
    """What the means of a minibatch's loss divide by, counted over every process: its tokens in the loss and its
    completions with any. A minibatch split into passes (``microbatch_size``) counts them once, before its
    passes, so that each pass's loss is its share of the minibatch's mean."""

    tokens: torch.Tensor
    completions: torch.Tensor

    @classmethod
    def of(cls, mask: torch.Tensor) -> MinibatchCounts:
        """The counts of a minibatch whose loss mask on this process is ``mask`` ``(E, T)``."""
        has_tokens = (mask.sum(dim=1) > 0).float()  # (E,)
        tokens, completions = dist.all_reduce_sum(torch.stack([mask.sum(), has_tokens.sum()]).detach()).clamp(min=1)
        return cls(tokens, completions)


def masked_mean_share(values: torch.Tensor, mask: torch.Tensor, counts: MinibatchCounts | None = None) -> torch.Tensor:
    """This pass's share of the masked mean over every process's entries (differentiable): the sum of its masked
    values over the minibatch's token count (``counts``; by default ``mask``'s, over every process). Summed over
    the processes and passes, as their gradients are, it is the mean of the whole minibatch; with one process
    and one pass it is [masked_mean][agents.losses.masked_mean]."""
    return (values * mask).sum() / (counts or MinibatchCounts.of(mask)).tokens


def completion_mean_share(
    values: torch.Tensor, mask: torch.Tensor, counts: MinibatchCounts | None = None
) -> torch.Tensor:
    """This pass's share of [completion_mean][agents.losses.completion_mean] over the minibatch's completions
    (``counts``; by default ``mask``'s, over every process) (differentiable)."""
    has_tokens = (mask.sum(dim=1) > 0).float()  # (E,)
    return (masked_mean(values, mask, dim=1) * has_tokens).sum() / (counts or MinibatchCounts.of(mask)).completions


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The masked mean over every process's entries, the same on every rank (no gradient)."""
    sums = dist.all_reduce_sum(torch.stack([(values * mask).sum(), mask.sum()]).detach())
    return sums[0] / sums[1].clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``values`` to mean 0 and std 1 over the masked entries (of every process)."""
    mean = global_masked_mean(values, mask)
    var = global_masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    clip_range_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss per token, with the ratio's clip indicator and approximate KL (k3) per token.

    The ratio is clipped to ``[1 − clip_range, 1 + clip_range_high]`` (``clip_range_high`` defaults to
    ``clip_range``; DAPO raises it so unlikely tokens can gain probability faster than likely ones lose it).
    """
    high = clip_range if clip_range_high is None else clip_range_high
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + high))
    clipped = ((ratio < 1 - clip_range) | (ratio > 1 + high)).float()
    approx_kl = (ratio - 1) - log_ratio
    return loss, clipped, approx_kl


def truncated_importance_weights(
    trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training"): per token ``min(π_trainer / π_sampler, cap)``, without gradient.

    The sampler (a bfloat16 copy, another engine's kernels) draws the tokens from a slightly different distribution
    than the trainer's π_old that the update credits them to; weighting each token's policy-gradient term by the
    ratio corrects for it, and the cap bounds the variance a rare token with a large ratio would add."""
    return (trainer_logprobs - sampler_logprobs).detach().exp().clamp(max=cap)
