"""Where a training run writes what happened: TensorBoard, a CSV of metrics, and sample completions."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any


class RunLog:
    """Appends one row of metrics per iteration to ``progress.csv`` and TensorBoard, samples to a JSONL.

    Resuming a run appends to the same files, so nothing logged before the interruption is lost. Metric names
    follow Stable-Baselines3 (``rollout/...``, ``train/...``, ``time/...``).
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "progress.csv"
        self.samples_path = self.run_dir / "samples.jsonl"
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step`` (episodes seen so far)."""
        row = {"episodes": step, **metrics}
        columns = self._columns()
        if columns is not None and columns != list(row):
            raise ValueError(f"{self.csv_path} has columns {columns}, but this run logs {list(row)}.")
        with self.csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if columns is None:
                writer.writeheader()
            writer.writerow(row)
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def log_samples(self, step: int, prompts: list[str], completions: list[str], rewards: list[float]) -> None:
        with self.samples_path.open("a") as f:
            for prompt, completion, reward in zip(prompts, completions, rewards):
                record = {"episodes": step, "prompt": prompt, "completion": completion, "reward": reward}
                f.write(json.dumps(record) + "\n")

    def truncate(self, step: int) -> None:
        """Drop rows logged after ``step``: a resumed run repeats the iterations after its last checkpoint."""
        for path, read in ((self.csv_path, _csv_step), (self.samples_path, _jsonl_step)):
            if not path.exists():
                continue
            lines = path.read_text().splitlines(keepends=True)
            header = lines[:1] if path == self.csv_path else []
            kept = header + [line for line in lines[len(header) :] if read(line) <= step]
            _atomic_write(path, "".join(kept))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _columns(self) -> list[str] | None:
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return None
        with self.csv_path.open(newline="") as f:
            return next(csv.reader(f))


def _csv_step(line: str) -> int:
    return int(float(line.split(",", 1)[0]))


def _jsonl_step(line: str) -> int:
    return int(json.loads(line)["episodes"])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    _atomic_write(Path(path), json.dumps(data, indent=2))
