"""Env throughput: a turn's tokens stepped one at a time against the whole turn in one step (TurnSteps).

Env work only, no policy: every turn is drawn beforehand (random tokens that are not stop tokens, the last one a
stop token), so both ways play exactly the same episodes and the figure is agent tokens per second of env time:
the CPU time of this process (``time.process_time``), so that other work on a shared machine does not count.

- ``TextGen-v0``: one turn of ``--tokens`` tokens per episode, scored by VADER (``reward_model="vader"``, the
  registered default) and by a constant (``"zero"``: the env's bookkeeping alone).
- ``GuessNumber-v1``: turns of ``--game-turn`` tokens (a digit and fillers, then the end-of-turn token), the
  partner replying after each, until the game ends.
- The vector env with ``--num-envs`` sub-envs, next-step autoreset: every round is one ``TextGen-v0`` turn per
  sub-env, then the step that resets them.

    python benchmarks/turn_steps.py                 # the tiny random model's tokenizer (512 tokens)
    python benchmarks/turn_steps.py --model embedded
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import textgym  # noqa: F401  (registers the envs)
from textgym.envs.turns import TurnSteps, TurnStepsVector


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (a random tiny Llama), 'embedded' or a directory")
    parser.add_argument("--tokens", type=int, default=32, help="tokens of a TextGen-v0 turn (its max_new_tokens)")
    parser.add_argument(
        "--game-turn", type=int, default=8, help="tokens of a GuessNumber-v1 turn (its max_turn_tokens)"
    )
    parser.add_argument("--episodes", type=int, default=500, help="episodes per measurement")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="each figure is the best of this many runs")
    return parser.parse_args()


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def random_turns(rng: np.random.Generator, env, count: int, length: int, first: list[int]) -> list[list[int]]:
    """``count`` turns of ``length`` tokens for ``env`` (single or vector): one of ``first`` (any non-stop token if
    empty), random non-stop tokens, then the first stop token."""
    episodes = env.unwrapped.episodes
    stops = set(episodes.stop_token_ids.tolist())
    pool = np.array([t for t in range(3, episodes.vocab_size) if t not in stops])
    return [
        [int(rng.choice(first or pool)), *rng.choice(pool, size=length - 2).tolist(), int(episodes.stop_token_ids[0])]
        for _ in range(count)
    ]


def play(env: gym.Env, episodes: list[list[list[int]]], step: Callable) -> float:
    """Agent tokens per second playing every episode (its turns, until the env ends it) with ``step(env, turn)``."""
    tokens, start = 0, time.process_time()
    for seed, turns in enumerate(episodes):
        env.reset(seed=seed)
        for turn in turns:
            taken, done = step(env, turn)
            tokens += taken
            if done:
                break
    return tokens / (time.process_time() - start)


def per_token(env: gym.Env, turn: list[int]) -> tuple[int, bool]:
    for i, token in enumerate(turn, start=1):
        _, _, terminated, truncated, info = env.step(token)
        if terminated or truncated or "turn" in info:
            return i, terminated or truncated
    return len(turn), False


def per_turn(env: gym.Env, turn: list[int]) -> tuple[int, bool]:
    _, _, terminated, truncated, info = env.step(turn)
    return len(info["token_rewards"]), terminated or truncated


def best(repeats: int, measure: Callable[..., float], *args: Any) -> float:
    """The highest of ``repeats`` measurements ``measure(*args)`` (other work on the machine only slows one)."""
    return max(measure(*args) for _ in range(repeats))


def report(name: str, tokens_per_s: float, turns_per_s: float) -> None:
    print(
        f"{name:<34} per token {tokens_per_s:>10,.0f} tokens/s   per turn {turns_per_s:>10,.0f} tokens/s   "
        f"per turn / per token = {turns_per_s / tokens_per_s:.1f}"
    )


def vector_rounds(env, rounds: list[np.ndarray], turns: bool) -> float:
    """Agent tokens per second over rounds of one turn per sub-env (ending every episode) and the reset step."""
    n = env.num_envs
    env.reset(seed=0)
    tokens, start = 0, time.process_time()
    for block in rounds:  # (n, length)
        if turns:
            env.step(list(block))
            env.step([np.zeros(0, dtype=np.int64)] * n)  # the next-step autoreset
        else:
            for column in block.T:
                env.step(column)
            env.step(np.zeros(n, dtype=np.int64))
        tokens += block.size
    return tokens / (time.process_time() - start)


def main() -> None:
    args = parse_args()
    model = args.model
    if model == "tiny":
        from textgym.lm.models import make_tiny_model

        model = str(make_tiny_model(tempfile.mkdtemp()))
    print(f"CPU: {cpu_model()}; env time only (no policy; CPU seconds of this process), model {args.model}")
    rng = np.random.default_rng(0)
    for reward in ("vader", "zero"):
        kwargs = {"model": model, "max_new_tokens": args.tokens, "prompt_truncation": "left"}
        if reward == "zero":
            kwargs["reward_model"] = lambda prompts, completions: np.zeros(len(completions))
        env, turn_env = gym.make("TextGen-v0", **kwargs), TurnSteps(gym.make("TextGen-v0", **kwargs))
        episodes = [random_turns(rng, env, 1, args.tokens, []) for _ in range(args.episodes)]
        report(
            f"TextGen-v0, reward {reward}",
            best(args.repeats, play, env, episodes, per_token),
            best(args.repeats, play, turn_env, episodes, per_turn),
        )

    env, turn_env = gym.make("GuessNumber-v1", model=model), TurnSteps(gym.make("GuessNumber-v1", model=model))
    digits = env.unwrapped.tokenizer.convert_tokens_to_ids([str(d) for d in range(1, 5)])
    episodes = [random_turns(rng, env, 20, args.game_turn, digits) for _ in range(args.episodes)]
    report(
        "GuessNumber-v1",
        best(args.repeats, play, env, episodes, per_token),
        best(args.repeats, play, turn_env, episodes, per_turn),
    )

    kwargs = {"model": model, "max_new_tokens": args.tokens, "prompt_truncation": "left"}
    vec = gym.make_vec("TextGen-v0", num_envs=args.num_envs, **kwargs)
    turn_vec = TurnStepsVector(gym.make_vec("TextGen-v0", num_envs=args.num_envs, **kwargs))
    rounds = [
        np.array(random_turns(rng, turn_vec, args.num_envs, args.tokens, []))
        for _ in range(max(1, args.episodes // args.num_envs))
    ]
    report(
        f"TextGen-v0 vector, {args.num_envs} sub-envs",
        best(args.repeats, vector_rounds, vec, rounds, False),
        best(args.repeats, vector_rounds, turn_vec, rounds, True),
    )


if __name__ == "__main__":
    main()
