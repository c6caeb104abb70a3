"""``textgym bench``: run the benchmark suite from the command line.

Examples::

    textgym bench --quick --out bench/quick                    # smoke run: every task × algorithm once, tiny model
    textgym bench --estimate --out bench/full                  # expected hours per cell, then exit
    textgym bench --workers 2 --max-hours 8 --out bench/full   # two cells at a time, one sitting of 8 hours
    textgym bench --tasks positivity --algos zero-shot,best-of-n,ppo,grpo --seeds 3 \\
        --budget-tokens 200000 --out bench/positivity
    textgym bench ... --out bench/positivity                   # again: resumes, finished cells are kept
"""

from __future__ import annotations

import argparse
import json


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _epilog() -> str:
    import textgym  # noqa: F401  (registers the envs and their tasks)
    from agents.bench.algorithms import ALGORITHMS, DEFAULT_ALGORITHMS
    from textgym.tasks import get_task, task_names

    lines = ["tasks:"]
    for name in task_names():
        task = get_task(name)
        lines.append(f"  {name:<18} {task.description} (levels {list(task.levels)}, default {task.default_level})")
    if not task_names():
        lines.append("  (none registered)")
    lines.append(f"  {'rg:DATASET':<18} any reasoning-gym dataset, e.g. rg:leg_counting (the extra textgym[reasoning])")
    lines += ["", "algorithms:"]
    for name, algorithm in ALGORITHMS.items():
        extra = "" if name in DEFAULT_ALGORITHMS else " [not run unless named]"
        lines.append(f"  {name:<18} {algorithm.description}{extra}")
    lines += ["", "Outputs in --out: runs.csv, results.md, learning_curves.png, reward_kl_frontier.png,",
              "overoptimization_<task>.png; see docs/benchmarks.md."]  # fmt: skip
    return "\n".join(lines)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark algorithms on textgym's tasks: train each within a token budget, evaluate on the "
        "test split at fixed points of it, aggregate seeds with rliable.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=_names, default=None, help="comma-separated task names (default: all)")
    parser.add_argument(
        "--algos",
        type=_names,
        default=None,
        help="comma-separated algorithm names (default: all but oracle and trl-grpo)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds per task × algorithm (default 3; quick 1)")
    parser.add_argument(
        "--budget-tokens", type=int, default=None,
        help="env tokens per training algorithm (default 200000; quick 1: exactly one update of each)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="output folder (resumed when it holds the same configuration)")
    parser.add_argument(
        "--level", action="append", default=[], metavar="[TASK=]N", help="a level for every task, or TASK=N for one"
    )
    parser.add_argument("--model", default=None, help="starting model: a local HF directory (default: embedded)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="test prompts per evaluation (default 64)")
    parser.add_argument(
        "--eval-points", type=lambda s: [float(x) for x in _names(s)], default=None,
        help="budget fractions to evaluate at (default 0,0.25,0.5,0.75,1; quick 0,1); the starting model is "
        "evaluated in any case",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="ALGO.KEY=VALUE",
        help="a hyper-parameter over agents/bench/hparams.py's table, e.g. ppo.kl_coef=0.1",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run, not results: tiny model, one seed, one update per cell (budget 1), evaluated at 0 and 1; "
        "the smallest run that exercises every task × algorithm (the fuller smoke matrix: --quick --seeds 3 "
        "--eval-points 0,0.5,1 --budget-tokens 1024)",
    )  # fmt: skip
    parser.add_argument("--append", action="store_true", help="add this configuration to a folder holding another")
    parser.add_argument(
        "--max-hours", type=float, default=None,
        help="start no new cell after this many hours; run the same command again to continue",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1,
        help="cells computed at once, each in its own process with one torch thread (pinned to its own core when "
        "there are enough); the same rows as a serial run on one thread (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--estimate", action="store_true",
        help="print each cell's expected hours and the total, then exit without running or writing anything: from "
        "the finished seeds of the same setting in --out (measured) or a short probe of one seed per setting "
        "(set-up, one evaluation, one update; extrapolated to the budget)",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_levels(items: list[str], tasks: list[str] | None) -> dict[str, int]:
    """``["2"]`` (every task) or ``["positivity=2", ...]`` → ``{task: level}``."""
    from textgym.tasks import task_names

    levels: dict[str, int] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not value.lstrip("-").isdigit():
            raise ValueError(f"--level {item!r}: expected N or TASK=N with N an integer.")
        for task in [name] if sep else (tasks or task_names()):
            levels[task] = int(value)
    return levels


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``["ppo.kl_coef=0.1"]`` → ``{"ppo": {"kl_coef": 0.1}}``, each value parsed as JSON when it is JSON."""
    hparams: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        algo, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set {item!r}: expected ALGO.KEY=VALUE, e.g. ppo.kl_coef=0.1.")
        try:
            hparams.setdefault(algo, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            hparams.setdefault(algo, {})[name] = value
    return hparams


def main(argv: list[str] | None = None, prog: str = "textgym bench") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    from agents.bench.runner import BenchConfig, run_benchmark

    try:
        config = BenchConfig(
            tasks=args.tasks,
            **({"algorithms": args.algos} if args.algos else {}),
            seeds=args.seeds,
            budget_tokens=args.budget_tokens,
            out=args.out,
            levels=parse_levels(args.level, args.tasks),
            model=args.model,
            eval_points=args.eval_points,
            eval_episodes=args.eval_episodes,
            hparams=parse_sets(args.set),
            quick=args.quick,
            append=args.append,
            device=args.device,
            max_hours=args.max_hours,
            progress=not args.no_progress,
            workers=args.workers,
        )
        if args.estimate:
            from transformers.utils import logging as hf_logging

            from agents.bench.estimate import estimate, format_estimates

            hf_logging.disable_progress_bar()  # a "Loading weights" bar per probe would bury the estimates
            print(format_estimates(estimate(config), config.workers))
            return 0
        out = run_benchmark(config)
    except (ValueError, FileExistsError, KeyError) as err:
        parser.exit(2, f"{prog}: error: {err.args[0] if err.args else err}\n")
    print(f"results in {out}: runs.csv, results.md and the plots")
    return 0
