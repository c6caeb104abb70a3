"""Encoder–decoder (T5) policies in the agents: they learn a small task, their passes agree with the rollout
engine's, SFT teaches what the env then samples, runs save and resume (and in several processes), the command
line; LoRA: tests/test_agents.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic_task import WORDS
from test_agents import make_envs

import textgym  # noqa: F401
from agents import GRPO, PPO, RLOO, SFT
from agents.cli import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")


# Seed 0, 800 episodes (25 iterations of 32), β = 0.01: 25-45 s each on one CPU thread.
@pytest.mark.parametrize("algo", [PPO, GRPO])
def test_learns_synthetic_task_to_90_percent_of_max(words_t5_dir, algo):
    agent = algo(words_t5_dir, make_envs(words_t5_dir), batch_size=32, minibatch_size=16, learning_rate=3e-3,
                 kl_coef=0.01)  # fmt: skip
    agent.learn(800, progress_bar=False)
    rewards = [h["rollout/reward_mean"] for h in agent.history]
    assert rewards[0] < 0.2  # the untrained policy is near random
    assert np.mean(rewards[-3:]) >= 0.9, rewards[-10:]
    assert agent.history[-1]["train/kl_ref"] > 1  # it moved away from the reference to get there


def test_training_pass_reproduces_sampling_logprobs_with_shared_prompts(words_t5_dir):
    """A GRPO batch: groups share a prompt, so the encoder runs once a group; every row's log-prob is the one the
    rollout engine sampled with, and before any update the reference's and the value head's shape follow."""
    agent = GRPO(words_t5_dir, make_envs(words_t5_dir), batch_size=16, group_size=4, temperature=0.7)
    batch = agent.collect()
    width = batch.completion_ids.shape[1]
    encoded = []
    hook = agent.policy.lm.get_encoder().register_forward_hook(lambda m, i, o: encoded.append(len(o[0])))
    with torch.no_grad():
        out = agent.policy.evaluate(batch.input_ids, batch.attention_mask, width, temperature=0.7)
    hook.remove()
    assert encoded == [len(set(batch.prompts))]  # one encoder row a distinct prompt
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(out.logprobs[mask], batch.logprobs[mask], atol=1e-4, rtol=0)
    ref = agent.policy.reference_logprobs(batch.input_ids, batch.attention_mask, width, temperature=0.7)
    torch.testing.assert_close(ref[mask], out.logprobs[mask])
    ppo = PPO(words_t5_dir, make_envs(words_t5_dir), batch_size=16)
    with torch.no_grad():
        values = ppo.policy.evaluate(batch.input_ids, batch.attention_mask, width, with_values=True).values
    assert values.shape == batch.completion_ids.shape  # the value head reads the decoder's states


def test_sft_teaches_what_the_env_then_samples(words_t5_dir, tmp_path):
    """SFT teacher-forces the decoder on the reply; greedy rollouts in the env then write exactly the replies."""
    from agents import RolloutCollector, SamplingConfig
    from textgym.lm.models import load_lm

    data = [{"prompt": f"say {word}", "completion": f"{word} {word}"} for word in WORDS[:4]]
    sft = SFT(words_t5_dir, data, epochs=60, batch_size=4, learning_rate=1e-2, chat_template=False)
    before = sft.evaluate()
    sft.learn(progress_bar=False)
    assert sft.evaluate() < 0.05 < before
    sft.save(tmp_path / "sft")
    collector = RolloutCollector(load_lm(tmp_path / "sft"), make_envs(str(tmp_path / "sft"), num_envs=4),
                                 SamplingConfig(top_k=1))  # fmt: skip
    batch = collector.collect_prompts([d["prompt"] for d in data])
    assert batch.completions == [d["completion"] for d in data]


@pytest.mark.parametrize("algo", [PPO, GRPO, RLOO])
def test_resume_continues_a_run(words_t5_dir, tmp_path, algo):
    """T5 ties its embeddings to ``shared``: the checkpoint holds one copy, and resuming loads it exactly."""
    settings = {"batch_size": 8, "minibatch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 2}
    first = algo(words_t5_dir, make_envs(words_t5_dir, 4), run_dir=tmp_path, **settings)
    first.learn(32, progress_bar=False)
    again = algo(words_t5_dir, make_envs(words_t5_dir, 4), run_dir=tmp_path, **settings)
    again.learn(32, resume=True, progress_bar=False)  # nothing left to do: the weights are the checkpoint's
    for name, tensor in first.policy.state_dict().items():
        torch.testing.assert_close(again.policy.state_dict()[name], tensor, atol=0, rtol=0)
    again.learn(48, resume=True, progress_bar=False)
    assert (again.iteration, again.episodes_seen) == (6, 48)


def test_cli_trains_an_encoder_decoder_directory(t5_model_dir, tmp_path, capsys):
    """``textgym train --model DIR`` on a T5 directory with the embedded tokenizer (a local flan-t5-small's layout):
    SFT, then GRPO from its output; the saved model is an encoder–decoder again."""
    from textgym.lm.models import is_encoder_decoder

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Say something kind.", "completion": "You are great."}) + "\n")
    sft_dir = tmp_path / "sft"
    assert train_main(["--algo", "sft", "--model", t5_model_dir, "--data", str(data), "--out", str(sft_dir)]) == 0
    env_kwargs = json.dumps({"max_new_tokens": 4, "prompts": ["Say something kind."], "reward_model": "vader"})
    args = ["--algo", "grpo", "--model", str(sft_dir), "--num-envs", "4", "--total-episodes", "8"]
    args += ["--env-kwargs", env_kwargs, "--out", str(tmp_path / "grpo"), "--set", "batch_size=8"]
    assert train_main(args) == 0
    assert is_encoder_decoder(tmp_path / "grpo" / "final")
    assert "mean reward" in capsys.readouterr().out


@pytest.mark.parametrize(("scenario", "algo"), [("update", "grpo"), ("update_fsdp", "ppo")])
def test_two_processes_take_the_single_process_step(words_t5_dir, tmp_path, scenario, algo):
    """tests/test_distributed.py's check on a T5: 2 processes (with FSDP: each holding half of the weights) take the
    step one process takes on the whole batch. A group's shared encoder pass runs per process, so the sums run in
    another order, which Adam's first steps at lr 1e-2 magnify in the smallest gradients (up to 3e-5 seen)."""
    from test_distributed import assert_ok, assert_same_weights, launch, rank_result, weights

    single, double = tmp_path / "single", tmp_path / "double"
    assert_ok(launch(single, scenario, words_t5_dir, str(single), algo, processes=1))
    assert_ok(launch(double, scenario, words_t5_dir, str(double), algo))
    assert_same_weights(weights(double, 0), weights(double, 1), atol=0)  # the replicas stay identical
    assert_same_weights(weights(double, 0), weights(single, 0), atol=1e-4)
    expected, got = rank_result(single, 0), rank_result(double, 0)
    for name in ("train/policy_loss", "train/entropy", "train/approx_kl", "train/grad_norm"):
        assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


def test_the_vllm_backend_refuses_an_encoder_decoder(words_t5_dir):
    with pytest.raises(ValueError, match="encoder-decoder policy samples with rollout_backend='engine'"):
        GRPO(words_t5_dir, make_envs(words_t5_dir), batch_size=8, group_size=4, rollout_backend="vllm")
