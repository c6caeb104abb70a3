"""Stable-Baselines3 with an encoder–decoder (T5) LM policy: the policy's log-probs are the model's, unmodified SB3
PPO learns and A2C trains (cached features equal full ones: tests/test_sb3.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from synthetic_task import NEW_TOKENS, yes_rate

import textgym  # noqa: F401
from agents.sb3 import LMActorCriticPolicy, Seq2SeqFeaturesExtractor, TextGenSB3VecEnv, make_sb3_vec_env

pytestmark = pytest.mark.usefixtures("one_thread")


def env_kwargs(model_dir: str, **extra) -> dict:
    return {"model": model_dir, "prompts": ["say yes", "please say yes", "say ok"], "max_prompt_tokens": 4,
            "max_new_tokens": NEW_TOKENS, "reward_model": yes_rate, **extra}  # fmt: skip


def mean_return(model, venv, episodes: int) -> float:
    returns: list[float] = []
    obs = venv.reset()
    while len(returns) < episodes:
        obs, _, _, infos = venv.step(model.predict(obs)[0])
        returns += [info["episode"]["r"] for info in infos if "episode" in info]
    return float(np.mean(returns[:episodes]))


def test_the_policys_distribution_is_the_models_next_token_distribution(words_t5_dir):
    """The features (the decoder's last hidden state, scaled as T5 scales it) through the LM's output layer are the
    model's logits, in rollouts (KV cache) and in training (full passes); cached features: tests/test_sb3.py."""
    venv = TextGenSB3VecEnv("TextGen-v0", num_envs=4, **env_kwargs(words_t5_dir, max_new_tokens=4))
    venv.seed(0)
    policy = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": words_t5_dir}).policy
    assert isinstance(policy.features_extractor, Seq2SeqFeaturesExtractor)
    obs = venv.reset()
    for _ in range(2):
        obs, *_ = venv.step(np.array([5, 6, 7, 8]))
    tensors, _ = policy.obs_to_tensor(obs)
    ints = {key: value.long() for key, value in tensors.items()}
    with torch.no_grad():
        out = policy.features_extractor.lm(**ints)  # the source's padding is masked: no need to pack it
    last = ints["decoder_attention_mask"].sum(1) - 1
    expected = torch.log_softmax(out.logits[torch.arange(4), last], -1)
    for training in (False, True):
        policy.set_training_mode(training)
        with torch.set_grad_enabled(training):
            logits = policy.get_distribution(tensors).distribution.logits
        torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-5)


def test_ppo_learns_the_synthetic_task(words_t5_dir):
    venv = make_sb3_vec_env("TextGen-v0", 8, seed=0, **env_kwargs(words_t5_dir))
    model = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": words_t5_dir}, seed=0, n_steps=32, batch_size=64,
                n_epochs=4, learning_rate=3e-3)  # fmt: skip
    before = mean_return(model, venv, 64)
    model.learn(4096)
    after = mean_return(model, venv, 64)
    assert before < 0.2 and after >= 0.5, (before, after)


def test_a2c_trains_with_training_log_probs_equal_to_the_rollouts_and_saves(words_t5_dir, tmp_path):
    """With a zero learning rate the weights stay, so the log-probs and values SB3 stored while rolling out (eval
    mode, KV cache) must equal those of its training pass (full passes); then a real A2C run moves the value head."""
    venv = make_sb3_vec_env("TextGen-v0", 4, seed=0, **env_kwargs(words_t5_dir))
    model = A2C(LMActorCriticPolicy, venv, policy_kwargs={"model": words_t5_dir}, n_steps=8, learning_rate=0.0, seed=0)
    torch.nn.init.normal_(model.policy.value_net.weight)  # values that depend on the features
    model.learn(32)
    buffer = model.rollout_buffer
    obs = {k: torch.as_tensor(v.reshape(-1, v.shape[-1])) for k, v in buffer.observations.items()}
    values, log_probs, _ = model.policy.evaluate_actions(obs, torch.as_tensor(buffer.actions.reshape(-1)))
    torch.testing.assert_close(log_probs.detach(), torch.as_tensor(buffer.log_probs.reshape(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(values.detach().flatten(), torch.as_tensor(buffer.values.reshape(-1)), atol=1e-5, rtol=0)
    model = A2C(LMActorCriticPolicy, venv, policy_kwargs={"model": words_t5_dir}, n_steps=8, learning_rate=3e-3, seed=0)
    model.learn(64)
    assert model.policy.value_net.weight.abs().sum() > 0  # the critic, zero at the start, learnt
    model.save(tmp_path / "a2c")
    loaded = A2C.load(tmp_path / "a2c", env=venv)
    obs = venv.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
