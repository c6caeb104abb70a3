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
    python benchmarks/agent_speed.py --precisions bf16 --repeats 4   # the ratios' spread over 4 rounds

A machine's speed drifts by 10% and more over minutes (memory bandwidth shared with other tenants), so one
round's ratio is noisy. ``--repeats N`` runs every method N times, in turn within each round, and prints the
median completions/s of each and the median (and range) of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

import gymnasium as gym
import torch
from roofline import cpu_name  # benchmarks/ is on the path of a script run from it

import textgym  # noqa: F401
from agents import GRPO, PPO
from agents.precision import cpu_has_native_bf16
from textgym.lm.prompts import load_prompts

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
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all methods, in turn (ratios: median)")
    args = parser.parse_args()
    args.rollout_batch = args.rollout_batch or args.completions
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first rollout loads and allocates)")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
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
    from textgym.lm.models import load_causal_lm, load_tokenizer

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


def measure(args: argparse.Namespace) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(method, precision) -> one (completions/s, mean length) per round; all methods in turn within a round, so
    a drift of the machine's speed reaches them alike. A textgym agent that fell back from bf16 to fp32 (a CPU
    without native bfloat16) is listed under "bf16->fp32"."""
    runs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for _ in range(args.repeats):
        for precision in args.precisions:
            for name, algo, settings in (("GRPO", GRPO, {"group_size": args.completions}), ("PPO", PPO, {})):
                ran, rate, length = time_textgym(algo, precision, args, **settings)
                runs[f"textgym {name}", precision if ran == precision else f"{precision}->{ran}"].append((rate, length))
            if not args.skip_trl:
                runs["TRL GRPOTrainer", precision].append(time_trl(precision, args))
    return runs


def best_rates(runs: dict[tuple[str, str], list[tuple[float, float]]], method: str) -> tuple[list[float], str]:
    """``method``'s completions/s in each round in its best precision (by the median), and that precision."""
    rates = {precision: [rate for rate, _ in results] for (name, precision), results in runs.items() if name == method}
    precision = max(rates, key=lambda p: statistics.median(rates[p]))
    return rates[precision], precision


def print_ratio(label: str, ratios: list[float], target: float | None = None) -> None:
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} rounds)" if len(ratios) > 1 else ""
    goal = f"  (target >= {target})" if target is not None else ""
    print(f"{label} = {statistics.median(ratios):.2f}{spread}{goal}")


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = "" if device == "cuda" else f" cpu={cpu_name()}"
    print(
        f"model={args.model or 'smollm2-135m-instruct'} device={device}{cpu} torch_threads={torch.get_num_threads()} "
        f"completions/step={args.completions} rollout_batch={args.rollout_batch} max_new_tokens={args.new_tokens} "
        f"warmup_rollouts={args.warmup} timed_rollouts={args.steps} rounds={args.repeats} "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}"
    )
    runs = measure(args)
    print(f"{'method':<20}{'precision':>10}{'s/step':>10}{'completions/s':>16}{'mean length':>14}")
    for (name, precision), results in runs.items():
        rate = statistics.median(r for r, _ in results)
        length = statistics.median(length for _, length in results)
        print(f"{name:<20}{precision:>10}{args.completions / rate:>10.2f}{rate:>16.3f}{length:>14.1f}")
    if args.skip_trl:
        return
    trl_rates, trl_precision = best_rates(runs, "TRL GRPOTrainer")
    print(f"TRL's best: {statistics.median(trl_rates):.3f} completions/s ({trl_precision})")
    for algo, target in TARGETS.items():
        rates, precision = best_rates(runs, f"textgym {algo}")
        print_ratio(f"textgym {algo} ({precision}) / TRL's best", [a / b for a, b in zip(rates, trl_rates)], target)
    for (name, precision), results in runs.items():
        trl = runs.get(("TRL GRPOTrainer", precision))
        if name.startswith("textgym") and trl:
            print_ratio(f"{name} / TRL, both {precision}", [a / b for (a, _), (b, _) in zip(results, trl)])


if __name__ == "__main__":
    main()
