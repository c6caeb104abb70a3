"""The demo: the embedded SmolLM2-135M-Instruct continues review and story openings in TextGen-v0.

The LM is the policy; the rollout engine steps a vector env with it (KV cache kept across steps) and the
env's reward model scores each completion for positivity. Run: `make demo`, or `python examples/demo.py`.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym

import textgym  # noqa: F401  (registers TextGen-v0)
from agents import RolloutCollector, SamplingConfig
from textgym.lm.models import load_causal_lm

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--model", default=None, help="embedded default, 'tiny', or a local model directory")
parser.add_argument("--episodes", type=int, default=8)
parser.add_argument("--num-envs", type=int, default=4)
args = parser.parse_args()

envs = gym.make_vec("TextGen-v0", num_envs=args.num_envs, model=args.model, max_new_tokens=32)
policy = load_causal_lm(args.model)
collector = RolloutCollector(policy, envs, SamplingConfig(temperature=0.8, top_p=0.95), seed=0)

start = time.perf_counter()
batch = collector.collect(args.episodes, progress=True)
seconds = time.perf_counter() - start

for prompt, completion, reward in zip(batch.prompts, batch.completions, batch.returns.tolist()):
    print(f"\nreward {reward:+.3f} | {prompt}\u2502{completion.strip()}")
tokens = int(batch.completion_mask.sum())
print(
    f"\n{len(batch)} episodes, mean reward {batch.returns.mean():+.3f}, {tokens} tokens in {seconds:.1f} s "
    f"({tokens / seconds:.0f} tokens/s incl. prompt encoding)"
)
