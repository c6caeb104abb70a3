"""Rebuilds the proxy heads of the over-optimisation task (``reward_models/data/proxy/``); see README.md here.

Run from the repository root (a few minutes on 2 CPU cores, most of it the gold's fluency model)::

    OMP_NUM_THREADS=2 python reward_models/data/build_proxy_heads.py

1. Label the shipped samples of the embedded model (``openings_smollm2_completions.jsonl``: 8 continuations of
   each of the 320 openings) with the gold, ``fluent-positivity``, and pair every two continuations of an
   opening whose gold scores differ by more than ``--min-gap``. Pairs of the train-split openings are the pool;
   those of the test-split openings (clean labels) measure each head's agreement with the gold.
2. For every size ``N`` in 250, 1000, 4000: the first ``N`` pairs of one seeded shuffle of the pool (so the sets
   are nested), and a copy with exactly 25% of them flipped (label noise).
3. For every set, train 3 heads (seeds 0, 1, 2: the ensemble) on the frozen MiniLM encoder, a 384→64→1 head
   on the completion alone, Bradley–Terry loss, 20 epochs; each directory gets ``training_report.json`` with
   ``gold_heldout``, its pairwise accuracy on the held-out clean pairs. ``summary.json`` gathers them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from reward_models.preferences import parse_preference_record  # noqa: E402
from reward_models.proxy import ENSEMBLE_SEEDS, LABEL_NOISES, PAIR_COUNTS, PROXY_DIR, FluentPositivity, head_dir  # noqa: E402
from reward_models.synthetic import synthesize_preferences  # noqa: E402
from reward_models.training import TrainConfig, pairwise_accuracy, train_reward_model  # noqa: E402
from textgym.lm.jsonl import read_jsonl  # noqa: E402
from textgym.lm.prompts import in_test_split  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", default=str(ROOT / "reward_models/data/openings_smollm2_completions.jsonl"))
    parser.add_argument("--out", default=str(PROXY_DIR), help="where the head directories go")
    parser.add_argument("--min-gap", type=float, default=0.1, help="keep pairs whose gold scores differ by more")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--relabel", action="store_true", help="score the samples again, not from gold_scores.jsonl")
    parser.add_argument(
        "--max-prompts", type=int, default=None, help="label only the first openings' samples (a quick, partial build)"
    )
    args = parser.parse_args()

    samples = read_jsonl(args.completions, lambda r: (r["prompt"], r["completions"]))
    prompts, completions = [p for p, _ in samples][: args.max_prompts], [c for _, c in samples][: args.max_prompts]
    gold = gold_scores(prompts, completions, Path(args.out) / "gold_scores.jsonl", args.relabel)
    records, stats = synthesize_preferences(
        prompts, completions, gold=lambda ps, cs: [gold[p, c] for p, c in zip(ps, cs)], min_gap=args.min_gap
    )
    pairs = [pair for record in records for pair in parse_preference_record(record)]
    pool = [p for p in pairs if not in_test_split(p.prompt)]
    held_out = [p for p in pairs if in_test_split(p.prompt)]
    print(f"{len(pairs)} pairs ({asdict(stats)}): {len(pool)} train-split, {len(held_out)} held out", flush=True)
    sizes = [n for n in PAIR_COUNTS if n <= len(pool)]
    if not sizes:
        raise SystemExit(f"Only {len(pool)} train-split pairs, fewer than {min(PAIR_COUNTS)}: lower --min-gap.")
    if len(sizes) < len(PAIR_COUNTS):
        print(f"Building only the heads of {sizes} pairs: the pool has {len(pool)}.", flush=True)
    random.Random(0).shuffle(pool)

    out = Path(args.out)
    cache: dict = {}  # text -> embedding, shared by every head: the encoder is frozen
    summary = {"min_gap": args.min_gap, "pool": len(pool), "held_out": len(held_out), "heads": {}}
    for n in sizes:
        for noise in LABEL_NOISES:
            data = list(pool[:n])
            for i in random.Random(n).sample(range(n), round(noise * n)):  # flip exactly noise · n labels
                data[i] = replace(data[i], chosen=data[i].rejected, rejected=data[i].chosen)
            for seed in ENSEMBLE_SEEDS:
                config = TrainConfig(
                    backbone="minilm",
                    use_prompt=False,
                    hidden_size=args.hidden_size,
                    epochs=args.epochs,
                    eval_fraction=0.0,
                    device="cpu",
                    seed=seed,
                    progress=False,
                )
                directory = (
                    head_dir(n, noise, seed) if args.out == str(PROXY_DIR) else out / head_dir(n, noise, seed).name
                )
                result = train_reward_model(data, config, directory, embedding_cache=cache)
                accuracy = pairwise_accuracy(result.model, held_out).accuracy
                report = {**result.report, "pairs": n, "label_noise": noise, "gold_heldout": accuracy}
                (directory / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
                summary["heads"][directory.name] = {
                    "train": result.report["train"]["accuracy"],
                    "gold_heldout": accuracy,
                }
                print(
                    f"{directory.name}: train accuracy {result.report['train']['accuracy']:.3f}, "
                    f"held-out gold accuracy {accuracy:.3f}",
                    flush=True,
                )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def gold_scores(prompts: list[str], completions: list[list[str]], path: Path, relabel: bool) -> dict:
    """``(prompt, completion) -> gold score``, read from ``path`` (one ``{"prompt", "gold": [...]}`` a line, in
    the samples' order) unless ``relabel`` or it is missing; then computed and written there."""
    rows = read_jsonl(path, lambda r: (r["prompt"], r["gold"])) if path.is_file() and not relabel else []
    if [p for p, _ in rows] == list(prompts):  # the same samples were labelled before
        return {(p, c): g for (p, scores), cs in zip(rows, completions, strict=True) for c, g in zip(cs, scores)}
    flat = [(p, c) for p, cs in zip(prompts, completions) for c in cs]
    scores = iter(FluentPositivity()([p for p, _ in flat], [c for _, c in flat]).tolist())
    rows = [{"prompt": p, "gold": [round(next(scores), 6) for _ in cs]} for p, cs in zip(prompts, completions)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return gold_scores(prompts, completions, path, relabel=False)


if __name__ == "__main__":
    main()
