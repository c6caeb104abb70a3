"""Every registered env through Gymnasium's and SB3's env checkers, as Gymnasium's tests/envs/test_envs.py does:
an unexpected warning is a failure."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from episodes import run_episode
from gymnasium.utils.env_checker import check_env, data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textgym  # noqa: F401  (registers the envs)

ENV_IDS = sorted(env_id for env_id, spec in gym.registry.items() if str(spec.entry_point).startswith("textgym."))


def tiny_kwargs(env_id: str, model: str) -> dict:
    """Arguments that make ``env_id`` small and fast: the tiny model as the policy's and every judging LM."""
    fluency = {"fluency_kwargs": {"model": model}}
    short = {"model": model, "max_new_tokens": 6}
    return {
        "TextGen-v0": {**short, "max_prompt_tokens": 16, "prompt_truncation": "left"},
        "TextGenPreference-v0": {**short, "max_prompt_tokens": 16, "prompt_truncation": "left"},
        "ConceptCoverage-v0": {**short, "fluency_model": model},
        "VerifiableInstructions-v0": {**short, "reward": "partial"},
        "ReasoningGym-v0": short,
        "LengthFormat-v0": {**short, "reward_model_kwargs": fluency},
        "ProxyPositivity-v0": {**short, "gold_model_kwargs": fluency},
        "GuessNumber-v1": {"model": model},
        "TwentyQuestions-v1": {"model": model},
        "WordGuess-v1": {"model": model},
    }[env_id]


def test_every_registered_env_is_checked():
    assert set(ENV_IDS) == {
        "TextGen-v0",
        "TextGenPreference-v0",
        "ConceptCoverage-v0",
        "VerifiableInstructions-v0",
        "ReasoningGym-v0",
        "LengthFormat-v0",
        "ProxyPositivity-v0",
        "GuessNumber-v1",
        "TwentyQuestions-v1",
        "WordGuess-v1",
    }


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_passes_gymnasium_and_sb3_checkers(env_id, tiny_model_dir):
    kwargs = tiny_kwargs(env_id, tiny_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(env_id, **kwargs).unwrapped, skip_render_check=False)
        sb3_check_env(gym.make(env_id, **kwargs).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_a_seeded_episode_ends_with_the_same_info(env_id, tiny_model_dir):
    """The checkers step once, so they never see an episode end; this covers the reward models and the final info."""
    kwargs = tiny_kwargs(env_id, tiny_model_dir)
    first, second = (run_episode(gym.make(env_id, **kwargs), seed=3) for _ in range(2))
    assert "gold_score" in first and data_equivalence(first, second, exact=True)
