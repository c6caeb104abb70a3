"""The benchmark runner (agents.bench, ``textgym bench``) on a test-only task built from TextGen-v0."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os

import numpy as np
import pytest
from bench_fake_task import ENV_ID, TASK, register_fake_task
from gymnasium.envs.registration import registry

import agents.bench.runner as runner
from agents.bench import ALGORITHMS, DEFAULT_ALGORITHMS, BenchConfig, read_runs, run_benchmark
from agents.bench.cli import main as bench_main
from agents.bench.estimate import estimate
from agents.bench.evaluation import best_of_n_kl, distinct_n
from agents.bench.report import _bon_form, _rl_form, fit_gao, gao_peak, gao_peak_table, plot_overoptimization
from textgym import tasks
from textgym.cli import main as textgym_main

pytestmark = pytest.mark.usefixtures("one_thread", "fake_task")
ALL = [*DEFAULT_ALGORITHMS, "oracle"]
TRAINED = ("ppo", "grpo", "rloo", "sb3-ppo", "sb3-a2c", "sb3-maskable-ppo")


@pytest.fixture(scope="module")
def fake_task():
    """Register the fake task for this module only, so suites that check every registered task never see it."""
    register_fake_task()
    yield tasks.get_task(TASK)
    tasks._TASKS.pop(TASK, None)
    registry.pop(ENV_ID, None)


def quick(out, **kwargs) -> BenchConfig:
    # The fake task's episodes are 8 tokens: a 256-token budget makes several updates of every algorithm.
    settings = {
        "tasks": [TASK], "quick": True, "out": str(out), "progress": False, "budget_tokens": 256,
        "eval_points": (0, 0.5, 1),
    }  # fmt: skip
    return BenchConfig(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fake_task):
    """The whole algorithm matrix (oracle included) with 2 seeds on the tiny model: the --quick CI run."""
    out = tmp_path_factory.mktemp("quick")
    run_benchmark(quick(out, algorithms=ALL, seeds=2))
    return out


# --- the quick run: every algorithm, well-formed outputs, the anchors of the normalised score ----------------------
def test_quick_run_writes_well_formed_outputs(quick_run):
    with (quick_run / "runs.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == runner.COLUMNS
        rows = list(reader)
    assert len(rows) == len(ALL) * 2 * 3  # algorithms × seeds × evaluation points (quick: 0, 0.5, 1)
    assert {r["algorithm"] for r in rows} == set(ALL)
    for row in rows:
        for key in ("reward", "gold_score", "normalized_score", "kl", "ref_perplexity", "distinct_1", "wall_seconds"):
            assert np.isfinite(float(row[key])), (row["algorithm"], key)
    results = (quick_run / "results.md").read_text()
    for algorithm in ALL:
        assert f"| {algorithm} |" in results
    assert "100 [100, 100]" in results  # the oracle, IQM with its bootstrap CI over the 2 seeds
    for name in ("learning_curves", "reward_kl_frontier", f"overoptimization_{TASK}"):
        data = (quick_run / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name


def test_oracle_scores_100_and_random_about_0(quick_run, fake_task):
    rows = read_runs(quick_run)
    oracle = [r for r in rows if r["algorithm"] == "oracle"]
    assert all(r["normalized_score"] == 100 for r in oracle)
    assert all(r["gold_score"] == fake_task.optimum_score[1] for r in oracle)
    random = [r["gold_score"] for r in rows if r["algorithm"] == "random"]
    assert abs(np.mean(random) - fake_task.random_score[1]) < 0.05
    assert abs(np.mean([r["normalized_score"] for r in rows if r["algorithm"] == "random"])) < 5


def test_budget_and_kl_bookkeeping(quick_run):
    rows = read_runs(quick_run)
    for r in rows:
        if r["algorithm"] in TRAINED:
            assert r["target_tokens"] == round(r["budget_fraction"] * 256) <= r["train_tokens"]
            assert r["train_tokens"] < r["target_tokens"] + 8 * 8 + 4 * 8  # within one update (and the waves' rest)
        else:
            assert r["train_tokens"] == 0
        if r["algorithm"] == "best-of-n":  # n = n_max ** fraction (quick n_max = 4): 1, 2, 4
            assert r["samples_per_prompt"] == round(4 ** r["budget_fraction"])
            n = r["samples_per_prompt"]  # ties and a finite pool coarsen π_ref: at most the tie-free KL, 0 at n = 1
            assert 0 <= r["kl"] <= np.log(n) - (n - 1) / n + 1e-9
        if r["algorithm"] == "zero-shot":  # the policy is the reference
            assert abs(r["kl"]) < 1e-4
        if r["algorithm"] in TRAINED and r["point"] == 0:  # nothing trained yet: the starting model
            assert abs(r["kl"]) < 1e-4 or r["algorithm"] == "sb3-maskable-ppo"  # the mask alone moves it
    for algorithm in TRAINED:  # training moved the policy away from the starting model
        assert any(abs(r["kl"]) > 1e-3 for r in rows if r["algorithm"] == algorithm and r["point"] > 0)


TIMINGS = ("train_seconds", "train_tokens_per_s", "eval_seconds", "wall_seconds")


def results(rows, seeds=(0, 1), algorithms=ALL):
    """Rows without their timings (which differ from run to run), in a fixed order."""
    return [
        {k: v for k, v in r.items() if k not in TIMINGS}
        for r in rows
        if r["seed"] in seeds and r["algorithm"] in algorithms
    ]


# --- the starting model, measured whatever the evaluation points ---------------------------------------------------
def test_gains_start_from_the_starting_model_when_0_is_not_an_evaluation_point(quick_run, tmp_path, monkeypatch):
    algorithms = ["best-of-n", "ppo"]
    run_benchmark(quick(tmp_path, algorithms=algorithms, seeds=1, eval_points=(0.5, 1)))
    rows = read_runs(tmp_path)
    full = [r for r in read_runs(quick_run) if r["seed"] == 0 and r["algorithm"] in algorithms]
    assert [r["budget_fraction"] for r in rows] == [0.5, 1, 0.5, 1] and [r["point"] for r in rows] == [0, 1] * 2
    for r in rows:  # the same cell evaluated before training, as the run with a point at 0 saw it
        start = next(f for f in full if f["algorithm"] == r["algorithm"] and f["budget_fraction"] == 0)
        assert (r["start_reward"], r["start_gold_score"]) == (start["reward"], start["gold_score"])
        same = next(
            f for f in full if f["algorithm"] == r["algorithm"] and f["budget_fraction"] == r["budget_fraction"]
        )
        assert r["reward"] == same["reward"] and r["kl"] == same["kl"]  # the extra evaluation changed nothing
    assert any(r["start_reward"] != r["reward"] for r in rows)

    fits = []
    monkeypatch.setattr("agents.bench.report.fit_gao", lambda d, gain, form: fits.append(gain) or (0.0, 0.0))
    plot_overoptimization(rows, lambda r: r["algorithm"], tmp_path / "plot.png")
    best_of_n = [r for r in rows if r["algorithm"] == "best-of-n"]
    assert list(fits[0]) == [r["reward"] - r["start_reward"] for r in best_of_n]  # not from point 0
    assert list(fits[1]) == [r["gold_score"] - r["start_gold_score"] for r in best_of_n]


def test_cells_written_before_the_start_columns_take_their_start_from_point_0(quick_run, tmp_path):
    old = tmp_path / "cells"
    old.mkdir()
    for path in (quick_run / "cells").glob("*zero-shot_seed0*.csv"):
        with path.open(newline="") as f:
            rows = [{k: v for k, v in r.items() if not k.startswith("start_")} for r in csv.DictReader(f)]
        with (old / path.name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    rows = read_runs(tmp_path)
    assert len(rows) == 3 and all(r["start_reward"] == rows[0]["reward"] for r in rows)


# --- several workers -------------------------------------------------------------------------------------------------
def test_workers_compute_the_rows_of_a_serial_run_and_an_interrupted_run_resumes(quick_run, tmp_path, monkeypatch):
    algorithms = ["zero-shot", "best-of-n", "ppo"]
    config = quick(tmp_path, algorithms=algorithms, seeds=1, workers=2)
    real_write, writes = runner._write_csv, []

    def write_then_die(path, rows):
        writes.append(path.name)
        if len(writes) == 5:  # two cells (and runs.csv after each) are written; killed as the third arrives
            raise KeyboardInterrupt
        real_write(path, rows)

    monkeypatch.setattr(runner, "_write_csv", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config)
    finished = sorted((tmp_path / "cells").iterdir())
    assert len(finished) == 2  # no half-written cell, no temporary file
    before = {path: path.read_bytes() for path in finished}
    parallel = read_runs(tmp_path)
    computed = {r["algorithm"] for r in parallel}
    assert results(parallel) == results(read_runs(quick_run), seeds=(0,), algorithms=computed)  # as serially

    # Resumed with another number of workers (one: no second round of process start-ups): only the third cell.
    monkeypatch.setattr(runner, "_write_csv", real_write)
    run_benchmark(dataclasses.replace(config, workers=1))
    assert {path: path.read_bytes() for path in finished} == before  # not computed again
    assert len(list((tmp_path / "cells").iterdir())) == 3 and (tmp_path / "results.md").exists()
    assert results(read_runs(tmp_path)) == results(read_runs(quick_run), seeds=(0,), algorithms=algorithms)


def test_bad_workers_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"workers must be at least 1, got .* and 0"):
        quick(tmp_path, workers=0)


# --- --quick and --estimate ------------------------------------------------------------------------------------------
def test_quick_runs_one_seed_and_one_update_per_cell(tmp_path):
    config = BenchConfig(tasks=[TASK], quick=True, out=str(tmp_path), progress=False, algorithms=["ppo", "sb3-a2c"])
    assert (config.seeds, config.eval_points, config.budget_tokens) == (1, (0.0, 1.0), 1)
    run_benchmark(config)
    final = {r["algorithm"]: r["train_tokens"] for r in read_runs(tmp_path) if r["budget_fraction"] == 1}
    # One update: PPO 8 episodes of at most 8 tokens; A2C n_steps × num_envs = 8 × 4 timesteps.
    assert 0 < final["ppo"] <= 64 and final["sb3-a2c"] == 32


def test_estimate_probes_then_uses_measured_cells_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--tasks", TASK, "--algos", "zero-shot,ppo", "--seeds", "2", "--quick", "--budget-tokens", "256"]
    assert bench_main([*args, "--out", str(out), "--estimate"]) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    lines = [line for line in printed.splitlines() if line.startswith(TASK)]
    assert len(lines) == 4 and all("probe" in line for line in lines)
    assert "update(s) ×" in printed and "tokens timed, extrapolated" in printed
    assert printed.splitlines()[-1].startswith("total: ") and "(4 cells)" in printed

    config = quick(out, algorithms=["zero-shot", "ppo"], seeds=2, eval_points=None)
    probed = estimate(config)
    assert not out.exists()
    assert probed[1].hours > 0 and probed[1].hours == probed[3].hours  # ppo: one probe for both seeds
    run_benchmark(config)
    walls = {(r["algorithm"], r["seed"]): r["wall_seconds"] for r in read_runs(out) if r["budget_fraction"] == 1}
    for path in (out / "cells").glob("*seed1*"):
        path.unlink()
    by_cell = {(e.cell.algorithm, e.cell.seed): e for e in estimate(config)}
    assert by_cell["ppo", 0].basis == "done" and by_cell["ppo", 0].hours == 0
    assert by_cell["ppo", 1].basis.startswith("measured: mean of 1")
    assert by_cell["ppo", 1].hours == pytest.approx(walls["ppo", 0] / 3600)


# --- resuming ----------------------------------------------------------------------------------------------------
def test_a_trained_cell_spans_its_learning_rate_schedule_over_the_whole_budget(fake_task):
    """The runner trains a textgym agent one learn() per update, up to each evaluation point; its schedule spans the
    cell's whole budget (it was sized by the first update alone, so the rate was 0 from the second on)."""
    from agents.bench.algorithms import Cell
    from agents.bench.hparams import hparams_for

    hparams = hparams_for(TASK, "ppo", quick=True, extra={"lr_schedule": "linear"})
    algorithm = ALGORITHMS["ppo"](Cell(fake_task, 1, "ppo", 0, "tiny", hparams, budget_tokens=256))
    for target in (128, 256):  # two evaluation points
        algorithm.train_until(target)
    agent = algorithm.agent
    rates = np.array([h["train/learning_rate"] for h in agent.history]) / hparams["learning_rate"]
    updates = len(rates)
    assert agent.collector.tokens_generated >= 256 and updates >= 4
    assert (rates[:-1] > 0).all() and (np.diff(rates) < 0).all()
    assert rates[-1] < 1 / updates  # about 0 at the end of the budget
    assert agent.scheduler.total_steps == agent.optimizer_steps(agent.episodes_seen)  # ... where it ends
    algorithm.close()


