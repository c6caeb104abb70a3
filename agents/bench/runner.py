"""The benchmark runner: every task × algorithm × seed, evaluated on the test split at fixed points of a token budget.

A *cell* is one algorithm on one task (at one level) with one seed. The runner computes the cells one by one, or
``workers`` at a time in as many processes, and the parent process alone writes each cell's rows to ``OUT/cells/``
atomically when it finishes, so a killed run started again with the same configuration skips the finished cells.
``OUT/bench.json`` records the configuration(s) the folder holds; another configuration is refused unless
``append=True``, which adds its cells beside the others (cells are named by a hash of their settings, so no two
settings share a file). After every cell ``runs.csv`` is rewritten from the cell files; at the end ``results.md``
and the plots (:mod:`agents.bench.report`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.bench.algorithms import ALGORITHMS, DEFAULT_ALGORITHMS, TRAIN_ENV_KEYS, Cell, judge_kwargs
from agents.bench.hparams import hparams_for
from agents.run_log import write_json_atomic

MANIFEST = "bench.json"
CELLS_DIR = "cells"
RUNS_CSV = "runs.csv"
COLUMNS = (
    "task", "level", "algorithm", "seed", "setting", "model", "point", "budget_fraction", "budget_tokens",
    "target_tokens", "train_tokens", "samples_per_prompt", "reward", "gold_score", "normalized_score", "start_reward",
    "start_gold_score", "kl",
    "ref_perplexity", "distinct_1", "distinct_2", "train_seconds", "train_tokens_per_s", "eval_seconds",
    "wall_seconds", "eval_episodes",
)  # fmt: skip
"""The columns of ``runs.csv``, one row per task × algorithm × seed × evaluation point (see docs/benchmarks.md)."""

FULL = {
    "model": "embedded", "seeds": 3, "budget_tokens": 200_000, "eval_points": (0.0, 0.25, 0.5, 0.75, 1.0),
    "eval_episodes": 64,
}  # fmt: skip
QUICK = {"model": "tiny", "seeds": 1, "budget_tokens": 1, "eval_points": (0.0, 1.0), "eval_episodes": 8}
# The fields that do not change results: where they go, how they are shown, how long a sitting lasts, how many
# processes compute them.
_NOT_RESULTS = ("out", "append", "device", "progress", "bootstrap_reps", "max_hours", "workers")


@dataclass
class BenchConfig:
    """What to run, and where. Fields left ``None`` take the full (or, with ``quick``, the quick) defaults."""

    tasks: list[str] | None = None
    """Task names (``textgym.tasks.task_names()``, or ``rg:DATASET``: ``textgym.tasks.get_task``); ``None``: every
    registered task."""
    algorithms: list[str] = field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    """Algorithm names (:data:`agents.bench.algorithms.ALGORITHMS`); ``oracle`` may be added to any run."""
    seeds: int | None = None
    """Seeds per task × algorithm: ``0 .. seeds-1`` (3; quick: 1)."""
    budget_tokens: int | None = None
    """Env tokens each training algorithm may use (200,000; quick: 1); see :mod:`agents.bench.algorithms`. 1 asks
    for exactly one update of each, whatever its size on the task (the smoke run); any other budget must hold one."""
    out: str = "bench"
    """Output folder: ``runs.csv``, ``results.md``, the plots, and the finished cells for resuming."""
    levels: dict[str, int] = field(default_factory=dict)
    """A level per task name; a task not named runs at its ``default_level``."""
    model: str | None = None
    """The starting model of every algorithm and the reference of KL and perplexity (embedded SmolLM2-135M;
    quick: ``"tiny"``), or a local Hugging Face model directory."""
    eval_points: tuple[float, ...] | None = None
    """Fractions of the budget at which to evaluate (0, .25, .5, .75, 1; quick: 0, 1). The starting model is
    evaluated in any case (``start_reward``, ``start_gold_score``: over-optimisation gains start there)."""
    eval_episodes: int | None = None
    """Test prompts per evaluation, the same for every algorithm and seed (64; quick: 8)."""
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per algorithm, settings laid over :mod:`agents.bench.hparams`' table, e.g. ``{"ppo": {"kl_coef": 0.1}}``."""
    quick: bool = False
    """Tiny model, one seed, one update per cell, quick settings: the smallest run that exercises every task ×
    algorithm (a smoke test, not results)."""
    append: bool = False
    """Add this configuration's cells to an output folder that holds another configuration."""
    device: str | None = None
    """Where models run (default: ``cuda`` when available, else ``cpu``)."""
    bootstrap_reps: int | None = None
    """Bootstrap resamples of the 95% confidence intervals (10,000; quick: 1,000)."""
    progress: bool = True
    """Show a progress bar over the cells."""
    max_hours: float | None = None
    """Start no new cell after this many hours (a sitting); the same call again continues where it stopped."""
    workers: int = 1
    """Cells computed at once, each in its own process with one torch thread (pinned to a core of its own when
    there are enough); the rows are those of a serial run on one thread (more threads round floats differently)."""

    def __post_init__(self) -> None:
        defaults = QUICK if self.quick else FULL
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.bootstrap_reps is None:
            self.bootstrap_reps = 1_000 if self.quick else 10_000
        self.eval_points = tuple(float(f) for f in self.eval_points)
        self.algorithms = list(self.algorithms)
        unknown = [a for a in [*self.algorithms, *self.hparams] if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"Unknown algorithm(s) {unknown}; the algorithms are: {', '.join(ALGORITHMS)}.")
        if not self.algorithms or len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError(f"algorithms must name each algorithm once, got {self.algorithms}.")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ValueError(f"max_hours must be positive, got {self.max_hours}.")
        if min(self.seeds, self.budget_tokens, self.eval_episodes, self.workers) < 1:
            raise ValueError(
                f"seeds, budget_tokens, eval_episodes and workers must be at least 1, got {self.seeds}, "
                f"{self.budget_tokens}, {self.eval_episodes} and {self.workers}."
            )
        points = self.eval_points
        if not points or list(points) != sorted(set(points)) or points[0] < 0 or points[-1] != 1:
            raise ValueError(f"eval_points must be increasing fractions in [0, 1] ending at 1, got {points}.")

    def identity(self) -> dict[str, Any]:
        """The fields that define the results (not where they go or how they are shown)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_RESULTS}


def run_benchmark(config: BenchConfig) -> Path:
    """Run (or resume) the benchmark ``config`` describes; return the output folder.

    Example::

        from agents.bench import BenchConfig, run_benchmark

        run_benchmark(BenchConfig(tasks=["positivity"], algorithms=["zero-shot", "ppo"], seeds=3,
                                  budget_tokens=100_000, out="bench/positivity"))
    """
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from agents.bench.report import write_reports

    cells = plan(config)  # every check, before anything is written
    out = Path(config.out)
    _claim(out, config)
    done = {path.name for path in (out / CELLS_DIR).glob("*.csv")}
    todo = [cell for cell in cells if cell_file(cell, config) not in done]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", disable=not config.progress)
    weight_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model load would bury the cells' bar
    start = time.monotonic()

    def may_start(cell: Cell) -> bool:  # asked before each cell; after the first False, no more is started
        if config.max_hours is not None and time.monotonic() - start > config.max_hours * 3600:
            bar.write(f"max_hours={config.max_hours} reached; run the same configuration again to continue.")
            return False
        bar.set_description(f"{cell.task.name} {cell.algorithm} seed {cell.seed}")
        return True

    try:
        with contextlib.closing(_computed(todo, config, may_start)) as computed:
            for cell, rows in computed:  # written here only: one process writes the files
                _write_csv(out / CELLS_DIR / cell_file(cell, config), rows)
                _write_csv(out / RUNS_CSV, read_runs(out))
                bar.update()
    finally:
        bar.close()
        if weight_bars:
            hf_logging.enable_progress_bar()
    if not (out / RUNS_CSV).exists():  # nothing was left to run, e.g. a folder copied without runs.csv
        _write_csv(out / RUNS_CSV, read_runs(out))
    write_reports(out, read_runs(out), bootstrap_reps=config.bootstrap_reps)
    return out


def _computed(todo: list[Cell], config: BenchConfig, may_start: Callable[[Cell], bool]) -> Iterator[tuple]:
    """``(cell, rows)`` for the cells of ``todo`` that ``may_start``, in the order they finish: computed here, or in
    ``config.workers`` spawned processes (fork is unsafe once torch has started its threads)."""
    if config.workers == 1:
        for cell in todo:
            if not may_start(cell):
                return
            yield cell, run_cell(cell, config)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import gymnasium as gym

    context = multiprocessing.get_context("spawn")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    slots = context.Queue()  # each worker takes a core of its own, when there is one for each
    for i in range(config.workers):
        slots.put(cores[i] if len(cores) >= config.workers else None)
    # Tasks (and their envs) registered in this process at run time, e.g. by a plugin, exist in the workers too.
    tasks = list({cell.task.name: (cell.task, gym.spec(cell.task.env_id)) for cell in todo}.values())
    pending, running = iter(todo), {}
    with ProcessPoolExecutor(
        config.workers, mp_context=context, initializer=_start_worker, initargs=(slots, tasks)
    ) as pool:
        try:
            while True:
                while len(running) < config.workers and (cell := next(pending, None)) is not None:
                    if not may_start(cell):
                        pending = iter(())  # the sitting is over: let the running cells finish
                        break
                    running[pool.submit(run_cell, cell, config)] = cell
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield running.pop(future), future.result()  # a worker's error is raised here
        finally:
            for future in running:  # interrupted: start nothing more; the with waits for the cells in progress
                future.cancel()


def _start_worker(slots: Any, tasks: list[tuple]) -> None:
    """Set up a worker process: its core, one torch thread, and the parent's tasks and envs."""
    import gymnasium as gym
    import torch
    from transformers.utils import logging as hf_logging

    import textgym  # noqa: F401  (registers the built-in envs and tasks)
    from textgym.tasks import register_task, task_names

    core = slots.get()
    if core is not None:
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)  # several threads per worker would fight over the cores the other workers use
    hf_logging.disable_progress_bar()
    for task, env_spec in tasks:
        if task.name not in task_names():
            register_task(task)
        if env_spec.id not in gym.registry:
            gym.registry[env_spec.id] = env_spec


