"""What GRPO and RLOO share: several completions per prompt, a baseline from the other members of a group, and the
update loop. Each algorithm's file holds its whole objective:
[GroupAgent.advantages][agents.group.GroupAgent.advantages] and
[GroupAgent.policy_loss][agents.group.GroupAgent.policy_loss].

Both are critic-free: a completion's advantage compares its reward with the rewards of the other completions
of the same prompt, so no value head is trained. π_old's log-probs are those of the weights that sampled the
batch. With one gradient step per batch (one epoch, one minibatch) the update's own pass runs on those
weights, so its log-probs, detached, are π_old's, the first ratio is exactly 1, and no other pass is made (as
TRL does). Otherwise they are the sampler's, or under bf16 autocast, whose numerics differ from the sampler's,
those of a pass in the update's precision before the first step (``recompute_old_logprobs``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from agents.base import LMAgent
from agents.config import AgentConfig
from agents.losses import global_masked_mean, in_batch_order, masked_mean_share
from agents.rollout import RolloutBatch
from textgym.lm import distributed as dist


@dataclass
class GroupConfig(AgentConfig):
    """Settings of the group methods (on top of [AgentConfig][agents.config.AgentConfig])."""

    group_size: int = 4
    """Completions sampled per prompt; ``batch_size`` must be a multiple of it."""
    recompute_old_logprobs: bool | None = None
    """Take π_old in the update's precision instead of the sampler's log-probs: from the update's own pass when
    there is one gradient step per batch, else by a pass without gradients before the update. ``None``: with
    one step per batch always (it is free), otherwise only under bf16 (in fp32 the two agree to about 1e-5, and
    the pass is saved); ``False``: always the sampler's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2 or self.batch_size % self.group_size:
            raise ValueError(f"group_size must be >= 2 and divide batch_size={self.batch_size}, got {self.group_size}.")


class GroupAgent(LMAgent):
    """Collects ``batch_size / group_size`` prompts ``group_size`` times each, and updates with per-completion
    advantages from [advantages][agents.group.GroupAgent.advantages] and the per-minibatch loss of
    [policy_loss][agents.group.GroupAgent.policy_loss]."""

    config: GroupConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        if c.batch_size // self.world_size % c.group_size:
            raise ValueError(
                f"Each of the {self.world_size} processes rolls out batch_size / world_size = "
                f"{c.batch_size // self.world_size} completions, not whole groups of group_size={c.group_size}: "
                f"a group's baseline needs all its completions on one process. Make batch_size a multiple of "
                f"{self.world_size * c.group_size}."
            )

    def collect(self) -> RolloutBatch:
        """Every process draws the same prompts and rolls out its share of whole groups (see LMAgent.collect)."""
        c = self.config
        pool = self.envs.prompts
        n = c.batch_size // c.group_size
        chosen = self.rng.choice(len(pool), size=n, replace=len(pool) < n)  # distinct prompts when there are enough
        prompts = [pool[i] for i in chosen for _ in range(c.group_size)]
        return self.collect_prompts(prompts[dist.shard_range(c.batch_size, "batch_size")])

    def advantages(self, scores: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """Per-completion advantages ``(E,)`` from task scores and the KL to the reference (the configured
        estimator, summed over each completion's tokens), both ``(E,)``."""
        raise NotImplementedError

    def policy_loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
        advantages: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss of one minibatch (a scalar), with the ratio's clip indicator and approximate KL per token.

        Distributed, the loss is this process's share of the minibatch's (its terms normalised by the counts of
        the whole minibatch, [masked_mean_share][agents.losses.masked_mean_share]): the ranks' gradients sum to the
        single-process gradient.

        Args:
            logprobs: ``(B, T)`` under the policy being trained (with gradients).
            old_logprobs: ``(B, T)`` under π_old.
            ref_logprobs: ``(B, T)`` under the reference (``None`` when β = 0).
            advantages: ``(B,)`` from [advantages][agents.group.GroupAgent.advantages].
            mask: ``(B, T)`` the tokens the loss sees.
        """
        raise NotImplementedError

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, float]:
        c = self.config
        ids, attn = batch.input_ids, batch.attention_mask
        width = batch.completion_ids.shape[1]
        mask = batch.completion_mask.float()  # (E, T) the episodes' steps
        loss_mask = self.loss_mask(batch)  # (E, T) the steps the loss sees
        ref_logprobs = self.reference_logprobs(batch)
        old_logprobs = advantages = None  # from the update's own pass (own_pass), else before it
        own_pass = self.one_step_per_batch and c.recompute_old_logprobs is not False
        if not own_pass:
            old_logprobs = self._old_logprobs(batch) * mask
            advantages = self._batch_advantages(batch, old_logprobs, ref_logprobs)

        stats: dict[str, list[float]] = defaultdict(list)  # metric name -> one value per minibatch
        stop = False
        for _ in range(c.epochs):
            for index, weight in self.minibatches(len(batch)):
                m = loss_mask[index] * weight
                with self.autocast():
                    new = self.policy.evaluate(
                        ids[index], attn[index], width, c.temperature, entropy_grad=c.ent_coef > 0
                    )
                if own_pass:  # the one minibatch is the whole batch, on the weights that sampled it
                    old_logprobs = in_batch_order(new.logprobs.detach(), index) * mask
                    advantages = self._batch_advantages(batch, old_logprobs, ref_logprobs)
                ref = None if ref_logprobs is None else ref_logprobs[index]
                loss, clipped, approx_kl = self.policy_loss(
                    new.logprobs, old_logprobs[index], ref, advantages[index], m
                )
                entropy = masked_mean_share(new.entropy, m)
                loss = loss - c.ent_coef * entropy
                terms = torch.stack([loss, entropy, masked_mean_share(clipped, m), masked_mean_share(approx_kl, m)])
                totals = dist.all_reduce_sum(terms.detach()).tolist()  # the whole minibatch's, on every rank
                for name, total in zip(("policy_loss", "entropy", "clip_fraction", "approx_kl"), totals):
                    stats[f"train/{name}"].append(total)
                if self.kl_exceeded(stats["train/approx_kl"][-1]):  # before stepping, as SB3 does
                    stop = True
                    break
                stats["train/grad_norm"].append(self.optimizer_step(loss))
            if stop:
                break
        return {
            **self.minibatch_means(stats),
            "train/sampler_logprob_error": global_masked_mean((batch.logprobs - old_logprobs).abs(), mask).item(),
            "train/kl_ref": self.episode_kl_to_reference(old_logprobs, ref_logprobs, mask),
            "train/kl_coef": self.kl_coef,
        }

    def _old_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """π_old's log-probs ``(E, T)`` before the update: by a pass in the update's precision if configured
        (by default under bf16), else the sampler's (in fp32 the two agree to about 1e-5)."""
        c = self.config
        recompute = c.recompute_old_logprobs if c.recompute_old_logprobs is not None else self.precision == "bf16"
        if not recompute:
            return batch.logprobs
        width = batch.completion_ids.shape[1]
        with self.autocast():
            return self.policy.evaluate_in_chunks(
                batch.input_ids, batch.attention_mask, width, c.temperature, chunk_size=self.eval_batch_size
            ).logprobs

    def _batch_advantages(
        self, batch: RolloutBatch, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-completion advantages ``(E,)`` of the batch from its task rewards and KL to the reference."""
        mask = batch.completion_mask.float()
        kl = self.step_kl(old_logprobs, ref_logprobs, mask)
        return self.advantages(self.task_rewards(batch).sum(dim=1), kl.sum(dim=1))
