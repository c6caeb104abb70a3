"""Smoke test of the reward-model example, on the tiny model (a length gold: the tiny LM writes gibberish)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_train_reward_model_example_runs(tiny_model_dir, tmp_path):
    args = ["--model", tiny_model_dir, "--num-prompts", "24", "--epochs", "2", "--out", str(tmp_path / "rm")]
    gold = ["--gold", "length", "--gold-kwargs", '{"target": 4}']
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_reward_model.py"), *args, *gold],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "held-out accuracy vs the gold reward" in result.stdout and "learned reward" in result.stdout
    assert (tmp_path / "rm" / "head.safetensors").is_file()
