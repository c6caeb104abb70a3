"""Resumable checkpoints of the LM agents: what a checkpoint holds, and how a run directory keeps its latest one.

A checkpoint holds everything a run needs to continue as if never stopped (weights, optimizer and schedule, β,
the counters, the running reward statistics and every random stream); a run directory holds the latest complete
one, named by ``latest.json``, and the run's logs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from agents.losses import RunningMoments
from agents.run_log import RunLog, write_json_atomic
from textgym.lm import distributed as dist

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest.json"
# Settings that may change between a run and its resumption without making it another run: where and how often it
# writes, and how many episodes a pass holds (the steps are the same; a smaller machine can take a run over).
RESUMABLE_CHANGES = {
    "device",
    "reference_device",
    "checkpoint_every",
    "tensorboard",
    "samples_per_log",
    "microbatch_size",
    "eval_batch_size",
}


class Checkpointing:
    """Saving, loading and resuming, inherited by [LMAgent][agents.base.LMAgent]: it writes and restores the agent's
    policy, optimizer and schedule, counters, β, reward statistics and random streams, and keeps ``run_dir``'s
    latest checkpoint and the run's log."""

    def save(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face model directory (weights, tokenizer), the value head, optimizer and RNG state.

        ``AutoModelForCausalLM.from_pretrained(path)`` loads the trained policy (with ``lora_rank``,
        ``peft``'s ``AutoPeftModelForCausalLM`` does).

        Distributed, every process must call it (it gathers each one's sampling state); only rank 0 writes.
        """
        sampler_rngs = dist.all_gather_object(self.collector.generator.get_state())  # CPU generators: any device
        sharded = dist.is_sharded(self.policy.lm)
        lm_weights = dist.full_state_dict(self.policy.lm) if sharded else None  # gathered by every process
        optimizer = _full_optimizer_state(self.policy, self.optimizer) if sharded else self.optimizer.state_dict()
        if not dist.is_main():
            return
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.policy.save(out, lm_weights)
        self.tokenizer.save_pretrained(out)
        torch.save(
            {
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rngs": sampler_rngs,  # one per process of a distributed run
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
            "return_stats": dataclasses.asdict(self.return_stats),
            "numpy_rng": self.rng.bit_generator.state,
            "world_size": self.world_size,
        }
        write_json_atomic(out / STATE_FILE, state)

    def load(self, path: str | os.PathLike) -> None:
        """Restore everything [save][agents.checkpoint.Checkpointing.save] wrote for this run, so training continues as
        if never stopped: the weights (policy, value head), optimizer and schedule, β, the counters, the running reward
        statistics, and every random stream (prompt order, minibatch order, sampling, torch's). The env itself is not
        restored: each batch starts its episodes with a reset that sets the prompts, so it needs no state.

        Distributed, every process reads the checkpoint (``run_dir`` on a file system they share) and takes its
        own sampling stream, so the run must resume with as many processes as wrote it."""
        src = Path(path)
        state = json.loads((src / STATE_FILE).read_text())
        self._check_same_run(state, src)
        if state.get("world_size", 1) != self.world_size:
            raise ValueError(
                f"{src} was written by a run of {state.get('world_size', 1)} processes; resume it with as many "
                f"(this run has {self.world_size}): each process continues its own sampling stream."
            )
        self.policy.load_weights(src)
        extra = torch.load(src / "optimizer.pt", map_location=self.device, weights_only=True)
        if dist.is_sharded(self.policy.lm):
            _load_full_optimizer_state(self.policy, self.optimizer, extra["optimizer"])
        else:
            self.optimizer.load_state_dict(extra["optimizer"])
        if extra.get("scheduler") is not None:  # None: written before any schedule was set, by an older version
            self.scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["torch_rng"].cpu())
        sampler_rngs = extra["sampler_rngs"] if "sampler_rngs" in extra else [extra["sampler_rng"]]  # or older
        self.collector.generator.set_state(sampler_rngs[self.rank].cpu())
        self.rng.bit_generator.state = state["numpy_rng"]
        self.return_stats = RunningMoments(**state.get("return_stats", {}))
        self.iteration, self.episodes_seen, self.kl_coef = state["iteration"], state["episodes_seen"], state["kl_coef"]

    def _open_run(self, resume: bool) -> RunLog | None:
        if self.run_dir is None:
            if resume:
                raise ValueError("resume=True needs the run_dir the run was checkpointed to.")
            return None
        latest = self.run_dir / LATEST_FILE
        # Rank 0 decides, so that every rank takes the same branch (and raises the same error).
        found = dist.broadcast_object(json.loads(latest.read_text())["checkpoint"] if latest.exists() else None)
        if found is not None and not self._resumed:
            if not resume:
                raise FileExistsError(
                    f"{self.run_dir} already holds a checkpoint. Pass resume=True to continue that run, or choose "
                    "another run_dir."
                )
            self.load(self.run_dir / found)
        self._resumed = True  # a second learn() on this agent continues it
        if not dist.is_main():
            return None
        self._log = RunLog(self.run_dir, tensorboard=self.config.tensorboard)
        self._log.truncate(self.episodes_seen)  # rows of iterations after the checkpoint are redone
        return self._log

    def _checkpoint(self) -> None:
        """Write a checkpoint so that a crash at any moment leaves the previous one intact and findable."""
        final = self.run_dir / f"checkpoint-{self.iteration:06d}"
        tmp = self.run_dir / f".{final.name}.tmp"
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        self.save(tmp)  # every rank takes part; rank 0 writes
        if dist.is_main():
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_json_atomic(self.run_dir / LATEST_FILE, {"checkpoint": final.name})
            for old in self.run_dir.glob("checkpoint-*"):
                if old != final:
                    shutil.rmtree(old)
        dist.barrier()  # no rank runs on (and could be killed) before the checkpoint is complete

    def _check_same_run(self, state: dict[str, Any], src: Path) -> None:
        ours = dataclasses.asdict(self.config)
        theirs = state.get("config", {})
        # A setting added since the checkpoint was written (e.g. turn_credit) ran at its default then.
        added = {f.name: f.default for f in dataclasses.fields(self.config) if f.default is not dataclasses.MISSING}
        theirs = {**{k: v for k, v in added.items() if k not in theirs}, **theirs}
        differ = sorted(
            k for k in set(ours) | set(theirs) if k not in RESUMABLE_CHANGES and ours.get(k) != theirs.get(k)
        )
        if state.get("algo") != self.algo or state.get("model") != self.model_name or differ:
            raise ValueError(
                f"{src} holds a checkpoint of another run (algo {state.get('algo')!r}, model {state.get('model')!r}"
                f"{', differing in ' + ', '.join(differ) if differ else ''}); this agent is {self.algo!r} on "
                f"{self.model_name!r}. Use another run_dir, or the same settings to resume."
            )


def _full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An optimizer's whole state over FSDP-sharded parameters, keyed by parameter name (every process calls)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def _load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
