"""Peak memory of one PPO update (the passes and the gradient steps after a rollout), on the CPU.

A first update creates the gradients and AdamW's moments (3 copies of the weights, there for good); then the
process's resident-set high-water mark is reset (Linux ``/proc/self/clear_refs``) and a second update on the
same batch is measured, so the figure is what an update adds on top of the weights, optimizer and batch:

    python benchmarks/ppo_memory.py                       # the embedded SmolLM2-135M, 16 episodes of 32 tokens
    python benchmarks/ppo_memory.py --minibatch-size 8 --eval-batch-size 16

Expected from the settings (fp32, E episodes of T tokens, vocabulary V, minibatch B, no-grad chunk C):
the passes without gradients hold about 2·C·T·V·4 bytes at once (one chunk's logits and a temporary), the
update about 4·B·T·V·4 bytes (logits, their log-sum-exp's saved input, the gradient, the softmax of the
backward pass) plus the activations of one minibatch. Before chunking, the no-grad passes held about
5·E·T·V·4 bytes (logits, the temperature copy, the log-softmax, its exp and their product over the batch).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import gymnasium as gym

import textgym  # noqa: F401
from agents import PPO


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a local HF model directory (default: the embedded model)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minibatch-size", type=int, default=4)
    parser.add_argument("--eval-batch-size", type=int, default=None, help="no-grad chunk (default: minibatch)")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    envs = gym.make_vec("TextGen-v0", num_envs=8, model=args.model, max_new_tokens=args.new_tokens)
    settings = {"batch_size": args.batch_size, "minibatch_size": args.minibatch_size, "epochs": 1, "kl_coef": 0.05}
    if args.eval_batch_size:
        settings["eval_batch_size"] = args.eval_batch_size
    agent = PPO(args.model, envs, **settings)
    batch = agent.collect()
    agent.train_on_batch(batch)  # gradients and optimizer moments now exist
    vocab = agent.policy.lm.config.get_text_config().vocab_size
    width = batch.completion_ids.shape[1]
    Path("/proc/self/clear_refs").write_text("5")  # reset the resident high-water mark (VmHWM) to now
    base = rss_mib("VmRSS")
    start = time.perf_counter()
    agent.train_on_batch(batch)
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    logits_mib = len(batch) * width * vocab * 4 / 2**20
    print(f"episodes {len(batch)} x {width} tokens, vocabulary {vocab}, minibatch {args.minibatch_size}")
    print(f"one batch's fp32 logits: {logits_mib:.0f} MiB")
    print(f"resident before the update: {base:.0f} MiB; peak during it: {peak:.0f} MiB; added: {peak - base:.0f} MiB")
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"update time {seconds:.1f} s; process peak since start {process_peak:.0f} MiB")


if __name__ == "__main__":
    main()