def plan(config: BenchConfig) -> list[Cell]:
    """The cells of ``config``, seed-major, after checking every name, level, setting and budget (nothing is built
    but one env per task, to read its episode length)."""
    import gymnasium as gym

    import textgym  # noqa: F401  (registers the envs and their tasks)
    from textgym.tasks import get_task, task_names

    names = list(config.tasks) if config.tasks is not None else task_names()
    if not names:
        raise ValueError("No benchmark tasks are registered (textgym.tasks.register_task); nothing to run.")
    unknown = {}
    for name in dict.fromkeys([*names, *config.levels]):
        try:
            get_task(name)  # a registered task, or one built on demand (rg:DATASET)
        except KeyError as err:
            unknown[name] = err.args[0]
    if unknown:
        raise ValueError(" ".join(unknown.values()))
    cells: list[Cell] = []
    for name in names:
        task = get_task(name)
        level = task.check_level(config.levels.get(name))
        if "oracle" in config.algorithms and task.solver is None:
            raise ValueError(f"Task {name!r} has no scripted solver, so 'oracle' cannot run on it; leave one out.")
        env = gym.make(task.env_id, split="train", level=level, model=config.model, **judge_kwargs(task, config.model))
        max_steps = getattr(getattr(env.unwrapped, "episodes", None), "max_steps", None)
        env.close()
        for algorithm in config.algorithms:
            hparams = hparams_for(name, algorithm, config.quick, config.hparams.get(algorithm))
            for key in TRAIN_ENV_KEYS:  # the training env's shaping rewards, which only multi-turn tasks pay
                if key in hparams and not (task.multi_turn and ALGORITHMS[algorithm].trains):
                    raise ValueError(
                        f"{algorithm}.{key}: only an algorithm that trains takes a {key.replace('_', ' ')}, and only "
                        f"on a multi-turn task ({name!r} is {'multi-turn' if task.multi_turn else 'single-turn'})."
                    )
            needed = ALGORITHMS[algorithm].tokens_per_update(hparams, max_steps)
            if 1 < config.budget_tokens < needed:
                raise ValueError(
                    f"budget_tokens={config.budget_tokens} is smaller than one update of {algorithm} on {name} "
                    f"(up to {needed} env tokens with {_update_size(hparams)}). Raise the budget, or make the "
                    "updates smaller."
                )
            cells += [
                Cell(task, level, algorithm, seed, config.model, hparams, config.device, config.budget_tokens)
                for seed in range(config.seeds)
            ]
    # Seed by seed: a run stopped part-way (a sitting) holds every task × algorithm of its first seeds.
    return sorted(cells, key=lambda cell: cell.seed)


