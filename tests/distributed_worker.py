"""One process of the distributed tests (tests/test_distributed.py), run under torchrun or alone.

Usage: ``python distributed_worker.py SCENARIO MODEL_DIR OUT [ALGO]``. With one process (no launcher) it is the
single-process reference the distributed run is compared with. Every rank writes what the test checks under
``OUT`` (outside any run directory): ``rank{R}.pt`` (the trainable weights), ``rank{R}.json`` (metrics or the
error it raised), ``rank{R}_writes.json`` (the files it opened for writing in the run directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

import gymnasium as gym
import torch
from synthetic_task import NEW_TOKENS, WORDS, yes_rate

import textgym  # noqa: F401  (registers the envs)
from agents import GRPO, PPO, RLOO
from agents.rollout import RolloutCollector
from textgym.lm import distributed as dist

ALGOS = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO}
PROMPTS = [" ".join(WORDS[i : i + 2]) for i in range(8)]
SETTINGS = dict(batch_size=8, minibatch_size=4, epochs=2, learning_rate=1e-2, kl_coef=0.05, seed=3)
GROUP = dict(group_size=2)


def make_envs(model_dir: str, num_envs: int):
    return gym.make_vec(
        "TextGen-v0",
        num_envs=num_envs,
        model=model_dir,
        prompts=PROMPTS,
        max_prompt_tokens=4,
        max_new_tokens=NEW_TOKENS,
        reward_model=yes_rate,
    )


def make_agent(algo: str, model_dir: str, num_envs: int, run_dir: str | None = None, **overrides):
    extra = GROUP if algo != "ppo" else {}
    settings = {**SETTINGS, **extra, "tensorboard": False, **overrides}
    return ALGOS[algo](model_dir, make_envs(model_dir, num_envs), run_dir=run_dir, **settings)


def trainable_state(agent) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (gathered from the processes' shards under FSDP)."""
    from torch.distributed.tensor import DTensor

    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
        for name, p in agent.policy.named_parameters()
        if p.requires_grad
    }


