"""A test-only benchmark task built from TextGen-v0, standing in for the real tasks until they exist.

"Repeat the word": prompt ``"Repeat: cat"`` asks for the completion ``"cat"``. The gold score is 1 for the exact
word, else 0; the training reward (proxy) adds a bonus for length, so it can be over-optimised and proxy and gold
differ. The env takes the task contract's ``split`` (disjoint words) and ``level`` (1: short words, 2: longer)
and puts ``gold_score`` in the last step's info — an adapter over ``TextGenEnv`` / ``TextGenVectorEnv`` for the
tests only.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from textgym.envs.text_gen import TextGenEnv
from textgym.envs.vector import TextGenVectorEnv
from textgym.tasks import TaskSpec, register_task

ENV_ID = "BenchFakeRepeat-v0"
TASK = "fake-repeat"
WORDS = {
    ("train", 1): ["cat", "dog", "sun", "red", "box", "cup", "map", "pen"],
    ("test", 1): ["hat", "bus", "egg", "fox"],
    ("train", 2): ["garden", "window", "yellow", "market"],
    ("test", 2): ["silver", "forest", "planet", "basket"],
}


def _target(prompt: str) -> str:
    return prompt.split(":", 1)[1].strip()


def gold(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(c.strip() == _target(p)) for p, c in zip(prompts, completions)]


def proxy(prompts: list[str], completions: list[str]) -> list[float]:
    """The gold score plus up to 0.5 for length: the training reward the agents can over-optimise."""
    return [g + 0.5 * min(len(c), 16) / 16 for g, c in zip(gold(prompts, completions), completions)]


def solver(prompt: str, level: int) -> str:
    return _target(prompt)


def _task_kwargs(split: str, level: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    if (split, level) not in WORDS:
        raise ValueError(f"{ENV_ID}: split must be 'train' or 'test' and level 1 or 2, got {split!r}, {level!r}.")
    kwargs.setdefault("model", "tiny")
    return {
        "prompts": [f"Repeat: {w}" for w in WORDS[split, level]],
        "reward_model": proxy,
        "max_prompt_tokens": 16,
        "max_new_tokens": 8,
        **kwargs,
    }


def _add_gold(episodes) -> None:
    """Wrap the shared core's step so every ending episode's info also holds ``gold_score``."""
    step = episodes.step

    def step_with_gold(rows, actions):
        rewards, terminated, truncated, infos = step(rows, actions)
        for info in infos:
            if "completion" in info:
                info["gold_score"] = gold([info["prompt"]], [info["completion"]])[0]
        return rewards, terminated, truncated, infos

    episodes.step = step_with_gold


class FakeTaskEnv(TextGenEnv):
    def __init__(self, split: str = "train", level: int = 1, render_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(render_mode=render_mode, **_task_kwargs(split, level, kwargs))
        _add_gold(self.episodes)


class FakeTaskVectorEnv(TextGenVectorEnv):
    def __init__(self, num_envs: int = 1, split: str = "train", level: int = 1, **kwargs: Any) -> None:
        super().__init__(num_envs=num_envs, **_task_kwargs(split, level, kwargs))
        _add_gold(self.episodes)


def register_fake_task() -> None:
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point=FakeTaskEnv, vector_entry_point=FakeTaskVectorEnv)
    register_task(
        TaskSpec(
            name=TASK,
            env_id=ENV_ID,
            description="test-only: repeat the word of the prompt",
            levels=(1, 2),
            default_level=1,
            random_score={1: 0.0, 2: 0.0},  # uniform tokens never spell the word in 8 tokens, in practice
            optimum_score={1: 1.0, 2: 1.0},
            solver=solver,
        )
    )
