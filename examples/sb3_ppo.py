"""Stable-Baselines3 PPO or A2C on TextGen-v0, with a causal LM (the embedded SmolLM2-135M by default) as the policy.

    python examples/sb3_ppo.py                           # PPO, embedded model, VADER positivity: minutes on CPU
    python examples/sb3_ppo.py --algo a2c --model tiny   # seconds

The env keeps a frozen reference copy of the model and adds ``kl_coef · log π_ref(a|s)`` to every step's reward;
``KLPenaltyCallback(kl_coef)`` subtracts ``kl_coef · log π(a|s)`` before SB3 stores the reward, so PPO maximises
E[score] − kl_coef · KL(π‖π_ref), RLHF's KL-penalised objective, gradient included.
SB3 steps textgym's batched vector env through ``make_sb3_vec_env``: one reward-model and one reference call per
step for all sub-envs.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
from stable_baselines3 import A2C, PPO

import textgym  # noqa: F401  (registers TextGen-v0)
from agents.sb3 import KLPenaltyCallback, LMActorCriticPolicy, make_sb3_vec_env

ALGOS = {
    "ppo": (PPO, {"n_steps": 32, "batch_size": 32, "n_epochs": 2}),
    "a2c": (A2C, {"n_steps": 8}),
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--algo", choices=sorted(ALGOS), default="ppo")
parser.add_argument("--model", default="embedded", help="'embedded', 'tiny' or a local model directory")
parser.add_argument("--timesteps", type=int, default=512, help="tokens generated in training")
parser.add_argument("--num-envs", type=int, default=4)
parser.add_argument("--max-new-tokens", type=int, default=16)
parser.add_argument("--kl-coef", type=float, default=0.05, help="β: KL reward in the env + KLPenaltyCallback in SB3")
parser.add_argument("--learning-rate", type=float, default=1e-5)
args = parser.parse_args()

env_kwargs = {"model": args.model, "max_new_tokens": args.max_new_tokens, "reference_model": args.model}
venv = make_sb3_vec_env("TextGen-v0", args.num_envs, seed=0, kl_coef=args.kl_coef, **env_kwargs)
algo, settings = ALGOS[args.algo]
model = algo(
    LMActorCriticPolicy,
    venv,
    policy_kwargs={"model": args.model},  # a name or path: SB3 pickles it, and load() rebuilds the LM from it
    learning_rate=args.learning_rate,
    seed=0,
    verbose=1,
    **settings,
)
model.learn(args.timesteps, callback=KLPenaltyCallback(args.kl_coef), progress_bar=True)
model.save(f"runs/sb3-{args.algo}")
returns = [episode["r"] for episode in model.ep_info_buffer]
print(f"{len(returns)} training episodes: mean reward (score + KL shaping) {np.mean(returns):+.3f}")

# The saved agent on a plain single env: predict() one token at a time.
agent = algo.load(f"runs/sb3-{args.algo}")
env = gym.make("TextGen-v0", **env_kwargs)
obs, info = env.reset(seed=1)
done = False
while not done:
    action, _ = agent.predict(obs)
    obs, reward, terminated, truncated, info = env.step(int(action))
    done = terminated or truncated
print(f"sample: {info['prompt']}\u2502{info['completion']}  reward {info['score']:+.3f}")
