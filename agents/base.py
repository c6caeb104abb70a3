"""What every LM agent shares: model set-up, the training loop, logging and resumable checkpoints.

An algorithm subclasses :class:`LMAgent` and supplies two methods, as Stable-Baselines3's algorithms do over
``OnPolicyAlgorithm``: :meth:`LMAgent.collect` (a batch of finished episodes from the rollout engine) and
:meth:`LMAgent.train_on_batch` (the update, returning its metrics). :meth:`LMAgent.learn` is the loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from agents.policy import ActorCritic
from agents.rollout import RolloutBatch, RolloutCollector, SamplingConfig
from agents.run_log import RunLog, write_json_atomic

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest.json"
# Settings that may change between a run and its resumption without making it another run.
_RESUMABLE_CHANGES = {"device", "reference_device", "checkpoint_every", "tensorboard", "samples_per_log"}


@dataclass
class AgentConfig:
    """Settings every LM agent shares. Algorithms extend it with their own."""

    learning_rate: float = 1e-5
    """AdamW step size."""
    batch_size: int = 16
    """Finished episodes per iteration (one rollout, then the update); a multiple of the env's ``num_envs``."""
    minibatch_size: int = 8
    """Episodes per gradient step; each minibatch is one forward pass over its whole sequences."""
    epochs: int = 1
    """Passes over each batch."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    clip_range: float = 0.2
    """PPO-style clipping of the probability ratio ``π/π_old``."""
    kl_coef: float = 0.05
    """β, the weight of the KL divergence to the frozen reference model."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once the approximate KL to the rollout policy exceeds 1.5× this."""
    temperature: float = 1.0
    """Sampling temperature; log-probs in the loss use the same temperature, so ratios stay consistent."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank (``peft``) instead of all weights; 0 trains everything."""
    seed: int = 0
    """Seeds weight init of new heads, sampling, prompt order and minibatch order."""
    device: str | None = None
    """Policy device; default ``cuda`` when available, else ``cpu``."""
    reference_device: str | None = None
    """Device of the frozen reference model; default: the policy's."""
    checkpoint_every: int = 10
    """Iterations between checkpoints (a final one is always written) when the agent has a ``run_dir``."""
    tensorboard: bool = True
    """Write TensorBoard event files next to ``progress.csv``."""
    samples_per_log: int = 4
    """Completions written to ``samples.jsonl`` each iteration."""

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "minibatch_size", "epochs", "temperature", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) exceeds batch_size ({self.batch_size}).")
        if self.kl_coef < 0 or self.ent_coef < 0 or self.clip_range <= 0:
            raise ValueError("kl_coef and ent_coef must be >= 0 and clip_range > 0.")


