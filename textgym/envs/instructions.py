"""VerifiableInstructions: follow a short instruction whose answer a program checks (RL with verifiable rewards)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from reward_models.verifiable import KINDS, MODES, WORD_KINDS, expected_answer, instruction_prompt
from textgym.envs.concepts import load_concept_words
from textgym.envs.text_gen import TextGenEnv, refuse_task_arguments
from textgym.envs.vector import TextGenVectorEnv
from textgym.tasks import TaskSpec

LEVELS = {
    1: "3 words; count in 1 word; 1-digit numbers",
    2: "4 words; count in 2 words; 2-digit numbers",
    3: "5 words; count in 3 words; 3-digit numbers",
    4: "6 words; count in 4 words; 4-digit numbers",
}
"""VerifiableInstructions-v0's levels: copy / reverse / sort ``level + 2`` words, count a letter in ``level``
words, add or multiply two ``level``-digit numbers."""
INSTANCES_PER_KIND = 200
"""Instances drawn per kind and level (before the train/test split; duplicates dropped)."""


class VerifiableInstructionsEnv(TextGenEnv):
    """
    ## Description

    Reinforcement learning with verifiable rewards, in miniature. Each episode is one short instruction whose
    answer a program computes: copy, reverse or sort a few words, count a letter in some words, add or
    multiply two numbers. The prompt is plain text: a worked example of the same kind, then the instruction,
    each followed by ``Answer:`` (the form that lets the embedded SmolLM2-135M-Instruct start between 5% and
    60% of the optimum at level 1; in its chat template it answered under 1% right). The agent continues the
    prompt token by token; the first line of its reply is its answer. Instances are procedural (words from
    ``textgym/data/concepts.txt``, numbers drawn uniformly), a fixed set per level.

    ## Action Space

    ``Discrete(vocab_size)``: the next token (as in ``TextGen-v0``).

    ## Observation Space

    As in ``TextGen-v0``: ``input_ids`` and ``attention_mask``, int64 arrays of shape
    ``(max_prompt_tokens + max_new_tokens,)``, the prompt left-padded, then the reply so far.

    ## Rewards

    Sparse: 0 on every step but the last; on the last step, the reward model ``verifiable``
    ([reward_models.verifiable][]) scores the reply. The answer is the reply's first non-blank line,
    stripped; word answers are compared as lowercase words (punctuation ignored), number answers as digits.

    - ``reward="exact"``: 1 for the exact answer, else 0.
    - ``reward="partial"``: ``max(0, 1 − edit_distance(answer, expected) / len(expected))`` over words or
      digits: dense, and not gameable by an empty, padded or repeated answer (each scores 0 or loses a full
      unit per extra word or digit).

    The final ``info`` holds ``score`` (the training reward) and ``gold_score``, always the exact match:
    benchmarks report it (task ``instructions``: 0 is the uniform-random policy, 100 the exact solver).

    ## Starting State

    An instance drawn uniformly from the level's instances of the ``split`` (and ``kinds``).

    ## Episode End

    Termination: a stop token (EOS). Truncation: ``max_new_tokens``. Only the first line is read, so a reply
    may go on after it without harm or gain.

    ## Arguments

    ```python
    env = gym.make("VerifiableInstructions-v0", split="train", level=1, reward="partial")
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `level` | int or None | `None` | `1` to `4` (`LEVELS`); `None`: 1 |
    | `reward` | str | `"exact"` | `"exact"` or `"partial"` (see *Rewards*) |
    | `kinds` | list of str or None | `None` | the instruction kinds to keep; `None`: all six |
    | `max_prompt_tokens` | int | `96` | as TextGen-v0's, registered wider for the worked example |
    | `max_new_tokens` | int | `24` | as TextGen-v0's, registered shorter: only the first line counts |

    - ``kinds``: a non-empty list of ``"copy"``, ``"reverse"``, ``"sort"``, ``"count"``, ``"add"`` and
      ``"multiply"``.

    The other arguments are [TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s, with its defaults (``model``,
    ``split``, ``reference_model``, ``kl_coef``, ``action_mask``, ...). The task sets ``prompts``, ``reward_model``,
    ``reward_model_kwargs``, ``gold_model`` and ``gold_model_kwargs`` itself (choose the reward with ``reward``):
    passing one raises ``ValueError``.

    ## Version History

    * v0: Initial version.
    """

    @classmethod
    def episode_kwargs(
        cls, level: int | None = None, reward: str = "exact", kinds: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        level = TASK.check_level(level)
        if reward not in MODES:
            raise ValueError(f"reward must be one of {MODES}, got {reward!r}.")
        owned = ("prompts", "reward_model", "reward_model_kwargs", "gold_model", "gold_model_kwargs")
        refuse_task_arguments("VerifiableInstructions-v0", kwargs, owned, "; choose the reward with reward=.")
        unknown = sorted(set(kinds or ()) - set(KINDS))
        if unknown or kinds == []:
            raise ValueError(f"kinds must be a non-empty list of {list(KINDS)}, got {kinds!r}.")
        prompts = [p for kind in (kinds or KINDS) for p in instances(level)[kind]]
        gold = {} if reward == "exact" else {"gold_model": "verifiable", "gold_model_kwargs": {"mode": "exact"}}
        return {
            **kwargs,
            "prompts": prompts,
            "reward_model": "verifiable",
            "reward_model_kwargs": {"mode": reward},
            **gold,
        }


class VerifiableInstructionsVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("VerifiableInstructions-v0", num_envs=N)``: see
    [VerifiableInstructionsEnv][textgym.envs.instructions.VerifiableInstructionsEnv]."""

    env_class = VerifiableInstructionsEnv


@cache
def instances(level: int) -> dict[str, tuple[str, ...]]:
    """Every instance prompt of ``level``, by kind (both splits;
    [textgym.lm.prompts.split_prompts][textgym.lm.prompts.split_prompts] or ``in_test_split`` tell them apart). The same
    on every machine: drawn from a generator seeded by the level."""
    rng = np.random.default_rng(1000 + level)
    words = sorted(set(load_concept_words()))
    by_kind: dict[str, tuple[str, ...]] = {}
    for kind in KINDS:
        prompts: dict[str, None] = {}  # insertion-ordered set
        for _ in range(INSTANCES_PER_KIND):
            if kind in WORD_KINDS or kind == "count":
                chosen = list(rng.choice(words, size=level + 2 if kind in WORD_KINDS else level, replace=False))
                letter = str(rng.choice(sorted(set("".join(chosen))))) if kind == "count" else None
                prompt = instruction_prompt(kind, words=" ".join(chosen), letter=letter)
            else:
                a, b = rng.integers(10 ** (level - 1) if level > 1 else 0, 10**level, size=2)
                prompt = instruction_prompt(kind, a=int(a), b=int(b))
            prompts[prompt] = None
        by_kind[kind] = tuple(prompts)
    return by_kind


def solve(prompt: str, level: int) -> str:
    """The scripted solver: the exact answer
    ([reward_models.verifiable.expected_answer][reward_models.verifiable.expected_answer])."""
    return expected_answer(prompt)


TASK = TaskSpec(
    name="instructions",
    env_id="VerifiableInstructions-v0",
    description="copy, reverse, sort words, count a letter, add or multiply numbers (exact match)",
    levels=tuple(LEVELS),
    default_level=1,
    # Exact match: the solver scores 1 by construction, and uniform tokens (the embedded model's vocabulary, or
    # the tiny test model's) never spell an answer on the first line, 0.0 measured at every level. The embedded
    # model, sampling at temperature 1, answers 23% / 4% / 6% / 2% right at levels 1 / 2 / 3 / 4
    # (benchmarks/task_levels.py, 48 test prompts a level): level 1, the one in the 5-60% band, is the default.
    random_score={level: 0.0 for level in LEVELS},
    optimum_score={level: 1.0 for level in LEVELS},
    solver=solve,
)
