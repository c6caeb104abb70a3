"""The benchmark suite's task registry: what the benchmark runner needs to know about each language task.

A task is a registered environment id plus what a benchmark needs beyond the env itself: its levels, how to
turn the task's gold score into a normalised score, and a scripted solver that defines the optimum. Every
task env takes ``split="train" | "test"`` (disjoint instances; results report ``test``) and ``level=...``;
the info of an episode's last step holds ``score`` (the training reward's raw score) and ``gold_score`` (what
the benchmark reports)::

    from textgym.tasks import get_task, task_names

    spec = get_task("positivity")
    env = gym.make(spec.env_id, split="test", level=spec.default_level)
    spec.normalized(gold_score, level)  # 100 · (score − random) / (optimum − random)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Args:
        name: the short name the benchmark runner takes (``textgym bench --tasks NAME``).
        env_id: the registered Gymnasium id; ``gym.make(env_id, split=..., level=...)`` builds it.
        description: one line for ``--help`` and tables.
        levels: the valid ``level`` values, easiest first.
        default_level: the level benchmarks use unless told otherwise.
        random_score: per level, the mean gold score of the random policy (uniform tokens): normalised 0.
        optimum_score: per level, the gold score of the scripted solver (or the known optimum): normalised 100.
        solver: ``solver(prompt, level) -> completion``, the scripted policy that reaches ``optimum_score``, given
            the env's prompt text (``info["prompt"]``) and level; ``None`` when the optimum is known analytically.
            For a multi-turn task, ``solver(messages, level) -> turn``: its next turn, given the conversation so
            far as chat messages (the opening, then its turns and the partner's replies).
        multi_turn: an episode is a conversation with the env ([textgym.envs.conversation][textgym.envs.conversation]).
        tiny_judges: the env arguments that make every language-model judge of the task (in its training reward
            and its gold score) the tiny test model, e.g. ``{"fluency_model": "tiny"}``; empty when the task has
            no such judge. A task's judges are the embedded SmolLM2-135M whatever the policy's ``model`` (the gold
            must not change with the policy); the benchmark runner passes these arguments to every env of a run
            whose model is ``"tiny"`` (``textgym bench --quick``), where a 135M judge of a random tiny model's
            text would measure nothing and take most of the time. The random and optimum scores are measured
            with the embedded judges, so normalised scores under the tiny ones are not comparable.
        revision: raised whenever the task's gold changes, so that the benchmark runner never mixes cells judged
            by different golds (it is part of a cell's setting hash when above 0).
    """

    name: str
    env_id: str
    description: str
    levels: tuple[int, ...]
    default_level: int
    random_score: Mapping[int, float]
    optimum_score: Mapping[int, float]
    solver: Callable[[Any, int], str] | None = field(default=None, compare=False)
    multi_turn: bool = False
    tiny_judges: Mapping[str, Any] = field(default_factory=dict)
    revision: int = 0

    def __post_init__(self) -> None:
        if self.default_level not in self.levels:
            raise ValueError(f"Task {self.name!r}: default_level {self.default_level} is not in {self.levels}.")
        for level in self.levels:
            if level not in self.random_score or level not in self.optimum_score:
                raise ValueError(f"Task {self.name!r}: level {level} lacks a random or optimum score.")
            if self.optimum_score[level] <= self.random_score[level]:
                raise ValueError(f"Task {self.name!r}: level {level}'s optimum does not exceed its random score.")

    def check_level(self, level: int | None) -> int:
        """``level`` itself (``None``: the default), or a ``ValueError`` naming the valid levels."""
        if level is None:
            return self.default_level
        if level not in self.levels:
            raise ValueError(f"Task {self.name!r} has levels {list(self.levels)}, got {level!r}.")
        return level

    def normalized(self, gold_score: float, level: int | None = None) -> float:
        """``100 · (score − random) / (optimum − random)`` at ``level``: 0 is random, 100 the optimum."""
        level = self.check_level(level)
        low, high = self.random_score[level], self.optimum_score[level]
        return 100.0 * (gold_score - low) / (high - low)


BUILTIN_TASK_MODULES = (
    "textgym.envs.text_gen",
    "textgym.envs.concepts",
    "textgym.envs.instructions",
    "textgym.envs.length_format",
    "textgym.envs.proxy_positivity",
    "textgym.envs.guess_number",
    "textgym.envs.twenty_questions",
    "textgym.envs.word_guess",
)
"""The modules whose ``TASK`` is one of the suite's tasks, in the order tables list them. They are imported on
the first question about the suite, so ``import textgym`` stays light."""

TASK_PREFIXES = {"rg": "textgym.envs.reasoning_gym:resolve_task"}
"""Families of tasks named ``PREFIX:NAME`` and built on demand, by ``"module:function"`` (imported on first use):
``get_task("rg:leg_counting")`` is ``resolve_task("leg_counting")``, reasoning-gym's dataset as a task (the
optional extra ``textgym[reasoning]``). The function returns a [TaskSpec][textgym.tasks.TaskSpec] or raises a
``KeyError`` listing the valid names. [task_names][textgym.tasks.task_names] does not list these tasks."""

_TASKS: dict[str, TaskSpec] = {}
_builtins_loaded = False


def register_task(spec: TaskSpec) -> None:
    """Add a task to the suite (re-registering the same name replaces it, so re-imports are harmless)."""
    _load_builtin_tasks()
    _TASKS[spec.name] = spec


def task_names() -> list[str]:
    """Names of the registered tasks: the built-in ones first, then others in registration order."""
    _load_builtin_tasks()
    return list(_TASKS)


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (a registered one, or ``PREFIX:NAME`` of [TASK_PREFIXES][textgym.tasks.TASK_PREFIXES]),
    or a ``KeyError`` listing the valid names."""
    _load_builtin_tasks()
    if name in _TASKS:
        return _TASKS[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in TASK_PREFIXES:
        import importlib

        module, _, function = TASK_PREFIXES[prefix].partition(":")
        return getattr(importlib.import_module(module), function)(rest)
    raise KeyError(
        f"Unknown task {name!r}; the tasks are: {', '.join(task_names()) or '(none registered)'}; or rg:DATASET, "
        "a reasoning-gym dataset."
    )


def _load_builtin_tasks() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import importlib

    for module in BUILTIN_TASK_MODULES:
        spec = importlib.import_module(module).TASK
        _TASKS.setdefault(spec.name, spec)
