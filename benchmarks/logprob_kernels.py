"""Milliseconds of the completion log-probs' forward and backward over a batch's logits, two ways.

(a) textgym's: one fused ``log_softmax(logits, dtype=float32)`` over the pass's logits, then the chosen tokens;
(b) the form it replaced: a float32 copy of the logits, then ``logit − logsumexp``.

The logits are what an update pass of the embedded model writes under bf16 autocast: ``(E, T, V)`` bfloat16.
Each figure is the median of ``--repeats`` runs after a warm-up, (a) and (b) alternating.

    python benchmarks/logprob_kernels.py                    # 8 × 32 × 49152, bfloat16 logits
    python benchmarks/logprob_kernels.py --dtype float32    # the fp32 agents' logits
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agents.policy import _token_logprobs


def logsumexp_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(b): ``logit − logsumexp`` over a float32 copy of the logits."""
    logits = logits.float()
    return logits.gather(2, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8,32,49152", help="E,T,V: rows, completion tokens, vocabulary")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rows, width, vocab = (int(n) for n in args.shape.split(","))
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(rows, width, vocab, generator=generator)).to(getattr(torch, args.dtype))
    tokens = torch.randint(0, vocab, (rows, width), generator=generator)
    methods = {"(a) fused log_softmax": _token_logprobs, "(b) float32 copy + logsumexp": logsumexp_logprobs}
    error = (methods["(a) fused log_softmax"](logits, tokens) - logsumexp_logprobs(logits, tokens)).abs().max()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.repeats + 1):
        for name, method in methods.items():
            leaf = logits.clone().requires_grad_(True)
            start = time.perf_counter()
            method(leaf, tokens).sum().backward()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    print(f"logits {rows}×{width}×{vocab} {args.dtype}, torch_threads={torch.get_num_threads()}, "
          f"max |(a) − (b)| = {error:.1e}")  # fmt: skip
    for name, seconds in times.items():
        print(f"{name:<32}{1e3 * statistics.median(seconds):8.1f} ms forward + backward")


if __name__ == "__main__":
    main()
