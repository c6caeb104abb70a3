"""Where an RL iteration's time goes, against what the machine can do: the roofline of textgym's training loop.

1. **Peak.** The best matmul throughput of this machine in float32 and bfloat16 (GFLOP/s), on the shapes the
   model runs: a decode step's ``(batch, hidden) @ (hidden, intermediate)`` and an update's
   ``(batch · length, hidden) @ (hidden, intermediate)``.
2. **Phases.** PPO and GRPO iterations on ``TextGen-v0`` with every phase timed on its own (exclusive time, a
   phase's sub-phases taken out): prompt encoding and decode steps of the rollout, token sampling, env
   stepping, reward scoring, the reference pass, the old-log-prob / value pass, the update (forward, backward,
   optimizer), and what is left between them (Python in the loops). Forward hooks count each phase's model
   FLOPs (``2 · parameters`` per position the model runs, padding included, ``2 · hidden · vocab`` per logit
   column, attention's ``4 · layers · hidden · keys`` per position; ×3 with a backward pass), so each phase
   gets its model-FLOP utilisation (MFU) against the peak of the precision it ran in.
3. **Env overhead.** A vector env of ``--env-batch`` sub-envs stepped by a dummy policy (random tokens), against
   one decode step of the model at that batch.

    python benchmarks/roofline.py                            # embedded SmolLM2-135M, batch 64, PPO and GRPO
    python benchmarks/roofline.py --model tiny --batch 16    # the tiny test model
    python benchmarks/roofline.py --plot docs/roofline.png --json roofline.json
    python benchmarks/roofline.py --trace /tmp/roofline      # also a torch.profiler trace of one iteration

``--trace`` runs one more iteration under ``torch.profiler`` (phases appear as ``textgym/<phase>`` ranges) and
prints the operators with the most self time: where the Python overhead is, measured rather than guessed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import agents.base
import textgym  # noqa: F401  (registers the envs)
from agents import GRPO, PPO
from agents.sampling_copy import PackedLinear
from textgym.lm.cache import IncrementalLM

PHASES = (
    "rollout: prompt encoding",
    "rollout: decode steps",
    "rollout: sampling",
    "env stepping",
    "reward scoring",
    "rollout: weight copy",
    "rollout: other",
    "reference pass",
    "old log-probs / values",
    "update",
    "other",
)
"""The phases of an iteration, in the order of the table and the stacked bars."""
MODEL_PHASES = (
    "rollout: prompt encoding",
    "rollout: decode steps",
    "reference pass",
    "old log-probs / values",
    "update",
)
"""The phases whose time is the model's: their MFU is reported."""


class PhaseClock:
    """Exclusive wall time and model FLOPs per phase: entering a phase pauses the one it is nested in."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [phase, started]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        now = self._now()
        if self._stack:
            self.seconds[self._stack[-1][0]] += now - self._stack[-1][1]
        self._stack.append([name, now])
        try:
            with torch.profiler.record_function(f"textgym/{name}"):
                yield
        finally:
            end = self._now()
            self.seconds[name] += end - self._stack.pop()[1]
            if self._stack:
                self._stack[-1][1] = end

    def current(self) -> str:
        return self._stack[-1][0] if self._stack else "other"

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time every call of ``owner.attribute`` (a class or an instance) as phase ``name``."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)

    def count_flops(self, model: torch.nn.Module) -> None:
        """Add each forward pass of ``model`` to the current phase's FLOPs (×3 when a backward will follow)."""
        config = model.config.get_text_config()
        hidden, vocab, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
        embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
        head = model.get_output_embeddings()
        embeddings |= {id(p) for p in head.parameters()} if head is not None else set()
        body = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        packed = [m for m in model.modules() if isinstance(m, PackedLinear) and m is not head]  # no parameters
        body += sum(m.in_features * m.out_features for m in packed)

        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            positions = ids.numel()
            keys = kwargs["attention_mask"].shape[-1] if kwargs.get("attention_mask") is not None else ids.shape[-1]
            logits = getattr(output, "logits", None)
            logit_columns = logits.shape[0] * logits.shape[1] if logits is not None and logits.dim() == 3 else 0
            flops = 2 * body * positions + 4 * layers * hidden * keys * positions + 2 * hidden * vocab * logit_columns
            self.flops[self.current()] += flops * (3 if torch.is_grad_enabled() else 1)

        model.register_forward_hook(hook, with_kwargs=True)

    def reset(self) -> None:
        self.seconds.clear()
        self.flops.clear()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


