"""A multi-turn game: the scripted binary search plays GuessNumber-v1, then GRPO trains an LM on it.

The agent writes each turn token by token; the env answers higher / lower / correct as the next user message of
the chat template, so the observation is the chat template of the conversation, token for token. Run:
`python examples/multiturn.py` (add `--model tiny` for the tiny random test model, which learns level 1's
one-token answers in about 20 s).
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import textgym  # noqa: F401  (registers GuessNumber-v1)
from agents import GRPO
from textgym.tasks import get_task

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", default=None, help="embedded default, 'tiny', or a local model directory")
parser.add_argument("--episodes", type=int, default=1280, help="GRPO training episodes")
parser.add_argument("--minibatch-size", type=int, default=32, help="episodes per gradient step")
parser.add_argument(
    "--microbatch-size", type=int, default=8, help="episodes per pass: the same steps; 8 peaks at 6.5 GiB, 32 at 10.7"
)
args = parser.parse_args()

# 1. The plain Gymnasium loop, with the task's scripted solver choosing each turn's tokens.
spec = get_task("guess-number")
env = gym.make("GuessNumber-v1", model=args.model, split="test", level=2)
episodes, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
obs, info = env.reset(seed=0)
done = False
while not done:
    turn = spec.solver(episodes.transcript(0), 2)  # binary search over the replies so far
    for token in [*tokenizer.encode(turn, add_special_tokens=False), episodes.end_of_turn]:
        obs, reward, terminated, truncated, info = env.step(token)
        done = terminated or truncated
        if done:
            break
print(" | ".join(f"{m['role']}: {m['content']}" for m in info["transcript"][1:]))
print(f"solved in {info['turns']} turns, gold score {info['gold_score']:.2f}, agent tokens {obs['agent_mask'].sum()}")

# 2. GRPO on the easiest level: numbers 1-4, one-token answers, a small reward for any number in range.
settings = {"model": args.model, "level": 1, "max_turn_tokens": 1, "format_reward": 0.1}
envs = gym.make_vec("GuessNumber-v1", num_envs=8, split="train", **settings)
agent = GRPO(
    args.model,
    envs,
    batch_size=64,
    minibatch_size=args.minibatch_size,
    microbatch_size=min(args.microbatch_size, args.minibatch_size),
    learning_rate=3e-3,
    kl_coef=0.0,
)
agent.learn(args.episodes, progress_bar=False)
rewards = [h["rollout/reward_mean"] for h in agent.history]
print(f"mean reward per iteration: first {rewards[0]:.3f}, last {rewards[-1]:.3f}")
