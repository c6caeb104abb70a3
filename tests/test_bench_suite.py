"""``textgym bench --quick`` over the real task suite, as CI runs it: every task × every algorithm, tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from agents.bench import DEFAULT_ALGORITHMS, BenchConfig, read_runs, run_benchmark
from agents.bench.runner import QUICK
from textgym.tasks import BUILTIN_TASK_MODULES, get_task, task_names

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
SUITE = [
    "positivity",
    "concepts",
    "instructions",
    "constraints",
    "overoptimization",
    "guess-number",
    "twenty-questions",
    "word-guess",
]


def test_the_suite_is_the_built_in_tasks():
    assert task_names()[: len(BUILTIN_TASK_MODULES)] == SUITE
    for name in SUITE:
        spec = get_task(name)
        assert spec.solver is not None, name  # every task defines its optimum by a scripted solver


def test_quick_matrix_over_every_task_and_algorithm(tmp_path):
    run_benchmark(BenchConfig(tasks=SUITE, quick=True, out=str(tmp_path), progress=False))  # textgym bench --quick
    rows = read_runs(tmp_path)
    assert len(rows) == len(SUITE) * len(DEFAULT_ALGORITHMS) * len(QUICK["eval_points"])  # tasks × algorithms × points
    assert {(r["task"], r["algorithm"]) for r in rows} == {(t, a) for t in SUITE for a in DEFAULT_ALGORITHMS}
    for row in rows:
        for key in ("reward", "gold_score", "normalized_score", "kl", "wall_seconds"):
            assert np.isfinite(float(row[key])), (row["task"], row["algorithm"], key)
    one_episode = 100 / QUICK["eval_episodes"]  # one won game of the quick run's test games, in points
    for task in SUITE:
        random = [r["normalized_score"] for r in rows if r["task"] == task and r["algorithm"] == "random"]
        # The random policy anchors 0 on the tiny model's vocabulary too, to within one lucky game: uniform tokens
        # write the one number of a guess-number turn now and then (gold 0.016 over 400 games at level 1).
        assert abs(np.mean(random)) <= one_episode, task
    results = (tmp_path / "results.md").read_text()
    assert all(f"{task}" in results for task in SUITE)
    for name in ("learning_curves", "reward_kl_frontier", "overoptimization_overoptimization"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
