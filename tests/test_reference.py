"""The env's reference model: KL-shaped rewards, top-k/top-p action masks, batched in the vector env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv

import textgym  # noqa: F401


def settings(model_dir, **extra):
    return {"model": model_dir, "max_prompt_tokens": 16, "max_new_tokens": 6, "prompt_truncation": "left", **extra}


def reference_logprob(model, obs, action):
    """log π_ref(action | context) from one full forward pass over the observed context."""
    ids = torch.as_tensor(obs["input_ids"])[None]
    mask = torch.as_tensor(obs["attention_mask"])[None]
    last = int(np.flatnonzero(obs["attention_mask"])[-1])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    return torch.log_softmax(logits[0, last].float(), -1)[action].item()


def test_kl_shaped_reward_is_the_reference_log_prob(tiny_model_dir, tiny_policy):
    env = gym.make("TextGen-v0", **settings(tiny_model_dir, reference_model=tiny_model_dir, kl_coef=0.5))
    rng = np.random.default_rng(0)
    for episode in range(3):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            action = int(rng.integers(3, env.action_space.n))
            expected = reference_logprob(tiny_policy, obs, action)  # tiny_policy has the same weights
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            assert info["ref_logprob"] == pytest.approx(expected, abs=1e-4)
            assert info["kl_reward"] == pytest.approx(0.5 * info["ref_logprob"])
            assert reward == pytest.approx(info["kl_reward"] + info.get("score", 0.0))


def test_vector_env_scores_like_single_envs(tiny_model_dir):
    kw = settings(tiny_model_dir, reference_model=tiny_model_dir, kl_coef=1.0, stop_token_ids=list(range(3, 30)))
    mine = gym.make_vec("TextGen-v0", num_envs=4, **kw)
    reference = SyncVectorEnv([lambda: gym.make("TextGen-v0", **kw) for _ in range(4)])
    mine.reset(seed=7)
    reference.reset(seed=7)
    rng = np.random.default_rng(1)
    for _ in range(30):
        actions = rng.integers(0, mine.single_action_space.n, size=4)
        a, b = mine.step(actions), reference.step(actions)
        assert np.array_equal(a[0]["input_ids"], b[0]["input_ids"])
        np.testing.assert_allclose(a[1], b[1], atol=1e-4)
        assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])


@pytest.mark.parametrize(("mask", "extra"), [("top_k", {"top_k": 5}), ("top_p", {"top_p": 0.3})])
def test_action_masks_follow_the_reference(tiny_model_dir, tiny_policy, mask, extra):
    env = gym.make("TextGen-v0", **settings(tiny_model_dir, reference_model=tiny_model_dir, action_mask=mask, **extra))
    obs, _ = env.reset(seed=0)
    eos = env.unwrapped.tokenizer.eos_token_id
    for _ in range(4):
        allowed = env.unwrapped.action_masks()
        assert allowed.shape == (env.action_space.n,) and allowed[eos]
        logprobs = np.array([reference_logprob(tiny_policy, obs, a) for a in range(env.action_space.n)])
        ranked = np.argsort(-logprobs)
        if mask == "top_k":
            expected = set(ranked[:5].tolist())
        else:  # the smallest most-likely prefix whose probability reaches top_p
            reach = int(np.searchsorted(np.cumsum(np.exp(logprobs[ranked])), 0.3)) + 1
            expected = set(ranked[:reach].tolist())
        assert set(np.flatnonzero(allowed).tolist()) - {eos} == expected - {eos}

        forbidden = int(np.flatnonzero(~allowed)[0])
        with pytest.raises(ValueError, match="not allowed"):
            env.step(forbidden)
        choice = int(np.flatnonzero(allowed & (np.arange(len(allowed)) != eos))[0])
        obs, *_ = env.step(choice)  # the env is still usable after the refused action


def test_vector_masks_are_batched(tiny_model_dir):
    kw = settings(tiny_model_dir, reference_model=tiny_model_dir, action_mask="top_k", top_k=3)
    envs = gym.make_vec("TextGen-v0", num_envs=3, **kw)
    envs.reset(seed=0)
    masks = envs.action_masks()
    assert masks.shape == (3, envs.single_action_space.n)
    assert (masks.sum(axis=1) <= 4).all()  # three tokens, plus EOS when it is not among them
    envs.step(np.array([np.flatnonzero(row)[0] for row in masks]))


def test_env_checkers_pass_with_a_reference(tiny_model_dir):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    kw = settings(tiny_model_dir, reference_model=tiny_model_dir, kl_coef=0.1)
    check_env(gym.make("TextGen-v0", **kw).unwrapped)
    sb3_check_env(gym.make("TextGen-v0", **kw).unwrapped)


def test_bad_reference_settings_fail_at_construction(tiny_model_dir, tmp_path):
    from textgym.lm.models import make_tiny_model

    with pytest.raises(ValueError, match="need a reference model"):
        gym.make("TextGen-v0", **settings(tiny_model_dir, action_mask="top_k"))
    with pytest.raises(ValueError, match="need a reference model"):
        gym.make("TextGen-v0", **settings(tiny_model_dir, kl_coef=0.1))
    with pytest.raises(ValueError, match="top_k"):
        gym.make("TextGen-v0", **settings(tiny_model_dir, reference_model=tiny_model_dir, action_mask="top_k", top_k=0))
    with pytest.raises(ValueError, match="top_p"):
        gym.make("TextGen-v0", **settings(tiny_model_dir, reference_model=tiny_model_dir, action_mask="top_p", top_p=2))
    with pytest.raises(ValueError, match="action_mask must be"):
        gym.make("TextGen-v0", **settings(tiny_model_dir, reference_model=tiny_model_dir, action_mask="nucleus"))
    other = str(make_tiny_model(tmp_path / "words", words=["yes", "no"]))
    with pytest.raises(ValueError, match="another tokenizer"):
        gym.make("TextGen-v0", **settings(tiny_model_dir, reference_model=other))


def test_vector_env_first_reset_of_some_sub_envs(tiny_model_dir, tiny_policy):
    """A first reset of only some sub-envs, masks asked for, then the others reset and all stepped together."""
    kw = settings(tiny_model_dir, reference_model=tiny_model_dir, kl_coef=1.0, action_mask="top_k", top_k=512)
    envs = gym.make_vec("TextGen-v0", num_envs=3, autoreset_mode="disabled", **kw)
    obs, _ = envs.reset(seed=0, options={"reset_mask": np.array([True, False, True])})
    envs.unwrapped.action_masks()
    obs, _ = envs.reset(options={"reset_mask": np.array([False, True, False])})
    actions = np.array([7, 8, 9])
    _, _, _, _, infos = envs.step(actions)
    for row in range(3):
        single = {key: value[row] for key, value in obs.items()}
        expected = reference_logprob(tiny_policy, single, actions[row])
        assert infos["ref_logprob"][row] == pytest.approx(expected, abs=1e-4)