def test_a_killed_run_resumes_without_recomputing_finished_cells(tmp_path, monkeypatch):
    config = quick(tmp_path, algorithms=["random", "zero-shot", "oracle"], seeds=1)
    real_run_cell, computed = runner.run_cell, []

    def run_cell_then_die(cell, config):
        if len(computed) == 2:
            raise KeyboardInterrupt  # killed during the third cell
        computed.append(cell.algorithm)
        return real_run_cell(cell, config)

    monkeypatch.setattr(runner, "run_cell", run_cell_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config)
    finished = sorted((tmp_path / "cells").glob("*.csv"))
    assert len(finished) == 2 and not list((tmp_path / "cells").glob(".*"))  # no half-written cell
    before = {p.name: p.read_bytes() for p in finished}

    computed.clear()
    monkeypatch.setattr(
        runner, "run_cell", lambda cell, config: computed.append(cell.algorithm) or real_run_cell(cell, config)
    )
    run_benchmark(config)
    assert computed == ["oracle"]  # only the cell that had not finished
    assert all((tmp_path / "cells" / name).read_bytes() == data for name, data in before.items())
    assert {r["algorithm"] for r in read_runs(tmp_path)} == {"random", "zero-shot", "oracle"}
    assert (tmp_path / "results.md").exists()


