"""The embedded SmolLM2-135M-Instruct end to end: converted from its GGUF once, then used by env and engine."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import textgym  # noqa: F401
from agents import RolloutCollector
from textgym.lm.models import load_causal_lm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_causal_lm()


def test_default_env_needs_no_arguments():
    env = gym.make("TextGen-v0")
    obs, info = env.reset(seed=0)
    assert env.action_space.n == 49152 and obs["input_ids"].shape == (64 + 32,)
    assert info["prompt"] in env.unwrapped.episodes.prompts
    obs, reward, terminated, truncated, _ = env.step(5)  # not EOS (2)
    assert obs["input_ids"][64] == 5 and obs["attention_mask"][64] == 1
    assert (reward, terminated, truncated) == (0.0, False, False)


def test_converted_weights_still_know_things(smollm):
    tokenizer = gym.make("TextGen-v0").unwrapped.tokenizer
    encoded = tokenizer("The capital of France is", return_tensors="pt")
    out = smollm.generate(**encoded, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, encoded["input_ids"].shape[1] :])


def test_chat_template_prompts(smollm):
    env = gym.make("TextGen-v0", chat_template=True)
    obs, _ = env.reset(options={"prompt": "Say something kind."})
    text = env.unwrapped.tokenizer.decode(obs["input_ids"][obs["attention_mask"] == 1])
    assert text.endswith("<|im_start|>assistant\n") and "Say something kind." in text


def test_rollout_engine_on_the_real_model(smollm, teacher_forced):
    envs = gym.make_vec("TextGen-v0", num_envs=3, max_new_tokens=10)
    batch = RolloutCollector(smollm, envs, seed=0).collect(3)
    torch.testing.assert_close(batch.logprobs, teacher_forced(smollm, batch), atol=2e-3, rtol=2e-3)
    assert all(any(ch.isalpha() for ch in text) for text in batch.completions)
    assert all(-1.0 <= score <= 1.0 for score in batch.returns.tolist())
