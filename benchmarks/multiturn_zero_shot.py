"""The multi-turn tasks' zero-shot scores per level: the starting model as ``textgym bench``'s ``zero-shot`` plays it.

Samples the model at temperature 1 on the same fixed test games the benchmark uses (its ``TestSet``), through
the KV-cached rollout engine, and prints per level the mean gold score, the normalised score (0 random tokens,
100 the scripted solver), the share of games solved, the mean number of turns and the share of turns the
partner could read (a number in range, a question about one attribute, a listed word)::

    OMP_NUM_THREADS=1 python benchmarks/multiturn_zero_shot.py                 # the embedded SmolLM2-135M
    python benchmarks/multiturn_zero_shot.py --model tiny --episodes 8         # a smoke run
    python benchmarks/multiturn_zero_shot.py --levels default                  # each task's default level only
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agents.bench.evaluation import TestSet
from textgym.tasks import get_task

TASKS = ("guess-number", "twenty-questions", "word-guess")
UNREADABLE = ("a number from", "unknown", "not in the list", "one word a turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="embedded (default), tiny, or a model directory")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--levels", default="all", help="all, default, or a comma-separated list of levels")
    parser.add_argument("--episodes", type=int, default=24, help="test games per level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    specs = [get_task(name) for name in args.tasks.split(",")]
    listed = [] if args.levels in ("all", "default") else [int(level) for level in args.levels.split(",")]
    unknown = [level for level in listed if not any(level in spec.levels for spec in specs)]
    if unknown:  # a level that some of the tasks lack is skipped for those; one that none has is a mistake
        parser.error(f"--levels {unknown} is no level of {args.tasks}")
    print("| task | level | gold score | normalised | solved | turns | readable turns | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in zip(args.tasks.split(","), specs, strict=True):
        chosen = {"all": spec.levels, "default": (spec.default_level,)}.get(args.levels)
        for level in chosen or [level for level in listed if level in spec.levels]:
            start = time.perf_counter()
            test = TestSet(spec.env_id, level, args.model, args.episodes, args.seed, device="cpu")
            infos = test.sample(test.reference).infos
            test.close()
            gold = float(np.mean([info["gold_score"] for info in infos]))
            solved = np.mean([info["outcome"] == "solved" for info in infos])
            replies = [m["content"] for info in infos for m in info["transcript"][2::2]]
            readable = np.mean([not r.startswith(UNREADABLE) for r in replies]) if replies else 0.0
            turns = np.mean([info["turns"] for info in infos])
            seconds = time.perf_counter() - start
            print(
                f"| {name} | {level} | {gold:.3f} | {spec.normalized(gold, level):.1f} | {solved:.2f} | {turns:.1f} "
                f"| {readable:.2f} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