def run_cell(cell: Cell, config: BenchConfig) -> list[dict[str, Any]]:
    """Train ``cell``'s algorithm through the budget, evaluating at each point; one row per point.

    The cell is evaluated before any training in any case (at budget fraction 0, which for best-of-n is n = 1): its
    ``start_reward`` and ``start_gold_score``, from which the over-optimisation plots measure gains.
    """
    from agents.bench.evaluation import TestSet, completion_metrics

    start = time.perf_counter()
    algorithm = ALGORITHMS[cell.algorithm](cell)
    test: TestSet | None = None
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] | None = None
    start_scores: dict[str, float] = {}
    try:
        test = cell.test_set(config.eval_episodes)
        for fraction in sorted({0.0, *config.eval_points}):
            target = round(fraction * config.budget_tokens)
            algorithm.train_until(target)
            if metrics is None or algorithm.varies_over_points:
                eval_start = time.perf_counter()
                episodes = algorithm.test_episodes(test, fraction)
                metrics = completion_metrics(episodes.batch, test.reference, episodes.kl)
                metrics.pop("completion_tokens")
                metrics["samples_per_prompt"] = episodes.samples_per_prompt
                metrics["eval_seconds"] = time.perf_counter() - eval_start
            if fraction == 0:
                start_scores = {"start_reward": metrics["reward"], "start_gold_score": metrics["gold_score"]}
            if fraction not in config.eval_points:
                continue
            rows.append(
                {
                    "task": cell.task.name,
                    "level": cell.level,
                    "algorithm": cell.algorithm,
                    "seed": cell.seed,
                    "setting": setting_id(cell, config),
                    "model": str(cell.model),
                    "point": config.eval_points.index(fraction),
                    "budget_fraction": fraction,
                    "budget_tokens": config.budget_tokens,
                    "target_tokens": target if algorithm.trains else 0,
                    "train_tokens": algorithm.train_tokens,
                    **metrics,
                    "normalized_score": cell.task.normalized(metrics["gold_score"], cell.level),
                    **start_scores,
                    "train_seconds": algorithm.train_seconds,
                    "train_tokens_per_s": (
                        algorithm.train_tokens / algorithm.train_seconds if algorithm.train_seconds else float("nan")
                    ),
                    "wall_seconds": time.perf_counter() - start,
                    "eval_episodes": config.eval_episodes,
                }
            )
    finally:
        algorithm.close()
        if test is not None:
            test.close()
    return rows


