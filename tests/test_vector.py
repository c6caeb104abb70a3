"""TextGen-v0's vector env: equal to N single envs, one batched reward call per step, every autoreset mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textgym  # noqa: F401
from textgym.envs.vector import TextGenVectorEnv

N = 4
STOPS = list(range(3, 40))  # many stop tokens, so random episodes end at different steps


def kwargs(tiny_model_dir, **extra):
    return {
        "model": tiny_model_dir,
        "max_prompt_tokens": 16,
        "max_new_tokens": 5,
        "prompt_truncation": "left",
        "stop_token_ids": STOPS,
        **extra,
    }


def lengths_reward(prompts, completions):
    return [len(p) + 10.0 * len(c) for p, c in zip(prompts, completions)]


def assert_same_infos(mine, reference):
    assert set(mine) == set(reference)
    for key, value in reference.items():
        if isinstance(value, dict):
            assert_same_infos(mine[key], value)
        elif key == "final_obs":
            for a, b in zip(mine[key], value):
                assert (a is None and b is None) or all(np.array_equal(a[k], b[k]) for k in b)
        else:
            assert np.array_equal(mine[key], value), key


def assert_same_results(mine, reference):
    """Equal (obs, ..., info) tuples from reset or step."""
    assert all(np.array_equal(mine[0][k], reference[0][k]) for k in reference[0])
    for a, b in zip(mine[1:-1], reference[1:-1]):
        assert np.array_equal(a, b)
    assert_same_infos(mine[-1], reference[-1])


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_equals_sync_vector_env_of_single_envs(tiny_model_dir, mode):
    settings = kwargs(tiny_model_dir, reward_model=lengths_reward)
    mine = gym.make_vec("TextGen-v0", num_envs=N, autoreset_mode=mode, **settings)
    assert isinstance(mine, TextGenVectorEnv) and mine.metadata["autoreset_mode"] == mode
    reference = SyncVectorEnv([lambda: gym.make("TextGen-v0", **settings) for _ in range(N)], autoreset_mode=mode)
    assert_same_results(mine.reset(seed=42), reference.reset(seed=42))
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(40):
        actions = rng.integers(0, mine.single_action_space.n, size=N)
        result = mine.step(actions)
        assert_same_results(result, reference.step(actions))
        done = result[2] | result[3]
        ended += done.sum()
        if mode == AutoresetMode.DISABLED and done.any():
            options = {"reset_mask": done}
            assert_same_results(mine.reset(options=dict(options)), reference.reset(options=dict(options)))
    assert ended > 10


def test_reward_model_is_called_once_per_step_for_all_ending_episodes(tiny_model_dir):
    calls = []

    def counting(prompts, completions):
        calls.append(len(completions))
        return [0.5] * len(completions)

    envs = gym.make_vec("TextGen-v0", num_envs=8, **kwargs(tiny_model_dir, reward_model=counting, stop_token_ids=[]))
    envs.reset(seed=0)
    for _ in range(5):
        _, rewards, _, truncated, infos = envs.step(np.full(8, 7))
    assert truncated.all() and calls == [8]
    assert np.allclose(rewards, 0.5) and infos["_score"].all()


def test_forced_prompts_and_partial_reset(tiny_model_dir):
    envs = gym.make_vec("TextGen-v0", num_envs=3, **kwargs(tiny_model_dir))
    _, infos = envs.reset(seed=0, options={"prompts": ["a b", "c d", "e f"]})
    assert list(infos["prompt"]) == ["a b", "c d", "e f"]
    _, infos = envs.reset(options={"prompt": "same", "reset_mask": np.array([False, True, False])})
    assert infos["_prompt"].tolist() == [False, True, False] and infos["prompt"][1] == "same"
    with pytest.raises(ValueError, match="3"):
        envs.reset(options={"prompts": ["only one"]})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        gym.make_vec("TextGen-v0", num_envs=2, **kwargs(tiny_model_dir, prompt_truncation="error")).reset(
            options={"prompts": ["fine", "word " * 50]}
        )


def test_bad_actions_and_order(tiny_model_dir):
    envs = gym.make_vec("TextGen-v0", num_envs=2, **kwargs(tiny_model_dir))
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.array([1, 2]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="2 action"):
        envs.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        envs.step(np.array([1, 10**6]))
    obs, *_ = envs.step(np.array([1, 2]))
    assert obs["input_ids"][:, 16].tolist() == [1, 2]


def test_render(tiny_model_dir):
    envs = gym.make_vec("TextGen-v0", num_envs=2, render_mode="ansi", **kwargs(tiny_model_dir))
    envs.reset(options={"prompts": ["one", "two"]})
    assert [text.split("\u2502")[0] for text in envs.render()] == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("same_step", AutoresetMode.SAME_STEP),
        ("NextStep", AutoresetMode.NEXT_STEP),
        ("DISABLED", AutoresetMode.DISABLED),
    ],
)
def test_autoreset_mode_by_name(tiny_model_dir, name, mode):
    envs = gym.make_vec("TextGen-v0", num_envs=2, autoreset_mode=name, **kwargs(tiny_model_dir))
    assert envs.metadata["autoreset_mode"] == mode
    with pytest.raises(ValueError, match="autoreset_mode must be"):
        gym.make_vec("TextGen-v0", num_envs=2, autoreset_mode="sometimes", **kwargs(tiny_model_dir))
