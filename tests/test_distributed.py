"""Data-parallel training: 2 processes (torchrun, gloo on the CPU) take the step one process takes on the whole
batch, only rank 0 writes, resume is exact, and bad set-ups fail on every rank.

Each test launches tests/distributed_worker.py under torchrun (and alone, for the single-process reference);
the worker leaves what each rank saw under the output folder.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]


def launch(out: Path, *args: str, processes: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the worker under torchrun with ``processes`` processes (alone when 1); the outputs go to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TEXTGYM_DIST_TIMEOUT": "60",  # a test that hangs fails within a minute
    }
    if processes == 1:
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        command = [sys.executable, str(WORKER)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command.append(str(WORKER))
    return subprocess.run(
        [*command, args[0], *args[1:]], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def rank_result(out: Path, rank: int) -> dict:
    path = out / f"rank{rank}.json"
    assert path.exists(), f"rank {rank} left no result in {out}"
    return json.loads(path.read_text())


def weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def logged(run_dir: Path) -> list[dict[str, str]]:
    """The rows of ``progress.csv`` without the timings."""
    with (run_dir / "progress.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("scenario", "algo"),
    [
        ("update", "ppo"),
        ("update", "grpo"),
        ("update", "rloo"),
        ("update_fsdp", "ppo"),
        ("update_fsdp", "grpo"),
        ("update_fsdp_microbatches", "grpo"),
    ],
)
def test_two_processes_take_the_single_process_step(words_model_dir, tmp_path, scenario, algo):
    """One update (2 epochs of minibatches of 4, reward normalisation on) on a batch of 8: each of 2 processes
    trains on its 4 episodes (with FSDP: holding half of the weights), one process on all 8; the weights and
    the logged losses agree."""
    single, double = tmp_path / "single", tmp_path / "double"
    assert_ok(launch(single, scenario, words_model_dir, str(single), algo, processes=1))
    assert_ok(launch(double, scenario, words_model_dir, str(double), algo))
    before = weights(single, 0)
    assert_same_weights(weights(double, 0), weights(double, 1), atol=0)  # the replicas stay identical
    # A process runs a group's shared prompt once for its own rows of the group, one process for all of them:
    # the sums run in another order, and Adam's first steps magnify that in the smallest gradients.
    assert_same_weights(weights(double, 0), before, atol=1e-6 if algo == "ppo" else 1e-5)
    expected, got = rank_result(single, 0), rank_result(double, 0)
    metrics = ("policy_loss", "entropy", "clip_fraction", "approx_kl", "grad_norm", "kl_coef", "sampler_logprob_error")
    metrics += ("tis_ratio_mean", "tis_capped_fraction")  # the drift correction, over both processes' tokens
    for name in (f"train/{m}" for m in metrics):
        assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name
    if scenario.startswith("update_fsdp"):  # the sharded policy saves whole weights that load without textgym
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(double / "model").state_dict()
        for name, tensor in weights(double, 0).items():
            if name.startswith("lm."):
                torch.testing.assert_close(saved[name.removeprefix("lm.")], tensor, atol=0, rtol=0)


@pytest.mark.parametrize("scenario", ["sft", "reward_model"])
def test_two_processes_train_sft_and_reward_models_as_one(words_model_dir, tmp_path, scenario):
    """SFT (batches of 4 examples, the last of 2) and a Bradley–Terry reward model (batches of whole prompts)
    take the single-process steps; the losses each rank reports are the whole batch's."""
    single, double = tmp_path / "single", tmp_path / "double"
    assert_ok(launch(single, scenario, words_model_dir, str(single), processes=1))
    assert_ok(launch(double, scenario, words_model_dir, str(double)))
    assert_same_weights(weights(double, 0), weights(double, 1), atol=0)
    assert_same_weights(weights(double, 0), weights(single, 0), atol=1e-5)
    expected = rank_result(single, 0)["losses"]
    assert rank_result(double, 1)["losses"] == pytest.approx(expected, rel=1e-5)


def test_reward_model_early_stopping_keeps_and_stops_at_rank_0s_epoch_on_every_rank(words_model_dir, tmp_path):
    """The held-out figures pick the epoch to keep and when to stop; scripted to differ by rank, rank 0's decide on
    both (a rank stopping alone would leave the other waiting in a collective until the timeout)."""
    assert_ok(launch(tmp_path, "reward_model_early_stopping", words_model_dir, str(tmp_path)))
    for rank in (0, 1):
        assert rank_result(tmp_path, rank) == {"epochs_run": 4, "best_epoch": 2, "kept": 2}
    assert_same_weights(weights(tmp_path, 0), weights(tmp_path, 1), atol=0)


