"""Synthetic feedback: preference data labelled by a "gold" reward model instead of people.

Sample several completions per prompt (from a language model, or bring your own), score them with any reward
model as the gold standard, and write the comparisons as pairs or rankings, optionally with label noise. A
proxy reward model trained on such data can then be checked against the gold one, which is how textgym builds
tasks that measure over-optimisation (the proxy reward rising while the gold reward falls).

    completions = sample_completions(prompts, num_completions=4, seed=0)
    records, stats = synthesize_preferences(prompts, completions, gold="vader", flip_prob=0.1, seed=0)
    write_jsonl("prefs.jsonl", records)
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from reward_models.base import RewardFn, RewardModel
from reward_models.registry import make_reward_model

KINDS = ("pairs", "rankings")


@dataclass
class SynthesisStats:
    """What [synthesize_preferences][reward_models.synthetic.synthesize_preferences] made and left out, so nothing is
    dropped unnoticed."""

    records: int = 0
    """Records written (pairs, or rankings)."""
    pairs: int = 0
    """Ordered pairs the records hold (a ranking of ``K`` holds ``K (K - 1) / 2``)."""
    flipped: int = 0
    """Comparisons the simulated annotator got wrong (label noise)."""
    ties_skipped: int = 0
    """Pairs left out because their gold scores differ by ``min_gap`` or less."""
    duplicates_dropped: int = 0
    """Completions dropped because the same prompt had the identical text already."""
    prompts_skipped: int = 0
    """Prompts left with fewer than two distinct completions."""


def sample_completions(
    prompts: Sequence[str],
    num_completions: int = 4,
    model: str | os.PathLike | None = None,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> list[list[str]]:
    """Sample ``num_completions`` continuations of each prompt with a causal LM's ``generate``.

    The prompts are fed as plain text, as ``TextGen-v0`` feeds them by default, and the completions decoded
    without special tokens, as the env reports them.

    Args:
        prompts: the prompts.
        num_completions: completions per prompt.
        model: a textgym model name or local directory (default: the embedded SmolLM2-135M-Instruct).
        max_new_tokens: tokens sampled per completion at most.
        temperature: the sampling temperature.
        top_p: the nucleus sampling mass (1 samples from the whole distribution).
        batch_size: prompts per ``generate`` call.
        seed: seeds torch's sampler once, so equal arguments on one machine give equal completions.
        device: torch device; default ``"cuda"`` when available, else ``"cpu"``.
        progress: show a tqdm progress bar.
    """
    import torch
    from tqdm.auto import tqdm

    from textgym.lm.models import load_causal_lm, load_tokenizer, resolve_device

    device = resolve_device(device)
    tokenizer = load_tokenizer(model)
    tokenizer.padding_side = "left"  # generate appends after the last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = load_causal_lm(model, device=device)
    torch.manual_seed(seed)
    completions = []
    for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="sampling", unit="batch"):
        batch = tokenizer(list(prompts[i : i + batch_size]), padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            out = lm.generate(
                **batch,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,  # plain sampling unless top_p says otherwise; the model's generation config may set top_k
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_completions,
                pad_token_id=tokenizer.pad_token_id,
            )  # (B * K, P + T), the K samples of a prompt adjacent
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        completions += [texts[j : j + num_completions] for j in range(0, len(texts), num_completions)]
    return completions


def synthesize_preferences(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    gold: str | RewardFn | RewardModel = "vader",
    kind: str = "pairs",
    flip_prob: float = 0.0,
    min_gap: float = 0.0,
    seed: int = 0,
    gold_kwargs: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], SynthesisStats]:
    """Label completions with a gold reward model and return JSONL-ready preference records.

    Args:
        prompts: the prompts.
        completions: for each prompt, its candidate completions (identical texts are dropped).
        gold: the gold reward model: a registered name, a saved model directory, or any callable.
        kind: ``"pairs"``: every two completions of a prompt whose gold scores differ by more than
            ``min_gap`` make one ``{"prompt", "chosen", "rejected"}`` record; ``"rankings"``: all completions of
            a prompt make one ``{"prompt", "completions", "ranking"}`` record.
        flip_prob: label noise, the chance that the simulated annotator gets one comparison wrong (in a
            ranking, each comparison the sort makes).
        min_gap: for pairs, skip comparisons closer than this in gold score (ties teach nothing).
        seed: seeds the noise.
        gold_kwargs: keyword arguments of a registered gold model.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    if not 0 <= flip_prob <= 0.5:
        raise ValueError(f"flip_prob must be in [0, 0.5] (above 0.5 the labels mostly lie), got {flip_prob}.")
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but completions for {len(completions)}; give one list each.")
    gold_model = make_reward_model(gold, **(gold_kwargs or {}))
    rng = random.Random(seed)
    stats = SynthesisStats()
    groups = []
    for candidates in completions:
        distinct = list(dict.fromkeys(candidates))
        stats.duplicates_dropped += len(candidates) - len(distinct)
        groups.append(distinct)
    flat_prompts = [p for p, group in zip(prompts, groups, strict=True) for _ in group]
    scores = iter(gold_model(flat_prompts, [c for group in groups for c in group]))
    records = []
    for prompt, group in zip(prompts, groups, strict=True):
        group_scores = np.array([next(scores) for _ in group])
        if len(group) < 2:
            stats.prompts_skipped += 1
            continue
        if kind == "pairs":
            records += _pairs(prompt, group, group_scores, flip_prob, min_gap, rng, stats)
        else:
            records.append(_ranking(prompt, group, group_scores, flip_prob, rng, stats))
    stats.records = len(records)
    return records, stats


def _pairs(
    prompt: str,
    group: list[str],
    scores: np.ndarray,
    flip_prob: float,
    min_gap: float,
    rng: random.Random,
    stats: SynthesisStats,
) -> list[dict[str, Any]]:
    records = []
    for i, j in combinations(range(len(group)), 2):
        if abs(scores[i] - scores[j]) <= min_gap:
            stats.ties_skipped += 1
            continue
        better, worse = (i, j) if scores[i] > scores[j] else (j, i)
        if rng.random() < flip_prob:
            better, worse = worse, better
            stats.flipped += 1
        records.append({"prompt": prompt, "chosen": group[better], "rejected": group[worse]})
    stats.pairs += len(records)
    return records


def _ranking(
    prompt: str, group: list[str], scores: np.ndarray, flip_prob: float, rng: random.Random, stats: SynthesisStats
) -> dict[str, Any]:
    def compare(i: int, j: int) -> int:
        """-1 if the annotator ranks ``i`` above ``j``; wrong with probability ``flip_prob``."""
        answer = -1 if scores[i] > scores[j] else 1 if scores[i] < scores[j] else 0
        if answer and rng.random() < flip_prob:
            stats.flipped += 1
            return -answer
        return answer

    ranking = sorted(range(len(group)), key=functools.cmp_to_key(compare))  # a permutation even if inconsistent
    stats.pairs += len(group) * (len(group) - 1) // 2
    return {"prompt": prompt, "completions": group, "ranking": ranking}
