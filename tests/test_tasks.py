"""The benchmark suite's shared parts: train/test splits, levels, the gold score in the info, the task
registry, and the positivity task (TextGen-v0) as a suite task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from episodes import run_episode

import textgym  # noqa: F401  (registers the envs)
from textgym.lm.prompts import load_prompts, split_prompts
from textgym.tasks import get_task, task_names


def test_splits_are_disjoint_cover_the_set_and_are_stable_under_reordering():
    prompts = load_prompts(None)
    train, test = split_prompts(prompts, "train"), split_prompts(prompts, "test")
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(prompts)
    assert 0.1 < len(test) / len(prompts) < 0.3
    assert set(split_prompts(prompts[::-1], "test")) == set(test)  # a prompt's split is its own, not its index's
    assert split_prompts(prompts, None) == prompts


def test_bad_split_names_and_empty_splits_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        split_prompts(["a"], "validation")
    only_train = [p for p in load_prompts(None) if p in split_prompts(load_prompts(None), "train")][:1]
    with pytest.raises(ValueError, match="'test' split of this prompt set is empty"):
        split_prompts(only_train, "test")


def test_env_split_and_level_select_the_prompts(tiny_model_dir):
    kwargs = {"model": tiny_model_dir, "max_new_tokens": 4}
    everything = gym.make("TextGen-v0", **kwargs).unwrapped.episodes.prompts
    test = gym.make("TextGen-v0", split="test", **kwargs).unwrapped.episodes.prompts
    assert set(test) == set(split_prompts(everything, "test"))

    from reward_models import make_reward_model

    vader = make_reward_model("vader")
    levels = {level: gym.make("TextGen-v0", level=level, **kwargs).unwrapped.episodes.prompts for level in (1, 2, 3)}
    assert levels[2] == everything
    assert sorted(levels[1] + levels[3]) == sorted(everything)
    assert (vader([""] * len(levels[3]), levels[3]) < -0.05).all()
    assert (vader([""] * len(levels[1]), levels[1]) >= -0.05).all()
    # The vector env reads the same arguments through the single env's class.
    vector = gym.make_vec("TextGen-v0", num_envs=2, split="test", level=3, **kwargs)
    assert set(vector.unwrapped.prompts) == set(levels[3]) & set(test)
    with pytest.raises(ValueError, match=r"levels \[1, 2, 3\]"):
        gym.make("TextGen-v0", level=4, **kwargs)


def test_the_last_info_holds_the_gold_score(tiny_model_dir):
    kwargs = {"model": tiny_model_dir, "max_new_tokens": 4}
    info = run_episode(gym.make("TextGen-v0", **kwargs))
    assert info["gold_score"] == info["score"]  # without a gold model, the reward is the gold

    def length(prompts, completions):
        return np.array([float(len(c)) for c in completions])

    def constant(prompts, completions):
        return np.full(len(completions), 0.25)

    info = run_episode(gym.make("TextGen-v0", reward_model=constant, gold_model=length, **kwargs))
    assert info["score"] == 0.25 and info["gold_score"] == len(info["completion"])
    vector = gym.make_vec("TextGen-v0", num_envs=3, reward_model=constant, gold_model=length, **kwargs)
    vector.reset(seed=0)
    for _ in range(4):
        *_, infos = vector.step(np.ones(3, dtype=np.int64) * 7)
    assert list(infos["gold_score"]) == [len(c) for c in infos["completion"]]
    with pytest.raises(ValueError, match="gold_model_kwargs were given without a gold_model"):
        gym.make("TextGen-v0", gold_model_kwargs={"x": 1}, **kwargs)


def test_positivity_is_a_suite_task_whose_solver_scores_100_and_random_about_0(tiny_model_dir):
    assert "positivity" in task_names()
    spec = get_task("positivity")
    env = gym.make(spec.env_id, split="test", level=spec.default_level, model=tiny_model_dir, max_new_tokens=64)
    tokenizer = env.unwrapped.tokenizer
    prompt = env.reset(seed=0)[1]["prompt"]
    reply = tokenizer(spec.solver(prompt, spec.default_level), add_special_tokens=False)["input_ids"]
    info = run_episode(env, actions=[*reply, tokenizer.eos_token_id])
    assert spec.normalized(info["gold_score"]) == pytest.approx(100.0, abs=0.01)
    randoms = [spec.normalized(run_episode(env, seed=seed)["gold_score"]) for seed in range(40)]
    assert abs(np.mean(randoms)) < 5
    with pytest.raises(KeyError, match="positivity"):
        get_task("no-such-task")
