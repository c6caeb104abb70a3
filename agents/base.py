"""What every LM agent shares: model set-up, the training loop, and the pieces of updates (rewards, KL, steps).

An algorithm subclasses [LMAgent][agents.base.LMAgent] and supplies
[LMAgent.train_on_batch][agents.base.LMAgent.train_on_batch] (the update, returning its metrics), as Stable-Baselines3's
algorithms do over ``OnPolicyAlgorithm``; [LMAgent.learn][agents.base.LMAgent.learn] is the loop.

Every batch is on-policy: [LMAgent.collect][agents.base.LMAgent.collect] draws ``batch_size`` prompts with the agent's
own random generator and the rollout engine runs each to its end with the current weights, so every token of an update
was sampled by the weights its log-prob is credited to, and a resumed run continues the same prompt stream.

Data-parallel (launched by ``torchrun``; [textgym.lm.distributed][textgym.lm.distributed]): every process draws the same
``batch_size`` prompts and rolls out its contiguous share of them on its own envs; the update normalises each
loss by the counts of the whole batch and sums the gradients over the processes, so the step is the one a
single process would take on the whole batch (docs/distributed.md). Only rank 0 writes logs and checkpoints.

Around it: the settings ([agents.config][agents.config]), the losses' pure functions ([agents.losses][agents.losses]),
the optimizer and learning-rate schedule ([agents.optim][agents.optim]), precision and the sampling copy
([agents.precision][agents.precision]), and checkpoints and resuming ([agents.checkpoint][agents.checkpoint]).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from agents.checkpoint import Checkpointing
from agents.config import AgentConfig, check_env, check_same_tokenizer
from agents.losses import RunningMoments, global_masked_mean, kl_estimate, truncated_importance_weights
from agents.optim import LRSchedule, make_optimizer
from agents.policy import ActorCritic
from agents.precision import autocast, keep_freed_host_memory, resolve_precision, sampling_model
from agents.rollout import RolloutBatch, RolloutCollector
from agents.run_log import RunLog
from agents.sampling import SamplingConfig
from agents.sampling_copy import copy_weights
from textgym.lm import distributed as dist
from textgym.lm.cache import last_real_column

# Settings that may differ between the processes of one distributed run.
_PER_PROCESS = {"device", "reference_device"}


class LMAgent(Checkpointing):
    """Base class of the LM agents: builds the policy and its reference, runs the loop, saves and resumes.

    Args:
        model: the policy's starting weights: ``None``/``"embedded"`` for SmolLM2-135M-Instruct, ``"tiny"``,
            or a local Hugging Face model directory (loaded as float32 whatever dtype it was saved in), a causal
            LM or a T5-family encoder–decoder (detected from its config). Its tokenizer must be the env's.
        envs: a textgym vector env, e.g. ``gym.make_vec("TextGen-v0", num_envs=8)``.
        config: the algorithm's config; ``overrides`` replace single fields (``PPO(m, envs, kl_coef=0.1)``).
        run_dir: where logs and checkpoints go; ``None`` keeps them in memory only (``agent.history``).
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    algo: ClassVar[str] = "base"
    uses_value_head: ClassVar[bool] = False

    def __init__(
        self,
        model: str | os.PathLike | None,
        envs: VectorEnv,
        config: AgentConfig | None = None,
        run_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> None:
        from textgym.lm.models import load_lm, load_tokenizer, resolve_device, resolve_model_dir

        base = config or self.config_class()
        if not isinstance(base, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(base).__name__}.")
        self.config = dataclasses.replace(base, **overrides)
        c = self.config
        dist.init_distributed()  # joins the launcher's process group; nothing without one
        self.rank, self.world_size = dist.rank(), dist.world_size()
        check_env(envs, c, type(self).__name__, self.world_size)
        with dist.main_process_first():  # rank 0 converts or builds a cached model before the others look for it
            self.model_name = str(resolve_model_dir(model))
        shared = {k: v for k, v in dataclasses.asdict(c).items() if k not in _PER_PROCESS}
        dist.check_same_on_all_ranks(
            "configuration", {"algo": self.algo, "config": shared, "num_envs": envs.num_envs, "model": model}
        )
        self.tokenizer = load_tokenizer(model)
        check_same_tokenizer(self.tokenizer, envs.tokenizer, self.model_name)
        self.device = torch.device(resolve_device(c.device))
        self.precision = resolve_precision(c.precision, self.device)
        if c.keep_host_memory and self.device.type == "cpu":
            keep_freed_host_memory()
        torch.manual_seed(c.seed)
        self.envs = envs
        self.kl_coef = c.kl_coef  # adaptive controllers change it during training
        self.policy = ActorCritic(
            load_lm(model, device=self.device, dtype=torch.float32),  # master weights in fp32; causal or seq2seq
            value_head=self.uses_value_head,
            separate_critic=getattr(c, "separate_critic", False),
            lora_rank=c.lora_rank,
            reference_device=c.reference_device,
        )
        if c.fsdp:
            if self.world_size == 1:
                raise ValueError(
                    "fsdp=True shards the model over the processes of a distributed run, and this is one process: "
                    "launch with torchrun --nproc_per_node=N (N > 1), or drop fsdp."
                )
            self.policy.shard()
        self.optimizer = make_optimizer(self.parameter_groups(), c.learning_rate, self.device, c.weight_decay)
        self.scheduler = LRSchedule(self.optimizer, c.lr_schedule, c.warmup_steps)  # its span is set by learn()
        # Each process samples its own stream: with the same seed, the ranks of a group method would draw the
        # same completions of the same prompt. Rank 0's is the single-process stream.
        seed = c.seed + 1_000_003 * self.rank
        if c.rollout_backend == "vllm":
            if self.world_size > 1:
                raise ValueError(
                    "rollout_backend='vllm' runs one vLLM engine in one process; this run has "
                    f"{self.world_size}. Launch one process, or use rollout_backend='engine'."
                )
            if self.policy.lm.config.is_encoder_decoder:
                raise ValueError(
                    "rollout_backend='vllm' serves causal LMs here; an encoder-decoder policy samples with "
                    "rollout_backend='engine'."
                )
            from agents.vllm_rollout import VLLMCollector, context_length, start_engine

            self.sampling_lm = None  # vLLM holds the sampler's weights
            engine = start_engine(
                self.model_name, context_length(envs), c.vllm_dtype, seed, c.vllm_gpu_memory_utilization
            )
            self.collector: RolloutCollector | VLLMCollector = VLLMCollector(
                engine, envs, c.temperature, seed, self.device
            )
        else:
            self.sampling_lm = self._sampling_model()
            self.collector = RolloutCollector(self.sampling_lm, envs, SamplingConfig(temperature=c.temperature), seed)
        self.sync_seconds = 0.0  # spent pushing the weights to the sampler (the bf16 copy, vLLM) this iteration
        self.rng = np.random.default_rng(c.seed)
        self.return_stats = RunningMoments()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.iteration = 0
        self.episodes_seen = 0
        self.history: list[dict[str, float]] = []
        self._log: RunLog | None = None  # open while learn() runs with a run_dir (on rank 0 only)
        self._resumed = False  # learn() has looked for a checkpoint to continue

    # --- what an algorithm supplies ------------------------------------------------------------------------
    def collect(self) -> RolloutBatch:
        """``batch_size`` finished episodes, all sampled by the current weights, of prompts drawn uniformly from
        the env's prompt set with the agent's generator (distinct while the set is large enough).

        Distributed, every process draws the same prompts (the generators are equal) and rolls out its
        contiguous share: the shares together are the single-process batch's prompts."""
        pool = self.envs.prompts
        n = self.config.batch_size
        chosen = self.rng.choice(len(pool), size=n, replace=len(pool) < n)
        return self.collect_prompts([pool[i] for i in chosen][dist.shard_range(n, "batch_size")])

    def collect_prompts(self, prompts: list[str]) -> RolloutBatch:
        """One episode per prompt, sampled by the current weights: by vLLM or (under bf16) the bfloat16 copy, the
        weights pushed to it first ([sync_sampler][agents.base.LMAgent.sync_sampler]); else by the policy under the
        agent's autocast (with FSDP, by the gathered weights)."""
        if self.sync_sampler():
            return self.collector.collect_prompts(prompts)
        with self.autocast(), dist.gathered_for_generation(self.policy.lm):
            return self.collector.collect_prompts(prompts)

    def sync_sampler(self) -> bool:
        """Push the current weights to a sampler that keeps its own copy of them (vLLM's engine, the bfloat16
        copy), adding the time taken to ``sync_seconds``; whether there is one."""
        start = time.perf_counter()
        if self.config.rollout_backend == "vllm":
            self.collector.load_weights(self.policy.generator_model)
        elif self.sampling_lm is not self.policy.generator_model:
            copy_weights(self.policy.generator_model, self.sampling_lm)
        else:
            return False
        self.sync_seconds += time.perf_counter() - start
        return True

    def _sampling_model(self) -> torch.nn.Module:
        """The model the rollout engine samples with ([sampling_model][agents.precision.sampling_model]); LoRA and FSDP
        sample with the policy's own modules, under autocast."""
        lm = self.policy.generator_model
        if self.policy.uses_lora or self.config.fsdp:
            return lm
        return sampling_model(lm, self.precision, self.device, self.envs.num_envs)

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, float]:
        """The update on one on-policy batch, returning its metrics (SB3's names, e.g. ``train/approx_kl``)."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (PPO gives the critic its own learning rate)."""
        return [{"params": self.policy.trainable_parameters()}]

    # --- the loop ------------------------------------------------------------------------------------------
    def learn(
        self,
        total_episodes: int,
        resume: bool = False,
        progress_bar: bool = True,
        schedule_episodes: int | None = None,
    ) -> LMAgent:
        """Train until ``total_episodes`` episodes have been used, counting those of a resumed run.

        Args:
            total_episodes: episodes (completions) to train on in all.
            resume: continue from the last checkpoint in ``run_dir`` (written by a run of the same algorithm,
                model and settings). Without it, a ``run_dir`` that already holds a checkpoint is an error.
            progress_bar: show a tqdm bar with the mean reward and KL.
            schedule_episodes: the episodes of the whole run, from its start, that the learning-rate schedule
                spans (``"linear"`` and ``"cosine"`` reach 0 at its end). ``None``: ``total_episodes``, or the
                span set before (by an earlier call, or the resumed checkpoint) if that is longer. Pass it when
                training in slices (``learn(n)``, ``learn(2 * n)``, ...): each slice would otherwise end the
                schedule it extends, and the rate would fall to 0 at the end of every call.
        """
        from tqdm.auto import tqdm

        log = self._open_run(resume)  # a resumed checkpoint restores the schedule, its span included
        self._set_schedule_span(total_episodes, schedule_episodes)
        initial = min(self.episodes_seen, total_episodes)
        show = progress_bar and dist.is_main()
        bar = tqdm(total=total_episodes, initial=initial, unit="episode", desc=self.algo, disable=not show)
        try:
            while self.episodes_seen < total_episodes:
                metrics = self._iteration()
                self.history.append(metrics)
                if log is not None:
                    log.log(self.episodes_seen, metrics)
                if self.run_dir is not None and self.iteration % self.config.checkpoint_every == 0:
                    self._checkpoint()
                bar.update(min(int(metrics["rollout/episodes"]), total_episodes - bar.n))
                bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", kl=f"{metrics['train/kl_ref']:.3f}")
            if self.run_dir is not None and self.iteration % self.config.checkpoint_every:
                self._checkpoint()
        except Exception as err:
            if self.world_size > 1 and hasattr(err, "add_note"):  # Python >= 3.11
                err.add_note(
                    f"(rank {self.rank} of {self.world_size}) If another process failed or stopped first, its error "
                    "is the cause. The last complete checkpoint in run_dir is intact: relaunch with resume=True "
                    "(--resume) and as many processes."
                )
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
        return self

    def _set_schedule_span(self, total_episodes: int, schedule_episodes: int | None) -> None:
        """Size the learning-rate schedule for [learn][agents.base.LMAgent.learn] (see its ``schedule_episodes``)."""
        if schedule_episodes is not None:
            if schedule_episodes <= 0:
                raise ValueError(f"schedule_episodes must be positive (or None), got {schedule_episodes}.")
            self.scheduler.set_total_steps(self.optimizer_steps(schedule_episodes))
            return
        steps, span = self.optimizer_steps(total_episodes), self.scheduler.total_steps
        ended = span is not None and self.scheduler.steps >= span
        if ended and steps > span and self.config.lr_schedule != "constant":
            warnings.warn(
                f"The {self.config.lr_schedule} learning-rate schedule ended with the last learn(); this call extends "
                f"it to {total_episodes} episodes, so the rate rises from 0 again. To train in slices along one "
                "schedule, pass learn(..., schedule_episodes=<the whole run's episodes>).",
                stacklevel=3,
            )
        self.scheduler.set_total_steps(max(steps, span or 0))

    def _iteration(self) -> dict[str, float]:
        start, tokens_before = time.perf_counter(), self.collector.tokens_generated
        self.sync_seconds = 0.0
        batch = self.collect()
        rollout_seconds = time.perf_counter() - start
        try:
            stats = self.train_on_batch(batch)
        except torch.OutOfMemoryError as err:
            raise RuntimeError(
                f"Out of GPU memory in a {self.algo} update. Set microbatch_size (now {self.config.microbatch_size}) "
                "below minibatch_size for the update (the same steps, fewer episodes per pass), eval_batch_size "
                f"(now {self.eval_batch_size}) for the passes without gradients, "
                "or the env's max_new_tokens; train LoRA adapters (lora_rank=16), or put the reference elsewhere "
                "(reference_device='cpu')."
            ) from err
        self.collector.invalidate_cache()  # the cached keys/values came from the old weights
        seconds = time.perf_counter() - start
        # The whole batch's figures, whatever the number of processes: each gathers every rank's episodes.
        per_episode = torch.stack(
            [batch.returns.float(), batch.completion_mask.sum(dim=1).float(), (~batch.terminated).float()], dim=1
        )  # (E, 3)
        returns, lengths, truncated = dist.all_gather_cat(per_episode.cpu()).unbind(dim=1)  # each (E_global,)
        tokens = dist.all_reduce_sum(torch.tensor([float(self.collector.tokens_generated - tokens_before)]))
        episodes = len(returns)
        self.iteration += 1
        self.episodes_seen += episodes
        if self._log is not None and self.config.samples_per_log:
            n = self.config.samples_per_log
            self._log.log_samples(self.episodes_seen, batch.prompts[:n], batch.completions[:n], returns[:n].tolist())
        return {
            "rollout/episodes": float(episodes),
            "rollout/reward_mean": returns.mean().item(),
            "rollout/reward_std": returns.std().item() if episodes > 1 else 0.0,
            "rollout/ep_len_mean": lengths.mean().item(),
            "rollout/truncated_fraction": truncated.mean().item(),
            **stats,
            "train/learning_rate": self.optimizer.param_groups[0]["lr"],
            "time/rollout_seconds": rollout_seconds,
            "time/weight_sync_seconds": self.sync_seconds,
            "time/weight_sync_share": self.sync_seconds / seconds,
            "time/iteration_seconds": seconds,
            "time/completions_per_s": episodes / seconds,
            "time/tokens_per_s": tokens.item() / seconds,
        }

    # --- shared pieces of updates --------------------------------------------------------------------------
    @property
    def one_step_per_batch(self) -> bool:
        """One gradient step per batch from one pass (one epoch, one minibatch, not split into micro-batches): the
        update's only pass runs on the weights that sampled the batch, so it gives π_old's log-probs (and values)
        itself."""
        c = self.config
        one_pass = c.microbatch_size is None or c.microbatch_size >= c.minibatch_size
        return c.epochs == 1 and c.minibatch_size >= c.batch_size and one_pass

    def optimizer_steps(self, episodes: int) -> int:
        """The optimizer steps of training on ``episodes`` episodes, in whole batches, without early stops."""
        c = self.config
        return math.ceil(episodes / c.batch_size) * c.epochs * math.ceil(c.batch_size / c.minibatch_size)

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.minibatch_size

    def minibatches(self, size: int) -> Iterator[tuple[torch.Tensor, float]]:
        """Shuffled minibatches of ``minibatch_size`` episodes of the whole batch, as ``(index, weight)``: the
        indices of this process's ``size`` episodes in the minibatch, and 1.0.

        Distributed, the order is a permutation of the whole batch (the same on every rank) and each rank takes
        its own episodes of each minibatch, so the minibatches are the single-process ones. A rank with none in
        a minibatch gets its first episode with weight 0.0: it makes the same forward and backward passes as
        the others (FSDP needs them in step) and adds nothing to the loss.
        """
        total = size * self.world_size
        first = self.rank * size  # this rank's episodes are first .. first + size - 1 of the whole batch
        order = torch.as_tensor(self.rng.permutation(total), device=self.device)
        for start in range(0, total, self.config.minibatch_size):
            chosen = order[start : start + self.config.minibatch_size]
            local = chosen[(chosen >= first) & (chosen < first + size)] - first
            yield (local, 1.0) if len(local) else (torch.zeros(1, dtype=torch.long, device=self.device), 0.0)

    def microbatches(self, index: torch.Tensor, weight: float) -> Iterator[tuple[torch.Tensor, float]]:
        """One minibatch of [minibatches][agents.base.LMAgent.minibatches] in forward and backward passes of at
        most ``microbatch_size`` episodes, as ``(index, weight)``; the whole of it without ``microbatch_size``.

        Distributed, every process makes as many passes as the one with the most episodes in the minibatch (FSDP
        needs them in step); a process with fewer makes its extra passes on one episode with weight 0.0."""
        size = self.config.microbatch_size
        if size is None:
            yield index, weight
            return
        parts = index.split(size) if weight else ()
        passes = len(parts)
        if self.world_size > 1:
            passes = int(dist.all_gather_cat(torch.tensor([passes], device=self.device)).max())
        for i in range(passes):
            yield (parts[i], weight) if i < len(parts) else (index[:1], 0.0)

    def loss_mask(self, batch: RolloutBatch) -> torch.Tensor:
        """``(E, T)`` float: the completion tokens the loss sees (truncated ones left out if so configured)."""
        mask = batch.completion_mask.float()
        if self.config.mask_truncated_completions:
            mask = mask * batch.terminated[:, None].float()
        return mask

    def task_rewards(self, batch: RolloutBatch) -> torch.Tensor:
        """Per-token task rewards ``(E, T)``: the env's, with the missing-EOS penalty, normalisation and clipping
        of the config applied (in that order)."""
        c = self.config
        rewards = batch.rewards.float().clone()
        if c.missing_eos_penalty is not None:
            last = last_real_column(batch.completion_mask)  # (E,) each episode's last step
            rows = torch.arange(len(batch), device=rewards.device)
            rewards[rows, last] -= c.missing_eos_penalty * (~batch.terminated).float()
        if c.normalize_rewards:  # with every process's returns, so all keep the same statistics
            self.return_stats.update(dist.all_gather_cat(rewards.sum(dim=1)))
            rewards = rewards / self.return_stats.std
        if c.reward_clip is not None:
            rewards = rewards.clamp(-c.reward_clip, c.reward_clip) * batch.completion_mask
        return rewards

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Log-probs ``(E, T)`` of the completions under the reference, or ``None`` when β = 0 and fixed: then
        the reference pass is skipped and ``train/kl_ref`` is logged as NaN."""
        if self.kl_coef == 0 and getattr(self.config, "kl_target", None) is None:
            return None
        width = batch.completion_ids.shape[1]
        with self.autocast():
            return self.policy.reference_logprobs(
                batch.input_ids,
                batch.attention_mask,
                width,
                self.config.temperature,
                chunk_size=self.eval_batch_size,
                keep=batch.completion_mask.bool(),
            )

    def kl_penalty(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
        """Per-token KL(π‖π_ref) estimate of the configured ``kl_estimator`` (differentiable in ``logprobs``)."""
        return kl_estimate(logprobs, ref_logprobs, self.config.kl_estimator)

    def step_kl(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """[kl_penalty][agents.base.LMAgent.kl_penalty] on the episodes' steps (``mask``), 0 elsewhere; all 0 without a
        reference pass."""
        return torch.zeros_like(mask) if ref_logprobs is None else self.kl_penalty(logprobs, ref_logprobs) * mask

    def sampler_correction(
        self, batch: RolloutBatch, old_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The sampler's drift from π_old on the batch's steps (``mask``), and its correction (``tis_cap``).

        Returns the weights ``(E, T)`` of each token's policy-gradient term, ``min(π_old / π_sampler, tis_cap)``
        ([truncated_importance_weights][agents.losses.truncated_importance_weights]; 1 with ``tis_cap=None``), and
        the drift's statistics over every process's tokens: the mean and the largest ``|log π_old − log π_sampler|``,
        the ratio's mean and the share of tokens whose ratio the cap cut. The algorithms multiply the advantages by
        the weights: a positive factor on the advantage is the same factor on the clipped surrogate of that token."""
        cap = self.config.tis_cap
        log_ratio = (old_logprobs - batch.logprobs).detach() * mask  # (E, T) log π_old/π_sampler
        ratio = log_ratio.exp()
        if cap is None:
            weights, capped = torch.ones_like(ratio), torch.zeros_like(ratio)
        else:
            weights, capped = truncated_importance_weights(old_logprobs, batch.logprobs, cap), (ratio > cap).float()
        largest = dist.all_gather_cat(log_ratio.abs().max().reshape(1)).max()
        return weights, {
            "train/sampler_logprob_error": global_masked_mean(log_ratio.abs(), mask).item(),
            "train/sampler_logprob_error_max": largest.item(),
            "train/tis_ratio_mean": global_masked_mean(ratio, mask).item(),
            "train/tis_capped_fraction": global_masked_mean(capped, mask).item(),
        }

    @staticmethod
    def episode_kl_to_reference(
        old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, mask: torch.Tensor
    ) -> float:
        """The batch's mean over episodes (of every process) of ``Σ_t log π_old − log π_ref``, the logged
        ``train/kl_ref``; NaN without a reference pass."""
        if ref_logprobs is None:
            return float("nan")
        return global_masked_mean(((old_logprobs - ref_logprobs) * mask).sum(1), torch.ones_like(mask[:, 0])).item()

    def kl_exceeded(self, approx_kl: float) -> bool:
        """Whether a minibatch's approximate KL to π_old (of the whole minibatch, the same on every rank) calls
        for stopping this iteration's epochs."""
        return self.config.target_kl is not None and approx_kl > 1.5 * self.config.target_kl

    @staticmethod
    def minibatch_means(stats: dict[str, list[float]]) -> dict[str, float]:
        """Each metric's mean over the iteration's minibatches. ``train/grad_norm`` is always there, NaN when
        ``target_kl`` stopped the iteration at its first minibatch, before any step: every iteration logs the
        same columns (the run log refuses a row with others)."""
        means = {name: float(np.mean(values)) for name, values in stats.items() if values}
        return {**means, "train/grad_norm": means.get("train/grad_norm", float("nan"))}

    def optimizer_step(self) -> float:
        """One clipped AdamW step on the gradients the minibatch's passes left (and one step of the schedule);
        returns the gradient norm.

        Each pass's loss is its share of the minibatch's (normalised by the whole minibatch's counts,
        [MinibatchCounts][agents.losses.MinibatchCounts]), so the sum of the passes' and the ranks' gradients is
        the gradient of one pass over the minibatch; it is clipped after the sum. The gradients are freed right
        after the step, not before the next backward: the next forward pass then runs without them in memory
        (the policy's size in float32 less at the peak, and no fresh pages to fault in at the second update,
        which took twice as long as the later ones when the peak grew there)."""
        dist.all_reduce_gradients(self.policy.trainable_parameters())
        norm = dist.clip_grad_norm_(self.policy.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(norm)

    def finish_minibatch(self, terms: torch.Tensor, names: tuple[str, ...], stats: dict[str, list[float]]) -> bool:
        """Log the minibatch's losses (``terms``, this process's shares, summed over the processes into ``stats``
        under ``names``) and step on the gradients its passes left; returns whether to go on. When its approximate
        KL to π_old exceeds ``target_kl``'s bound, its gradients are dropped instead, as SB3 does, and the
        iteration stops."""
        totals = dist.all_reduce_sum(terms).tolist()  # the whole minibatch's, on every rank
        for name, total in zip(names, totals):
            stats[f"train/{name}"].append(total)
        if self.kl_exceeded(stats["train/approx_kl"][-1]):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        stats["train/grad_norm"].append(self.optimizer_step())
        return True

    def autocast(self) -> Any:
        """bfloat16 autocast when ``precision`` resolved to bf16 (on any device), else full precision."""
        return autocast(self.precision, self.device)
