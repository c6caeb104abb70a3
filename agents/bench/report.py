"""From ``runs.csv``'s rows to ``results.md`` and the plots.

Across seeds, every number is the interquartile mean (IQM) with a 95% stratified-bootstrap confidence interval
from ``rliable`` (Agarwal et al. 2021); with one seed, the value itself and no interval. Plots use matplotlib's
Agg backend and are written next to ``results.md``:

* ``learning_curves.png``: normalised score vs training tokens, one panel per task; algorithms that train
  nothing are dashed horizontal lines;
* ``reward_kl_frontier.png``: normalised score vs KL to the starting model, every evaluation point;
* ``overoptimization_<task>.png``, for each task whose proxy ``score`` and ``gold_score`` differ: the change in
  both from the starting model (each cell's evaluation before training, made whatever the evaluation points) vs
  √KL for best-of-n and each RL algorithm, with Gao et al. (2022)'s functional forms fitted by least squares:
  best-of-n ``d(α − βd)``, RL ``d(α − β log d)``, ``d = √KL``. The same fits of the gold, with the peak they
  imply and 95% intervals from resampling seeds, are a table in ``results.md``
  ([gao_peak_table][agents.bench.report.gao_peak_table]).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRAINED = ("ppo", "grpo", "rloo", "sb3-ppo", "sb3-a2c", "sb3-maskable-ppo")  # over-optimisation panels
Rows = list[dict[str, Any]]


def iqm_ci(values: Sequence[float] | np.ndarray, reps: int) -> tuple[float, float, float]:
    """IQM and its 95% stratified-bootstrap CI of ``values``: one per seed, or ``(seeds, tasks)`` (bootstrapped
    within each task); NaN bounds with one seed."""
    from rliable import library as rly
    from rliable import metrics

    scores = np.asarray(values, dtype=float)
    scores = scores[:, None] if scores.ndim == 1 else scores  # (seeds, tasks)
    if len(scores) == 1 or not np.isfinite(scores).all():
        return float(np.mean(scores)), math.nan, math.nan
    point, interval = rly.get_interval_estimates(
        {"x": scores}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
    )
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def iqm(values: Sequence[float]) -> float:
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(values, dtype=float)[:, None]))


def write_reports(out: str | os.PathLike, rows: Rows, bootstrap_reps: int = 10_000) -> None:
    """Write ``results.md`` and the PNG plots for ``rows`` (as :func:`agents.bench.runner.read_runs` gives them)."""
    out = Path(out)
    if not rows:
        return
    label = _labeller(rows)
    (out / "results.md").write_text(results_markdown(rows, label, bootstrap_reps))
    import matplotlib

    matplotlib.use("Agg")
    plot_learning_curves(rows, label, out / "learning_curves.png")
    plot_frontier(rows, label, out / "reward_kl_frontier.png")
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        if _has_proxy(task_rows):
            plot_overoptimization(task_rows, label, out / f"overoptimization_{task}.png")


def results_markdown(rows: Rows, label: Callable[[dict], str], reps: int) -> str:
    """The task × algorithm tables at the end of the budget."""
    final = [r for r in rows if r["budget_fraction"] == 1.0]
    by_cell = _group(final, lambda r: (r["task"], r["level"], label(r)))
    seeds = sorted({len(v) for v in by_cell.values()})
    lines = [
        "# Benchmark results",
        "",
        f"Model {_one(rows, 'model')}; budget {_one(rows, 'budget_tokens')} env tokens per training algorithm; "
        f"{_one(rows, 'eval_episodes')} test prompts per evaluation; seeds per cell: {', '.join(map(str, seeds))}.",
        "Each entry is the IQM over seeds with its 95% stratified-bootstrap CI in brackets (rliable); with one seed,",
        "the value alone. Normalised score: 0 is the random policy, 100 the task's scripted optimum (gold score).",
        "KL: nats per completion to the starting model (best-of-n: over its n_max samples per prompt, ties included).",
    ]
    tasks = sorted({(task, level) for task, level, _ in by_cell})
    algorithms = list(dict.fromkeys(label(r) for r in final))
    header = " | ".join(f"{t} (level {lv})" for t, lv in tasks)
    several = len(tasks) > 1
    lines += ["", "## Normalised score", "", f"| algorithm | {header} |{' all tasks |' if several else ''}"]
    lines.append("|---" * (len(tasks) + 1 + several) + "|")
    for algo in algorithms:
        cells = [sorted(by_cell.get((t, lv, algo), []), key=lambda r: r["seed"]) for t, lv in tasks]
        scores = [[r["normalized_score"] for r in c] for c in cells]
        entries = [_fmt(*iqm_ci(s, reps)) if s else "–" for s in scores]
        if several:  # IQM over seeds × tasks, where every task has the same number of seeds
            same = len({len(s) for s in scores}) == 1 and scores[0]
            entries.append(_fmt(*iqm_ci(np.array(scores).T, reps)) if same else "–")
        lines.append(f"| {algo} | " + " | ".join(entries) + " |")
    columns = [
        ("normalised score", "normalized_score", True),
        ("gold score", "gold_score", False),
        ("reward", "reward", False),
        ("KL (nats)", "kl", True),
        ("distinct-2", "distinct_2", False),
        ("ref. perplexity", "ref_perplexity", False),
        ("train tokens", "train_tokens", False),
        ("train tokens/s", "train_tokens_per_s", False),
        ("wall time (s)", "wall_seconds", True),
    ]
    for task, level in tasks:
        lines += ["", f"## {task} (level {level})", ""]
        lines.append("| algorithm | " + " | ".join(name for name, _, _ in columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for algo in algorithms:
            cell = by_cell.get((task, level, algo))
            if not cell:
                continue
            entries = []
            for _, key, with_ci in columns:
                values = [r[key] for r in cell]
                entries.append(_fmt(*iqm_ci(values, reps)) if with_ci else _fmt(iqm(values)))
            lines.append(f"| {algo} | " + " | ".join(entries) + " |")
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        if _has_proxy(task_rows):
            lines += ["", *gao_peak_table(task_rows, label, reps)]
    return "\n".join(lines) + "\n"


def plot_learning_curves(rows: Rows, label: Callable[[dict], str], path: Path) -> None:
    """Per task, the normalised score against training env tokens (left) and against training time (right):
    what an algorithm learns per token and per hour of the machine that ran it."""
    import matplotlib.pyplot as plt

    tasks = sorted({(r["task"], r["level"]) for r in rows})
    fig, axes = _panels(2 * len(tasks), columns=2)
    x_axes = (("train_tokens", 1, "training env tokens"), ("train_seconds", 60, "training time (minutes)"))
    for i, (task, level) in enumerate(tasks):
        curves = _curves([r for r in rows if (r["task"], r["level"]) == (task, level)], label)
        for ax, (key, unit, xlabel) in zip(axes[2 * i : 2 * i + 2], x_axes):
            for (algo, points), color in zip(curves.items(), _colors(len(curves))):
                x, y = np.array(points[key]) / unit, points["normalized_score"]
                if points["train_tokens"][-1] == 0:  # trains nothing: its final value as a level line
                    ax.axhline(y[-1], linestyle="--", color=color, label=algo)
                else:
                    ax.plot(x, y, marker="o", color=color, label=algo)
            ax.set(title=f"{task} (level {level})", xlabel=xlabel, ylabel="normalised score (IQM, seeds)")
            _score_axis_from_zero(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(rows: Rows, label: Callable[[dict], str], path: Path) -> None:
    import matplotlib.pyplot as plt

    tasks = sorted({(r["task"], r["level"]) for r in rows})
    fig, axes = _panels(len(tasks))
    for ax, (task, level) in zip(axes, tasks):
        curves = _curves([r for r in rows if (r["task"], r["level"]) == (task, level)], label)
        for (algo, points), color in zip(curves.items(), _colors(len(curves))):
            if _base(algo) == "random":  # uniform tokens sit ~100 nats away: a level line keeps the axis readable
                kl = points["kl"][-1]
                ax.axhline(points["normalized_score"][-1], linestyle="--", color=color, label=f"{algo} (KL {kl:.0f})")
                continue
            ax.plot(points["kl"], points["normalized_score"], marker="o", color=color, label=algo)
        ax.set(
            title=f"{task} (level {level}): reward–KL frontier",
            xlabel="KL to the starting model (nats per completion, IQM)",
            ylabel="normalised score (IQM over seeds)",
        )
        _score_axis_from_zero(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _has_proxy(rows: Rows) -> bool:
    """Whether the training reward (the proxy) differs from the gold: an over-optimisation task."""
    return any(abs(r["reward"] - r["gold_score"]) > 1e-9 for r in rows)


def gao_peak(alpha: float, beta: float, best_of_n: bool) -> tuple[float, float]:
    """The peak ``(d*, gain*)`` of Gao et al.'s form with coefficients ``α, β``; ``(inf, inf)`` when it has none.

    Best-of-n ``d(α − βd)`` peaks at ``d* = α / 2β`` with ``α² / 4β``; RL ``d(α − β log d)`` at
    ``d* = exp(α/β − 1)`` with ``β d*``. Without ``β > 0`` (and, for best-of-n, ``α > 0``) the form rises for ever.
    """
    if beta <= 0 or (best_of_n and alpha <= 0):
        return math.inf, math.inf
    if best_of_n:
        return alpha / (2 * beta), alpha**2 / (4 * beta)
    peak = math.exp(min(alpha / beta - 1, 700.0))  # beyond e^700 the float overflows: no peak within reach
    return peak, beta * peak


def gao_peak_table(rows: Rows, label: Callable[[dict], str], reps: int) -> list[str]:
    """Markdown lines: per algorithm, Gao et al.'s fit of the gold's gain against √KL and the peak it implies.

    Every evaluation point of every seed enters one least-squares fit (as in the plot); the 95% intervals come from
    refitting on seeds drawn with replacement (``min(reps, 2000)`` times), so they need at least two seeds. A peak
    beyond the largest √KL measured is an extrapolation of the fitted form, and the table says so.
    """
    lines = [
        f"## {rows[0]['task']}: where the gold peaks (Gao et al.'s forms)",
        "",
        "Gold gain from the starting model fitted against d = √KL (best-of-n: d(α − βd); RL: d(α − β log d)) over all",
        "seeds' points; brackets: 95% interval from resampling seeds. d*: the peak's √KL; ∞: the fit has no peak.",
        "",
        "| algorithm | seeds | largest d measured | α | β | peak d* | gold gain at the peak | peak measured? |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rng = np.random.default_rng(0)
    for algo in dict.fromkeys(label(r) for r in rows):
        if _base(algo) not in ("best-of-n", *TRAINED):
            continue
        best_of_n = _base(algo) == "best-of-n"
        seeds = [
            (
                np.sqrt(np.clip([r["kl"] for r in cell], 0, None)),
                np.array([r["gold_score"] - r["start_gold_score"] for r in cell]),
            )
            for cell in _group([r for r in rows if label(r) == algo], lambda r: r["seed"]).values()
        ]
        estimate = _fit_peak(seeds, best_of_n)
        if len(seeds) > 1:
            draws = [
                _fit_peak([seeds[i] for i in rng.integers(len(seeds), size=len(seeds))], best_of_n)
                for _ in range(min(reps, 2000))
            ]
            bounds = np.percentile(np.array(draws), [2.5, 97.5], axis=0, method="nearest")  # nearest: ∞ stays ∞
        else:
            bounds = np.full((2, 4), math.nan)
        largest = max(float(d.max()) for d, _ in seeds)
        entries = [_fmt_peak(estimate[i], *bounds[:, i]) for i in range(4)]
        measured = "yes" if estimate[2] <= largest else ("no peak" if math.isinf(estimate[2]) else "no: extrapolated")
        lines.append(f"| {algo} | {len(seeds)} | {largest:.2f} | " + " | ".join(entries) + f" | {measured} |")
    return lines


def _fit_peak(seeds: list[tuple[np.ndarray, np.ndarray]], best_of_n: bool) -> tuple[float, float, float, float]:
    """``(α, β, d*, gain*)`` fitted on the ``(d, gain)`` points of the given seeds together."""
    d = np.concatenate([points[0] for points in seeds])
    gain = np.concatenate([points[1] for points in seeds])
    alpha, beta = fit_gao(d, gain, _bon_form if best_of_n else _rl_form)
    return (alpha, beta, *gao_peak(alpha, beta, best_of_n))


def _fmt_peak(value: float, low: float, high: float) -> str:
    text = "∞" if math.isinf(value) else f"{value:.3g}"
    if math.isnan(low):
        return text
    return f"{text} [{'∞' if math.isinf(low) else f'{low:.3g}'}, {'∞' if math.isinf(high) else f'{high:.3g}'}]"


def plot_overoptimization(rows: Rows, label: Callable[[dict], str], path: Path) -> None:
    """Gold and proxy score gains vs √KL per algorithm, with Gao et al.'s fitted forms (one panel each)."""
    import matplotlib.pyplot as plt

    panels = [a for a in dict.fromkeys(label(r) for r in rows) if _base(a) in ("best-of-n", *TRAINED)]
    if not panels:
        return
    fig, axes = _panels(len(panels), columns=4, size=(5.2, 4.4))
    for ax, algo in zip(axes, panels):
        form = _bon_form if _base(algo) == "best-of-n" else _rl_form
        cell = [r for r in rows if label(r) == algo]
        d = np.sqrt(np.clip([r["kl"] for r in cell], 0, None))
        grid = np.linspace(0, max(d.max(), 1e-6), 100)
        # The proxy (a learned reward's units) on the left axis, the gold (the task's score) on the right: on one
        # axis the proxy's larger scale flattens the gold's curve, whose peak is the point of the plot.
        gold_ax = ax.twinx()
        handles = []
        for axis, key, name, color in (
            (ax, "reward", "proxy", "tab:blue"),
            (gold_ax, "gold_score", "gold", "tab:orange"),
        ):
            gain = np.array([r[key] - r[f"start_{key}"] for r in cell])  # from the cell's own start, before training
            alpha, beta = fit_gao(d, gain, form)
            handles.append(axis.scatter(d, gain, color=color, s=14, alpha=0.7, label=f"{name} (seeds × points)"))
            handles += axis.plot(
                grid, form(grid, alpha, beta), color=color, label=f"{name} fit: α={alpha:.2g}, β={beta:.2g}"
            )
            axis.set_ylabel(f"{name} change from the starting model", color=color)
        ax.set(
            title=f"{algo}: {'d(α − βd)' if form is _bon_form else 'd(α − β log d)'}",
            xlabel="√KL to the starting model (√nats)",
        )
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7)
    fig.suptitle(f"{rows[0]['task']}: over-optimisation\n(proxy = training reward, gold = reported score)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fit_gao(d: np.ndarray, gain: np.ndarray, form: Callable) -> tuple[float, float]:
    """Least-squares ``(α, β)`` of ``gain ≈ form(d, α, β)``; both forms are linear in ``α`` and ``β``."""
    basis = np.stack([form(d, 1.0, 0.0), form(d, 0.0, 1.0)], axis=1)  # (points, 2): the terms of α and of β
    (alpha, beta), *_ = np.linalg.lstsq(basis, gain, rcond=None)
    return float(alpha), float(beta)


def _bon_form(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return d * (alpha - beta * d)


def _rl_form(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)  # d log d → 0 as d → 0


def _curves(rows: Rows, label: Callable[[dict], str]) -> dict[str, dict[str, list[float]]]:
    """Per algorithm, per evaluation point, the IQM over seeds of each plotted column."""
    curves: dict[str, dict[str, list[float]]] = {}
    for algo, cell in _group(rows, label).items():
        points = _group(cell, lambda r: r["point"])
        curves[algo] = {
            key: [iqm([r[key] for r in points[p]]) for p in sorted(points)]
            for key in ("train_tokens", "train_seconds", "normalized_score", "kl")
        }
    return curves


def _labeller(rows: Rows) -> Callable[[dict], str]:
    """Algorithm names, suffixed by the setting hash only where one folder holds several settings of one."""
    settings = defaultdict(set)
    for r in rows:
        settings[(r["task"], r["level"], r["algorithm"])].add(r["setting"])
    several = any(len(s) > 1 for s in settings.values())
    return (lambda r: f"{r['algorithm']} [{r['setting']}]") if several else (lambda r: r["algorithm"])


def _base(label: str) -> str:
    return label.split(" [")[0]


def _group(rows: Rows, key: Callable[[dict], Any]) -> dict[Any, Rows]:
    groups: dict[Any, Rows] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return dict(groups)


def _one(rows: Rows, key: str) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(r[key] for r in rows))


def _fmt(value: float, low: float = math.nan, high: float = math.nan) -> str:
    if math.isnan(value):
        return "–"
    if math.isnan(low):
        return f"{value:.3g}"
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"


def _score_axis_from_zero(ax: Any) -> None:
    """Start a normalised-score axis at 0 (the random policy) or below it, so that small gains look small."""
    ax.set_ylim(bottom=min(ax.get_ylim()[0], 0))


def _panels(n: int, columns: int = 3, size: tuple[float, float] = (6, 4.5)) -> tuple[Any, list]:
    """A figure of ``n`` panels of ``size`` inches, at most ``columns`` a row, and its axes in reading order
    (spare ones hidden)."""
    import matplotlib.pyplot as plt

    ncols, nrows = min(n, columns), math.ceil(n / columns)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i) for i in range(n)]
