"""sb3-contrib MaskablePPO on TextGen-v0: the policy may only pick the reference model's top-p tokens (as NLPO).

    python examples/sb3_maskable_ppo.py                  # embedded SmolLM2-135M: minutes on CPU
    python examples/sb3_maskable_ppo.py --model tiny     # seconds

The env's frozen reference model computes ``action_masks()`` (its smallest set of tokens reaching probability
``top_p``, plus EOS) and the KL-shaped reward; MaskablePPO fetches the masks of all sub-envs with one batched
reference pass per step. MaskablePPO keeps the masks of a rollout as float32 ``(n_steps, n_envs, vocab)``: with
SmolLM2's 49152 tokens that is 0.2 MB per step and sub-env, so mind ``n_steps × n_envs`` (2048 × 8 would be 3.2 GB).
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
from sb3_contrib import MaskablePPO

import textgym  # noqa: F401  (registers TextGen-v0)
from agents.sb3 import KLPenaltyCallback, MaskableLMActorCriticPolicy, make_sb3_vec_env

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="embedded", help="'embedded', 'tiny' or a local model directory")
parser.add_argument("--timesteps", type=int, default=512, help="tokens generated in training")
parser.add_argument("--num-envs", type=int, default=4)
parser.add_argument("--n-steps", type=int, default=32, help="rollout length per sub-env")
parser.add_argument("--max-new-tokens", type=int, default=16)
parser.add_argument("--top-p", type=float, default=0.9)
parser.add_argument("--kl-coef", type=float, default=0.05, help="β: KL reward in the env + KLPenaltyCallback in SB3")
args = parser.parse_args()

env_kwargs = {
    "model": args.model,
    "max_new_tokens": args.max_new_tokens,
    "reference_model": args.model,
    "kl_coef": args.kl_coef,
    "action_mask": "top_p",
    "top_p": args.top_p,
}
venv = make_sb3_vec_env("TextGen-v0", args.num_envs, seed=0, **env_kwargs)
vocab = venv.action_space.n
mask_mb = args.n_steps * args.num_envs * vocab * 4 / 2**20
print(f"MaskablePPO's mask buffer: {args.n_steps} x {args.num_envs} x {vocab} float32 = {mask_mb:.1f} MB")
model = MaskablePPO(
    MaskableLMActorCriticPolicy,
    venv,
    policy_kwargs={"model": args.model},
    n_steps=args.n_steps,
    batch_size=32,
    n_epochs=2,
    learning_rate=1e-5,
    seed=0,
    verbose=1,
)
model.learn(args.timesteps, callback=KLPenaltyCallback(args.kl_coef), progress_bar=True)
returns = [episode["r"] for episode in model.ep_info_buffer]
print(f"{len(returns)} training episodes: mean reward (score + KL shaping) {np.mean(returns):+.3f}")

env = gym.make("TextGen-v0", **env_kwargs)  # predict() with one env's mask (wrappers hide it: use .unwrapped)
obs, info = env.reset(seed=1)
done = False
while not done:
    action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())
    obs, reward, terminated, truncated, info = env.step(int(action))
    done = terminated or truncated
print(f"sample: {info['prompt']}\u2502{info['completion']}  reward {info['score']:+.3f}")
