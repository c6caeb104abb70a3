"""reasoning-gym's datasets: their instances at a level, as prompts, and their own scoring function as a reward model.

[reasoning-gym](https://github.com/open-thought/reasoning-gym) (an optional extra: ``pip install
'textgym[reasoning]'``) holds about a hundred procedural generators, each item a ``question``, an ``answer`` and
the ``metadata`` its ``score_answer(answer, entry)`` reads. This module turns one dataset at one level into
prompts and scores completions of them; the ``ReasoningGym-v0`` env ([textgym.envs.reasoning_gym][]) is built on
it. The reward model only sees ``(prompt, completion)``, so it rebuilds the same instances (cached per process)
and finds each prompt's item by its text::

    level = load_level("leg_counting", level=1)
    reward = make_reward_model("reasoning-gym", dataset="leg_counting", level=1)
    reward(level.prompts("test")[:2], [" 8", " 12"])

**Levels.** Level ``L`` is the configuration the dataset's own curriculum generates at its global level ``L − 1``
(``curriculum.set_global_level(L − 1)``, then ``generate_configuration()`` with reasoning-gym's default context,
whose ranges include every easier level's); the levels stop where the configuration stops changing. A dataset
without a curriculum has one level, its default configuration.

**Splits.** Disjoint seed ranges: item ``i`` of a split is the generator's item at seed ``start + i``, train
``[0, 0.8·size)``, test ``[1,000,000, 1,000,000 + 0.2·size)``. Repeats within a split are dropped, and a question
both ranges draw goes to one split, the one the stable hash of its text chooses
([textgym.lm.prompts.in_test_split][textgym.lm.prompts.in_test_split], about 20% test, as the suite's other tasks
split): the splits' prompts are disjoint, and a level with few possible questions (leg_counting's first: 110) is
still split about 80% / 20%.

**Prompts.** ``shots`` worked examples, each the question of another item of the same level (seeds from
2,000,000 on, never a test question) followed by ``Answer: `` and its answer and a blank line, then the question and
``Answer:``. The form is VerifiableInstructions-v0's: on 16 level-1 questions each of four datasets (leg_counting,
basic_arithmetic, spell_backward, letter_counting), the embedded SmolLM2-135M-Instruct scored 0.09-0.23 with one
example, 0-0.13 with the bare question and 0-0.10 with the question in its chat template.

**Scores.** The answer is read from the completion as the first non-blank line, or, when the item's own answer
spans ``k`` lines (a grid, a board), the first ``k`` lines from there; the dataset's ``score_answer(answer, entry)``
scores it, partial credit as the dataset defines it (most datasets: 1 for the exact answer, ``len(expected) /
len(answer)`` when the answer contains the expected one, else 0). An exception inside ``score_answer`` (some parse
the answer) scores 0: a policy's garbage must not stop a training run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from textgym.lm.prompts import in_test_split

TRAIN_SEED = 0
TEST_SEED = 1_000_000
EXAMPLE_SEED = 2_000_000
"""The first seed of each range: train, test and the worked examples' (see the module docstring)."""
DEFAULT_SIZE = 1000
"""Seeds drawn per level, both splits together: 80% train, 20% test."""
TEST_FRACTION = 0.2
MAX_EXAMPLE_TRIES = 1000
"""Items of the example range tried for a worked example that is not a test question."""
UNSUPPORTED = {"composite": "it mixes other datasets by a configuration that ReasoningGym-v0 does not take"}
"""reasoning-gym datasets textgym leaves out, with the reason."""


def _factory() -> ModuleType:
    """reasoning-gym's registry of datasets and curricula, imported on first use (an optional dependency)."""
    try:
        import reasoning_gym.factory
    except ImportError as err:
        raise ImportError(
            "The reasoning-gym tasks need the optional package reasoning-gym: pip install 'textgym[reasoning]' "
            "(or pip install reasoning-gym)."
        ) from err
    return reasoning_gym.factory


def dataset_names() -> list[str]:
    """The reasoning-gym datasets textgym can make tasks of (every registered one but
    [UNSUPPORTED][reward_models.reasoning_gym.UNSUPPORTED]'s), sorted."""
    return sorted(set(_factory().DATASETS) - set(UNSUPPORTED))


