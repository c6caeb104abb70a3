"""How long a benchmark will take: each cell's expected hours, before anything runs (``textgym bench --estimate``).

A cell's time comes from what has been measured, in this order:

* *done*: the cell's file is in the output folder (nothing left to run);
* *measured*: other seeds of the same setting have finished in the output folder: their mean wall time;
* *probe*: otherwise one seed of the setting is timed here on a short probe: loading the models and test set,
  one evaluation, and one update of a training algorithm. Its time is extrapolated linearly:
  ``setup + ⌈budget / probe update's tokens⌉ × (probe update) + evaluations × (probe evaluation)``, which leaves
  out how updates and completions change length over training, and best-of-n's later (cheaper) evaluations.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from agents.bench.algorithms import ALGORITHMS, Cell
from agents.bench.runner import CELLS_DIR, BenchConfig, cell_file, plan, read_runs, setting_id


@dataclass
class Estimate:
    """One cell's expected hours, and what they rest on (``"done"``, ``"measured ..."`` or ``"probe ..."``)."""

    cell: Cell
    hours: float
    basis: str


def estimate(config: BenchConfig) -> list[Estimate]:
    """Each cell of ``config`` with its expected hours, probing settings that nothing measured yet; writes nothing."""
    import torch

    out = Path(config.out)
    cells = plan(config)
    threads = torch.get_num_threads()
    if config.workers > 1:
        torch.set_num_threads(1)  # probe as a worker runs: one thread
    try:
        return _estimates(cells, config, out)
    finally:
        torch.set_num_threads(threads)


def _estimates(cells: list[Cell], config: BenchConfig, out: Path) -> list[Estimate]:
    done = {path.name for path in (out / CELLS_DIR).glob("*.csv")}
    walls = defaultdict(list)  # setting → wall seconds of each finished seed (at the last point: the whole cell)
    for row in read_runs(out):
        if row["budget_fraction"] == 1:
            walls[row["setting"]].append(row["wall_seconds"])
    probes: dict[str, tuple[float, str]] = {}
    estimates = []
    for cell in cells:
        setting = setting_id(cell, config)
        if cell_file(cell, config) in done:
            estimates.append(Estimate(cell, 0.0, "done"))
        elif walls.get(setting):
            seconds = walls[setting]
            basis = f"measured: mean of {len(seconds)} finished seed(s)"
            estimates.append(Estimate(cell, sum(seconds) / len(seconds) / 3600, basis))
        else:
            if setting not in probes:
                probes[setting] = probe(cell, config)
            seconds, basis = probes[setting]
            estimates.append(Estimate(cell, seconds / 3600, basis))
    return estimates


def probe(cell: Cell, config: BenchConfig) -> tuple[float, str]:
    """Time ``cell``'s set-up, one evaluation and one update; the seconds the whole cell should take, and how."""
    from agents.bench.evaluation import completion_metrics

    start = time.perf_counter()
    algorithm, test = ALGORITHMS[cell.algorithm](cell), None
    try:
        test = cell.test_set(config.eval_episodes)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        episodes = algorithm.test_episodes(test, 0.0)
        completion_metrics(episodes.batch, test.reference, episodes.kl)
        evaluation = time.perf_counter() - start
        if not algorithm.trains:  # evaluated once (best-of-n: its pool of samples, the bulk of its time)
            return setup + evaluation, f"probe: set-up {setup:.0f} s + one evaluation {evaluation:.0f} s"
        algorithm.train_until(1)  # one update
    finally:
        algorithm.close()
        if test is not None:
            test.close()
    updates = math.ceil(config.budget_tokens / algorithm.train_tokens)  # training runs whole updates
    evaluations = len({0.0, *config.eval_points})
    seconds = setup + updates * algorithm.train_seconds + evaluations * evaluation
    return seconds, (
        f"probe: set-up {setup:.0f} s + {updates} update(s) × {algorithm.train_seconds:.1f} s (one update of "
        f"{algorithm.train_tokens} tokens timed, extrapolated) + {evaluations} evaluations × {evaluation:.0f} s"
    )


def format_estimates(estimates: list[Estimate], workers: int = 1) -> str:
    """One line per cell, then the total (and, with several workers, the wall time if they stay busy)."""
    lines = [f"{'task':<18} {'level':>5} {'algorithm':<18} {'seed':>4} {'hours':>8} {'(s)':>7}  basis"]
    for e in estimates:
        c, seconds = e.cell, e.hours * 3600
        lines.append(
            f"{c.task.name:<18} {c.level:>5} {c.algorithm:<18} {c.seed:>4} {e.hours:>8.3f} {seconds:>7.0f}  {e.basis}"
        )
    total = sum(e.hours for e in estimates)
    lines.append(f"total: {total:.2f} hours of cells left ({sum(e.basis != 'done' for e in estimates)} cells)")
    if workers > 1:
        longest = max((e.hours for e in estimates), default=0.0)
        lines.append(f"with {workers} workers: about {max(total / workers, longest):.2f} hours, if each keeps its pace")
    return "\n".join(lines)
