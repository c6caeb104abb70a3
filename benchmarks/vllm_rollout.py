"""Decode tokens/s of textgym's rollout engine (its best: the bfloat16 sampling copy) and of the vLLM backend, side by
side in one run, and the time to push the trained weights to vLLM.

Both roll out the TextGen vector env with the same model, prompts and lengths: ``--batch`` sub-envs, prompts cut to
``--prompt-tokens``, exactly ``--new-tokens`` sampled per row (no stop token), temperature 1. The engine steps the
env a token at a time with its KV cache; vLLM writes each whole completion and the env takes it as one turn
(agents/vllm_rollout.py). Each figure is the median of ``--repeats`` timed rollouts after one warm-up; one vLLM
engine serves every batch size. Prints a line ``vllm / engine tokens/s at batch B = X`` per batch size.

    python benchmarks/vllm_rollout.py                              # embedded SmolLM2-135M, batches 8, 32, 128
    python benchmarks/vllm_rollout.py --batches 256 --device cuda  # on a GPU (install the vllm wheel)

Needs vLLM (the vllm extra; on a CPU its own environment: ``make test-vllm`` builds .venv-vllm).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch
from roofline import cpu_name  # benchmarks/ is on the path of a script run from it

import textgym
from agents.rollout import RolloutCollector
from agents.sampling_copy import bfloat16_copy, can_pack
from agents.vllm_rollout import VLLMCollector, start_engine
from textgym.lm.models import load_causal_lm, resolve_model_dir
from textgym.lm.prompts import load_prompts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a local Hugging Face model directory (default: embedded)")
    parser.add_argument("--batches", default="8,32,128", help="comma-separated batch sizes (sub-envs)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vllm-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    return parser.parse_args()


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` runs, after one warm-up run."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model_dir = str(resolve_model_dir(args.model))
    policy = load_causal_lm(model_dir, device=args.device, dtype=torch.float32)  # the trainer's weights
    prompts = load_prompts()
    settings = {
        "model": model_dir,
        "max_prompt_tokens": args.prompt_tokens,
        "max_new_tokens": args.new_tokens,
        "stop_token_ids": [],  # every row samples exactly --new-tokens
        "prompt_truncation": "left",
    }

    def envs(batch: int) -> gym.vector.VectorEnv:
        return gym.make_vec("TextGen-v0", num_envs=batch, prompts=prompts[:batch], **settings)

    start = time.perf_counter()
    engine = start_engine(model_dir, args.prompt_tokens + args.new_tokens, args.vllm_dtype, seed=0)
    startup = time.perf_counter() - start
    rates: dict[int, tuple[float, float]] = {}
    for batch in batches:
        tokens = batch * args.new_tokens
        native = RolloutCollector(bfloat16_copy(policy, batch if can_pack() else None), envs(batch), seed=0)
        served = VLLMCollector(engine, envs(batch), seed=0, device=args.device)

        def rollout(collector: RolloutCollector | VLLMCollector, batch: int = batch, tokens: int = tokens) -> None:
            with torch.inference_mode():
                assert int(collector.collect_prompts(prompts[:batch]).completion_mask.sum()) == tokens

        rates[batch] = (
            tokens / median_seconds(lambda native=native: rollout(native), args.repeats),
            tokens / median_seconds(lambda served=served: rollout(served), args.repeats),
        )
        print(f"batch {batch}: engine {rates[batch][0]:.1f}, vllm {rates[batch][1]:.1f} tokens/s", flush=True)
    sync = median_seconds(lambda: served.load_weights(policy), args.repeats)

    where = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"model={args.model or textgym.lm.models.EMBEDDED_MODEL} device={where} "
        f"torch_threads={torch.get_num_threads()} prompt={args.prompt_tokens} new={args.new_tokens} "
        f"repeats={args.repeats} vllm_dtype={args.vllm_dtype} engine=bfloat16 copy (packed: {can_pack()})"
    )
    print(f"{'batch':>6}{'engine tokens/s':>18}{'vllm tokens/s':>16}")
    for batch, (native_rate, served_rate) in rates.items():
        print(f"{batch:>6}{native_rate:>18.1f}{served_rate:>16.1f}")
    for batch, (native_rate, served_rate) in rates.items():
        print(f"vllm / engine tokens/s at batch {batch} = {served_rate / native_rate:.2f}")
    parameters = sum(p.numel() for p in policy.parameters())
    print(f"vllm engine start-up: {startup:.1f} s")
    print(f"weight sync (vllm load_weights of {parameters / 1e6:.0f}M float32 parameters): {sync:.3f} s")


if __name__ == "__main__":
    main()