def check_dataset(dataset: str) -> str:
    """``dataset`` itself, or a ``ValueError`` listing the valid names."""
    if dataset in UNSUPPORTED:
        raise ValueError(f"The reasoning-gym dataset {dataset!r} is not supported: {UNSUPPORTED[dataset]}.")
    names = dataset_names()
    if dataset not in names:
        raise ValueError(f"Unknown reasoning-gym dataset {dataset!r}; the datasets are: {', '.join(names)}.")
    return dataset


@cache
def level_configs(dataset: str) -> tuple[Any, ...]:
    """The dataset's configuration at each level, easiest first (see the module docstring)."""
    factory = _factory()
    check_dataset(dataset)
    if dataset not in factory.CURRICULA:
        return (factory.DATASETS[dataset][1](),)
    curriculum = factory.CURRICULA[dataset]()
    most = max((len(attribute.levels) for attribute in curriculum.attributes.values()), default=1)
    configs: list[Any] = []
    for global_level in range(most):
        curriculum.set_global_level(global_level)  # an attribute with fewer levels stays at its last
        config = curriculum.generate_configuration()
        if configs and config == configs[-1]:
            break
        configs.append(config)
    return tuple(configs)


def level_count(dataset: str) -> int:
    """How many levels ``dataset`` has: levels are ``1`` to this."""
    return len(level_configs(dataset))


def has_answers(dataset: str) -> bool:
    """Whether the dataset's items carry an answer (a few carry none: their ``score_answer`` judges free answers,
    e.g. a graph colouring), read from one item of level 1."""
    config = dataclasses.replace(level_configs(dataset)[0], seed=TEST_SEED, size=1)
    return _factory().DATASETS[dataset][0](config=config)[0]["answer"] is not None


@dataclass(frozen=True)
class Level:
    """One dataset's instances at one level, both splits: prompts, and what scores completions of them.

    Made by [load_level][reward_models.reasoning_gym.load_level] (cached).

    Args:
        dataset: the reasoning-gym dataset's name.
        level: ``1`` to [level_count][reward_models.reasoning_gym.level_count].
        config: reasoning-gym's configuration of the level (its seed and size those of the train split).
        entries: every prompt of both splits, with its item (``question``, ``answer``, ``metadata``).
        test: the test split's prompts (the others are the train split's).
        examples: the worked examples every prompt opens with.
        score_answer: the dataset's ``score_answer(answer, entry)``.
    """

    dataset: str
    level: int
    config: Any
    entries: dict[str, dict[str, Any]]
    test: frozenset[str]
    examples: tuple[dict[str, Any], ...]
    score_answer: Callable[[str | None, dict[str, Any]], float]

    def prompts(self, split: str | None = None) -> list[str]:
        """The prompts of ``split`` (``"train"`` or ``"test"``), or of both (``None``), in seed order."""
        if split not in ("train", "test", None):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}.")
        return [p for p in self.entries if split is None or (p in self.test) == (split == "test")]

    def entry(self, prompt: str) -> dict[str, Any]:
        """The item a prompt asks, or a ``ValueError`` saying which instances the prompt is not one of."""
        try:
            return self.entries[prompt]
        except KeyError:
            raise ValueError(
                f"{prompt[-200:]!r} is not a prompt of reasoning-gym's {self.dataset!r} at level {self.level} (with "
                f"{len(self.examples)} worked examples): score prompts made by "
                f"load_level({self.dataset!r}, {self.level}, shots={len(self.examples)}), with the same size."
            ) from None


def format_prompt(question: str, examples: tuple[dict[str, Any], ...] = ()) -> str:
    """A question after its worked examples, each ``question\\nAnswer: answer`` and a blank line, then
    ``question\\nAnswer:``."""
    shown = "".join(f"{e['question'].strip()}\nAnswer: {e['answer']}\n\n" for e in examples)
    return f"{shown}{question.strip()}\nAnswer:"


