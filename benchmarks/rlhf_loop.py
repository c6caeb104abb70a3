"""What iterating the InstructGPT loop buys: one-shot against iterated labels, active against random selection,
and the ceiling of RL on the gold itself, at equal labels and RL tokens, with a simulated rater panel.

Arms (every one spends ``rounds × labels`` labels and ``rounds × tokens`` RL env tokens, except the ceiling,
which uses no label):

* ``iterated``: ``rounds`` rounds of ``labels`` labels, each sampled from the current policy;
* ``one-shot``: one round of ``rounds × labels`` labels from the starting policy, then all the RL;
* ``active``: ``iterated`` with items chosen by the uncertainty of a 3-head reward-model ensemble;
* ``ceiling``: ``rounds`` rounds of RL on the gold itself.

Each arm × seed is a ``textgym rlhf`` run folder under ``--out`` (resumable: run the same command again to
continue); the table is printed from their ``rounds.csv`` and written to ``--out/summary.csv``.

    python benchmarks/rlhf_loop.py --out runs/rlhf-bench --seeds 0 --arms iterated,one-shot,ceiling
    python benchmarks/rlhf_loop.py --out runs/rlhf-bench --model tiny --rounds 2 --labels 6 --tokens 64  # smoke
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ARMS = ("iterated", "one-shot", "active", "ceiling")


def arm_config(arm: str, args: argparse.Namespace, seed: int):
    from agents.cli import parse_overrides
    from agents.rlhf import RLHFConfig
    from reward_models.training import TrainConfig

    common = dict(
        model=args.model,
        task=args.task,
        raters=args.raters,
        random_answers=args.random_answers,
        eval_prompts=args.eval_prompts,
        max_new_tokens=args.max_new_tokens,
        seed=seed,
        out=str(Path(args.out) / f"{arm}-s{seed}"),
        reward=parse_overrides(args.reward_set, TrainConfig),
    )
    if arm == "one-shot":
        return RLHFConfig(
            rounds=1, labels_per_round=args.rounds * args.labels, tokens_per_round=args.rounds * args.tokens, **common
        )
    extra = {"selection": "uncertainty", "ensemble": 3} if arm == "active" else {}
    return RLHFConfig(
        rounds=args.rounds,
        labels_per_round=args.labels,
        tokens_per_round=args.tokens,
        ceiling=arm == "ceiling",
        **extra,
        **common,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arms", default="iterated,one-shot,ceiling", help=f"comma-separated, of {ARMS}")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--model", default=None)
    parser.add_argument("--task", default="positivity")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=64, help="labels per round (one-shot: all at once)")
    parser.add_argument("--tokens", type=int, default=8192, help="RL env tokens per round")
    parser.add_argument("--raters", default="sim:3")
    parser.add_argument("--random-answers", type=float, default=0.0)
    parser.add_argument("--reward-set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field")
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--report-only", action="store_true", help="print the table of the runs there, run nothing")
    args = parser.parse_args()
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arm(s) {sorted(unknown)}; choose from {ARMS}")
    seeds = [int(s) for s in args.seeds.split(",")]

    from agents.rlhf import run_rlhf

    rows = []
    for seed in seeds:
        for arm in arms:
            config = arm_config(arm, args, seed)
            folder = Path(config.out)
            if args.report_only and not (folder / "rounds.csv").exists():
                continue
            if not args.report_only:
                run_rlhf(config, resume=(folder / "config.json").exists())
            with open(folder / "rounds.csv") as file:
                rows += [{"arm": arm, "seed": seed, **row} for row in csv.DictReader(file)]
    columns = ["arm", "seed", "round", "labels", "rl_tokens", "gold_score", "proxy_reward", "kl", "distinct_2"]
    columns += ["rm_eval_accuracy", "rm_gold_accuracy"]
    out = Path(args.out) / "summary.csv"
    with open(out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for key in columns:
            value = row[key]
            try:
                number = float(value)
                cells.append(f"{number:.3f}" if not number.is_integer() else f"{int(number)}")
            except ValueError:
                cells.append(str(value))
        print("| " + " | ".join(cells) + " |")
    print(f"\nrows: {out}")


if __name__ == "__main__":
    main()
