"""``textgym reward``: train and evaluate reward models, and make synthetic preference data.

    textgym reward synth --out prefs.jsonl --num-completions 4 --gold vader --flip-prob 0.1
    textgym reward train --data prefs.jsonl --out my-rm --backbone minilm
    textgym reward evaluate --model my-rm --data prefs.jsonl
    textgym reward list

Each subcommand imports torch only when it runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import sys
import textwrap
from typing import Any


def main(argv: list[str] | None = None, prog: str = "textgym reward") -> int:
    """Run one subcommand on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    from reward_models.training import TrainConfig

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a reward model on preference JSONL (pairs or rankings)")
    train.add_argument("--data", nargs="+", required=True, help="JSONL file(s) of pairs or rankings")
    train.add_argument("--out", required=True, help="directory to save the model in")
    train.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="what to do with bad lines")
    _add_dataclass_options(train, TrainConfig)

    evaluate = commands.add_parser("evaluate", help="pairwise accuracy of any reward model on preference JSONL")
    evaluate.add_argument("--model", required=True, help="a registered name or a saved reward-model directory")
    evaluate.add_argument("--kwargs", type=json.loads, default={}, help="JSON keyword arguments of the model")
    evaluate.add_argument("--data", nargs="+", required=True, help="JSONL file(s) of pairs or rankings")
    evaluate.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="what to do with bad lines")

    synth = commands.add_parser("synth", help="label sampled completions with a gold reward model")
    synth.add_argument("--out", required=True, help="the preference JSONL to write")
    synth.add_argument("--prompts", default=None, help="a shipped prompt set name or a .txt/.jsonl file")
    synth.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    synth.add_argument(
        "--completions", default=None, help='JSONL of {"prompt", "completions": [...]} to label instead of sampling'
    )
    synth.add_argument("--save-completions", default=None, help="also write the sampled completions to this JSONL")
    synth.add_argument("--model", default=None, help="the sampling LM (default: the embedded SmolLM2)")
    synth.add_argument("--num-completions", type=int, default=4)
    synth.add_argument("--max-new-tokens", type=int, default=32)
    synth.add_argument("--temperature", type=float, default=1.0)
    synth.add_argument("--top-p", type=float, default=1.0)
    synth.add_argument("--gold", default="vader", help="the gold reward model: a registered name or a directory")
    synth.add_argument("--gold-kwargs", type=json.loads, default={}, help="JSON keyword arguments of the gold")
    synth.add_argument("--kind", choices=["pairs", "rankings"], default="pairs")
    synth.add_argument("--flip-prob", type=float, default=0.0, help="label noise: chance a comparison is wrong")
    synth.add_argument("--min-gap", type=float, default=0.0, help="pairs: skip gold score gaps up to this")
    synth.add_argument("--seed", type=int, default=0)

    commands.add_parser("list", help="the registered reward-model names")

    args = parser.parse_args(argv)
    return {"train": _train, "evaluate": _evaluate, "synth": _synth, "list": _list}[args.command](args)


def _train(args: argparse.Namespace) -> int:
    from reward_models.preferences import load_preferences
    from reward_models.training import TrainConfig, train_reward_model

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    pairs = load_preferences(args.data, on_error=args.on_error)
    result = train_reward_model(pairs, config, out_dir=args.out)
    report = result.report
    print(f"trained a {config.backbone} reward model on {report['train']['pairs']} pairs in {report['seconds']:.1f} s")
    print(f"  train: pairwise accuracy {report['train']['accuracy']:.3f}")
    if report["eval"]:
        held = report["eval"]
        print(
            f"  held out ({held['prompts']} prompts, {held['pairs']} pairs): pairwise accuracy {held['accuracy']:.3f}"
        )
        kept = "kept" if report["kept_epoch"] == report["best_epoch"] else f"epoch {report['kept_epoch']} kept"
        print(f"  best held-out epoch {report['best_epoch']} of {len(report['history'])} run ({kept})")
    print(f"saved to {args.out} (report: {args.out}/training_report.json)")
    print(f'use it: gym.make("TextGen-v0", reward_model="{args.out}")')
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from reward_models.preferences import load_preferences
    from reward_models.registry import make_reward_model
    from reward_models.training import pairwise_accuracy

    report = pairwise_accuracy(make_reward_model(args.model, **args.kwargs), load_preferences(args.data, args.on_error))
    print(json.dumps(dataclasses.asdict(report)))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from reward_models.synthetic import sample_completions, synthesize_preferences
    from textgym.lm.jsonl import read_jsonl, write_jsonl
    from textgym.lm.prompts import load_prompts

    if args.completions:
        given = read_jsonl(args.completions, _prompt_and_completions)
        prompts, completions = [p for p, _ in given], [c for _, c in given]
    else:
        prompts = load_prompts(args.prompts)[: args.limit]
        completions = sample_completions(
            prompts,
            args.num_completions,
            args.model,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            seed=args.seed,
        )
        if args.save_completions:
            write_jsonl(args.save_completions, [{"prompt": p, "completions": c} for p, c in zip(prompts, completions)])
    records, stats = synthesize_preferences(
        prompts, completions, args.gold, args.kind, args.flip_prob, args.min_gap, args.seed, args.gold_kwargs
    )
    write_jsonl(args.out, records)
    print(f"wrote {stats.records} {args.kind} records ({stats.pairs} ordered pairs) to {args.out}")
    print(f"  {json.dumps(dataclasses.asdict(stats))}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from reward_models.registry import registered_names

    print("\n".join(registered_names()))
    return 0


def _prompt_and_completions(record: dict[str, Any]) -> tuple[str, list[str]]:
    prompt, completions = record.get("prompt"), record.get("completions")
    if (
        not isinstance(prompt, str)
        or not isinstance(completions, list)
        or not all(isinstance(c, str) for c in completions)
    ):
        raise ValueError('expected {"prompt": str, "completions": [str, ...]}')
    return prompt, completions


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per dataclass field, its help text the field's docstring."""
    docs = _field_docstrings(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "") + ("" if f.default is None else f" (default: {f.default})")
        if f.type in ("bool", "bool | None"):  # --flag / --no-flag; neither leaves the default (None: automatic)
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = int if "int" in f.type else float if "float" in f.type else str
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)


def _field_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a class, whitespace collapsed (empty if no source)."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    except (OSError, TypeError):
        return {}
    docs = {}
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).replace("``", "").split())
    return docs


if __name__ == "__main__":
    sys.exit(main())
