"""Per level of a suite task, the mean gold score of the random policy, the starting model and the scripted
solver on the test split: the numbers a task's ``TaskSpec`` (random / optimum) and its default level rest on.

    python benchmarks/task_levels.py --task instructions --episodes 160
    python benchmarks/task_levels.py --task rg:leg_counting,rg:count_bits --levels 1,2 --episodes 32

The random policy draws uniform tokens until a stop token or ``max_new_tokens``; the zero-shot policy samples
the model at temperature 1 (as ``textgym bench``'s ``zero-shot``), batched with ``generate`` for speed; both
are decoded as the env decodes an episode (special tokens skipped, the stop token dropped).
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch

import textgym  # noqa: F401  (registers the envs)
from textgym.lm.models import load_causal_lm
from textgym.tasks import get_task


def completions_from(ids: np.ndarray, stop_ids: np.ndarray, tokenizer) -> list[str]:
    """Decode rows of generated ids as the env does: up to the first stop token, special tokens skipped."""
    texts = []
    for row in ids:
        stops = np.flatnonzero(np.isin(row, stop_ids))
        texts.append(tokenizer.decode(row[: stops[0]] if len(stops) else row, skip_special_tokens=True))
    return texts


def measure(
    task_name: str, level: int, episodes: int, model: str | None, seed: int, batch: int, **env_kwargs
) -> dict[str, float]:
    spec = get_task(task_name)
    env = gym.make(spec.env_id, split="test", level=level, model=model, **env_kwargs).unwrapped
    core = env.episodes
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(core.prompts), size=min(episodes, len(core.prompts)), replace=False)
    prompts = [core.prompts[i] for i in rows]
    gold = core.gold_model or core.reward_model
    steps = core.max_new_tokens

    solver = gold(prompts, [spec.solver(p, level) for p in prompts])
    uniform = rng.integers(core.vocab_size, size=(len(prompts), steps))
    random = gold(prompts, completions_from(uniform, core.stop_token_ids, core.tokenizer))

    torch.manual_seed(seed)
    lm = load_causal_lm(core.model_dir)
    zero_shot = []
    for start in range(0, len(prompts), batch):
        chunk = [core.prompt_token_ids[i] for i in rows[start : start + batch]]
        width = max(len(c) for c in chunk)
        ids = torch.tensor([[core.pad_token_id] * (width - len(c)) + list(c) for c in chunk])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
        with torch.no_grad():
            out = lm.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=steps,
                eos_token_id=core.stop_token_ids.tolist(),
                pad_token_id=core.pad_token_id,
            )
        texts = completions_from(out[:, width:].numpy(), core.stop_token_ids, core.tokenizer)
        zero_shot.append(gold(prompts[start : start + batch], texts))
        if start == 0:
            for p, t in list(zip(prompts, texts))[:3]:
                print(f"    {p.strip().splitlines()[-1 if 'Answer' not in p else -2][:70]!r} -> {t[:70]!r}")
    zero = np.concatenate(zero_shot)
    return {"n": len(prompts), "random": random.mean(), "zero-shot": zero.mean(), "solver": solver.mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="comma-separated task names")
    parser.add_argument("--levels", default=None, help="comma-separated (default: all); a task's others are skipped")
    parser.add_argument("--episodes", type=int, default=160, help="test prompts per level")
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--env-kwargs", default="{}", help="JSON: more arguments for gym.make")
    args = parser.parse_args()
    print("| task | level | n | random | zero-shot | solver | zero-shot normalised (spec) |")
    for task in args.task.split(","):
        spec = get_task(task)
        listed = [int(x) for x in args.levels.split(",")] if args.levels else list(spec.levels)
        for level in [level for level in listed if level in spec.levels]:
            start = time.time()
            env_kwargs = json.loads(args.env_kwargs)
            r = measure(task, level, args.episodes, args.model, args.seed, args.batch, **env_kwargs)
            norm = spec.normalized(r["zero-shot"], level)
            print(
                f"| {task} | {level} | {r['n']} | {r['random']:.4f} | {r['zero-shot']:.4f} | {r['solver']:.4f} | "
                f"{norm:.1f} |  ({time.time() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
