"""VerifiableInstructions-v0 and the ``verifiable`` reward model: answers computed from the prompt, exact and
partial credit that padding cannot game, levels, splits, the gold score, the solver."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from test_tasks import run_episode

import textgym  # noqa: F401  (registers the envs)
from reward_models import make_reward_model
from reward_models.verifiable import KINDS, expected_answer, instruction_prompt, parse_instruction
from textgym.envs.instructions import LEVELS, instances
from textgym.tasks import get_task

REVERSE = instruction_prompt("reverse", words="red cat sun dog")
ADD = instruction_prompt("add", a=123, b=456)


def test_expected_answers_are_computed_from_the_prompt():
    assert expected_answer(instruction_prompt("copy", words="red cat sun")) == "red cat sun"
    assert expected_answer(REVERSE) == "dog sun cat red"
    assert expected_answer(instruction_prompt("sort", words="red cat sun")) == "cat red sun"
    assert expected_answer(instruction_prompt("count", letter="e", words="tree bee")) == "4"
    assert expected_answer(ADD) == "579"
    assert expected_answer(instruction_prompt("multiply", a=12, b=34)) == "408"
    # The prompt opens with a worked example of its kind; the question is the last instruction, not the example.
    assert REVERSE.startswith("Write these words in reverse order: one two three\nAnswer: three two one\n")
    assert REVERSE.endswith("Write these words in reverse order: red cat sun dog\nAnswer:")
    with pytest.raises(ValueError, match="not a verifiable instruction"):
        parse_instruction("Tell me a joke.")
    with pytest.raises(ValueError, match="kinds are"):
        instruction_prompt("divide", a=1, b=2)


def test_exact_reads_the_first_line_and_ignores_case_and_punctuation_between_words():
    exact = make_reward_model("verifiable", mode="exact")
    replies = ["dog sun cat red", "Dog, sun, cat, red.\nmore text", "  \n dog sun cat red", "dog sun red cat", ""]
    assert exact([REVERSE] * 5, replies).tolist() == [1, 1, 1, 0, 0]
    assert exact([ADD] * 3, ["579", "579.", "5790"]).tolist() == [1, 1, 0]


def test_partial_credit_is_dense_but_empty_padded_and_repeated_answers_score_low():
    partial = make_reward_model("verifiable", mode="partial")
    scores = partial(
        [REVERSE] * 6,
        [
            "dog sun cat red",  # exact
            "dog sun cat rat",  # one word wrong
            "",  # empty
            "dog sun cat red dog sun cat red",  # the answer twice
            "The answer is: dog sun cat red",  # padded with text
            "red cat sun dog",  # the words copied, not reversed
        ],
    )
    assert scores[0] == 1.0 and scores[1] == 0.75  # dense: one word in four wrong loses a quarter
    assert scores[2] == 0.0 and scores[3] == 0.0
    assert scores[4] == 0.25  # each of the 3 padding words costs as much as a wrong word: 1 − 3/4
    assert scores[5] <= 0.5
    digits = partial([ADD] * 4, ["579", "578", "", "579579"])
    assert digits.tolist() == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    # Padding on later lines is never read, so it cannot help either.
    assert partial([ADD], ["578\n579"])[0] == digits[1]


def test_levels_kinds_and_splits(tiny_model_dir):
    for level in LEVELS:
        by_kind = instances(level)
        assert set(by_kind) == set(KINDS)
        reverse = parse_instruction(by_kind["reverse"][0])[1]["words"].split()
        assert len(reverse) == level + 2
        a = parse_instruction(by_kind["add"][-1])[1]["a"]
        assert len(a) == level or level == 1
    kwargs = {"model": tiny_model_dir, "max_new_tokens": 4}
    train = gym.make("VerifiableInstructions-v0", split="train", level=2, **kwargs).unwrapped.episodes.prompts
    test = gym.make("VerifiableInstructions-v0", split="test", level=2, **kwargs).unwrapped.episodes.prompts
    assert not set(train) & set(test) and set(train) | set(test) == {p for v in instances(2).values() for p in v}
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3
    only = gym.make("VerifiableInstructions-v0", kinds=["add"], level=3, **kwargs).unwrapped.episodes.prompts
    assert only and all(p.startswith("What is") and "+" in p for p in only)
    with pytest.raises(ValueError, match=r"levels \[1, 2, 3, 4\]"):
        gym.make("VerifiableInstructions-v0", level=5, **kwargs)
    with pytest.raises(ValueError, match="reward must be one of"):
        gym.make("VerifiableInstructions-v0", reward="lenient", **kwargs)
    with pytest.raises(ValueError, match="kinds must be"):
        gym.make("VerifiableInstructions-v0", kinds=["divide"], **kwargs)
    with pytest.raises(ValueError, match="sets prompts itself"):
        gym.make("VerifiableInstructions-v0", prompts=["x"], **kwargs)


def test_solver_scores_100_random_about_0_and_the_gold_is_always_exact(tiny_model_dir):
    spec = get_task("instructions")
    env = gym.make(spec.env_id, split="test", level=2, reward="partial", model=tiny_model_dir, max_new_tokens=16)
    tokenizer = env.unwrapped.tokenizer
    for seed in range(5):
        prompt = env.reset(seed=seed)[1]["prompt"]
        reply = tokenizer(spec.solver(prompt, 2), add_special_tokens=False)["input_ids"]
        info = run_episode(env, seed=seed, actions=[*reply, tokenizer.eos_token_id])
        assert spec.normalized(info["gold_score"], 2) == 100.0 and info["score"] == 1.0
    # A near miss earns partial credit as the training reward, nothing as the gold.
    prompt = env.reset(seed=0)[1]["prompt"]
    near = tokenizer(spec.solver(prompt, 2) + "0", add_special_tokens=False)["input_ids"]
    info = run_episode(env, seed=0, actions=[*near, tokenizer.eos_token_id])
    assert 0 < info["score"] < 1 and info["gold_score"] == 0.0
    randoms = [spec.normalized(run_episode(env, seed=seed)["gold_score"], 2) for seed in range(20)]
    assert np.mean(randoms) == pytest.approx(0.0, abs=5)
    vector = gym.make_vec(spec.env_id, num_envs=2, split="test", level=2, model=tiny_model_dir, max_new_tokens=3)
    vector.reset(seed=0)
    for _ in range(3):
        *_, infos = vector.step(np.array([5, 6]))
    assert list(infos["gold_score"]) == [0.0, 0.0] and all("What is" in p or ":" in p for p in infos["prompt"])
