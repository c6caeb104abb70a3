"""One smoke test per example script, on the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    "script, extra",
    [
        ("demo.py", ["--episodes", "3", "--num-envs", "2"]),
        ("random_agent.py", []),
        ("instructgpt_pipeline.py", ["--episodes", "16", "--sft-examples", "8"]),
        ("multiturn.py", ["--episodes", "64"]),
    ],
)
def test_example_runs(tiny_model_dir, tmp_path, script, extra):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--model", tiny_model_dir, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # where an example writes its runs/
    )
    assert result.returncode == 0, result.stderr
    assert "reward" in result.stdout