class LMAgent:
    """Base class of the LM agents: builds the policy and its reference, runs the loop, saves and resumes.

    Args:
        model: the policy's starting weights: ``None``/``"embedded"`` for SmolLM2-135M-Instruct, ``"tiny"``,
            or a local Hugging Face model directory. Its tokenizer must be the env's.
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
        from textgym.models import load_causal_lm, load_tokenizer, resolve_device, resolve_model_dir

        base = config or self.config_class()
        if not isinstance(base, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(base).__name__}.")
        self.config = dataclasses.replace(base, **overrides)
        c = self.config
        if not hasattr(envs, "num_envs") or not hasattr(envs, "tokenizer"):
            raise TypeError(
                f"{type(self).__name__} needs a textgym vector env (gym.make_vec('TextGen-v0', num_envs=N)); "
                f"got {type(envs).__name__}."
            )
        if c.batch_size % envs.num_envs:
            raise ValueError(
                f"batch_size={c.batch_size} is not a multiple of the env's num_envs={envs.num_envs}: every rollout "
                "fills whole waves of sub-envs. Change one of them."
            )
        self.model_name = str(resolve_model_dir(model))
        self.tokenizer = load_tokenizer(model)
        _check_same_tokenizer(self.tokenizer, envs.tokenizer, self.model_name)
        self.device = torch.device(resolve_device(c.device))
        torch.manual_seed(c.seed)
        self.envs = envs
        self.kl_coef = c.kl_coef  # adaptive controllers change it during training
        self.policy = ActorCritic(
            load_causal_lm(model, device=self.device),
            value_head=self.uses_value_head,
            separate_critic=getattr(c, "separate_critic", False),
            lora_rank=c.lora_rank,
            reference_device=c.reference_device,
        )
        self.optimizer = make_optimizer(self.policy.trainable_parameters(), c.learning_rate, self.device)
        self.collector = RolloutCollector(
            self.policy.generator_model, envs, SamplingConfig(temperature=c.temperature), seed=c.seed
        )
        self.rng = np.random.default_rng(c.seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.iteration = 0
        self.episodes_seen = 0
        self.history: list[dict[str, float]] = []
        self._log: RunLog | None = None  # open while learn() runs with a run_dir

    # --- what an algorithm supplies ------------------------------------------------------------------------
    def collect(self) -> RolloutBatch:
        """A batch of ``batch_size`` finished episodes (default: streamed from all sub-envs)."""
        return self.collector.collect(self.config.batch_size)

    def train_on_batch(self, batch: RolloutBatch) -> dict[str, float]:
        raise NotImplementedError

    # --- the loop ------------------------------------------------------------------------------------------
    def learn(self, total_episodes: int, resume: bool = False, progress_bar: bool = True) -> LMAgent:
        """Train until ``total_episodes`` episodes have been used, counting those of a resumed run.

        Args:
            total_episodes: episodes (completions) to train on in all.
            resume: continue from the last checkpoint in ``run_dir`` (written by a run of the same algorithm,
                model and settings). Without it, a ``run_dir`` that already holds a checkpoint is an error.
            progress_bar: show a tqdm bar with the mean reward and KL.
        """
        from tqdm.auto import tqdm

        log = self._open_run(resume)
        initial = min(self.episodes_seen, total_episodes)
        bar = tqdm(total=total_episodes, initial=initial, unit="episode", desc=self.algo, disable=not progress_bar)
        try:
            while self.episodes_seen < total_episodes:
                metrics = self._iteration()
                self.history.append(metrics)
                if log is not None:
                    log.log(self.episodes_seen, metrics)
                    if self.iteration % self.config.checkpoint_every == 0:
                        self._checkpoint()
                bar.update(min(int(metrics["rollout/episodes"]), total_episodes - bar.n))
                bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", kl=f"{metrics['train/kl_ref']:.3f}")
            if log is not None and self.iteration % self.config.checkpoint_every:
                self._checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        return self

    def _iteration(self) -> dict[str, float]:
        start, tokens_before = time.perf_counter(), self.collector.tokens_generated
        batch = self.collect()
        rollout_seconds = time.perf_counter() - start
        try:
            stats = self.train_on_batch(batch)
        except torch.OutOfMemoryError as err:
            raise RuntimeError(
                f"Out of GPU memory in a {self.algo} update. Lower minibatch_size (now "
                f"{self.config.minibatch_size}), batch_size ({self.config.batch_size}) or the env's "
                "max_new_tokens, train LoRA adapters (lora_rank=16), or put the reference elsewhere "
                "(reference_device='cpu')."
            ) from err
        self.collector.invalidate_cache()  # the cached keys/values came from the old weights
        seconds = time.perf_counter() - start
        self.iteration += 1
        self.episodes_seen += len(batch)
        returns = batch.returns.float()
        lengths = batch.completion_mask.sum(dim=1).float()
        if self._log is not None and self.config.samples_per_log:
            n = self.config.samples_per_log
            self._log.log_samples(self.episodes_seen, batch.prompts[:n], batch.completions[:n], returns[:n].tolist())
        return {
            "rollout/episodes": float(len(batch)),
            "rollout/reward_mean": returns.mean().item(),
            "rollout/reward_std": returns.std().item() if len(batch) > 1 else 0.0,
            "rollout/ep_len_mean": lengths.mean().item(),
            **stats,
            "time/rollout_seconds": rollout_seconds,
            "time/iteration_seconds": seconds,
            "time/completions_per_s": len(batch) / seconds,
            "time/tokens_per_s": (self.collector.tokens_generated - tokens_before) / seconds,
        }

    # --- shared pieces of updates --------------------------------------------------------------------------
    def minibatches(self, size: int) -> Iterator[torch.Tensor]:
        """Index tensors of shuffled minibatches of ``minibatch_size`` over ``size`` episodes."""
        order = torch.as_tensor(self.rng.permutation(size), device=self.device)
        for start in range(0, size, self.config.minibatch_size):
            yield order[start : start + self.config.minibatch_size]

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Log-probs ``(E, T)`` of the completions under the reference, or ``None`` when β = 0 and fixed: then
        the reference pass is skipped and ``train/kl_ref`` is logged as NaN."""
        if self.kl_coef == 0 and getattr(self.config, "kl_target", None) is None:
            return None
        width = batch.completion_ids.shape[1]
        with torch.no_grad(), self.autocast():
            return self.policy.reference_logprobs(batch.input_ids, batch.attention_mask, width, self.config.temperature)

    def optimizer_step(self, loss: torch.Tensor) -> float:
        """One clipped AdamW step on ``loss``; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        return float(norm)

    def autocast(self) -> Any:
        """bf16 autocast on GPUs that support it; full precision on CPU."""
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # --- saving and resuming -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face model directory (weights, tokenizer), the value head, optimizer and RNG state.

        ``AutoModelForCausalLM.from_pretrained(path)`` loads the trained policy (with ``lora_rank``,
        ``peft``'s ``AutoPeftModelForCausalLM`` does).
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.policy.save(out)
        self.tokenizer.save_pretrained(out)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": self.collector.generator.get_state(),
            },
            out / "optimizer.pt",
        )
        state = {
            "algo": self.algo,
            "model": self.model_name,
            "config": dataclasses.asdict(self.config),
            "iteration": self.iteration,
            "episodes_seen": self.episodes_seen,
            "kl_coef": self.kl_coef,
            "numpy_rng": self.rng.bit_generator.state,
        }
        write_json_atomic(out / STATE_FILE, state)

    def load(self, path: str | os.PathLike) -> None:
        """Restore weights, optimizer, counters and random state written by :meth:`save` of this run."""
        src = Path(path)
        state = json.loads((src / STATE_FILE).read_text())
        self._check_same_run(state, src)
        self.policy.load_weights(src)
        extra = torch.load(src / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"].cpu())
        self.collector.generator.set_state(extra["sampler_rng"].cpu())
        self.rng.bit_generator.state = state["numpy_rng"]
        self.iteration, self.episodes_seen, self.kl_coef = state["iteration"], state["episodes_seen"], state["kl_coef"]
        # A fresh env stream, different from the one the run started with, so prompts do not repeat.
        self.collector.seed = self.config.seed + self.iteration

    def _open_run(self, resume: bool) -> RunLog | None:
        if self.run_dir is None:
            if resume:
                raise ValueError("resume=True needs the run_dir the run was checkpointed to.")
            return None
        latest = self.run_dir / LATEST_FILE
        if latest.exists() and self._log is None:
            if not resume:
                raise FileExistsError(
                    f"{self.run_dir} already holds a checkpoint. Pass resume=True to continue that run, or choose "
                    "another run_dir."
                )
            self.load(self.run_dir / json.loads(latest.read_text())["checkpoint"])
        self._log = RunLog(self.run_dir, tensorboard=self.config.tensorboard)
        self._log.truncate(self.episodes_seen)  # rows of iterations after the checkpoint are redone
        return self._log

    def _checkpoint(self) -> None:
        """Write a checkpoint so that a crash at any moment leaves the previous one intact and findable."""
        final = self.run_dir / f"checkpoint-{self.iteration:06d}"
        tmp = self.run_dir / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.save(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_json_atomic(self.run_dir / LATEST_FILE, {"checkpoint": final.name})
        for old in self.run_dir.glob("checkpoint-*"):
            if old != final:
                shutil.rmtree(old)

    def _check_same_run(self, state: dict[str, Any], src: Path) -> None:
        ours = dataclasses.asdict(self.config)
        theirs = state.get("config", {})
        differ = sorted(
            k for k in set(ours) | set(theirs) if k not in _RESUMABLE_CHANGES and ours.get(k) != theirs.get(k)
        )
        if state.get("algo") != self.algo or state.get("model") != self.model_name or differ:
            raise ValueError(
                f"{src} holds a checkpoint of another run (algo {state.get('algo')!r}, model {state.get('model')!r}"
                f"{', differing in ' + ', '.join(differ) if differ else ''}); this agent is {self.algo!r} on "
                f"{self.model_name!r}. Use another run_dir, or the same settings to resume."
            )


def make_optimizer(params: list[torch.nn.Parameter], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch has it: a 135M model's step takes 0.08 s instead of 0.8 s on CPU."""
    return torch.optim.AdamW(params, lr=lr, fused=device.type in ("cpu", "cuda"))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over ``dim``, or all)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``values`` to mean 0 and std 1 over the masked entries."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss per token, with the ratio's clip indicator and approximate KL (k3) per token."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    clipped = ((ratio - 1).abs() > clip_range).float()
    approx_kl = (ratio - 1) - log_ratio
    return loss, clipped, approx_kl


def _check_same_tokenizer(policy_tokenizer: Any, env_tokenizer: Any, model_name: str) -> None:
    if policy_tokenizer.get_vocab() != env_tokenizer.get_vocab():
        raise ValueError(
            f"The policy's tokenizer ({model_name}) is not the env's: its actions would be other tokens. "
            f"Make the env with the same model: gym.make_vec(..., model={model_name!r})."
        )
