"""The InstructGPT pipeline in one script: instruction tuning (SFT), then PPO against a reward model.

    python examples/instructgpt_pipeline.py                      # embedded SmolLM2-135M, ~15 min on CPU
    python examples/instructgpt_pipeline.py --model tiny --episodes 32 --sft-examples 16   # seconds

The policy is first tuned on the shipped instructions, then trained with PPO to continue the shipped
openings (wrapped in the chat template it was tuned with) so that the reward model scores them highly,
with a KL penalty keeping it close to the SFT model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym

import textgym  # noqa: F401
from agents import PPO, SFT
from agents.sft import SHIPPED_DATA

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=None, help="starting model (default: embedded SmolLM2-135M-Instruct)")
parser.add_argument("--reward-model", default="vader", help="a registered reward model name or a directory")
parser.add_argument("--sft-examples", type=int, default=300)
parser.add_argument("--episodes", type=int, default=256)
parser.add_argument("--out", default="runs/instructgpt")
args = parser.parse_args()
out = Path(args.out)

# 1. Supervised instruction tuning, loss on the completions only.
lines = SHIPPED_DATA["instructions"].read_text().splitlines()[: args.sft_examples]
sft = SFT(args.model, [json.loads(line) for line in lines], epochs=1, truncate=True)
sft.learn()
sft.save(out / "sft")
print(f"SFT: completion loss {sft.losses[0]:.3f} -> {sft.losses[-1]:.3f}")

# 2. PPO from the SFT model, with the SFT model as the frozen reference.
envs = gym.make_vec(
    "TextGen-v0", num_envs=8, model=str(out / "sft"), chat_template=True, reward_model=args.reward_model
)
agent = PPO(str(out / "sft"), envs, batch_size=16, kl_coef=0.05, run_dir=out / "ppo")
agent.learn(args.episodes)
agent.save(out / "ppo" / "final")
first, last = agent.history[0], agent.history[-1]
print(
    f"PPO: mean reward {first['rollout/reward_mean']:.3f} -> {last['rollout/reward_mean']:.3f}, "
    f"KL to SFT model {last['train/kl_ref']:.2f} nats; logs in {out / 'ppo'}"
)
