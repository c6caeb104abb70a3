"""Learn a reward model from (synthetic) preferences, then use it as the reward of TextGen-v0.

1. Sample completions of the shipped prompts from the embedded LM.
2. Label them pairwise with a gold reward model (VADER positivity), flipping 10% of the labels like a careless
   annotator.
3. Train a small head on the frozen MiniLM encoder with the Bradley–Terry loss; held-out pairwise accuracy is
   measured against the noisy labels after every epoch, the weights of the best epoch are kept (early stopping,
   the default), and that model's held-out accuracy is measured against the gold afterwards.
4. Load the saved model by its path as the reward of an env.

Run: `python examples/train_reward_model.py` (about 2 minutes on 2 CPU cores; `--model tiny` for a smoke run).
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym

import textgym  # noqa: F401  (registers TextGen-v0)
from reward_models.preferences import PreferencePair, split_by_prompt
from reward_models.synthetic import sample_completions, synthesize_preferences
from reward_models.training import TrainConfig, pairwise_accuracy, train_reward_model
from textgym.lm.prompts import load_prompts

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=None, help="the LM that samples completions (default: embedded SmolLM2)")
parser.add_argument("--num-prompts", type=int, default=96)
parser.add_argument("--gold", default="vader", help="the gold reward model labelling the pairs")
parser.add_argument("--gold-kwargs", type=json.loads, default={})
parser.add_argument("--flip-prob", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--out", default="runs/reward-model")
args = parser.parse_args()

# 1-2. Synthetic preferences: 4 completions per prompt, every pair whose gold scores differ, some flipped.
prompts = load_prompts()[: args.num_prompts]
completions = sample_completions(prompts, num_completions=4, model=args.model, max_new_tokens=24, seed=0)
labelling = dict(gold=args.gold, gold_kwargs=args.gold_kwargs, min_gap=0.05)
noisy, stats = synthesize_preferences(prompts, completions, flip_prob=args.flip_prob, **labelling)
clean, _ = synthesize_preferences(prompts, completions, flip_prob=0.0, **labelling)  # the same pairs, true labels
print(f"{stats.pairs} pairs from {len(prompts)} prompts ({stats.flipped} labels flipped, {stats.ties_skipped} ties)")
pairs = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in noisy]

# 3. Bradley–Terry training on the noisy labels, with a held-out split by prompt.
config = TrainConfig(backbone="minilm", epochs=args.epochs, eval_fraction=0.2, seed=0)
result = train_reward_model(pairs, config, out_dir=args.out)
history, best = result.report["history"], result.report["best_epoch"]
print(
    f"held-out accuracy vs the noisy labels: {result.report['eval']['accuracy']:.3f} (epoch {best} of "
    f"{len(history)}, the best, kept; {history[-1]['eval_accuracy']:.3f} after the last)"
)
_, held_out = split_by_prompt(pairs, config.eval_fraction, config.seed)  # the split train_reward_model made
truth = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in clean]
truth = [pair for pair in truth if pair.prompt in {p.prompt for p in held_out}]
print(f"held-out accuracy vs the gold reward:  {pairwise_accuracy(result.model, truth).accuracy:.3f}")

# 4. The saved model, by path, as an env's reward.
env = gym.make("TextGen-v0", model=args.model, reward_model=args.out, max_new_tokens=16)
obs, info = env.reset(seed=0)
terminated = truncated = False
while not (terminated or truncated):
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
print(f"random completion {info['completion']!r}: learned reward {reward:+.3f}")