@cache
def load_level(dataset: str, level: int = 1, shots: int = 1, size: int = DEFAULT_SIZE) -> Level:
    """The instances of ``dataset`` at ``level`` (see the module docstring), built once per process.

    Args:
        dataset: a name of [dataset_names][reward_models.reasoning_gym.dataset_names].
        level: ``1`` to [level_count][reward_models.reasoning_gym.level_count].
        shots: worked examples before each question (0: the bare question, then ``Answer:``).
        size: seeds drawn, both splits together (80% train, 20% test); lower it for a slow generator.

    Raises:
        ValueError: an unknown dataset, a level out of range, ``shots < 0``, ``size < 5``, or no possible
            worked example outside the test split.
    """
    configs = level_configs(dataset)
    if not isinstance(level, int) or not 1 <= level <= len(configs):
        raise ValueError(f"reasoning-gym's {dataset!r} has levels 1 to {len(configs)}, got {level!r}.")
    if shots < 0 or size < 5:
        raise ValueError(f"shots must be at least 0 and size at least 5, got shots={shots}, size={size}.")
    config = configs[level - 1]

    def items(start: int, count: int):
        generator = _factory().DATASETS[dataset][0](config=dataclasses.replace(config, seed=start, size=count))
        return generator, (generator[i] for i in range(count))

    test_size = round(size * TEST_FRACTION)
    generator, train_items = items(TRAIN_SEED, size - test_size)
    train_entries: dict[str, dict[str, Any]] = {}
    for item in train_items:
        train_entries.setdefault(item["question"], item)  # the first of repeated questions
    _, test_items = items(TEST_SEED, test_size)
    test_entries: dict[str, dict[str, Any]] = {}
    for item in test_items:
        test_entries.setdefault(item["question"], item)
    for question in set(train_entries) & set(test_entries):  # drawn by both ranges: the stable hash decides
        del (test_entries if not in_test_split(question) else train_entries)[question]

    examples: dict[str, dict[str, Any]] = {}
    _, candidates = items(EXAMPLE_SEED, MAX_EXAMPLE_TRIES)
    for item in candidates:
        if len(examples) == shots:
            break
        if item["question"] not in test_entries and item["answer"] is not None:
            examples.setdefault(item["question"], item)
    if len(examples) < shots:
        raise ValueError(
            f"reasoning-gym's {dataset!r} at level {level}: found {len(examples)} of {shots} worked examples outside "
            f"the test split in {MAX_EXAMPLE_TRIES} items; pass a smaller shots."
        )
    shown = tuple(examples.values())
    # The examples' own questions are left out of the train split too: their answer is in every prompt.
    entries = {format_prompt(q, shown): e for q, e in {**train_entries, **test_entries}.items() if q not in examples}
    test = frozenset(format_prompt(q, shown) for q in test_entries)
    return Level(dataset, level, generator.config, entries, test, shown, generator.score_answer)


def read_answer(completion: str, entry: dict[str, Any]) -> str:
    """The answer a completion gives: from its first non-blank line, as many lines as the item's own answer has."""
    lines = completion.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    expected = entry["answer"]
    count = str(expected).count("\n") + 1 if expected is not None else 1
    return "\n".join(lines[start : start + count]).strip()


def solve(dataset: str, prompt: str, level: int, shots: int = 1, size: int = DEFAULT_SIZE) -> str:
    """The scripted solver: the generator's own answer to the prompt, after a space (as the worked examples show it).

    Raises:
        ValueError: the dataset gives no answer for the item (its ``score_answer`` judges free answers).
    """
    entry = load_level(dataset, level, shots, size).entry(prompt)
    if entry["answer"] is None:
        raise ValueError(f"reasoning-gym's {dataset!r} gives no answer to its questions, so it has no solver.")
    return f" {entry['answer']}"


class ReasoningGymScore:
    """Scores completions of one reasoning-gym dataset's prompts with the dataset's own ``score_answer``.

    Args:
        dataset: a name of [dataset_names][reward_models.reasoning_gym.dataset_names].
        level: the level the prompts were made at.
        shots: the worked examples the prompts open with.
        size: the seeds drawn for the prompts' level.

    A prompt of another dataset, level, ``shots`` or ``size`` is an error naming them.
    """

    def __init__(self, dataset: str, level: int = 1, shots: int = 1, size: int = DEFAULT_SIZE) -> None:
        self.instances = load_level(dataset, level, shots, size)
        self.__name__ = f"reasoning-gym-{dataset}"

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        scores = np.zeros(len(completions))
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            entry = self.instances.entry(prompt)
            try:
                scores[i] = float(self.instances.score_answer(read_answer(completion, entry), entry))
            except Exception:  # some datasets parse the answer and raise on garbage: that answer is wrong
                scores[i] = 0.0
        return scores
