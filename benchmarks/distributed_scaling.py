"""Rollout and update throughput of data-parallel training with 1, 2, ... processes (torchrun, gloo on the CPU).

The global batch is fixed (``--batch`` completions of ``--batch / --group`` prompts, ``--num-envs`` sub-envs in
all), so every process does ``1/N`` of the work: the figures show what splitting one update over N processes
buys. On a CPU the cores are split too (``--cores / N`` threads per process, so 1 process uses all of them),
which makes the comparison one of parallel processes against threads of one process. Each phase is timed from
a barrier to a barrier, i.e. by the slowest process; the figure is the median over ``--iterations`` after one
warm-up iteration.

    python benchmarks/distributed_scaling.py                          # embedded SmolLM2-135M, GRPO, 1 and 2 procs
    python benchmarks/distributed_scaling.py --model tiny --procs 1,2 --iterations 3
    python benchmarks/distributed_scaling.py --device cuda --procs 1  # one GPU (one process per GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or local directory (default: embedded)")
    parser.add_argument("--algo", default="grpo", choices=["ppo", "grpo", "rloo"])
    parser.add_argument("--procs", default="1,2", help="comma-separated numbers of processes")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads shared by the processes")
    parser.add_argument("--batch", type=int, default=16, help="completions per update, over all processes")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO, RLOO)")
    parser.add_argument("--num-envs", type=int, default=8, help="sub-envs over all processes")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    parser.add_argument("--fsdp", action="store_true", help="shard the policy with FSDP (2+ processes)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # set when launched by torchrun
    return parser.parse_args()


def worker(args: argparse.Namespace) -> None:
    """One process: build the agent, run warm-up + timed iterations, rank 0 writes the medians."""
    import gymnasium as gym
    import torch

    import textgym  # noqa: F401  (registers the envs)
    from agents import GRPO, PPO, RLOO
    from textgym.lm import distributed as dist

    dist.init_distributed()
    world = dist.world_size()
    torch.set_num_threads(max(1, args.cores // world) if args.device == "cpu" else 1)
    algo = {"ppo": PPO, "grpo": GRPO, "rloo": RLOO}[args.algo]
    settings = {"batch_size": args.batch, "minibatch_size": args.batch, "epochs": 1, "device": args.device}
    if args.algo != "ppo":
        settings["group_size"] = args.group
    if args.fsdp and world > 1:
        settings["fsdp"] = True
    with dist.main_process_first():
        envs = gym.make_vec(
            "TextGen-v0", num_envs=args.num_envs // world, model=args.model, max_new_tokens=args.new_tokens
        )
    agent = algo(args.model, envs, **settings)

    def synced(run):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        out = run()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dist.barrier()
        return out, time.perf_counter() - start

    rollouts, updates, tokens = [], [], []
    for i in range(args.iterations + 1):
        before = agent.collector.tokens_generated
        batch, rollout_s = synced(agent.collect)
        _, update_s = synced(lambda b=batch: agent.train_on_batch(b))
        agent.collector.invalidate_cache()
        generated = dist.all_reduce_sum(torch.tensor([float(agent.collector.tokens_generated - before)])).item()
        if i > 0:  # the first iteration warms up (allocations, thread pools)
            rollouts.append(rollout_s)
            updates.append(update_s)
            tokens.append(generated)
    if dist.is_main():
        rollout_s, update_s = statistics.median(rollouts), statistics.median(updates)
        result = {
            "processes": world,
            "threads_per_process": torch.get_num_threads(),
            "rollout_s": rollout_s,
            "update_s": update_s,
            "rollout_completions_per_s": args.batch / rollout_s,
            "rollout_tokens_per_s": statistics.median(tokens) / rollout_s,
            "update_completions_per_s": args.batch / update_s,
        }
        Path(args.worker).write_text(json.dumps(result))


def launch(args: argparse.Namespace, processes: int, out: Path) -> dict:
    """Run this script's worker under torchrun with ``processes`` processes; return rank 0's figures."""
    passed = [a for a in sys.argv[1:] if not a.startswith("--worker")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += [__file__, *passed, "--worker", str(out)]
    threads = str(max(1, args.cores // processes))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{processes} processes failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        worker(args)
        return
    counts = [int(n) for n in args.procs.split(",")]
    print(f"CPU: {cpu_model()}")
    print(
        f"{args.algo}, model {args.model or 'embedded'}, batch {args.batch}, {args.num_envs} sub-envs, "
        f"{args.new_tokens} new tokens, device {args.device}{', FSDP' if args.fsdp else ''}, {args.cores} cores"
    )
    columns = ("procs", "thr/proc", "rollout compl/s", "tokens/s", "update compl/s", "x rollout", "x update")
    widths = (5, 8, 15, 9, 14, 9, 8)
    print(" ".join(f"{name:>{w}}" for name, w in zip(columns, widths)))
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            r = launch(args, n, Path(tmp) / f"{n}.json")
            base = base or r
            print(
                f"{r['processes']:>5} {r['threads_per_process']:>8} {r['rollout_completions_per_s']:>15.2f} "
                f"{r['rollout_tokens_per_s']:>9.1f} {r['update_completions_per_s']:>14.2f} "
                f"{r['rollout_completions_per_s'] / base['rollout_completions_per_s']:>9.2f} "
                f"{r['update_completions_per_s'] / base['update_completions_per_s']:>8.2f}"
            )


if __name__ == "__main__":
    main()
