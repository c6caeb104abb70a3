"""ConceptCoverage: write one fluent sentence that uses all of a few given concepts (CommonGen-like)."""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from reward_models.concepts import parse_concepts
from textgym.envs.text_gen import TextGenEnv, refuse_task_arguments
from textgym.envs.vector import TextGenVectorEnv
from textgym.tasks import TaskSpec

WORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "concepts.txt"
LEVELS = {2: "2 concepts (a noun, a verb)", 3: "3 concepts (2 nouns, a verb)", 4: "4 concepts (3 nouns, a verb)"}
"""ConceptCoverage-v0's levels: the number of concepts, always one verb and the rest nouns (as CommonGen's
concept sets mostly are)."""
INSTANCES_PER_LEVEL = 1000
"""Concept sets drawn per level (before the train/test split; repeated sets dropped)."""
PROMPT = "Write one sentence that uses all of these words: {concepts}."


class ConceptCoverageEnv(TextGenEnv):
    """
    ## Description

    Constrained generation in the manner of CommonGen (Lin et al., 2020): given two to four concepts, a verb and
    some nouns (``"dog, swim, boat"``), write one fluent sentence that uses them all, in any inflection (*a dog
    swimming near the boat*). The agent writes its reply token by token in the model's chat template. Concept
    sets are drawn procedurally from the shipped list ``textgym/data/concepts.txt`` (171 common nouns and 70
    common verbs; the 4 words listed as both are used as verbs), a fixed set per level.

    ## Action Space

    ``Discrete(vocab_size)``: the next token (as in ``TextGen-v0``).

    ## Observation Space

    As in ``TextGen-v0``: ``input_ids`` and ``attention_mask``, int64 arrays of shape
    ``(max_prompt_tokens + max_new_tokens,)``, the chat-templated prompt left-padded, then the reply so far.

    ## Rewards

    Sparse: 0 on every step but the last; on the last step, the reward model ``concepts``
    ([reward_models.concepts][]): ``coverage × fluency``, both in ``[0, 1]``.

    - ``coverage``: the share of the concepts the reply uses as whole words, any inflection counting
      (lemminflect's: *threw* covers ``throw``, *children* covers ``child``).
    - ``fluency``: the reference language model's mean per-token log-prob of the reply, read after a neutral
      context rather than the prompt (the prompt makes a bare copy of the word list likely) and mapped
      linearly from [−6, −3.5] to [0, 1], times a distinct-bigram factor against repetition
      ([reward_models.fluency][]). A bare list of the concepts has full coverage and fluency near 0.

    The final ``info`` holds ``score`` (the reward), ``gold_score`` (the same: the reward is the gold) and
    ``coverage``. Benchmarks report the gold score (task ``concepts``: 0 is the uniform-random policy, 100 the
    scripted template sentence).

    ## Starting State

    A concept set drawn uniformly from the level's sets of the ``split``.

    ## Episode End

    Termination: a stop token (EOS or the chat template's end of turn). Truncation: ``max_new_tokens``.

    ## Arguments

    ```python
    env = gym.make("ConceptCoverage-v0", split="train", level=3)
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `level` | int or None | `None` | `2`, `3` or `4` concepts (`LEVELS`); `None`: 3 |
    | `fluency_model` | str, path or None | `None` | the LM that judges fluency; `None`: the embedded one |
    | `max_prompt_tokens` | int | `96` | as TextGen-v0's, registered wider for the instruction |
    | `chat_template` | bool | `True` | as TextGen-v0's: the prompt is a user message |

    - ``fluency_model``: ``None`` is the embedded SmolLM2-135M-Instruct whatever the policy's ``model``: the
      gold must not change with the policy, and the task's random and optimum scores are measured with it.
      ``"tiny"`` or a local directory serve tests.

    The other arguments are [TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s, with its defaults (``model``,
    ``split``, ``max_new_tokens``, ``reference_model``, ``kl_coef``, ``action_mask``, ...). The task sets
    ``prompts``, ``reward_model``, ``reward_model_kwargs``, ``gold_model``, ``gold_model_kwargs`` and
    ``info_models`` itself: passing one raises ``ValueError``.

    ## Version History

    * v0: Initial version.
    """

    @classmethod
    def episode_kwargs(
        cls, level: int | None = None, fluency_model: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        level = TASK.check_level(level)
        owned = ("prompts", "reward_model", "reward_model_kwargs", "gold_model", "gold_model_kwargs", "info_models")
        refuse_task_arguments("ConceptCoverage-v0", kwargs, owned, ".")
        return {
            **kwargs,
            "prompts": list(instances(level)),
            "reward_model": "concepts",
            "reward_model_kwargs": {"model": fluency_model},
            "info_models": {"coverage": "concept-coverage"},
        }


class ConceptCoverageVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("ConceptCoverage-v0", num_envs=N)``: see
    [ConceptCoverageEnv][textgym.envs.concepts.ConceptCoverageEnv]."""

    env_class = ConceptCoverageEnv


@lru_cache(maxsize=1)
def load_concept_words() -> dict[str, str]:
    """The shipped concept words, ``word -> "noun" | "verb"`` (a word that is both is listed as a verb)."""
    words: dict[str, str] = {}
    for line in WORDS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            word, pos = line.split()
            words[word] = pos if words.get(word) != "verb" else "verb"
    return words


def _words(pos: str) -> list[str]:
    return sorted(w for w, p in load_concept_words().items() if p == pos)


@cache
def instances(level: int) -> tuple[str, ...]:
    """Every prompt of ``level`` (both splits), the same on every machine (a generator seeded by the level)."""
    rng = np.random.default_rng(2000 + level)
    nouns, verbs = _words("noun"), _words("verb")
    prompts: dict[str, None] = {}
    seen: set[frozenset[str]] = set()
    for _ in range(INSTANCES_PER_LEVEL):
        concepts = [str(rng.choice(verbs)), *rng.choice(nouns, size=level - 1, replace=False).tolist()]
        if frozenset(concepts) in seen:
            continue
        seen.add(frozenset(concepts))
        rng.shuffle(concepts)
        prompts[PROMPT.format(concepts=", ".join(concepts))] = None
    return tuple(prompts)


def template_sentence(prompt: str, level: int | None = None) -> str:
    """The scripted solver: *In the morning, the children went outside to VERB, and they took the NOUN, the NOUN
    and the NOUN with them.*, with the prompt's concepts.

    Plain frames such as *I saw a NOUN VERB-ing near the NOUN.* read as fluent but score low (about 0.1 at level
    4): the gate is a mean per-token log-prob, and two unrelated nouns in a short sentence are unlikely tokens.
    This frame's predictable words raise the mean to about −3.75 nats, 0.9 of the gate. (A policy can find the
    same lever; the gold is a likelihood, not a human judgement.)
    """
    concepts = parse_concepts(prompt)
    kinds = load_concept_words()
    verb = next((c for c in concepts if kinds.get(c) == "verb"), concepts[0])
    nouns = [f"the {c}" for c in concepts if c != verb]
    things = ", ".join(nouns[:-1]) + " and " + nouns[-1] if len(nouns) > 1 else nouns[0] if nouns else "them"
    return f"In the morning, the children went outside to {verb}, and they took {things} with them."


TASK = TaskSpec(
    name="concepts",
    env_id="ConceptCoverage-v0",
    description="use all of 2-4 given concepts in one fluent sentence (coverage × fluency)",
    levels=tuple(LEVELS),
    default_level=3,
    # Measured on the test split with the embedded model (benchmarks/task_levels.py, 48 prompts a level, and the
    # solver on every test prompt): uniform tokens never spelt a concept, so they score 0.0 at every level (with
    # the tiny test model's vocabulary too); the template sentence scores 0.989 / 0.943 / 0.923 (2 / 3 / 4
    # concepts); the embedded model itself, sampling at temperature 1, 0.234 / 0.167 / 0.173.
    random_score={2: 0.0, 3: 0.0, 4: 0.0},
    optimum_score={2: 0.989, 3: 0.943, 4: 0.923},
    solver=template_sentence,
    tiny_judges={"fluency_model": "tiny"},  # the reward's fluency, which is the gold too
)
