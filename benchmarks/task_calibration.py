"""The random and optimum gold scores of suite tasks, per level: the numbers in each task's ``TaskSpec``.

* random: the mean gold score of completions of ``max_new_tokens`` uniform token ids from the model's
  vocabulary, decoded as the env decodes them, on the test split;
* optimum: the mean gold score of the task's scripted solver on every test instance.

Episodes are scored with the env's own gold (its reward model when it has no gold), without stepping token by
token, so a level takes seconds plus the gold model's time. The zero-shot score comes from the runner:
``textgym bench --tasks NAME --algos random,zero-shot,oracle --level NAME=N``.

    python benchmarks/task_calibration.py --tasks constraints,overoptimization --random-episodes 200
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import textgym  # noqa: F401
from textgym.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--levels", default=None, help="comma-separated levels (default: every level)")
    parser.add_argument("--model", default=None, help="the policy's model: its vocabulary (default: embedded)")
    parser.add_argument("--random-episodes", type=int, default=200, help="uniform-token completions per level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    for name in args.tasks.split(","):
        spec = get_task(name)
        levels = [int(x) for x in args.levels.split(",")] if args.levels else spec.levels
        for level in levels:
            start = time.perf_counter()
            env = gym.make(spec.env_id, split="test", level=level, model=args.model).unwrapped
            episodes = env.episodes
            gold = episodes.gold_model or episodes.reward_model
            rng = np.random.default_rng(args.seed)
            prompts = [episodes.prompts[i] for i in rng.integers(len(episodes.prompts), size=args.random_episodes)]
            ids = rng.integers(episodes.vocab_size, size=(args.random_episodes, episodes.max_new_tokens))
            randoms = gold(prompts, [env.tokenizer.decode(row, skip_special_tokens=True) for row in ids])
            solved = gold(episodes.prompts, [spec.solver(p, level) for p in episodes.prompts])
            print(
                f"{name} level {level}: random {randoms.mean():.4f} ± {randoms.std() / np.sqrt(len(randoms)):.4f} "
                f"({len(randoms)} episodes), optimum {solved.mean():.4f} (min {solved.min():.4f}, "
                f"{len(solved)} test instances) [{time.perf_counter() - start:.0f} s]",
                flush=True,
            )


if __name__ == "__main__":
    main()
