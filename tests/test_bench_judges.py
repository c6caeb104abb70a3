"""``textgym bench --quick`` judges with the tiny model: no env of a quick cell loads the embedded model."""

from __future__ import annotations

import importlib

import pytest

import textgym.lm.models as models
from agents.bench import ALGORITHMS, BenchConfig
from agents.bench.algorithms import judge_kwargs
from agents.bench.runner import plan
from textgym.tasks import BUILTIN_TASK_MODULES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def embedded_model_asked(monkeypatch) -> list[str]:
    """Every request for the embedded model fails, and is recorded (in case a caller swallowed the failure)."""
    asked: list[str] = []

    def refuse():
        asked.append("embedded")
        raise AssertionError("a quick cell asked for the embedded model (a judge that should be the tiny one)")

    monkeypatch.setattr(models, "embedded_model_dir", refuse)
    return asked


@pytest.mark.parametrize("module", BUILTIN_TASK_MODULES)
def test_a_quick_cell_of_every_task_judges_with_the_tiny_model(module, tmp_path, embedded_model_asked):
    task = importlib.import_module(module).TASK
    # One algorithm for each way an env is made: the rollout engine's vector env (ppo), SB3's (sb3-a2c), the
    # scripted episodes' single env (oracle); the plan itself makes one to read the episode length.
    algorithms = ["ppo", "sb3-a2c", "oracle"]
    config = BenchConfig(tasks=[task.name], algorithms=algorithms, quick=True, out=str(tmp_path), progress=False)
    cells = plan(config)
    assert [cell.algorithm for cell in cells] == algorithms
    for cell in cells:
        algorithm = ALGORITHMS[cell.algorithm](cell)
        test = cell.test_set(4)  # as the runner makes it
        try:
            episodes = algorithm.test_episodes(test, 0.0)  # the judges score every test episode
        finally:
            algorithm.close()
            test.close()
        assert len(episodes.batch.infos) == 4
        assert all("gold_score" in info for info in episodes.batch.infos)
    assert embedded_model_asked == []


def test_the_tiny_judges_go_with_the_tiny_model_only():
    task = importlib.import_module("textgym.envs.length_format").TASK
    assert judge_kwargs(task, "tiny") == {"reward_model_kwargs": {"fluency_kwargs": {"model": "tiny"}}}
    assert judge_kwargs(task, "embedded") == {}  # a run of the embedded model keeps the embedded judges
    assert judge_kwargs(importlib.import_module("textgym.envs.text_gen").TASK, "tiny") == {}  # VADER: no LM judge


def test_a_new_gold_makes_new_cells():
    from dataclasses import replace

    from agents.bench.runner import setting_id

    task = importlib.import_module("textgym.envs.proxy_positivity").TASK
    config = BenchConfig(tasks=[task.name], algorithms=["zero-shot"], budget_tokens=64, progress=False)
    cell = plan(config)[0]
    assert task.revision == 1  # the gold's guards (2026-12-07)
    ids = {setting_id(replace(cell, task=replace(task, revision=r)), config) for r in (0, 1, 2)}
    assert len(ids) == 3  # the cells judged by an older gold are not resumed as this one's
