"""``textgym rlhf``: the InstructGPT loop, iterated, from the command line.

Examples::

    textgym rlhf --task positivity --rounds 3 --labels-per-round 64 --tokens-per-round 16384 \\
        --raters sim:3 --out runs/rlhf                      # a simulated panel following the task's gold
    textgym rlhf --model runs/sft --prompts my_prompts.txt --raters human --out runs/team   # people label
    textgym rlhf ... --out runs/rlhf --resume               # continue a stopped run; no label is lost

Each round samples from the current policy, has the round's items labelled, retrains the reward model on every
label so far, continues RL against it and evaluates; see docs/rlhf.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from agents.cli import parse_overrides


def build_parser(prog: str) -> argparse.ArgumentParser:
    from agents.rlhf.config import ALGOS, TASKS, RLHFConfig
    from reward_models.labelling.selection import STRATEGIES

    d = RLHFConfig()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", required=True, help="the run folder (rounds, labels, models, rounds.csv)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--model", default=None, help="starting (SFT) policy: a model directory, 'tiny', or embedded")
    what = parser.add_argument_group("prompts and gold")
    what.add_argument("--task", choices=TASKS, default=None, help=f"built-in prompts and gold (default: {d.task})")
    what.add_argument("--prompts", default=None, help="a prompt file or shipped set instead of the task's")
    what.add_argument("--gold", default=None, help="a registered reward model as the gold (sim raters, reports)")
    what.add_argument("--gold-kwargs", type=json.loads, default={}, help="JSON arguments of --gold")
    rounds = parser.add_argument_group("rounds")
    rounds.add_argument("--rounds", type=int, default=d.rounds)
    rounds.add_argument("--labels-per-round", type=int, default=d.labels_per_round, help="rankings per round")
    rounds.add_argument("--completions-per-prompt", type=int, default=d.completions_per_prompt, help="K, ranked")
    rounds.add_argument("--prompts-per-round", type=int, default=None, help="sampled (default: 2x items labelled)")
    rounds.add_argument("--selection", choices=STRATEGIES, default=d.selection, help="which items are labelled")
    rounds.add_argument("--tokens-per-round", type=int, default=d.tokens_per_round, help="RL env tokens per round")
    rounds.add_argument("--eval-prompts", type=int, default=d.eval_prompts, help="test prompts per evaluation")
    rounds.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    raters = parser.add_argument_group("raters")
    raters.add_argument("--raters", default=d.raters, help="'sim:N' simulated raters, or 'human' (the labelling page)")
    raters.add_argument("--overlap", type=int, default=d.overlap, help="raters per labelled item")
    raters.add_argument("--rater-temperature", type=float, default=d.rater_temperature, help="sim: in gold units")
    raters.add_argument("--random-answers", type=float, default=d.random_answers, help="sim: share of random orders")
    raters.add_argument("--rater-bias", type=float, default=d.rater_bias, help="sim: std of length biases")
    raters.add_argument("--host", default=d.host, help="human: the labelling page's interface")
    raters.add_argument("--port", type=int, default=d.port, help="human: the labelling page's port")
    raters.add_argument("--token", default=None, help="human: a shared access token (needed beyond loopback)")
    models = parser.add_argument_group("reward model and RL")
    models.add_argument("--ensemble", type=int, default=d.ensemble, help="reward-model heads per round")
    models.add_argument(
        "--reward-set", action="append", default=[], metavar="KEY=VALUE", help="a reward-model TrainConfig field"
    )
    models.add_argument("--ceiling", action="store_true", help="RL on the gold itself, no labels (the comparison)")
    models.add_argument("--algo", choices=ALGOS, default=d.algo)
    models.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an RL agent setting")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None, prog: str = "textgym rlhf") -> int:
    """Run ``textgym rlhf`` on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    import agents
    from agents.rlhf import RLHFConfig, run_rlhf
    from reward_models.training import TrainConfig

    args = build_parser(prog).parse_args(argv)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bars of every model a round loads
    try:
        config = RLHFConfig(
            out=args.out,
            model=args.model,
            task=args.task or (None if args.prompts else "positivity"),
            prompts=args.prompts,
            gold=args.gold,
            gold_kwargs=args.gold_kwargs,
            rounds=args.rounds,
            labels_per_round=args.labels_per_round,
            completions_per_prompt=args.completions_per_prompt,
            prompts_per_round=args.prompts_per_round,
            selection=args.selection,
            raters=args.raters,
            overlap=args.overlap,
            rater_temperature=args.rater_temperature,
            random_answers=args.random_answers,
            rater_bias=args.rater_bias,
            ensemble=args.ensemble,
            reward=parse_overrides(args.reward_set, TrainConfig),
            ceiling=args.ceiling,
            algo=args.algo,
            agent=parse_overrides(args.set, getattr(agents, args.algo.upper()).config_class, extra=("num_envs",)),
            tokens_per_round=args.tokens_per_round,
            eval_prompts=args.eval_prompts,
            max_new_tokens=args.max_new_tokens,
            host=args.host,
            port=args.port,
            token=args.token,
            seed=args.seed,
            device=args.device,
        )
        rows = run_rlhf(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, OSError) as err:  # bad input: one clear line, not a traceback
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: stopped; every label is on disk. Continue with the same command and --resume.")
        return 130
    last = rows[-1]
    print(
        f"{len(rows) - 1} round(s) in {args.out}: gold {rows[0]['gold_score']:.3f} -> {last['gold_score']:.3f}, "
        f"KL {last['kl']:.2f} nats, {last['labels']} labels; table {args.out}/rounds.csv, plot {args.out}/rounds.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