def setting_id(cell: Cell, config: BenchConfig) -> str:
    """A short hash of everything that determines a cell's results except its seed."""
    spec = {
        "task": cell.task.name,
        "level": cell.level,
        "algorithm": cell.algorithm,
        "model": str(cell.model),
        "hparams": cell.hparams,
        "budget_tokens": config.budget_tokens,
        "eval_points": list(config.eval_points),
        "eval_episodes": config.eval_episodes,
    }
    if cell.env_kwargs:  # the tiny judges: not the cells of earlier versions, which judged with the embedded model
        spec["env_kwargs"] = cell.env_kwargs
    if cell.task.revision:  # a new gold: not the cells judged by the old one
        spec["revision"] = cell.task.revision
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cell_file(cell: Cell, config: BenchConfig) -> str:
    return f"{cell.task.name}_L{cell.level}_{cell.algorithm}_seed{cell.seed}_{setting_id(cell, config)}.csv"


def read_runs(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every finished cell's rows in ``out``, numbers parsed, in a stable order."""
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(out) / CELLS_DIR).glob("*.csv")):
        with path.open(newline="") as f:
            rows += [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    # Cells written before the start_* columns existed: their start is their budget-fraction-0 row, if any.
    starts = {(r["setting"], r["seed"]): r for r in rows if r["budget_fraction"] == 0}
    for r in rows:
        if r.get("start_reward") in (None, ""):
            start = starts.get((r["setting"], r["seed"]), {})
            r.update({f"start_{key}": start.get(key, float("nan")) for key in ("reward", "gold_score")})
    order = {name: i for i, name in enumerate(ALGORITHMS)}  # tables list algorithms in ALGORITHMS' order
    return sorted(
        rows, key=lambda r: (r["task"], r["level"], order.get(r["algorithm"], 99), r["setting"], r["seed"], r["point"])
    )


def _claim(out: Path, config: BenchConfig) -> None:
    """Make ``out`` hold ``config``: resume it, or append it with ``config.append``; refuse anything else."""
    manifest = out / MANIFEST
    mine = json.loads(json.dumps(config.identity()))  # as it reads back from JSON (tuples become lists)
    if manifest.exists():
        configurations = json.loads(manifest.read_text())["configurations"]
        if mine in configurations:
            return
        if not config.append:
            theirs = configurations[-1]
            differ = ", ".join(f"{k} {theirs.get(k)!r} → {mine[k]!r}" for k in mine if theirs.get(k) != mine[k])
            raise FileExistsError(
                f"{out} holds a benchmark of another configuration (differing in {differ}). Nothing was changed. "
                "Choose another output folder, run the same configuration to resume, or pass --append "
                "(append=True) to add this configuration's cells to the folder."
            )
        configurations.append(mine)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no benchmark ({MANIFEST}); choose another output folder.")
    else:
        configurations = [mine]
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, {"configurations": configurations})


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` so that a crash leaves either the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _number(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _update_size(hparams: dict[str, Any]) -> str:
    keys = ("batch_size", "n_steps", "num_envs")
    return ", ".join(f"{k}={hparams[k]}" for k in keys if k in hparams) or "its settings"
