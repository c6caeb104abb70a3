"""Stable-Baselines3 PPO with textgym's LM policy vs textgym's own PPO agent: same task, same model, same batch.

Two measurements, in env steps (= generated tokens) per second:

1. **Rollouts** (no update): SB3's ``collect_rollouts`` with ``LMActorCriticPolicy`` re-running the full context
   every step (``kv_cache=False``), the same with the policy's per-row KV cache (``kv_cache=True``, the
   default), and textgym's rollout engine (``RolloutCollector``), each stepping ``--num-envs`` sub-envs of
   TextGen-v0 (VADER reward, no reference model).
2. **Training**: KL-regularised PPO both ways, one update per batch of ``num_envs × new_tokens`` tokens. SB3:
   ``PPO(LMActorCriticPolicy)`` on ``make_sb3_vec_env`` with the env's reference model (``kl_coef``) and
   ``ent_coef = kl_coef``, ``n_steps = new_tokens``, one minibatch; textgym: ``agents.PPO`` with
   ``batch_size = minibatch_size = num_envs`` episodes and the same ``kl_coef``. Both run ``--epochs`` epochs.
   SB3 trains on each state separately (a full-context forward per token), textgym on whole sequences (one
   forward per episode), which is most of the gap.

    python benchmarks/sb3_vs_textgym.py                   # the tiny test model (seconds)
    python benchmarks/sb3_vs_textgym.py --model embedded  # SmolLM2-135M (minutes on CPU)
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import torch
from stable_baselines3 import PPO as SB3PPO

import textgym  # noqa: F401
from agents import PPO, RolloutCollector
from agents.sb3 import LMActorCriticPolicy, make_sb3_vec_env
from textgym.lm.models import load_causal_lm


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (default), 'embedded' or a local model directory")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens of the env")
    parser.add_argument("--iterations", type=int, default=5, help="timed rollouts / updates, after one warm-up")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--skip-train", action="store_true", help="measure rollouts only")
    return parser.parse_args()


def env_kwargs(args: argparse.Namespace, **extra: object) -> dict:
    return {"model": args.model, "max_new_tokens": args.new_tokens, **extra}


def sb3_model(args: argparse.Namespace, kv_cache: bool = True, **env_extra: object) -> SB3PPO:
    venv = make_sb3_vec_env("TextGen-v0", args.num_envs, seed=0, **env_kwargs(args, **env_extra))
    return SB3PPO(
        LMActorCriticPolicy,
        venv,
        policy_kwargs={"model": args.model, "kv_cache": kv_cache},
        n_steps=args.new_tokens,
        batch_size=args.new_tokens * args.num_envs,  # one minibatch, as textgym's below
        n_epochs=args.epochs,
        learning_rate=1e-5,
        ent_coef=args.kl_coef,
        seed=0,
    )


def sb3_rollout_rate(args: argparse.Namespace, kv_cache: bool) -> float:
    """Tokens/s of SB3's own ``collect_rollouts`` (policy forward, env step, buffer), median of the timed ones."""
    model = sb3_model(args, kv_cache=kv_cache)
    tokens = model.n_steps * args.num_envs
    _, callback = model._setup_learn(tokens * (args.iterations + 1))
    rates = []
    for _ in range(args.iterations + 1):
        start = time.perf_counter()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def textgym_rollout_rate(args: argparse.Namespace) -> float:
    envs = gym.make_vec("TextGen-v0", num_envs=args.num_envs, **env_kwargs(args))
    collector = RolloutCollector(load_causal_lm(args.model), envs, seed=0)
    rates = []
    for _ in range(args.iterations + 1):
        before, start = collector.tokens_generated, time.perf_counter()
        collector.collect(args.num_envs)
        rates.append((collector.tokens_generated - before) / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def sb3_train_rate(args: argparse.Namespace) -> float:
    model = sb3_model(args, reference_model=args.model, kl_coef=args.kl_coef)
    tokens = model.n_steps * args.num_envs
    model.learn(tokens)  # warm-up
    start = time.perf_counter()
    model.learn(tokens * args.iterations, reset_num_timesteps=False)
    return tokens * args.iterations / (time.perf_counter() - start)


def textgym_train_rate(args: argparse.Namespace) -> float:
    envs = gym.make_vec("TextGen-v0", num_envs=args.num_envs, **env_kwargs(args))
    n = args.num_envs
    agent = PPO(args.model, envs, batch_size=n, minibatch_size=n, epochs=args.epochs, kl_coef=args.kl_coef)
    agent.learn(n * (args.iterations + 1), progress_bar=False)
    return statistics.median(h["time/tokens_per_s"] for h in agent.history[1:])


def main() -> None:
    args = parse_args()
    print(
        f"model={args.model} torch_threads={torch.get_num_threads()} num_envs={args.num_envs} "
        f"max_new_tokens={args.new_tokens} timed_iterations={args.iterations} epochs={args.epochs}"
    )
    rows = [
        ("rollout: SB3, full context every step", sb3_rollout_rate(args, kv_cache=False)),
        ("rollout: SB3, LM policy's KV cache", sb3_rollout_rate(args, kv_cache=True)),
        ("rollout: textgym rollout engine", textgym_rollout_rate(args)),
    ]
    if not args.skip_train:
        rows += [
            ("train: SB3 PPO + LMActorCriticPolicy", sb3_train_rate(args)),
            ("train: textgym agents.PPO", textgym_train_rate(args)),
        ]
    print(f"{'method':<42}{'tokens/s':>12}{'ms/token':>12}")
    for name, rate in rows:
        print(f"{name:<42}{rate:>12.1f}{1000 / rate:>12.2f}")
    engine = rows[2][1]
    print(f"textgym engine / SB3 full context = {engine / rows[0][1]:.2f}; / SB3 cached = {engine / rows[1][1]:.2f}")
    if not args.skip_train:
        print(f"textgym PPO / SB3 PPO (training tokens/s) = {rows[4][1] / rows[3][1]:.2f}")


if __name__ == "__main__":
    main()
