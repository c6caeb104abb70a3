"""The benchmark runner: algorithms × textgym's tasks × seeds under one token budget (``textgym bench``).

::

    from agents.bench import BenchConfig, run_benchmark

    run_benchmark(BenchConfig(tasks=["positivity"], algorithms=["zero-shot", "best-of-n", "ppo"], seeds=3,
                              budget_tokens=200_000, out="bench/positivity"))

* :mod:`agents.bench.runner`: :class:`BenchConfig`, :func:`run_benchmark`, cells, resuming, ``runs.csv``;
* :mod:`agents.bench.algorithms`: each algorithm behind one interface, and how budgets are counted;
* :mod:`agents.bench.hparams`: every algorithm's default settings and per-task changes, in one table;
* :mod:`agents.bench.evaluation`: test-split sampling and the metrics;
* :mod:`agents.bench.report`: rliable aggregation, ``results.md`` and the plots;
* :mod:`agents.bench.estimate`: each cell's expected hours before a run (``--estimate``).
"""

from __future__ import annotations

from agents.bench.algorithms import ALGORITHMS, DEFAULT_ALGORITHMS
from agents.bench.runner import BenchConfig, read_runs, run_benchmark

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHMS", "BenchConfig", "read_runs", "run_benchmark"]
