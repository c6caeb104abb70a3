"""Seconds per iteration and completions/s of textgym's PPO and GRPO, side by side with TRL's GRPOTrainer.

Equal settings for all: the same model, the VADER positivity reward, 8 completions of up to ``--new-tokens``
tokens per step (GRPO: one prompt × 8; PPO: 8 prompts), one gradient step per batch (one epoch, one
minibatch), β = 0 as TRL's default (no reference pass; ``--kl-coef 0.05`` adds it on textgym's side). TRL
runs with its defaults otherwise, with gradient checkpointing off. TRL is an optional dependency:
``pip install trl`` (or ``.[bench]``).

    python benchmarks/agent_speed.py                  # embedded SmolLM2-135M on CPU
    python benchmarks/agent_speed.py --skip-trl       # textgym only
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import torch

import textgym  # noqa: F401
from agents import GRPO, PPO
from textgym.prompts import load_prompts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or local directory (default: embedded)")
    parser.add_argument("--completions", type=int, default=8, help="completions per step")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="textgym β; 0 as TRL (no reference pass)")
    parser.add_argument("--skip-trl", action="store_true")
    return parser.parse_args()


def time_textgym(algo: type, args: argparse.Namespace, **settings: object) -> tuple[float, float]:
    """Median seconds per iteration and mean completion length, after one warm-up iteration."""
    envs = gym.make_vec("TextGen-v0", num_envs=args.completions, model=args.model, max_new_tokens=args.new_tokens)
    n = args.completions
    agent = algo(args.model, envs, batch_size=n, minibatch_size=n, epochs=1, kl_coef=args.kl_coef, **settings)
    agent.learn(n * (args.steps + 1), progress_bar=False)
    seconds = [h["time/iteration_seconds"] for h in agent.history[1:]]
    return statistics.median(seconds), statistics.mean(h["rollout/ep_len_mean"] for h in agent.history[1:])


def time_trl(args: argparse.Namespace) -> tuple[float, float]:
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
    config = GRPOConfig(
        output_dir="/tmp/textgym-trl-bench",
        per_device_train_batch_size=args.completions,
        num_generations=args.completions,
        max_completion_length=args.new_tokens,
        max_steps=args.steps + 1,
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
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    return statistics.median(timer.seconds[1:]), statistics.mean(lengths[1:]) if len(lengths) > 1 else float("nan")


def main() -> None:
    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"model={args.model or 'smollm2-135m-instruct'} device={device} torch_threads={torch.get_num_threads()} "
        f"completions/step={args.completions} max_new_tokens={args.new_tokens} timed_steps={args.steps}"
    )
    rows = [
        ("textgym GRPO", *time_textgym(GRPO, args, group_size=args.completions)),
        ("textgym PPO", *time_textgym(PPO, args)),
    ]
    if not args.skip_trl:
        rows.append(("TRL GRPOTrainer (defaults)", *time_trl(args)))
    print(f"{'method':<30}{'s/step':>10}{'completions/s':>16}{'mean length':>14}")
    for name, seconds, length in rows:
        print(f"{name:<30}{seconds:>10.2f}{args.completions / seconds:>16.3f}{length:>14.1f}")
    if not args.skip_trl:
        trl_rate = args.completions / rows[-1][1]
        for name, seconds, _ in rows[:-1]:
            print(f"{name} / TRL completions/s = {args.completions / seconds / trl_rate:.2f}  (target >= 4 on CPU)")


if __name__ == "__main__":
    main()
