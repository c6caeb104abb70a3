"""What GRPO and RLOO share: several completions per prompt, a baseline from the other members of a group, and the
update loop. Each algorithm's file holds its whole objective:
[GroupAgent.advantages][agents.group.GroupAgent.advantages] and
[GroupAgent.policy_loss][agents.group.GroupAgent.policy_loss].

Both are critic-free: a completion's advantage compares its reward with the rewards of the other completions
of the same prompt, so no value head is trained. With ``turn_credit`` a multi-turn episode's tokens are credited
turn by turn instead: each with the reward-to-go from its turn, less the other completions' at the same turn
([turn_advantages][agents.group.turn_advantages]). π_old's log-probs are those of the weights that sampled the
batch. With one gradient step per batch (one epoch, one minibatch) the update's own pass runs on those
weights, so its log-probs, detached, are π_old's, the first ratio is exactly 1, and no other pass is made (as
TRL does). Otherwise they are the sampler's, or under bf16 autocast or with vLLM rollouts, whose numerics differ
from the trainer's, those of a pass in the update's precision before the first step (``recompute_old_logprobs``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from agents.base import LMAgent
from agents.config import AgentConfig
from agents.losses import MinibatchCounts, in_batch_order, masked_mean_share
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
    one step per batch always (it is free), otherwise only under bf16 or with ``rollout_backend="vllm"`` (when the
    trainer samples in fp32 the two agree to about 1e-5, and the pass is saved); ``False``: always the sampler's."""
    turn_credit: bool = False
    """Credit a multi-turn episode turn by turn: each agent token's advantage is the reward-to-go from its turn
    (discounted per turn by ``turn_discount``) less the mean reward-to-go at the same turn of the other episodes
    of its group that reached that turn (0 if none did): [turn_advantages][agents.group.turn_advantages], which
    says why this stays unbiased when the policy decides when its episodes end. The turns are the env's (a reply
    it writes, ``env_mask``, ends one); a single-turn episode is one turn, credited with its return less the
    others' mean (RLOO's advantage). The episode-level advantage (``False``) gives every token of an episode its
    algorithm's advantage of the return; GRPO's ``scale_rewards`` does not apply with ``turn_credit``."""
    turn_discount: float = 1.0
    """γ of ``turn_credit``'s reward-to-go, per turn: a turn's advantage counts the rewards of turn ``k + j``
    times ``γ^j``. 1: every later turn's reward in full (the return's credit); less favours what pays soon."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2 or self.batch_size % self.group_size:
            raise ValueError(f"group_size must be >= 2 and divide batch_size={self.batch_size}, got {self.group_size}.")
        if not 0.0 <= self.turn_discount <= 1.0:
            raise ValueError(f"turn_discount must be in [0, 1], got {self.turn_discount}.")


class GroupAgent(LMAgent):
    """Collects ``batch_size / group_size`` prompts ``group_size`` times each, and updates with per-completion
    advantages from [advantages][agents.group.GroupAgent.advantages] and the per-minibatch loss of
    [policy_loss][agents.group.GroupAgent.policy_loss]."""

    config: GroupConfig
    kl_in_reward: ClassVar[bool] = False
    """Whether the algorithm charges the KL to the reference in the reward (RLOO), not in the loss (GRPO): with
    ``turn_credit`` each turn's reward is then its task reward less ``β·KL`` of its tokens."""

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
        counts: MinibatchCounts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss of one pass over a minibatch (a scalar), with the ratio's clip indicator and approximate KL per
        token.

        The loss is this pass's share of the minibatch's (its terms normalised by ``counts``, the whole
        minibatch's, [masked_mean_share][agents.losses.masked_mean_share]): the gradients of the passes and of the
        ranks sum to the gradient of one pass over the minibatch.

        Args:
            logprobs: ``(B, T)`` under the policy being trained (with gradients).
            old_logprobs: ``(B, T)`` under π_old.
            ref_logprobs: ``(B, T)`` under the reference (``None`` when β = 0).
            advantages: ``(B, T)`` per token: each completion's from
                [advantages][agents.group.GroupAgent.advantages] on every token, or with ``turn_credit`` its turns'
                from [turn_advantages][agents.group.turn_advantages]; times the sampler's drift correction
                ([sampler_correction][agents.base.LMAgent.sampler_correction]).
            mask: ``(B, T)`` the tokens the loss sees.
            counts: what the minibatch's means divide by (by default ``mask``'s, over every process).
        """
        raise NotImplementedError

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, float]:
        c = self.config
        ids, attn = batch.input_ids, batch.attention_mask
        width = batch.completion_ids.shape[1]
        mask = batch.completion_mask.float()  # (E, T) the episodes' steps
        actions = batch.completion_mask.bool()  # the positions whose log-probs are computed
        loss_mask = self.loss_mask(batch)  # (E, T) the steps the loss sees
        ref_logprobs = self.reference_logprobs(batch)
        old_logprobs = advantages = tis = None  # from the update's own pass (own_pass), else before it
        own_pass = self.one_step_per_batch and c.recompute_old_logprobs is not False
        if not own_pass:
            old_logprobs = self._old_logprobs(batch) * mask
            advantages = self._batch_advantages(batch, old_logprobs, ref_logprobs)
            tis, drift = self.sampler_correction(batch, old_logprobs, mask)

        stats: dict[str, list[float]] = defaultdict(list)  # metric name -> one value per minibatch
        stop = False
        for _ in range(c.epochs):
            for minibatch, minibatch_weight in self.minibatches(len(batch)):
                counts = MinibatchCounts.of(loss_mask[minibatch] * minibatch_weight)
                terms = torch.zeros(4, device=self.device)  # this process's shares of the minibatch's means
                for index, weight in self.microbatches(minibatch, minibatch_weight):
                    m = loss_mask[index] * weight
                    with self.autocast():
                        new = self.policy.evaluate(
                            ids[index],
                            attn[index],
                            width,
                            c.temperature,
                            entropy_grad=c.ent_coef > 0,
                            keep=actions[index],
                        )
                    if own_pass:  # the one minibatch is the whole batch in one pass, on the weights that sampled it
                        old_logprobs = in_batch_order(new.logprobs.detach(), index) * mask
                        advantages = self._batch_advantages(batch, old_logprobs, ref_logprobs)
                        tis, drift = self.sampler_correction(batch, old_logprobs, mask)
                    ref = None if ref_logprobs is None else ref_logprobs[index]
                    loss, clipped, approx_kl = self.policy_loss(
                        new.logprobs, old_logprobs[index], ref, advantages[index] * tis[index], m, counts
                    )
                    entropy = masked_mean_share(new.entropy, m, counts)
                    loss = loss - c.ent_coef * entropy
                    loss.backward()
                    shares = [
                        loss,
                        entropy,
                        masked_mean_share(clipped, m, counts),
                        masked_mean_share(approx_kl, m, counts),
                    ]
                    terms += torch.stack(shares).detach()
                if not self.finish_minibatch(terms, ("policy_loss", "entropy", "clip_fraction", "approx_kl"), stats):
                    stop = True
                    break
            if stop:
                break
        return {
            **self.minibatch_means(stats),
            **drift,
            "train/kl_ref": self.episode_kl_to_reference(old_logprobs, ref_logprobs, mask),
            "train/kl_coef": self.kl_coef,
        }

    def _old_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """π_old's log-probs ``(E, T)`` before the update: by a pass in the update's precision if configured
        (by default under bf16 or with vLLM rollouts), else the sampler's (in fp32 the two agree to about 1e-5)."""
        c = self.config
        drifts = self.precision == "bf16" or c.rollout_backend == "vllm"  # the sampler's numerics are not the update's
        recompute = c.recompute_old_logprobs if c.recompute_old_logprobs is not None else drifts
        if not recompute:
            return batch.logprobs
        width = batch.completion_ids.shape[1]
        with self.autocast():
            return self.policy.evaluate_in_chunks(
                batch.input_ids,
                batch.attention_mask,
                width,
                c.temperature,
                chunk_size=self.eval_batch_size,
                keep=batch.completion_mask.bool(),
            ).logprobs

    def _batch_advantages(
        self, batch: RolloutBatch, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-token advantages ``(E, T)`` of the batch from its task rewards and KL to the reference: each
        completion's on all its tokens, or with ``turn_credit`` each turn's on its tokens (0 off the agent's)."""
        mask = batch.completion_mask.float()
        kl = self.step_kl(old_logprobs, ref_logprobs, mask)  # (E, T)
        rewards = self.task_rewards(batch)  # (E, T)
        if self.config.turn_credit:
            if self.kl_in_reward:
                rewards = rewards - self.kl_coef * kl
            return turn_advantages(
                rewards, batch.completion_mask, batch.env_mask, self.config.group_size, self.config.turn_discount
            )
        return self.advantages(rewards.sum(dim=1), kl.sum(dim=1))[:, None] * mask


def turn_indices(env_mask: torch.Tensor) -> torch.Tensor:
    """The turn of each column ``(E, T)``, long: how many runs of env-written tokens (``env_mask``, the partner's
    replies between the agent's turns) start at or before it. On an agent's token it is the number of replies
    before it: 0 in its first turn, and in every token of a single-turn episode."""
    env = env_mask.bool()
    starts = env & ~torch.nn.functional.pad(env[:, :-1], (1, 0))  # (E, T) the first column of each reply
    return starts.long().cumsum(dim=1)


def turn_advantages(
    rewards: torch.Tensor,
    completion_mask: torch.Tensor,
    env_mask: torch.Tensor,
    group_size: int,
    discount: float = 1.0,
) -> torch.Tensor:
    """Per-token advantages of multi-turn episodes: reward-to-go from each turn less a turn-level leave-one-out
    baseline (``GroupConfig.turn_credit``).

    With ``r[i, k]`` the rewards of episode ``i``'s turn ``k`` (the sum over its agent tokens; a multi-turn env
    pays a turn's reward on the token that ends it) and ``n_i`` its turns, the reward-to-go from turn ``k < n_i``
    is ``R[i, k] = Σ_{j ≥ k} γ^(j−k) r[i, j]``, and every agent token of that turn gets::

        A[i, k] = R[i, k] − mean{R[l, k] : l ≠ i in i's group, n_l > k}     (0 for the mean of no episode)

    Why it is unbiased when the policy decides when an episode ends: a baseline ``b`` leaves the policy gradient
    unbiased when ``E[b · ∇ log π(a_t | s_t)] = 0``, which holds whenever ``b`` is a function of the state ``s_t``
    and of anything independent of the actions from ``a_t`` on. Here ``b`` depends on the turn index (fixed by
    ``s_t``) and on the other episodes of the group, which were sampled independently of episode ``i``, so it does
    not depend on the action it scores, nor on whether that action ends the episode. The common per-turn
    normalisation, ``(R[i, k] − mean_k) / std_k`` over the episodes that reached turn ``k`` *including* ``i``,
    does: ``R[i, k]`` is in the mean and the std, and the set that reached turn ``k`` shrinks as the policy ends
    episodes early (an episode alone at its last turns gets advantage 0 there, whatever it earned), so its
    expected gradient is not the policy gradient's (tests/test_turn_credit.py measures both on a small game).

    Args:
        rewards: ``(E, T)`` per-token rewards (on the agent's tokens; others are ignored).
        completion_mask: ``(E, T)`` 1 on the agent's tokens.
        env_mask: ``(E, T)`` 1 on the tokens the env wrote between turns; its runs separate the turns.
        group_size: ``G``: rows ``g·G … g·G + G − 1`` are one group (the same prompt).
        discount: ``γ`` per turn.

    Returns:
        ``(E, T)``: ``A[i, k]`` on each agent token of turn ``k``, 0 elsewhere.
    """
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} episodes are not whole groups of group_size={group_size}.")
    agent = completion_mask.bool()  # (E, T)
    turn = turn_indices(env_mask) * agent  # (E, T) the agent tokens' turns (0 elsewhere, masked below)
    num_turns = int(turn.max()) + 1  # K, the most turns of any episode
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    per_turn = torch.zeros(len(rewards), num_turns, dtype=rewards.dtype, device=rewards.device)
    per_turn.scatter_add_(1, turn, rewards * agent)  # (E, K) r[i, k]
    turns_taken = torch.where(agent.any(dim=1), turn.max(dim=1).values + 1, 0)  # (E,) n_i
    reached = torch.arange(num_turns, device=rewards.device) < turns_taken[:, None]  # (E, K) k < n_i
    to_go = torch.zeros_like(per_turn)  # (E, K) R[i, k]
    running = torch.zeros_like(per_turn[:, 0])
    for k in reversed(range(num_turns)):
        running = per_turn[:, k] + discount * running
        to_go[:, k] = running
    to_go = to_go * reached
    groups = to_go.view(-1, group_size, num_turns)  # (B, G, K)
    counts = reached.view(-1, group_size, num_turns).float()  # (B, G, K)
    others = counts.sum(dim=1, keepdim=True) - counts  # (B, G, K) the other episodes that reached turn k
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / others.clamp(min=1)  # 0 where none did
    advantages = ((groups - baseline) * counts).view(-1, num_turns)  # (E, K)
    return advantages.gather(1, turn) * agent  # (E, T)
