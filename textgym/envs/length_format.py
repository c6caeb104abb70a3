"""LengthFormat: write about a topic in a given number of words and a given format (the ``constraints`` task)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from reward_models.constraints import Constraints, count_words, parse_constraints
from textgym.envs.text_gen import TextGenEnv, refuse_task_arguments
from textgym.envs.vector import TextGenVectorEnv
from textgym.tasks import TaskSpec

TOPICS_FILE = Path(__file__).parent.parent / "data" / "topics.txt"
"""The shipped topics, one a line."""
WORD_TARGETS = (10, 15, 20, 25, 30)
BULLET_COUNTS = (2, 3, 4)
KEY_SETS = (
    ("title", "summary"),
    ("question", "answer"),
    ("name", "description"),
    ("pros", "cons"),
    ("title", "fact", "opinion"),
)
LEVELS = {
    1: "a word count",
    2: "a word count, and ending with a period or a number of bullet points",
    3: "a word count, as a JSON object with 2 or 3 given keys",
}
"""LengthFormat-v0's levels: which constraints each instance states (every topic × word target × format)."""


def topics() -> list[str]:
    """The shipped topics (``textgym/data/topics.txt``)."""
    return [line.strip() for line in TOPICS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def instance_prompt(topic: str, constraints: Constraints) -> str:
    """An instance's prompt, e.g. ``Write about coffee in 20 words, as 3 bullet points.``"""
    return f"Write about {topic} {constraints.describe()}."


def level_constraints(level: int) -> list[Constraints]:
    """Every constraint combination of ``level``."""
    if level not in LEVELS:
        raise ValueError(f"LengthFormat-v0 has levels {list(LEVELS)} ({LEVELS}), got {level!r}.")
    formats: list[dict[str, Any]] = {
        1: [{}],
        2: [{"period": True}, *({"bullets": k} for k in BULLET_COUNTS)],
        3: [{"json_keys": keys} for keys in KEY_SETS],
    }[level]
    return [Constraints(words=n, **fmt) for n, fmt in itertools.product(WORD_TARGETS, formats)]


def instances(level: int) -> list[str]:
    """The prompts of ``level``: every shipped topic × every constraint combination of the level."""
    return [instance_prompt(t, c) for t, c in itertools.product(topics(), level_constraints(level))]


class LengthFormatEnv(TextGenEnv):
    """
    ## Description

    Length and format control. Each prompt asks for a text about a topic in a given number of words, and at
    harder levels in a given format: ending with a period, ``k`` bullet points, or a JSON object with given keys::

        Write about the ocean in 20 words, as 3 bullet points.
        Write about coffee in 15 words, as a JSON object with the keys "title" and "summary".

    Instances are procedural: the 40 shipped topics (``textgym/data/topics.txt``) × the level's constraints.
    The reward is the registered reward model ``"constraints"`` ([reward_models.constraints][]): how well
    the text meets the constraints, gated by how fluent and unrepetitive it is, so that saying one word 20 times
    does not earn the length reward.

    ## Action Space

    ``Discrete(vocab_size)``: the next token (as in ``TextGen-v0``).

    ## Observation Space

    As in ``TextGen-v0``: ``input_ids`` and ``attention_mask``, int64 arrays of shape
    ``(max_prompt_tokens + max_new_tokens,)``, the prompt (in the chat template by default) left-padded, then the
    text so far.

    ## Rewards

    Sparse: on the last step, ``satisfaction × gate`` in ``[0, 1]``.

    - ``satisfaction``: the mean of the stated constraints' scores. The word count earns partial credit: 1
      within 10% (at least 1 word) of the target, falling linearly to 0 at twice the target or at 0 words.
      Bullets earn ``1 − |found − k| / k`` times the share of non-empty lines that are bullets; a JSON object
      the share of wanted keys among the keys it has (0 if the text is not one JSON object); a final period 0 or 1.
      Words are runs of letters and digits; in a JSON object only the values' words count.
    - ``gate``: [reward_models.fluency.Fluency][] under the embedded SmolLM2-135M (whatever the policy's
      ``model``): its mean per-token log-probability of the text given the prompt, mapped from −6 (0) to −3.5
      (1) nats, times ``min(distinct-2 / 0.5, 1)``. A repeated word has few distinct bigrams, word salad a low
      likelihood; both score near 0.

    The gold score is the reward itself: the reward has no proxy part, the partial credit measures closeness to
    what was asked, and the gate is part of what was asked (a fluent text). ``info["gold_score"] ==
    info["score"]``; ``info`` on the last step also holds ``prompt`` and ``completion``.

    ## Starting State

    An instance drawn uniformly from the ``level``'s instances of the ``split``.

    ## Episode End

    As [TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s: a stop token, or ``max_new_tokens`` (64) tokens.

    ## Arguments

    ```python
    env = gym.make("LengthFormat-v0", split="train", level=2, reward_model_kwargs={"gate": "distinct"})
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `level` | int or None | `None` | `1`, `2` or `3` (`LEVELS`, below); `None`: 2 |
    | `reward_model` | str or callable | `"constraints"` | as TextGen-v0's, defaulting to the task's reward |
    | `reward_model_kwargs` | dict or None | `None` | arguments of the `"constraints"` reward model (below) |
    | `max_prompt_tokens` | int | `96` | as TextGen-v0's, registered wider for the constraints |
    | `max_new_tokens` | int | `64` | as TextGen-v0's, registered longer for 30 words or a JSON object |
    | `chat_template` | bool | `True` | as TextGen-v0's: the prompt is a user message |

    - ``level``: a word count alone (200 instances); a word count and a final period or 2–4 bullet points
      (800); a word count and a JSON object with 2–3 keys (1000).
    - ``reward_model_kwargs``: e.g. ``{"gate": "distinct"}`` (no LM in the gate) or ``{"fluency_kwargs":
      {"model": "tiny"}}`` (see ``reward_models.constraints``).

    The other arguments are [TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s, with its defaults (``model``,
    ``split``, ``gold_model``, ``kl_coef``, ...). The task sets ``prompts`` itself (its topics × constraints, chosen
    by ``level``): passing it raises ``ValueError``.

    ## Version History

    * v0: Initial version.
    """

    @classmethod
    def episode_kwargs(cls, level: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """The level's instances as the prompts; see *Arguments*."""
        hint = ": it makes its own prompts (topics × constraints); choose them by level."
        refuse_task_arguments("LengthFormat-v0", kwargs, ("prompts",), hint)
        return {"reward_model": "constraints", **kwargs, "prompts": instances(TASK.check_level(level))}


class LengthFormatVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("LengthFormat-v0", num_envs=N)``: ``N`` LengthFormat episodes stepped together."""

    env_class = LengthFormatEnv


SOLVER_SENTENCES = (
    "Let me tell you about {topic}.",
    "Many people love it.",
    "It has a long and rich history.",
    "It can teach us a lot about the world.",
    "Some people spend years learning about it.",
    "It brings people together.",
    "There is always something new to discover.",
    "It is a good subject to talk about with friends.",
    "Children and adults can both enjoy it.",
    "It makes life more interesting.",
    "It is simple.",
    "I like it.",
    "It matters.",
    "Try it.",
    "Everyone agrees.",
    "It is fun.",
    "People smile.",
    "It rewards patience.",
    "It is worth learning.",
    "Friends often share it.",
    "We should protect it.",
    "Some find it very relaxing.",
    "Experts still study it today.",
    "It changes a little every year.",
)
"""The scripted solver's sentences (``{topic}`` is the prompt's), of 2 to 10 words, so that every word target of
every part (paragraph, bullet or JSON value) is a sum of whole sentences."""


def write_to_constraints(prompt: str, level: int | None = None) -> str:
    """The ``constraints`` task's scripted solver: whole sentences of `SOLVER_SENTENCES` about the prompt's
    topic, exactly as many words as asked, as one paragraph, bullet points or JSON values."""
    constraints = parse_constraints(prompt)
    topic = prompt.removeprefix("Write about ").split(" in ")[0]
    unused = [s.format(topic=topic) for s in SOLVER_SENTENCES]
    target = constraints.words or 20
    parts = constraints.bullets or (len(constraints.json_keys) if constraints.json_keys else 1)
    pieces = []
    for i in range(parts):
        chosen = _sentences_summing_to(unused, target // parts + (i < target % parts))
        unused = [s for s in unused if s not in chosen]
        pieces.append(" ".join(chosen))
    if constraints.bullets:
        return "\n".join(f"- {piece}" for piece in pieces)
    if constraints.json_keys:
        return json.dumps(dict(zip(constraints.json_keys, pieces, strict=True)))
    return pieces[0]


def _sentences_summing_to(sentences: list[str], words: int) -> list[str]:
    """The first subset of ``sentences`` (in their order, earlier ones preferred) with ``words`` words in all."""

    def search(start: int, left: int) -> list[str] | None:
        if left == 0:
            return []
        for i in range(start, len(sentences)):
            n = count_words(sentences[i])
            if n <= left and (rest := search(i + 1, left - n)) is not None:
                return [sentences[i], *rest]
        return None

    found = search(0, words)
    if found is None:
        raise ValueError(f"The solver's sentences cannot make exactly {words} words; add sentences of other lengths.")
    return found


TASK = TaskSpec(
    name="constraints",
    env_id="LengthFormat-v0",
    description="write about a topic in N words and a format: final period, k bullets, JSON keys (fluency-gated)",
    levels=tuple(LEVELS),
    default_level=2,
    # Measured by benchmarks/task_levels.py on the test split: uniform tokens of the embedded model's
    # vocabulary (64 completions of 64 tokens a level) decode to text the gate scores 0 (0.0000 ± 0.0000); the
    # scripted solver scores 0.998, 0.992 and 0.995 on average (all constraints met, the gate below 1 on a few).
    # The embedded SmolLM2-135M sampling (temperature 1) on 24 test instances a level scores 0.458, 0.416 and
    # 0.216: normalised 46, 42 and 22.
    random_score={1: 0.0, 2: 0.0, 3: 0.0},
    optimum_score={1: 0.998, 2: 0.992, 3: 0.995},
    solver=write_to_constraints,
    tiny_judges={"reward_model_kwargs": {"fluency_kwargs": {"model": "tiny"}}},  # the gate; the gold is the reward
)
