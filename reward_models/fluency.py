"""Fluency: how natural a completion reads to a language model, and how little it repeats itself.

The gate that keeps task rewards honest: a policy that games a keyword count, a length target or a sentiment
lexicon with word salad or ``"great great great"`` earns little once the score is multiplied by this one.
Two factors, each in [0, 1]:

* likelihood: the completion's mean per-token log-probability given the prompt under a causal LM (the
  embedded SmolLM2 by default, the reference model of the agents), mapped linearly from ``low`` (0) to
  ``high`` (1) nats and clipped;
* repetition: the share of distinct word bigrams ([distinct_n][reward_models.fluency.distinct_n]) relative to
  ``min_distinct``, clipped; LMs find repetition likely once it has started, so likelihood alone would let it through.
"""

from __future__ import annotations

import re

import numpy as np

from reward_models.base import BatchedRewardModel


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct ``n``-grams of words over all ``n``-grams of ``text``: 1.0 without repetition, near 0 for a
    word said again and again; 1.0 for texts shorter than ``n`` words (nothing repeats)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


FUNCTION_WORDS = frozenset(
    """a an the this that these those my your his her its our their i me you he she it we they him us them myself
    yourself itself ourselves themselves who whom whose which what where when why how is am are was were be been being
    have has had do does did will would shall should can could may might must of in on at by for with from to into onto
    over under about above below after before between through during without within upon against among across along
    around behind beyond than as like and or but nor so yet if because while although though since unless until whether
    then also not no there here all any each every some such both either neither other another much many more most few
    less very too just only even still again ever never once up down out off""".split()
)
"""English function words (articles, pronouns, auxiliaries, prepositions, conjunctions, determiners): the glue of a
sentence, which a list of content words lacks."""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def function_word_share(text: str) -> float:
    """The share of ``text``'s words that are [FUNCTION_WORDS][reward_models.fluency.FUNCTION_WORDS]; 0 for no words.

    About half of a sentence's words (the embedded model's continuations of the shipped openings: median 0.48, 1st
    percentile 0.21); none of a keyword list's."""
    words = _words(text)
    return sum(word in FUNCTION_WORDS for word in words) / len(words) if words else 0.0


def prompt_overlap(prompt: str, completion: str) -> float:
    """The share of the completion's word bigrams that occur in the prompt: 1 for a copy, 0 for new text."""
    prompt_words, words = _words(prompt), _words(completion)
    prompt_grams = {tuple(prompt_words[i : i + 2]) for i in range(len(prompt_words) - 1)}
    grams = [tuple(words[i : i + 2]) for i in range(len(words) - 1)]
    return sum(gram in prompt_grams for gram in grams) / len(grams) if grams else 0.0


def repetition_factor(completions: list[str], min_distinct: float = 0.5) -> np.ndarray:
    """Each completion's distinct-bigram share over ``min_distinct``, clipped to [0, 1]: 1 without repetition."""
    return np.clip(np.array([distinct_n(c) for c in completions], dtype=np.float64) / min_distinct, 0, 1)


class Fluency(BatchedRewardModel):
    """Fluency in [0, 1]: the likelihood factor times the repetition factor (see the module docstring).

    An empty completion scores 0.

    Args:
        model: the causal LM that judges likelihood: ``None`` for the embedded model, ``"tiny"`` or a local
            directory ([textgym.lm.models.resolve_model_dir][textgym.lm.models.resolve_model_dir]).
        low: the mean log-probability (nats per token) that maps to 0. Under the embedded model its own samples
            (temperature 1, continuing the shipped openings) average -3.2 (10th percentile -3.9), a list of
            positive words -8.9 and uniformly random tokens about -17.
        high: the mean log-probability that maps to 1.
        min_distinct: the distinct-bigram share from which repetition costs nothing.
        batch_size: completions scored per forward pass.
        device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
    """

    def __init__(
        self,
        model: str | None = None,
        low: float = -6.0,
        high: float = -3.5,
        min_distinct: float = 0.5,
        batch_size: int = 16,
        device: str | None = None,
    ) -> None:
        if not high > low:
            raise ValueError(f"Fluency needs high > low, got low={low}, high={high}.")
        if not 0 < min_distinct <= 1:
            raise ValueError(f"min_distinct must be in (0, 1], got {min_distinct}.")
        super().__init__(batch_size=batch_size, device=device, name="fluency")
        from textgym.lm.models import load_causal_lm, load_tokenizer, resolve_model_dir
        from textgym.lm.prompts import pad_token_id

        model_dir = resolve_model_dir(model)
        self.tokenizer = load_tokenizer(model_dir)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.lm = load_causal_lm(model_dir, device=self.device)
        self.low, self.high, self.min_distinct = low, high, min_distinct

    def mean_logprobs(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Mean log π(token | prompt, earlier tokens) over each completion's tokens; ``-inf`` for an empty one."""
        import torch

        rows, starts = [], []
        for prompt, completion in zip(prompts, completions):
            prompt_ids = self.tokenizer(prompt)["input_ids"]  # with BOS if the tokenizer adds one: a context
            completion_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
            rows.append(prompt_ids + completion_ids)
            starts.append(len(prompt_ids))
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # right-padded: positions need no shifting
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        with torch.no_grad():
            logits = self.lm(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        logits = logits[:, :-1]  # (B, W-1, V): predictions of tokens 1 .. W-1
        chosen = logits.gather(-1, ids[:, 1:, None].to(self.device))[..., 0]
        logprobs = (chosen - logits.logsumexp(-1)).cpu()  # (B, W-1); no full-vocabulary log-softmax copy
        means = np.full(len(rows), -np.inf)
        for i, (row, start) in enumerate(zip(rows, starts)):
            if len(row) > start:
                means[i] = float(logprobs[i, start - 1 : len(row) - 1].mean())
        return means

    def score_batch(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        likelihood = np.clip((self.mean_logprobs(prompts, completions) - self.low) / (self.high - self.low), 0, 1)
        return likelihood * repetition_factor(completions, self.min_distinct)
