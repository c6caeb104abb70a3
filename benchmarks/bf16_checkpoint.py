"""A checkpoint saved in bfloat16 learns as its float32 original does.

Almost every published checkpoint is bf16. The agents load any checkpoint into float32 master weights, so the
two starting points below differ only by bf16 rounding of the weights and should learn alike. (Trained in pure
bf16, as textgym did before, an update at these learning rates rounds away: see
``tests/test_agents_real_checkpoints.py::test_bf16_checkpoint_trains_in_fp32_master_weights``.)

GRPO on TextGen-v0 (VADER positivity), trained on the first 256 shipped openings; the mean reward of each
iteration's batch is printed for both runs side by side and plotted, and the 64 held-out openings are scored
before and after:

    python benchmarks/bf16_checkpoint.py --episodes 256 --plot docs/bf16_vs_fp32.png
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import torch
from rlhf_positivity import evaluate

import textgym  # noqa: F401
from agents import GRPO
from textgym.lm.models import embedded_model_dir
from textgym.lm.prompts import load_prompts


def save_bf16_copy(src: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--plot", default=None, help="write the two reward curves to this PNG")
    args = parser.parse_args()

    prompts = load_prompts("openings")
    train, held_out = prompts[:256], prompts[256:320]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"float32": embedded_model_dir(), "bfloat16": save_bf16_copy(embedded_model_dir(), Path(tmp))}
        for name, model_dir in models.items():
            envs = gym.make_vec(
                "TextGen-v0", num_envs=8, model=str(model_dir), prompts=train, max_new_tokens=args.new_tokens
            )
            agent = GRPO(
                str(model_dir),
                envs,
                batch_size=16,
                group_size=4,
                learning_rate=args.learning_rate,
                kl_coef=args.kl_coef,
                seed=0,
            )
            before = evaluate(agent, held_out, args.new_tokens)
            start = time.perf_counter()
            agent.learn(args.episodes, progress_bar=False)
            minutes = (time.perf_counter() - start) / 60
            after = evaluate(agent, held_out, args.new_tokens)
            curve = [h["rollout/reward_mean"] for h in agent.history]
            results[name] = (curve, before, after, minutes)

    print(f"GRPO, {args.episodes} episodes, lr {args.learning_rate}, β {args.kl_coef}, {args.new_tokens} new tokens")
    print(f"{'iteration':>9}{'float32 ckpt':>14}{'bfloat16 ckpt':>15}")
    for i, (a, b) in enumerate(zip(results["float32"][0], results["bfloat16"][0]), start=1):
        print(f"{i:>9}{a:>14.3f}{b:>15.3f}")
    print(f"{'checkpoint':<10}{'held-out before':>16}{'held-out after':>16}{'KL after':>10}{'minutes':>9}")
    for name, (_, before, after, minutes) in results.items():
        print(f"{name:<10}{before[0]:>16.3f}{after[0]:>16.3f}{after[1]:>10.2f}{minutes:>9.1f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, (curve, *_rest) in results.items():
            ax.plot([16 * (i + 1) for i in range(len(curve))], curve, marker="o", label=f"{name} checkpoint")
        ax.set_xlabel("episodes")
        ax.set_ylabel("mean reward of the batch (VADER)")
        ax.set_title("GRPO on TextGen-v0: bf16 vs fp32 checkpoint")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
