"""``textgym label``: collect human preferences on a local web page, and turn them into reward-model data.

    textgym label sample --model runs/sft --prompts my_prompts.txt --num-completions 4 --out batch.jsonl
    textgym label serve --data batch.jsonl --out labels/ [--host 127.0.0.1 --port 8765]
    textgym label stats labels/
    textgym label export labels/ --format rankings|pairs --out prefs.jsonl
    textgym reward train --data prefs.jsonl --out my-rm

The web stack (starlette, uvicorn) and torch are imported only by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from pathlib import Path

RATERS_FILE = "raters.json"


def main(argv: list[str] | None = None, prog: str = "textgym label") -> int:
    """Run one subcommand on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    from reward_models.labelling.export import FLAGGED, FORMATS
    from reward_models.labelling.selection import MODES, STRATEGIES

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = commands.add_parser("sample", help="sample K completions per prompt with a local model")
    sample.add_argument("--model", default=None, help="a local model directory, 'tiny', or the embedded default")
    sample.add_argument("--prompts", default=None, help="a shipped prompt set name or a .txt/.jsonl file")
    sample.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    sample.add_argument("--num-completions", type=int, default=4)
    sample.add_argument("--max-new-tokens", type=int, default=48)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", required=True, help="the batch JSONL to write")

    serve = commands.add_parser("serve", help="serve the labelling page for a batch")
    serve.add_argument("--data", required=True, help='the batch: JSONL of {"prompt", "completions": [...]}')
    serve.add_argument("--out", required=True, help="the labels folder (created; reopened to resume)")
    serve.add_argument("--host", default="127.0.0.1", help="interface; other than loopback needs --token or --raters")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--mode", choices=MODES, default="rank", help="rank all K completions, or pick from two")
    serve.add_argument("--strategy", choices=STRATEGIES, default="random", help="which items come first")
    serve.add_argument(
        "--reward-model", action="append", default=[], help="for uncertainty/disagreement (repeat for an ensemble)"
    )
    serve.add_argument("--overlap", type=int, default=1, help="how many raters label each item")
    serve.add_argument("--raters", default=None, help="comma-separated rater names; each gets a secret link")
    serve.add_argument("--token", default=None, help="a shared access token raters type in with their name")
    serve.add_argument("--seed", type=int, default=0)

    stats = commands.add_parser("stats", help="counts, per-rater progress, inter-rater agreement")
    stats.add_argument("folder", help="the labels folder")
    stats.add_argument("--json", action="store_true", help="print JSON")

    export = commands.add_parser("export", help="write the labels as preference JSONL for `textgym reward train`")
    export.add_argument("folder", help="the labels folder")
    export.add_argument("--format", choices=FORMATS, default="pairs")
    export.add_argument("--flagged", choices=FLAGGED, default="keep", help="keep or drop labels that carry a flag")
    export.add_argument("--out", required=True)

    args = parser.parse_args(argv)
    try:
        return {"sample": _sample, "serve": _serve, "stats": _stats, "export": _export}[args.command](args)
    except (ValueError, OSError) as err:  # bad input: one clear line, not a traceback
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


def _sample(args: argparse.Namespace) -> int:
    from reward_models.labelling.items import write_items
    from reward_models.synthetic import sample_completions
    from textgym.lm.prompts import load_prompts

    prompts = load_prompts(args.prompts)[: args.limit]
    completions = sample_completions(
        prompts, args.num_completions, args.model, args.max_new_tokens, args.temperature, args.top_p, seed=args.seed
    )
    written = write_items(args.out, prompts, completions)
    print(f"wrote {written} items ({len(prompts) - written} prompts skipped: <2 distinct completions) to {args.out}")
    return 0


def rater_tokens(out_dir: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """``{token: name}`` for ``names``, kept in ``out_dir/raters.json`` so a restart keeps everyone's link."""
    from reward_models.labelling.server import RATER_NAME

    bad = [name for name in names if not RATER_NAME.match(name)]
    if bad or not names:
        raise ValueError(f"--raters wants comma-separated names of letters, digits or . _ - @; got {bad or names}")
    path = Path(out_dir) / RATERS_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    tokens = {name: known.get(name) or secrets.token_urlsafe(16) for name in names}
    if tokens != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps({**known, **tokens}, indent=2) + "\n")
    return {token: name for name, token in tokens.items()}


def _serve(args: argparse.Namespace) -> int:
    from reward_models.labelling.items import load_items
    from reward_models.labelling.selection import order_tasks
    from reward_models.labelling.server import RATER_NAME, LabelApp, bind, is_loopback, serve
    from reward_models.labelling.storage import LabelStore

    if not is_loopback(args.host) and not (args.token or args.raters):
        raise ValueError(
            f"--host {args.host} serves beyond this machine; give --token SECRET (or --raters) so only raters can "
            "label, or keep the default --host 127.0.0.1."
        )
    names = args.raters.split(",") if args.raters else []
    if args.raters is not None and not all(RATER_NAME.match(name) for name in names):
        raise ValueError(f"--raters wants comma-separated names of letters, digits or . _ - @; got {args.raters!r}")
    bind(args.host, args.port).close()  # a port in use fails now, before the models load
    items = load_items(args.data)
    models = []
    if args.reward_model:
        from reward_models.registry import make_reward_model

        models = [make_reward_model(name) for name in args.reward_model]
    tasks = order_tasks(items, args.strategy, args.mode, models, args.seed)
    store = LabelStore(args.out, args.data, items)
    raters = rater_tokens(args.out, names) if names else None
    app = LabelApp(store, tasks, args.mode, args.overlap, raters, args.token)
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    print(f"{len(items)} items, {len(store.labels())} labels so far in {args.out}; strategy {args.strategy}")
    if raters:
        for token, name in raters.items():
            print(f"  {name}: {url}?token={token}")
    else:
        print(f"  open {url}?rater=YOUR_NAME" + (" (and type the access token)" if args.token else ""))
    print("Ctrl-C stops the server; every acknowledged label is already on disk.")
    serve(app, args.host, args.port)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from reward_models.labelling.stats import format_stats, label_stats

    stats = label_stats(args.folder)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _export(args: argparse.Namespace) -> int:
    from reward_models.labelling.export import write_export

    stats = write_export(args.folder, args.out, args.format, args.flagged)
    print(f"wrote {stats.records} {args.format} records to {args.out}: {json.dumps(dataclasses.asdict(stats))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
