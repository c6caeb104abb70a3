"""PPO for language models, as in InstructGPT: value head, GAE, KL penalty to a frozen reference.

Each token is an action. The reward of token ``t`` is ``−β·KL_t`` (the configured per-token estimate of
KL(π_old‖π_ref), by default ``log π_old(a_t|s_t) − log π_ref(a_t|s_t)``), plus the task reward on the last
token; advantages come from GAE over these per-token rewards and the value head. In a multi-turn episode only
the agent's tokens are steps: GAE runs across its turns, over the env's replies (see [gae][agents.ppo.gae]).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.base import LMAgent
from agents.config import AgentConfig
from agents.losses import (
    MinibatchCounts,
    clipped_surrogate,
    global_masked_mean,
    in_batch_order,
    masked_mean_share,
    masked_whiten,
)
from agents.rollout import RolloutBatch


@dataclass
class PPOConfig(AgentConfig):
    """PPO settings (on top of [AgentConfig][agents.config.AgentConfig])."""

    epochs: int = 4
    """Passes over each batch."""
    gamma: float = 1.0
    """Discount; 1 is usual for completions, whose length is bounded."""
    gae_lambda: float = 0.95
    """GAE's λ: 1 gives Monte Carlo returns, 0 one-step TD."""
    vf_coef: float = 0.1
    """Weight of the value loss (the trunk is shared, so a large value loss would disturb the policy)."""
    value_learning_rate: float | None = None
    """Learning rate of the value head (and separate critic trunk); ``None``: ``learning_rate``. A fresh head
    starts at zero and usually wants a larger one than the pretrained policy. Follows the same schedule."""
    clip_range_value: float = 0.2
    """Clip the new value to within this of the old one, as PPO's reference implementation does."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's tokens."""
    kl_target: float | None = None
    """Adapt β toward this KL per completion (Ziegler et al. 2019); ``None`` keeps β fixed."""
    kl_horizon: int = 10_000
    """Episodes over which the adaptive controller may change β by a factor of about e^0.2."""
    separate_critic: bool = False
    """Give the value head its own trunk (a copy of the policy's) instead of sharing the policy's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_coef == 0):
            raise ValueError(
                f"kl_target={self.kl_target} needs kl_target > 0 and a starting kl_coef > 0: the controller scales "
                "β by a factor, so from 0 it would stay 0. Start from e.g. kl_coef=0.05."
            )
        if self.value_learning_rate is not None and self.value_learning_rate <= 0:
            raise ValueError(f"value_learning_rate must be positive (or None), got {self.value_learning_rate}.")


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over the agent's steps of finished episodes.

    The steps are the columns where ``mask`` is 1; the columns between them (the tokens a multi-turn env wrote
    between the agent's turns) and after them (padding) are not steps: the recursion passes over them, so γ and
    λ discount per agent token, across turns, and the env's reply costs no discount. The value after an
    episode's last step is 0 (every episode here is finished).

    Args:
        rewards: ``(E, T)`` the per-token rewards.
        values: ``(E, T)`` the value head's estimates.
        mask: ``(E, T)`` 1 on the agent's steps.
        gamma: the discount γ per agent step.
        lam: GAE's λ.

    Returns:
        ``(advantages, returns)``, each ``(E, T)`` and 0 off the steps; ``returns = advantages + values``.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        step = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(step, delta + gamma * lam * running, running)  # a non-step column passes it on
        advantages[:, t] = running * mask[:, t]
        next_value = torch.where(step, values[:, t], next_value)
    return advantages, (advantages + values) * mask


class PPO(LMAgent):
    """Proximal Policy Optimization of a causal LM with a value head and a KL-penalised reward.

    Example::

        envs = gym.make_vec("TextGen-v0", num_envs=8)
        agent = PPO(None, envs, kl_coef=0.05, run_dir="runs/ppo")
        agent.learn(total_episodes=2_000)
    """

    config_class = PPOConfig
    algo = "ppo"
    uses_value_head = True
    config: PPOConfig

    def parameter_groups(self) -> list[dict[str, Any]]:
        critic = self.policy.value_parameters()
        critic_ids = {id(p) for p in critic}
        actor = [p for p in self.policy.trainable_parameters() if id(p) not in critic_ids]
        value_lr = self.config.value_learning_rate or self.config.learning_rate
        return [{"params": actor}, {"params": critic, "lr": value_lr}]

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, float]:
        c = self.config
        ids, attn = batch.input_ids, batch.attention_mask
        width = batch.completion_ids.shape[1]
        mask = batch.completion_mask.float()  # (E, T) the episodes' steps
        actions = batch.completion_mask.bool()  # the positions whose log-probs are computed
        loss_mask = self.loss_mask(batch)  # (E, T) the steps the loss sees
        ref_logprobs = self.reference_logprobs(batch)
        # π_old's log-probs and values in the precision of the update, so the first ratio is 1 in every mode: with
        # one gradient step per batch from the update's own pass (on the weights that sampled the batch), else
        # from a pass before it.
        old_logprobs = old_values = advantages = returns = tis = None
        own_pass = self.one_step_per_batch
        if not own_pass:
            with self.autocast():
                old = self.policy.evaluate_in_chunks(
                    ids, attn, width, c.temperature, with_values=True, chunk_size=self.eval_batch_size, keep=actions
                )
            old_logprobs, old_values = old.logprobs * mask, old.values.float() * mask
            advantages, returns = self._advantages(batch, old_logprobs, old_values, ref_logprobs)
            tis, drift = self.sampler_correction(batch, old_logprobs, mask)

        stats: dict[str, list[float]] = defaultdict(list)  # metric name -> one value per minibatch
        stop = False
        for _ in range(c.epochs):
            for minibatch, minibatch_weight in self.minibatches(len(batch)):
                counts = MinibatchCounts.of(loss_mask[minibatch] * minibatch_weight)
                terms = torch.zeros(5, device=self.device)  # this process's shares of the minibatch's means
                for index, weight in self.microbatches(minibatch, minibatch_weight):
                    m = loss_mask[index] * weight
                    with self.autocast():
                        new = self.policy.evaluate(
                            ids[index],
                            attn[index],
                            width,
                            c.temperature,
                            with_values=True,
                            entropy_grad=c.ent_coef > 0,
                            keep=actions[index],
                        )
                    if own_pass:  # the one minibatch is the whole batch in one pass, on the weights that sampled it
                        old_logprobs = in_batch_order(new.logprobs.detach(), index) * mask
                        old_values = in_batch_order(new.values.detach().float(), index) * mask
                        advantages, returns = self._advantages(batch, old_logprobs, old_values, ref_logprobs)
                        tis, drift = self.sampler_correction(batch, old_logprobs, mask)
                    policy_loss, clipped, approx_kl = clipped_surrogate(
                        new.logprobs, old_logprobs[index], advantages[index] * tis[index], c.clip_range
                    )
                    values = new.values.float()
                    values_clipped = old_values[index] + (values - old_values[index]).clamp(
                        -c.clip_range_value, c.clip_range_value
                    )
                    value_loss = 0.5 * torch.maximum(
                        (values - returns[index]) ** 2, (values_clipped - returns[index]) ** 2
                    )
                    # Each term is this pass's share of the whole minibatch's mean (the mean with one process and pass).
                    shares = [
                        masked_mean_share(x, m, counts)
                        for x in (policy_loss, value_loss, new.entropy, clipped, approx_kl)
                    ]
                    loss = shares[0] + c.vf_coef * shares[1] - c.ent_coef * shares[2]
                    loss.backward()
                    terms += torch.stack(shares).detach()
                names = ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")
                if not self.finish_minibatch(terms, names, stats):
                    stop = True
                    break
            if stop:
                break

        episodes_total = len(batch) * self.world_size  # the whole batch's
        kl_per_episode = self.episode_kl_to_reference(old_logprobs, ref_logprobs, mask)
        if c.kl_target is not None:  # proportional controller on log β
            error = float(np.clip(kl_per_episode / c.kl_target - 1, -0.2, 0.2))
            self.kl_coef *= 1 + error * episodes_total / c.kl_horizon
        residual = returns - old_values
        residual_var = global_masked_mean((residual - global_masked_mean(residual, mask)) ** 2, mask)
        returns_var = global_masked_mean((returns - global_masked_mean(returns, mask)) ** 2, mask)
        return {
            **self.minibatch_means(stats),
            "train/epochs_run": len(stats["train/grad_norm"]) / math.ceil(episodes_total / c.minibatch_size),
            **drift,
            "train/explained_variance": (1 - residual_var / returns_var.clamp(min=1e-8)).item(),
            "train/kl_ref": kl_per_episode,
            "train/kl_coef": self.kl_coef,
        }

    def _advantages(
        self,
        batch: RolloutBatch,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        ref_logprobs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages (whitened if configured) and returns ``(E, T)`` of the KL-penalised rewards."""
        c = self.config
        mask = batch.completion_mask.float()
        kl = self.step_kl(old_logprobs, ref_logprobs, mask)
        rewards = self.task_rewards(batch) - self.kl_coef * kl  # (E, T)
        advantages, returns = gae(rewards, old_values, mask, c.gamma, c.gae_lambda)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, self.loss_mask(batch))
        return advantages, returns
