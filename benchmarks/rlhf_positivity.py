"""The classic sentiment RLHF task: train the embedded SmolLM2-135M to continue openings positively.

Trains on the first 256 of the shipped openings with the VADER positivity reward, then samples completions
of the 64 held-out openings before and after training and prints their mean positivity and the KL of the
trained policy to the reference (nats per completion, estimated on its own samples).

    python benchmarks/rlhf_positivity.py --algo grpo --episodes 512
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

import textgym  # noqa: F401
from agents import GRPO, PPO, RLOO, RolloutCollector, SamplingConfig
from agents.base import LMAgent
from textgym.lm.prompts import load_prompts

ALGOS = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), default="grpo")
    parser.add_argument("--episodes", type=int, default=512)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--run-dir", default=None, help="write logs and checkpoints here")
    return parser.parse_args()


def evaluate(agent: LMAgent, prompts: list[str], new_tokens: int) -> tuple[float, float, list[str]]:
    """Mean reward of one sampled completion per prompt, the mean KL to the reference on them, and a few."""
    envs = gym.make_vec("TextGen-v0", num_envs=len(prompts) // 4, prompts=prompts, max_new_tokens=new_tokens)
    collector = RolloutCollector(agent.policy.generator_model, envs, SamplingConfig(), seed=1234)
    batch = collector.collect_prompts(prompts)
    width = batch.completion_ids.shape[1]
    with torch.no_grad():
        logprobs = agent.policy.evaluate(batch.input_ids, batch.attention_mask, width).logprobs
        ref = agent.policy.reference_logprobs(batch.input_ids, batch.attention_mask, width)
    kl = ((logprobs - ref) * batch.completion_mask).sum(dim=1).mean().item()
    samples = [f"{p!r} -> {c!r}" for p, c in zip(batch.prompts[:3], batch.completions[:3])]
    return batch.returns.mean().item(), kl, samples


def main() -> None:
    args = parse_args()
    prompts = load_prompts("openings")
    train, held_out = prompts[:256], prompts[256:320]
    envs = gym.make_vec("TextGen-v0", num_envs=args.num_envs, prompts=train, max_new_tokens=args.new_tokens)
    settings = {"batch_size": args.batch_size, "learning_rate": args.learning_rate, "kl_coef": args.kl_coef}
    agent = ALGOS[args.algo](None, envs, run_dir=args.run_dir, **settings)
    before = evaluate(agent, held_out, args.new_tokens)
    start = time.perf_counter()
    agent.learn(args.episodes)
    minutes = (time.perf_counter() - start) / 60
    after = evaluate(agent, held_out, args.new_tokens)
    print(f"{args.algo} {settings} episodes={args.episodes} max_new_tokens={args.new_tokens} ({minutes:.1f} min)")
    print(f"{'held-out openings (64)':<28}{'positivity':>12}{'KL to ref':>12}")
    print(f"{'before training':<28}{before[0]:>12.3f}{before[1]:>12.2f}")
    print(f"{'after training':<28}{after[0]:>12.3f}{after[1]:>12.2f}")
    print("samples before:", *before[2], sep="\n  ")
    print("samples after:", *after[2], sep="\n  ")


if __name__ == "__main__":
    main()
