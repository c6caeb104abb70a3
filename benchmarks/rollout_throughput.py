"""Tokens/s of three ways to sample completions with the same model, batch and lengths.

(a) textgym's rollout engine stepping the TextGen vector env (KV cache kept across env steps),
(b) Hugging Face ``model.generate`` with its KV cache (the speed limit for sampling),
(c) a naive loop that re-runs the whole context every step (what a generic RL library does).

Every method samples exactly ``--new-tokens`` tokens per row (EOS does not stop early) from prompts
left-padded to ``--prompt-tokens``, with plain sampling (temperature 1, no top-k/top-p). Each figure is the
median of ``--repeats`` timed runs (``--naive-repeats`` for (c)) after one warm-up run.

    python benchmarks/rollout_throughput.py                     # embedded SmolLM2-135M, CPU
    python benchmarks/rollout_throughput.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import torch

import textgym
from agents import RolloutCollector
from textgym.lm.models import load_causal_lm, load_tokenizer
from textgym.lm.prompts import load_prompts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or local directory (default: embedded)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-repeats", type=int, default=1, help="timed runs of (c), which is slow")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--skip-naive", action="store_true", help="skip (c), the slowest")
    return parser.parse_args()


def timed(run, repeats: int, device: str) -> float:
    """Median wall time of ``run()`` over ``repeats`` runs, after one warm-up run."""
    times = []
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    policy = load_causal_lm(args.model, device=args.device, dtype=dtype)
    tokenizer = load_tokenizer(args.model)
    prompts = load_prompts()[: args.batch]
    settings = {
        "model": args.model,
        "prompts": prompts,
        "max_prompt_tokens": args.prompt_tokens,
        "max_new_tokens": args.new_tokens,
        "stop_token_ids": [],
        "prompt_truncation": "left",
    }
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(
        prompts, padding="max_length", max_length=args.prompt_tokens, truncation=True, return_tensors="pt"
    ).to(args.device)
    tokens = args.batch * args.new_tokens

    envs = gym.make_vec("TextGen-v0", num_envs=args.batch, **settings)
    collector = RolloutCollector(policy, envs, seed=0)

    def engine() -> None:
        batch = collector.collect(args.batch)
        assert int(batch.completion_mask.sum()) == tokens

    @torch.inference_mode()
    def generate() -> None:
        out = policy.generate(
            **encoded,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert out.shape[1] == args.prompt_tokens + args.new_tokens

    @torch.inference_mode()
    def naive() -> None:
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        for _ in range(args.new_tokens):
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            logits = policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            action = torch.multinomial(torch.softmax(logits, -1), 1)
            ids, mask = torch.cat([ids, action], 1), torch.cat([mask, torch.ones_like(action)], 1)

    methods = {"(a) textgym rollout engine + vector env": engine, "(b) model.generate (KV cache)": generate}
    if not args.skip_naive:
        methods["(c) naive loop, full context each step"] = naive
    rates = {}
    for name, run in methods.items():
        repeats = args.naive_repeats if run is naive else args.repeats
        rates[name] = tokens / timed(run, repeats, args.device)

    where = args.device if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"model={args.model or textgym.lm.models.EMBEDDED_MODEL} device={where} dtype={args.dtype} "
        f"torch_threads={torch.get_num_threads()} batch={args.batch} prompt={args.prompt_tokens} "
        f"new={args.new_tokens} repeats={args.repeats}"
    )
    print(f"{'method':<44}{'tokens/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<44}{rate:>12.1f}")
    a, b = rates["(a) textgym rollout engine + vector env"], rates["(b) model.generate (KV cache)"]
    print(f"(a)/(b) = {a / b:.2f}   (target >= 0.9)")
    if not args.skip_naive:
        print(f"(a)/(c) = {a / rates['(c) naive loop, full context each step']:.2f}   (target >= 8)")


if __name__ == "__main__":
    main()