def update(algo: str, model_dir: str, out: Path, fsdp: bool = False, microbatch_size: int | None = None) -> dict:
    """One update on the same global batch: the whole batch alone, this rank's share under torchrun (with the
    policy sharded by FSDP if ``fsdp``; each minibatch in passes of ``microbatch_size`` if given)."""
    from textgym.lm.models import load_lm

    adaptive = {"kl_target": 0.1, "kl_horizon": 100} if algo == "ppo" else {}  # β adapts by the whole batch
    agent = make_agent(
        algo, model_dir, num_envs=2, normalize_rewards=True, fsdp=fsdp, microbatch_size=microbatch_size, **adaptive
    )
    # The global batch, sampled identically on every rank by a collector of its own (seed 0) with the same
    # starting weights, of the prompts a single process would draw; each rank then trains on its share.
    reference = RolloutCollector(load_lm(model_dir), make_envs(model_dir, 4), seed=0)
    group = agent.config.group_size if algo != "ppo" else 1
    prompts = [p for p in PROMPTS[: agent.config.batch_size // group] for _ in range(group)]
    batch = reference.collect_prompts(prompts)
    share = batch.rows(dist.shard_range(len(batch), "batch_size"))
    metrics = agent.train_on_batch(share)
    torch.save(trainable_state(agent), out / f"rank{dist.rank()}.pt")
    if fsdp:  # the full weights, gathered, and a rollout by the sharded policy
        agent.save(out / "model")
        agent.collect()
    return metrics


def learn(
    algo: str, model_dir: str, out: Path, total: int, resume: bool = False, fsdp: bool = False, die: bool = False
) -> dict:
    run_dir = out / "run"
    written = watch_writes(run_dir)
    agent = make_agent(algo, model_dir, num_envs=2, run_dir=str(run_dir), checkpoint_every=1, fsdp=fsdp)
    if die and dist.rank() == 1:  # rank 1 dies in the middle of the second update, after one checkpoint
        update = agent.train_on_batch
        agent.train_on_batch = lambda batch: os._exit(3) if agent.iteration == 1 else update(batch)
    agent.learn(total, resume=resume, progress_bar=False)
    torch.save(trainable_state(agent), out / f"rank{dist.rank()}.pt")
    (out / f"rank{dist.rank()}_writes.json").write_text(json.dumps(sorted(set(written))))
    return {"history": agent.history, "episodes_seen": agent.episodes_seen, "prompts": collected_prompts(agent)}


def sft(model_dir: str, out: Path) -> dict:
    """Two epochs of SFT on 10 examples in batches of 4: the last batch of 2 gives each process one."""
    from agents import SFT

    data = [{"prompt": f"{a} {b}", "completion": f"{b} {a} yes"} for a, b in zip(WORDS, WORDS[1:] + WORDS[:1])]
    trainer = SFT(model_dir, data, batch_size=4, epochs=2, learning_rate=1e-2, chat_template=False)
    trainer.learn(progress_bar=False)
    torch.save({k: v.detach().clone() for k, v in trainer.model.named_parameters()}, out / f"rank{dist.rank()}.pt")
    trainer.save(out / "model")
    return {"losses": trainer.losses}


def reward_model(model_dir: str, out: Path) -> dict:
    """A Bradley–Terry reward model on the LM backbone: 7 prompts' pairs in batches of 4."""
    from reward_models.preferences import PreferencePair
    from reward_models.training import TrainConfig, train_reward_model

    pairs = [PreferencePair(w, f"{w} yes", f"{w} no") for w in WORDS[:5]]
    pairs += [PreferencePair(w, f"{w} yes yes", f"{w} maybe") for w in WORDS[3:8]]
    config = TrainConfig(backbone="lm", model=model_dir, epochs=2, batch_size=4, lr=1e-2, eval_fraction=0.0)
    result = train_reward_model(pairs, dataclasses.replace(config, progress=False), out_dir=out / "rm")
    model = result.model.model
    state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    torch.save(state, out / f"rank{dist.rank()}.pt")
    return {"losses": [h["loss"] for h in result.report["history"]]}


def reward_model_early_stopping(model_dir: str, out: Path) -> dict:
    """The LM-backbone reward model with early stopping (patience 2, 5 epochs) and held-out accuracies scripted to
    differ by rank: rank 0's best epoch is 2 (stop after 4), rank 1's would be 1 (stop after 3)."""
    from reward_models import training
    from reward_models.preferences import PreferencePair

    dist.init_distributed()  # before dist.rank(), which is 0 until the process group is joined
    accuracies = iter([[0.5, 1.0, 0.5, 0.5, 0.5], [1.0, 0.5, 0.5, 0.5, 0.5]][dist.rank()])
    training._held_out_metrics = lambda *_: {"eval_accuracy": next(accuracies), "eval_loss": 0.5}
    pairs = [PreferencePair(w, f"{w} yes", f"{w} no") for w in WORDS[:8]]
    config = training.TrainConfig(
        backbone="lm", model=model_dir, epochs=5, batch_size=4, lr=1e-2, eval_fraction=0.25, patience=2, progress=False
    )
    result = training.train_reward_model(pairs, config)
    model = result.model.model
    torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, out / f"rank{dist.rank()}.pt")
    report = result.report
    return {"epochs_run": len(report["history"]), "best_epoch": report["best_epoch"], "kept": report["kept_epoch"]}


def collected_prompts(agent) -> list[str]:
    """The prompts this rank rolls out in the next collect (drawn from a copy of the agent's generator)."""
    import copy

    rng = copy.deepcopy(agent.rng)
    prompts = []
    agent_collect = agent.collect_prompts
    agent.collect_prompts = lambda ps: prompts.extend(ps)  # record instead of rolling out
    saved, agent.rng = agent.rng, rng
    try:
        agent.collect()
    finally:
        agent.collect_prompts, agent.rng = agent_collect, saved
    return prompts


def watch_writes(run_dir: Path) -> list[str]:
    """Record every file this process opens for writing, renames, creates or removes inside ``run_dir``."""
    written: list[str] = []
    root = str(run_dir.resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode = args[1] or ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = any(ch in str(mode) for ch in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and os.path.abspath(args[0]).startswith(root):
                written.append(os.path.abspath(args[0]))
        elif event in ("os.rename", "os.replace", "os.mkdir", "shutil.rmtree", "os.remove"):
            if os.path.abspath(str(args[0])).startswith(root):
                written.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return written


def main() -> int:
    scenario, model_dir, out_dir = sys.argv[1:4]
    algo = sys.argv[4] if len(sys.argv) > 4 else "ppo"
    out = Path(out_dir)
    torch.set_num_threads(1)
    result: dict = {}
    try:
        if scenario == "update":
            result = update(algo, model_dir, out)
        elif scenario == "update_fsdp":
            result = update(algo, model_dir, out, fsdp=dist.env_world_size() > 1)
        elif scenario == "update_fsdp_microbatches":  # minibatches of 4 in passes of 3: a rank's 0-4 episodes in 0-2
            result = update(algo, model_dir, out, fsdp=dist.env_world_size() > 1, microbatch_size=3)
        elif scenario in ("learn", "learn_fsdp", "die"):
            resume = len(sys.argv) > 6
            fsdp, die = scenario == "learn_fsdp", scenario == "die"
            result = learn(algo, model_dir, out, int(sys.argv[5]), resume, fsdp=fsdp, die=die)
        elif scenario == "sft":
            result = sft(model_dir, out)
        elif scenario == "reward_model":
            result = reward_model(model_dir, out)
        elif scenario == "reward_model_early_stopping":
            result = reward_model_early_stopping(model_dir, out)
        elif scenario == "bad_world":  # 2 processes of 2 envs cannot share a batch of 6
            make_agent(algo, model_dir, num_envs=2, batch_size=6, minibatch_size=2)
        elif scenario == "bad_config":  # rank 1 was started with another learning rate
            make_agent(algo, model_dir, num_envs=2, learning_rate=1e-2 if os.environ.get("RANK") == "0" else 5e-3)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    except Exception as err:  # the test reads each rank's error
        (out / f"rank{dist.rank() if dist.is_initialized() else os.environ.get('RANK', 0)}.json").write_text(
            json.dumps({"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        )
        return 1
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
