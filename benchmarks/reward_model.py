"""The figures of the shipped learned reward model: held-out accuracy, training time, scoring throughput.

(1) Trains the MiniLM-head reward model on the shipped synthetic preferences exactly as the shipped
    ``positivity-minilm`` was trained (``reward_models/data/README.md``) and prints its held-out pairwise
    accuracy (split by prompt) and the CPU training time, encoder loading and embedding included.
(2) Steps ``gym.make_vec("TextGen-v0", num_envs=16)`` with random tokens and times only the reward-model
    calls (each scores the 16 completions that end in one step in one batched call), for the shipped model
    and, for reference, VADER.

    python benchmarks/reward_model.py
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch

import textgym  # noqa: F401  (registers TextGen-v0)
from reward_models.learned import SHIPPED_DIR
from reward_models.training import TrainConfig, train_reward_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHIPPED_DIR / "positivity_pairs.jsonl"))
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=8, help="episodes per sub-env in the throughput run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def reward_throughput(reward_model: str, num_envs: int, episodes: int) -> tuple[float, int]:
    """Completions scored per second of reward-model time in the vector env, and the completions scored."""
    envs = gym.make_vec("TextGen-v0", num_envs=num_envs, reward_model=reward_model, stop_token_ids=[])
    checked = envs.unwrapped.reward_model
    inner, seconds, scored = checked.fn, [], []

    def timed(prompts: list[str], completions: list[str]) -> np.ndarray:
        start = time.perf_counter()
        scores = inner(prompts, completions)
        seconds.append(time.perf_counter() - start)
        scored.append(len(completions))
        return scores

    checked.fn = timed
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    vocab = envs.single_action_space.n
    while sum(scored) < num_envs * (episodes + 1):  # the first call is a warm-up
        envs.step(rng.integers(0, vocab, size=num_envs))
    return sum(scored[1:]) / sum(seconds[1:]), sum(scored[1:])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    shipped = json.loads((SHIPPED_DIR / "positivity-minilm" / "training_report.json").read_text())["config"]
    # The shipped head predates early stopping (no such key in its config): it kept its last epoch.
    config = TrainConfig(**{"early_stopping": False, **shipped, "progress": False, "device": "cpu"})
    result = train_reward_model(args.data, config)
    report = result.report
    print(f"(1) MiniLM head, trained on {report['train']['pairs']} pairs ({args.data}):")
    held, train = report["eval"], report["train"]
    print(
        f"    held-out pairwise accuracy {held['accuracy']:.3f} ({held['pairs']} pairs, {held['prompts']} new prompts)"
    )
    print(f"    train pairwise accuracy {train['accuracy']:.3f}")
    print(f"    CPU training time {report['seconds']:.1f} s ({config.epochs} epochs, {args.threads} threads)")
    print(f"(2) reward-model scoring inside gym.make_vec('TextGen-v0', num_envs={args.num_envs}), batched per step:")
    for name in ("positivity-minilm", "vader"):
        rate, count = reward_throughput(name, args.num_envs, args.episodes)
        print(f"    {name:<18} {rate:8.1f} completions/s ({count} completions of 32 random tokens)")


if __name__ == "__main__":
    main()
