"""Peak resident memory of GRPO on a multi-turn game, phase by phase: what `examples/multiturn.py` holds.

A conversation's completion is mostly tokens the env wrote (the partner's replies in the chat template); the update
runs the policy over all of them with gradients. This prints the process's peak resident set after building the
agent, after each rollout and after each update.

    python benchmarks/multiturn_memory.py                                  # the example's settings, embedded model
    python benchmarks/multiturn_memory.py --game WordGuess-v1 --level 2 --minibatch 8
    python benchmarks/multiturn_memory.py --microbatch 8   # minibatches of 32 in passes of 8: the same step
"""

from __future__ import annotations

import argparse
import resource
import time


def peak_gib() -> float:
    """The process's peak resident set so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="GuessNumber-v1")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--model", default=None, help="embedded default, 'tiny', or a local model directory")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--minibatch", type=int, default=32)
    parser.add_argument("--microbatch", type=int, default=None, help="episodes per pass (default: the minibatch)")
    parser.add_argument("--iterations", type=int, default=1)
    args = parser.parse_args()

    import gymnasium as gym

    import textgym  # noqa: F401  (registers the games)
    from agents import GRPO

    settings = {"model": args.model, "level": args.level}
    if args.game == "GuessNumber-v1":  # the example's: one-token answers, a small reward for any number in range
        settings.update(max_turn_tokens=1, format_reward=0.1)
    envs = gym.make_vec(args.game, num_envs=8, split="train", **settings)
    agent = GRPO(args.model, envs, batch_size=args.batch, minibatch_size=args.minibatch,
                 microbatch_size=args.microbatch, learning_rate=3e-3, kl_coef=0.0, keep_host_memory=False,
                 tensorboard=False)  # fmt: skip
    print(
        f"{args.game} level {args.level}, batch {args.batch}, minibatch {args.minibatch}, microbatch {args.microbatch}"
    )
    print(f"agent built: peak {peak_gib():.2f} GiB", flush=True)
    for i in range(args.iterations):
        start = time.perf_counter()
        batch = agent.collect()
        agents = batch.completion_mask.sum(1).float().mean()
        print(f"rollout {i}: peak {peak_gib():.2f} GiB, {time.perf_counter() - start:.0f} s; completion width "
              f"{batch.completion_ids.shape[1]}, agent tokens per episode {agents:.1f}", flush=True)  # fmt: skip
        start = time.perf_counter()
        agent.train_on_batch(batch)
        print(f"update {i}: peak {peak_gib():.2f} GiB, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
