"""``textgym train``: SFT, PPO, GRPO or RLOO from the command line.

Examples::

    textgym train --algo sft --data instructions --out runs/sft
    textgym train --algo ppo --env TextGen-v0 --model runs/sft --num-envs 8 --total-episodes 2000 \\
        --out runs/ppo --set kl_coef=0.05 --set learning_rate=1e-5
    textgym train --algo ppo ... --out runs/ppo --resume      # continue a killed run
    textgym train --algo grpo ... --rollout-backend vllm      # rollouts by vLLM (the vllm extra)

Data-parallel on several processes (docs/distributed.md): the same command under a launcher, e.g.
``torchrun --nproc_per_node=4 -m textgym train --algo grpo ...``; ``--num-envs`` and ``batch_size`` are the
totals over the processes, each process stepping ``num_envs / world_size`` sub-envs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

ALGOS = ("ppo", "grpo", "rloo", "sft")


def parse_overrides(pairs: list[str], config_class: type, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``["kl_coef=0.1", "lora_rank=8"]`` → config overrides, each value parsed as JSON when it is JSON; the keys
    are ``config_class``'s fields and ``extra``."""
    names = {f.name for f in dataclasses.fields(config_class)} | set(extra)
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(names)}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a plain string, e.g. device=cuda
    return overrides


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train an LM policy on a textgym environment.")
    parser.add_argument("--algo", choices=ALGOS, required=True)
    parser.add_argument("--model", default=None, help="starting model: a local HF directory (default: embedded)")
    parser.add_argument("--out", required=True, help="run directory: logs, checkpoints, the final model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config field")
    rl = parser.add_argument_group("RL (ppo, grpo, rloo)")
    rl.add_argument("--env", default="TextGen-v0", help="a registered textgym env id")
    rl.add_argument(
        "--env-kwargs", default="{}", help="JSON keyword arguments of the env, e.g. '{\"max_new_tokens\": 24}'"
    )
    rl.add_argument("--num-envs", type=int, default=8, help="sub-envs over all processes of a distributed run")
    rl.add_argument("--total-episodes", type=int, default=1000)
    rl.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    rl.add_argument(
        "--fsdp", action="store_true", help="shard policy and reference over the processes (FSDP2; torchrun only)"
    )
    rl.add_argument(
        "--rollout-backend",
        choices=("engine", "vllm"),
        help="what samples the rollouts: textgym's engine (default) or vLLM (the vllm extra; docs/agents.md)",
    )
    sft = parser.add_argument_group("SFT")
    sft.add_argument("--data", default="instructions", help="JSONL file, or a shipped set name")
    return parser


def main(argv: list[str] | None = None, prog: str = "textgym train") -> int:
    args = build_parser(prog).parse_args(argv)
    from textgym.lm import distributed as dist

    dist.init_distributed()  # under torchrun / accelerate launch; nothing for one process
    if args.algo == "sft":
        from agents.sft import SFT, SFTConfig

        sft = SFT(args.model, args.data, **parse_overrides(args.set, SFTConfig))
        sft.learn(progress_bar=dist.is_main())
        sft.save(args.out)
        if dist.is_main():
            print(f"final loss {sft.losses[-1]:.4f}; model saved to {args.out}")
        return 0

    import gymnasium as gym

    import textgym  # noqa: F401  (registers the envs)
    from agents import GRPO, PPO, RLOO

    algo = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO}[args.algo]
    env_kwargs = json.loads(args.env_kwargs)
    env_kwargs.setdefault("model", args.model)
    share = dist.shard_range(args.num_envs, "--num-envs")  # every process steps its share of the sub-envs
    with dist.main_process_first():  # rank 0 builds a cached model (embedded, tiny) before the others load it
        envs = gym.make_vec(args.env, num_envs=share.stop - share.start, **env_kwargs)
    overrides = parse_overrides(args.set, algo.config_class)
    if args.fsdp:
        overrides["fsdp"] = True
    if args.rollout_backend:
        overrides["rollout_backend"] = args.rollout_backend
    agent = algo(args.model, envs, run_dir=args.out, **overrides)
    agent.learn(args.total_episodes, resume=args.resume)
    agent.save(f"{args.out}/final")
    last = agent.history[-1] if agent.history else {}
    if dist.is_main():
        print(f"mean reward {last.get('rollout/reward_mean', float('nan')):.4f}; model saved to {args.out}/final")
    return 0
