"""The plain Gymnasium loop on TextGen-v0: a random agent, one episode, rendered.

Run: `python examples/random_agent.py` (add `--model tiny` for a tiny random test model).
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import textgym  # noqa: F401  (registers TextGen-v0)

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", default=None)
args = parser.parse_args()

env = gym.make("TextGen-v0", model=args.model, max_new_tokens=12, render_mode="ansi")
obs, info = env.reset(seed=0)
print("prompt:", info["prompt"])
terminated = truncated = False
while not (terminated or truncated):
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
print("text so far:", env.render())
print(f"completion: {info['completion']!r}  reward: {reward:+.3f}  (terminated={terminated}, truncated={truncated})")