def test_cells_run_seed_by_seed_and_max_hours_ends_a_sitting_between_cells(tmp_path, monkeypatch):
    clock, computed, real_run_cell = [0.0], [], runner.run_cell

    def run_cell_for_an_hour(cell, config):
        clock[0] += 3600
        computed.append((cell.algorithm, cell.seed))
        return real_run_cell(cell, config)

    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(runner, "run_cell", run_cell_for_an_hour)
    config = quick(tmp_path, algorithms=["random", "zero-shot"], seeds=2)
    run_benchmark(dataclasses.replace(config, max_hours=1.5))
    assert computed == [("random", 0), ("zero-shot", 0)]  # the second cell passed 1.5 h: no third was started
    assert (tmp_path / "results.md").exists()  # the sitting's results are reported

    run_benchmark(config)  # the same configuration without a limit: the other seed
    assert computed[2:] == [("random", 1), ("zero-shot", 1)]


def test_another_configuration_is_refused_unless_appended(tmp_path):
    run_benchmark(quick(tmp_path, algorithms=["zero-shot"], seeds=1))
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"another configuration.*budget_tokens 256 → 512.*--append"):
        run_benchmark(quick(tmp_path, algorithms=["zero-shot"], seeds=1, budget_tokens=512))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == snapshot  # nothing overwritten

    run_benchmark(quick(tmp_path, algorithms=["zero-shot"], seeds=1, budget_tokens=512, append=True))
    rows = read_runs(tmp_path)
    assert sorted({r["budget_tokens"] for r in rows}) == [256, 512]
    assert len(json.loads((tmp_path / "bench.json").read_text())["configurations"]) == 2
    assert "zero-shot [" in (tmp_path / "results.md").read_text()  # two settings of one algorithm: labelled apart