def test_distributed_run_writes_on_rank_0_only_and_resumes_exactly(words_model_dir, tmp_path):
    resumed, straight, single = tmp_path / "resumed", tmp_path / "straight", tmp_path / "single"
    assert_ok(launch(resumed, "learn", words_model_dir, str(resumed), "grpo", "16"))
    assert json.loads((resumed / "rank1_writes.json").read_text()) == []
    assert any("progress.csv" in w for w in json.loads((resumed / "rank0_writes.json").read_text()))
    run = resumed / "run"
    assert json.loads((run / "latest.json").read_text()) == {"checkpoint": "checkpoint-000002"}
    assert json.loads((run / "checkpoint-000002" / "trainer_state.json").read_text())["world_size"] == 2

    # The two processes' prompts together are the single process's, in order.
    assert_ok(launch(single, "learn", words_model_dir, str(single), "grpo", "16", processes=1))
    shares = rank_result(resumed, 0)["prompts"] + rank_result(resumed, 1)["prompts"]
    assert shares == rank_result(single, 0)["prompts"]
    assert rank_result(resumed, 0)["episodes_seen"] == 16

    # Restarted from its checkpoint, the run ends where an uninterrupted one does.
    assert_ok(launch(resumed, "learn", words_model_dir, str(resumed), "grpo", "24", "resume"))
    assert_ok(launch(straight, "learn", words_model_dir, str(straight), "grpo", "24"))
    assert_same_weights(weights(resumed, 0), weights(straight, 0), atol=0)
    assert logged(run) == logged(straight / "run")  # and logged each iteration once, with the same figures

    # A checkpoint of 2 processes does not resume with 1.
    proc = launch(resumed, "learn", words_model_dir, str(resumed), "grpo", "32", "resume", processes=1)
    assert proc.returncode != 0
    assert "resume it with as many" in rank_result(resumed, 0)["error"]


def test_fsdp_run_resumes_exactly(words_model_dir, tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert_ok(launch(resumed, "learn_fsdp", words_model_dir, str(resumed), "ppo", "16"))
    assert json.loads((resumed / "rank1_writes.json").read_text()) == []
    assert_ok(launch(resumed, "learn_fsdp", words_model_dir, str(resumed), "ppo", "24", "resume"))
    assert_ok(launch(straight, "learn_fsdp", words_model_dir, str(straight), "ppo", "24"))
    assert_same_weights(weights(resumed, 0), weights(straight, 0), atol=0)
    assert logged(resumed / "run") == logged(straight / "run")


def test_a_dead_rank_stops_the_others_and_the_run_resumes(words_model_dir, tmp_path):
    """Rank 1 dies in its second update, the processes started without torchrun's agent (which would kill the
    others itself): rank 0 fails with an error instead of waiting, the first checkpoint is whole, and the run
    resumes from it."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TEXTGYM_DIST_TIMEOUT": "60",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    args = [sys.executable, str(WORKER), "die", words_model_dir, str(tmp_path), "grpo", "24"]
    procs = [subprocess.Popen(args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=ROOT) for r in (0, 1)]
    codes = [p.wait(timeout=180) for p in procs]
    assert codes == [1, 3]  # rank 0 raised (the worker's exit status for an error); rank 1 died
    assert "(rank 0 of 2) If another process failed" in rank_result(tmp_path, 0)["traceback"]
    run = tmp_path / "run"
    assert json.loads((run / "latest.json").read_text()) == {"checkpoint": "checkpoint-000001"}
    assert (run / "checkpoint-000001" / "trainer_state.json").exists()
    assert_ok(launch(tmp_path, "learn", words_model_dir, str(tmp_path), "grpo", "24", "resume"))
    assert rank_result(tmp_path, 1)["episodes_seen"] == 24


def test_torchrun_runs_the_textgym_command(tiny_model_dir, tmp_path):
    """``torchrun -m textgym train`` with FSDP: 2 processes of 2 sub-envs each, rank 0's log and final model."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "textgym"]
    command += ["train", "--algo", "grpo", "--model", tiny_model_dir, "--num-envs", "4", "--total-episodes", "16"]
    command += ["--out", str(out), "--env-kwargs", '{"max_new_tokens": 4}', "--fsdp", "--set", "batch_size=8"]
    command += ["--set", "group_size=2", "--set", "minibatch_size=8", "--set", "tensorboard=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TEXTGYM_DIST_TIMEOUT": "60"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout.count("model saved to") == 1  # printed by rank 0 only
    assert [row["episodes"] for row in logged(out)] == ["8", "16"]
    assert (out / "final" / "model.safetensors").exists()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ("bad_world", "does not split into 2 processes' shares"),
        ("bad_config", "disagree on the configuration"),
    ],
)
def test_bad_setups_fail_on_every_rank(words_model_dir, tmp_path, scenario, message):
    proc = launch(tmp_path, scenario, words_model_dir, str(tmp_path), "grpo", timeout=120)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert message in rank_result(tmp_path, rank)["error"]


def test_fsdp_settings_that_cannot_work_fail_clearly(words_model_dir):
    import gymnasium as gym
    from synthetic_task import NEW_TOKENS

    import textgym  # noqa: F401
    from agents import PPO, PPOConfig

    with pytest.raises(ValueError, match="lora_rank"):
        PPOConfig(fsdp=True, lora_rank=8)
    envs = gym.make_vec("TextGen-v0", num_envs=2, model=words_model_dir, prompts=["say yes"], max_new_tokens=NEW_TOKENS)
    with pytest.raises(ValueError, match="this is one process"):
        PPO(words_model_dir, envs, batch_size=4, minibatch_size=4, fsdp=True)