# --- 1. the machine's peak ----------------------------------------------------------------------------------------
def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """Best-of-several GFLOP/s of ``(m, k) @ (k, n)`` in ``dtype``."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(3):
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        repeats = max(1, int(2e9 / (2 * m * k * n)))
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9)
    return best


def measure_peaks(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The matmul GFLOP/s of the model's shapes in float32 and bfloat16; the peak of a dtype is its best shape."""
    config = model.config.get_text_config()
    hidden, inner = config.hidden_size, config.intermediate_size
    shapes = {
        f"decode ({args.batch}, {hidden}) @ ({hidden}, {inner})": (args.batch, hidden, inner),
        f"update ({args.minibatch * 96}, {hidden}) @ ({hidden}, {inner})": (args.minibatch * 96, hidden, inner),
        "square 2048³": (2048, 2048, 2048),
    }
    table = {
        dtype_name: {name: matmul_gflops(*shape, dtype, device) for name, shape in shapes.items()}
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    return {"shapes": table, "peak": {dtype: max(values.values()) for dtype, values in table.items()}}


# --- 2. the phases of an iteration --------------------------------------------------------------------------------
def profile_agent(algo: type, args: argparse.Namespace, clock: PhaseClock) -> dict[str, Any]:
    """Median exclusive seconds and FLOPs per phase over ``args.iterations`` iterations, after a warm-up."""
    envs = gym.make_vec("TextGen-v0", num_envs=args.batch, model=args.model, max_new_tokens=args.new_tokens)
    settings = {"group_size": 8} if algo is GRPO else {}
    agent = algo(
        args.model,
        envs,
        batch_size=args.batch,
        minibatch_size=args.minibatch,
        epochs=1,
        kl_coef=0.05,
        precision=args.precision,
        seed=0,
        **settings,
    )
    instrument(agent, clock)
    agent.learn(args.batch, progress_bar=False)  # warm-up: allocations, first-call costs
    per_iteration: list[dict[str, float]] = []
    flops: list[dict[str, float]] = []
    for i in range(args.iterations):
        clock.reset()
        agent.learn(args.batch * (i + 2), progress_bar=False)
        per_iteration.append(dict(clock.seconds))
        flops.append(dict(clock.flops))
    if args.trace:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            agent.learn(args.batch * (args.iterations + 2), progress_bar=False)
        path = f"{args.trace}-{agent.algo}.json"
        prof.export_chrome_trace(path)
        print(f"\n{agent.algo}: torch.profiler trace of one iteration in {path}; operators by self time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    tokens = statistics.median(h["time/tokens_per_s"] * h["time/iteration_seconds"] for h in agent.history[1:])
    envs.close()
    return {
        "seconds": {p: statistics.median(it.get(p, 0.0) for it in per_iteration) for p in PHASES},
        "flops": {p: statistics.median(f.get(p, 0.0) for f in flops) for p in PHASES},
        "tokens": tokens,
        "precision": agent.precision,
    }


def instrument(agent: Any, clock: PhaseClock) -> None:
    """Wrap the agent's, its rollout engine's and its env's pieces in phases; count its models' FLOPs."""
    clock.wrap(agent, "_iteration", "other")
    clock.wrap(agent, "collect", "rollout: other")
    clock.wrap(agents.base, "copy_weights", "rollout: weight copy")  # bf16: the sampling copy's refresh
    clock.wrap(agent, "train_on_batch", "update")
    clock.wrap(agent, "reference_logprobs", "reference pass")
    clock.wrap(agent.policy, "evaluate_in_chunks", "old log-probs / values")
    clock.wrap(agent.collector, "_sample", "rollout: sampling")
    clock.wrap(agent.collector._lm, "encode_rows", "rollout: prompt encoding")
    clock.wrap(agent.collector._lm, "advance", "rollout: decode steps")
    clock.wrap(agent.envs, "step", "env stepping")
    clock.wrap(agent.envs, "reset", "env stepping")
    episodes = agent.envs.episodes
    for attribute in ("reward_model", "gold_model"):
        if getattr(episodes, attribute) is not None:
            clock.wrap(episodes, attribute, "reward scoring")
    clock.count_flops(agent.policy.lm)
    if agent.sampling_lm is not agent.policy.lm:  # bf16: a bfloat16 copy of the weights samples
        clock.count_flops(agent.sampling_lm)
    if agent.policy.reference is not None:
        clock.count_flops(agent.policy.reference)


# --- 3. env stepping against a decode step -------------------------------------------------------------------------
def env_overhead(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds per vector-env step with random actions, and per model decode step, at ``args.env_batch`` rows."""
    from textgym.lm.models import load_causal_lm

    n = args.env_batch
    envs = gym.make_vec("TextGen-v0", num_envs=n, model=args.model, max_new_tokens=args.new_tokens)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    vocab = envs.single_action_space.n
    step_seconds = []
    for _ in range(args.new_tokens):
        actions = rng.integers(0, vocab, size=n)
        start = time.perf_counter()
        envs.step(actions)
        step_seconds.append(time.perf_counter() - start)
    model = load_causal_lm(args.model, device=device)
    lm = IncrementalLM(model, n)
    lm.encode_rows(np.ones(n, dtype=bool), obs["input_ids"], obs["attention_mask"])
    decode_seconds = []
    for _ in range(8):
        tokens = torch.as_tensor(rng.integers(0, vocab, size=n), device=device)
        start = time.perf_counter()
        lm.advance(tokens, np.ones(n, dtype=bool))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        decode_seconds.append(time.perf_counter() - start)
    envs.close()
    env_step, decode_step = statistics.median(step_seconds), statistics.median(decode_seconds)
    return {"env_step_seconds": env_step, "decode_step_seconds": decode_step, "ratio": env_step / decode_step}


# --- report ----------------------------------------------------------------------------------------------------------
def report(results: dict[str, dict[str, Any]], peaks: dict[str, Any]) -> str:
    lines = [
        "| phase | " + " | ".join(f"{algo} s/iter | {algo} MFU" for algo in results) + " |",
        "|---|" + "---:|---:|" * len(results),
    ]
    for phase in PHASES:
        cells = []
        for result in results.values():
            seconds, flops = result["seconds"][phase], result["flops"][phase]
            peak = peaks["peak"]["bfloat16" if result["precision"] == "bf16" else "float32"] * 1e9
            mfu = f"{100 * flops / seconds / peak:.1f}%" if phase in MODEL_PHASES and seconds > 0 else ""
            cells.append(f"{seconds:.2f} | {mfu}")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    totals = []
    for result in results.values():
        total = sum(result["seconds"].values())
        totals.append(f"**{total:.2f}** | {result['tokens'] / total:.0f} tok/s")
    lines.append("| **iteration** | " + " | ".join(totals) + " |")
    rollout_rows = [p for p in PHASES if p.startswith("rollout") or p in ("env stepping", "reward scoring")]
    summary = []
    for algo, result in results.items():
        peak = peaks["peak"]["bfloat16" if result["precision"] == "bf16" else "float32"] * 1e9
        rollout_s = sum(result["seconds"][p] for p in rollout_rows)
        rollout_flops = sum(result["flops"][p] for p in rollout_rows)
        summary.append(
            f"{algo}: rollout {100 * rollout_flops / rollout_s / peak:.1f}% of peak (model FLOPs over the whole "
            f"rollout's time), update {100 * result['flops']['update'] / result['seconds']['update'] / peak:.1f}%"
        )
    return "\n".join([*lines, "", *summary])


def plot(results: dict[str, dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.6 * len(results)))
    colors = plt.get_cmap("tab20").colors  # one colour per phase: tab10's repeat after ten
    names = list(results)
    left = np.zeros(len(names))
    for i, phase in enumerate(PHASES):
        widths = np.array([results[n]["seconds"][phase] for n in names])
        ax.barh(names, widths, left=left, color=colors[i % len(colors)], label=phase)
        left += widths
    ax.set_xlabel("seconds per iteration")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="'tiny', a local model directory, or the embedded default")
    parser.add_argument("--batch", type=int, default=64, help="completions per iteration, all decoded at once")
    parser.add_argument("--minibatch", type=int, default=16, help="completions per update step")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations after a warm-up one")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--algos", default="grpo,ppo")
    parser.add_argument("--env-batch", type=int, default=256)
    parser.add_argument("--plot", default=None, help="stacked-bar PNG of the phases")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--trace", default=None, help="path prefix of torch.profiler traces (one per algorithm)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from textgym.lm.models import load_causal_lm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    print(f"model={args.model or 'embedded SmolLM2-135M'} device={where} batch={args.batch} "
          f"minibatch={args.minibatch} new_tokens={args.new_tokens} torch={torch.__version__} "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}")  # fmt: skip

    peaks = measure_peaks(load_causal_lm(args.model, device=device), args, device)
    print("\nmatmul GFLOP/s")
    for dtype, shapes in peaks["shapes"].items():
        print(f"  {dtype}: " + ", ".join(f"{name} {value:.0f}" for name, value in shapes.items()))

    algos: dict[str, Callable] = {"grpo": GRPO, "ppo": PPO}
    results = {}
    for name in args.algos.split(","):
        clock = PhaseClock(device)
        results[name] = profile_agent(algos[name], args, clock)
    print("\n" + report(results, peaks))

    overhead = env_overhead(args, device)
    print(
        f"\nenv stepping at batch {args.env_batch} (random actions): {1e3 * overhead['env_step_seconds']:.1f} ms per "
        f"step, {100 * overhead['ratio']:.1f}% of a decode step ({1e3 * overhead['decode_step_seconds']:.1f} ms)"
    )
    if args.plot:
        plot(results, args.plot, f"{args.model or 'SmolLM2-135M'}, batch {args.batch}, {where}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "peaks": peaks, "phases": results, "env_overhead": overhead}, f, indent=2)


if __name__ == "__main__":
    main()