def test_a_non_empty_folder_without_a_benchmark_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no benchmark"):
        run_benchmark(quick(tmp_path, algorithms=["zero-shot"], seeds=1))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- bad input -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tasks": ["nope"]}, ValueError, f"Unknown task.*'nope'.*the tasks are: .*{TASK}"),
        ({"algorithms": ["ppo", "dqn"]}, ValueError, "Unknown algorithm.*'dqn'.*random, zero-shot, best-of-n, ppo"),
        ({"budget_tokens": 16}, ValueError, "smaller than one update of ppo on fake-repeat"),
        ({"levels": {TASK: 7}}, ValueError, r"has levels \[1, 2\], got 7"),
        ({"eval_points": (0.5, 0.25, 1)}, ValueError, "eval_points must be increasing"),
        ({"hparams": {"ppo": {"format_reward": 0.1}}}, ValueError, "format reward.*'fake-repeat' is single-turn"),
        ({"hparams": {"grpo": {"turn_rewards": True}}}, ValueError, "turn rewards.*'fake-repeat' is single-turn"),
    ],
    ids=["task", "algorithm", "budget", "level", "eval-points", "format-reward", "turn-rewards"],
)
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, kwargs, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        run_benchmark(quick(out, **kwargs))
    assert not out.exists()


def test_cli_help_lists_every_task_and_algorithm(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in [TASK, *ALGORITHMS]:
        assert name in text
    assert textgym_main(["--help"]) == 0 and "bench" in capsys.readouterr().out


def test_cli_asks_for_huge_pages_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    with pytest.raises(SystemExit):
        textgym_main(["bench", "--help"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    with pytest.raises(SystemExit):
        textgym_main(["bench", "--help"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def test_cli_runs_and_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--tasks", TASK, "--algos", "zero-shot,oracle", "--seeds", "1", "--quick", "--no-progress"]
    assert textgym_main(["bench", *args, "--level", f"{TASK}=2", "--out", str(out)]) == 0
    assert {r["level"] for r in read_runs(out)} == {2}
    oracle_row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| oracle"))
    assert oracle_row.startswith("| oracle | 100 |") and "[" not in oracle_row  # one seed: the value, no interval
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--algos", "zero-shot,sarsa", "--quick", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "Unknown algorithm(s) ['sarsa']; the algorithms are: random" in capsys.readouterr().err


# --- the pieces ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", [_bon_form, _rl_form], ids=["best-of-n", "rl"])
def test_gao_fits_recover_their_coefficients(form):
    d = np.linspace(0, 3, 20)
    alpha, beta = fit_gao(d, form(d, 0.7, 0.2), form)
    assert (alpha, beta) == (pytest.approx(0.7), pytest.approx(0.2))


def test_gao_peaks_are_where_the_forms_turn():
    for alpha, beta, best_of_n, form in ((0.6, 0.2, True, _bon_form), (0.3, 0.1, False, _rl_form)):
        peak, gain = gao_peak(alpha, beta, best_of_n)
        d = np.linspace(0.01, 3 * peak, 30_001)
        assert d[np.argmax(form(d, alpha, beta))] == pytest.approx(peak, rel=1e-3)
        assert form(np.array([peak]), alpha, beta)[0] == pytest.approx(gain)
    assert gao_peak(0.5, -0.1, False) == gao_peak(0.5, 0.0, True) == gao_peak(-0.5, 0.1, True) == (np.inf, np.inf)


def test_the_peak_table_recovers_a_peak_from_noisy_seeds_and_says_when_there_is_none():
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(4):
        for point, d in enumerate(np.linspace(0, 3, 9)):
            rows.append(
                {
                    "task": "overopt",
                    "algorithm": "grpo",
                    "seed": seed,
                    "point": point,
                    "kl": d**2,
                    "gold_score": 0.5 + float(_rl_form(np.array([d]), 0.3, 0.2)[0]) + rng.normal(0, 0.01),
                    "start_gold_score": 0.5,
                }
            )
            rows.append(
                {
                    "task": "overopt",
                    "algorithm": "best-of-n",
                    "seed": seed,
                    "point": point,
                    "kl": d**2 / 9,
                    "gold_score": 0.5 + 0.1 * d / 3 + 0.05 * (d / 3) ** 2,
                    "start_gold_score": 0.5,
                }
            )
    table = gao_peak_table(rows, lambda r: r["algorithm"], reps=500)
    grpo = next(line for line in table if line.startswith("| grpo |")).split(" | ")
    assert grpo[1:3] == ["4", "3.00"]  # seeds, the largest √KL
    peak, low, high = (float(x) for x in grpo[5].replace("[", "").replace("]", "").replace(",", "").split())
    assert peak == pytest.approx(np.exp(0.3 / 0.2 - 1), rel=0.05) and low < np.exp(0.5) < high
    assert grpo[-1] == "yes |"
    best_of_n = next(line for line in table if line.startswith("| best-of-n |"))
    assert best_of_n.endswith("| no peak |")  # still rising faster: β < 0, no peak


def brute_force_best_of_n_kl(pool: list[float], n: int) -> float:
    """Every ordered draw of n pool items (with replacement), the best kept with ties broken uniformly."""
    m, chosen = len(pool), np.zeros(len(pool))
    for draw in itertools.product(range(m), repeat=n):
        best = max(pool[i] for i in draw)
        winners = [i for i in draw if pool[i] == best]
        for i in winners:
            chosen[i] += 1 / len(winners) / m**n
    return float(sum(p * np.log(p * m) for p in chosen if p > 0))


@pytest.mark.parametrize(
    "pool",
    [[0, 0, 0, 1], [0, 0, 1, 1, 2], [0.5, 0.5, 0.5], [3.0], [0, 0, 0, 0, 0], [-1, 0, 0, 2, 2, 2], [1, 2, 3, 4]],
    ids=["one-best", "two-ties", "all-equal", "one-sample", "zeros", "negative-ties", "distinct"],
)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_best_of_n_kl_matches_brute_force_with_ties(pool, n):
    expected = brute_force_best_of_n_kl(pool, n)
    assert best_of_n_kl(np.array([pool]), n) == pytest.approx(expected, abs=1e-12)
    if len(set(pool)) == 1 or n == 1:
        assert expected == pytest.approx(0, abs=1e-12)  # all ties, one sample, or n = 1: best-of-n is π_ref
    # Several prompts: the mean over prompts.
    other = [0.0] * len(pool)
    assert best_of_n_kl(np.array([pool, other]), n) == pytest.approx(expected / 2, abs=1e-12)


def test_best_of_n_kl_with_distinct_scores_tends_to_the_tie_free_formula():
    scores = np.random.default_rng(0).permutation(10_000)[None]  # one prompt, 10,000 distinct scores
    for n in (2, 4, 16):
        assert best_of_n_kl(scores, n) == pytest.approx(np.log(n) - (n - 1) / n, rel=2e-3)
    # A coarse reward (about 85% zeros) ties most samples: well below the tie-free formula (1.25 vs 1.84 nats).
    coarse = (np.random.default_rng(0).random((32, 16)) > 0.85).astype(float)
    assert best_of_n_kl(coarse, 16) < 0.75 * (np.log(16) - 15 / 16)


def test_metrics_helpers():
    with pytest.raises(ValueError, match="expected"):
        best_of_n_kl(np.zeros(4), 2)
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)
