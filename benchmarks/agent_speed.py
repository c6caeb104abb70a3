"""Completions/s of textgym's PPO and GRPO, side by side with TRL's GRPOTrainer, in each precision.

Equal settings for all: the same model, the VADER positivity reward, one gradient step per ``--completions``
completions of up to ``--new-tokens`` tokens (GRPO: groups of ``--completions``; PPO: one completion per
prompt), one epoch, β = 0 as TRL's default (no reference pass; ``--kl-coef 0.05`` adds it on textgym's side).
``--rollout-batch R`` samples R completions at once and then takes R / completions gradient steps on them, in
textgym (``batch_size=R``) and in TRL (``generation_batch_size=R``) alike. TRL runs with its defaults
otherwise, gradient checkpointing off, and ``bf16=True`` in the bf16 rows. TRL is an optional dependency:
``pip install trl`` (or ``.[bench]``).

    python benchmarks/agent_speed.py                          # embedded SmolLM2-135M, fp32 and (if native) bf16
    python benchmarks/agent_speed.py --rollout-batch 64       # decode 64 at once, 8 gradient steps on them
    python benchmarks/agent_speed.py --skip-trl --precisions bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import gymnasium as gym
import torch
from roofline import cpu_name  # benchmarks/ is on the path of a script run from it

import textgym  # noqa: F401
from agents import GRPO, PPO
from agents.base import cpu_has_native_bf16
from textgym.prompts import load_prompts

TARGETS = {"GRPO": 2.0, "PPO": 1.5}
"""The issue's targets: textgym's completions/s over TRL's best, per algorithm."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or local directory (default: embedded)")
    parser.add_argument("--completions", type=int, default=8, help="completions per gradient step")
    parser.add_argument("--rollout-batch", type=int, default=None, help="completions sampled at once")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed rollouts, after the warm-up ones")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollouts first (2: the steady state)")
    parser.add_argument("--precisions", default=None, help="comma-separated fp32,bf16 (default: bf16 too where native)")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="textgym β; 0 as TRL (no reference pass)")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    args.rollout_batch = args.rollout_batch or args.completions
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first rollout loads and allocates)")
    if args.rollout_batch % args.completions:
        parser.error(f"--rollout-batch ({args.rollout_batch}) must be a multiple of --completions ({args.completions})")
    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_has_native_bf16()
    args.precisions = (args.precisions or ("fp32,bf16" if native else "fp32")).split(",")
    return args


def time_textgym(algo: type, precision: str, args: argparse.Namespace, **settings: object) -> tuple[str, float, float]:
    """The precision the agent ran in (bf16 falls back to fp32 on a CPU without native bfloat16), completions/s
    over the timed rollouts (each with its updates) and their mean completion length."""
    r, n = args.rollout_batch, args.completions
    envs = gym.make_vec("TextGen-v0", num_envs=r, model=args.model, max_new_tokens=args.new_tokens)
    settings = {"batch_size": r, "minibatch_size": n, "epochs": 1, "kl_coef": args.kl_coef, **settings}
    agent = algo(args.model, envs, precision=precision, **settings)
    agent.learn(r * (args.warmup + args.steps), progress_bar=False)
    timed = agent.history[args.warmup :]
    rate = r * len(timed) / sum(h["time/iteration_seconds"] for h in timed)
    return agent.precision, rate, statistics.mean(h["rollout/ep_len_mean"] for h in timed)


def time_trl(precision: str, args: argparse.Namespace) -> tuple[float, float]:
    """Completions/s over the steps after the warm-up rollouts', and their mean completion length."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reward_models import make_reward_model
    from textgym.models import load_causal_lm, load_tokenizer

    vader = make_reward_model("vader")

    def positivity(prompts: list[str], completions: list[str], **_: object) -> list[float]:
        return vader(prompts, completions).tolist()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__) -> None:
            self.starts.append(time.perf_counter())

        def on_step_end(self, *_, **__) -> None:
            self.seconds.append(time.perf_counter() - self.starts[-1])

    timer = StepTimer()
    steps_per_rollout = args.rollout_batch // args.completions
    config = GRPOConfig(
        output_dir="/tmp/textgym-trl-bench",
        per_device_train_batch_size=args.completions,
        generation_batch_size=args.rollout_batch,
        num_generations=args.completions,
        max_completion_length=args.new_tokens,
        max_steps=steps_per_rollout * (args.warmup + args.steps),
        bf16=precision == "bf16",
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = GRPOTrainer(
        model=load_causal_lm(args.model),
        reward_funcs=positivity,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": load_prompts("openings")}),
        processing_class=load_tokenizer(args.model),
        callbacks=[timer],
    )
    trainer.train()
    timed = timer.seconds[steps_per_rollout * args.warmup :]  # a rollout's sampling falls in its first step
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    timed_lengths = lengths[-args.steps :]  # logged once per rollout, with its sampling
    return args.completions * len(timed) / sum(timed), statistics.mean(timed_lengths) if timed_lengths else float("nan")


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = "" if device == "cuda" else f" cpu={cpu_name()}"
    print(
        f"model={args.model or 'smollm2-135m-instruct'} device={device}{cpu} torch_threads={torch.get_num_threads()} "
        f"completions/step={args.completions} rollout_batch={args.rollout_batch} max_new_tokens={args.new_tokens} "
        f"warmup_rollouts={args.warmup} timed_rollouts={args.steps} "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}"
    )
    rows: list[tuple[str, str, float, float]] = []  # (method, precision, completions/s, mean length)
    for precision in args.precisions:
        rows.append(("textgym GRPO", *time_textgym(GRPO, precision, args, group_size=args.completions)))
        rows.append(("textgym PPO", *time_textgym(PPO, precision, args)))
        if not args.skip_trl:
            rows.append(("TRL GRPOTrainer", precision, *time_trl(precision, args)))
    print(f"{'method':<20}{'precision':>10}{'s/step':>10}{'completions/s':>16}{'mean length':>14}")
    for name, precision, rate, length in rows:
        print(f"{name:<20}{precision:>10}{args.completions / rate:>10.2f}{rate:>16.3f}{length:>14.1f}")
    if args.skip_trl:
        return
    trl_best = max((rate, precision) for name, precision, rate, _ in rows if name.startswith("TRL"))
    print(f"TRL's best: {trl_best[0]:.3f} completions/s ({trl_best[1]})")
    for algo, target in TARGETS.items():
        rate, precision = max((r, p) for name, p, r, _ in rows if name == f"textgym {algo}")
        print(f"textgym {algo} ({precision}) / TRL's best = {rate / trl_best[0]:.2f}  (target >= {target})")
    trl = {precision: rate for name, precision, rate, _ in rows if name.startswith("TRL")}
    for name, precision, rate, _ in rows:
        if name.startswith("textgym"):
            print(f"{name} / TRL, both {precision} = {rate / trl[precision]:.2f}")


if __name__ == "__main__":
    main()
