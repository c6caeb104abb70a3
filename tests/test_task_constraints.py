"""The ``constraints`` task (LengthFormat-v0) and its reward model ``"constraints"``: parsing the prompt, partial
credit, the degeneracy gate, splits and levels, the scripted solver."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from episodes import run_episode

import textgym  # noqa: F401  (registers the envs)
from reward_models import make_reward_model
from reward_models.constraints import Constraints, parse_constraints
from textgym.envs.length_format import LEVELS, instances, write_to_constraints
from textgym.lm.prompts import split_prompts
from textgym.tasks import get_task

COFFEE = "Write about coffee in 20 words."


def test_every_instance_states_constraints_that_parse_back_and_the_solver_meets_them():
    satisfaction = make_reward_model("constraints", gate=None)
    for level in LEVELS:
        prompts = instances(level)
        assert len(set(prompts)) == len(prompts)
        for prompt in prompts[::7]:
            constraints = parse_constraints(prompt)
            assert prompt == f"Write about {prompt[12:].split(' in ')[0]} {constraints.describe()}."
        solved = satisfaction(prompts, [write_to_constraints(p) for p in prompts])
        np.testing.assert_array_equal(solved, 1.0)


def test_partial_credit_for_each_constraint():
    words = Constraints(words=20)
    assert words.satisfaction(" ".join(["word"] * 22)) == 1.0  # within 10%
    assert words.satisfaction(" ".join(["word"] * 25)) == pytest.approx(1 - 3 / 20)
    assert words.satisfaction("") == pytest.approx(1 - 18 / 20)
    assert words.satisfaction(" ".join(["word"] * 60)) == 0.0
    bullets = Constraints(bullets=3)
    assert bullets.satisfaction("- a\n- b\n- c") == 1.0
    assert bullets.satisfaction("Sure:\n- a\n- b\n- c") == pytest.approx(3 / 4)  # a preamble line costs
    assert bullets.satisfaction("- a\n- b") == pytest.approx(2 / 3)
    assert bullets.satisfaction("a, b and c") == 0.0
    keys = Constraints(json_keys=("title", "summary"))
    assert keys.satisfaction('{"title": "A", "summary": "B"}') == 1.0
    assert keys.satisfaction('```json\n{"title": "A", "summary": "B"}\n```') == 1.0
    assert keys.satisfaction('{"title": "A", "extra": "B"}') == pytest.approx(1 / 3)
    assert keys.satisfaction('{"title": "A", "summary": ') == 0.0
    assert keys.satisfaction('["title", "summary"]') == 0.0
    # In a JSON object only the values' words count, not the keys or the punctuation.
    both = Constraints(words=4, json_keys=("title", "summary"))
    assert both.scores('{"title": "Good coffee.", "summary": "Hot, strong."}') == {"words": 1.0, "json": 1.0}
    period = Constraints(words=3, period=True)
    assert period.scores("I like tea.  ") == {"words": 1.0, "period": 1.0}
    assert period.scores("I like tea") == {"words": 1.0, "period": 0.0}


def test_the_prompts_phrasing_is_required():
    with pytest.raises(ValueError, match="states no valid length or format constraint"):
        make_reward_model("constraints", gate=None)(["Write something nice."], ["ok"])
    with pytest.raises(ValueError, match="both bullet points and a JSON object"):
        Constraints(bullets=2, json_keys=("a",))
    with pytest.raises(ValueError, match="gate must be one of"):
        make_reward_model("constraints", gate="perplexity")
    with pytest.raises(ValueError, match="fluency_kwargs were given with gate='distinct'"):
        make_reward_model("constraints", gate="distinct", fluency_kwargs={"model": "tiny"})


def test_repeating_a_word_to_the_right_length_does_not_earn_the_reward():
    distinct = make_reward_model("constraints", gate="distinct")
    ungated = make_reward_model("constraints", gate=None)
    repeated = " ".join(["coffee"] * 20)
    fluent = write_to_constraints(COFFEE)
    np.testing.assert_array_equal(ungated([COFFEE] * 2, [repeated, fluent]), [1.0, 1.0])  # both have 20 words
    low, high = distinct([COFFEE] * 2, [repeated, fluent])
    assert high == 1.0 and low < 0.15


def test_the_default_fluency_gate_scores_degenerate_text_low_and_the_solver_high():
    reward = make_reward_model("constraints")  # the embedded SmolLM2 judges
    rng = np.random.default_rng(0)
    tokenizer = reward.fn.fluency.tokenizer
    salad = tokenizer.decode(rng.integers(1000, 40000, size=24))
    texts = [write_to_constraints(COFFEE), " ".join(["coffee"] * 20), "Coffee is hot. " * 7, salad]
    solver, repeated, looped, random_tokens = reward([COFFEE] * len(texts), texts)
    assert solver > 0.6
    assert repeated < 0.15 and looped < 0.5 * solver and random_tokens < 0.1


def test_env_splits_levels_and_the_gold_score(tiny_model_dir):
    kwargs = {"model": tiny_model_dir, "max_new_tokens": 8, "reward_model_kwargs": {"gate": "distinct"}}
    test = gym.make("LengthFormat-v0", split="test", level=3, **kwargs).unwrapped.episodes.prompts
    train = gym.make("LengthFormat-v0", split="train", level=3, **kwargs).unwrapped.episodes.prompts
    assert not set(test) & set(train) and sorted(test + train) == sorted(instances(3))
    assert set(test) == set(split_prompts(instances(3), "test"))
    default = gym.make("LengthFormat-v0", **kwargs).unwrapped.episodes.prompts
    assert default == instances(get_task("constraints").default_level)
    assert all("words" in p and ("bullet points" in p or "period" in p) for p in instances(2))
    assert all("JSON object" in p for p in instances(3)) and not any("JSON" in p for p in instances(1))

    info = run_episode(gym.make("LengthFormat-v0", split="test", level=1, **kwargs))
    expected = make_reward_model("constraints", gate="distinct")([info["prompt"]], [info["completion"]])[0]
    assert info["gold_score"] == info["score"] == pytest.approx(expected)
    vector = gym.make_vec("LengthFormat-v0", num_envs=2, split="test", level=1, **kwargs)
    assert set(vector.unwrapped.prompts) == set(split_prompts(instances(1), "test"))

    with pytest.raises(ValueError, match=r"has levels \[1, 2, 3\], got 4"):
        gym.make("LengthFormat-v0", level=4, **kwargs)
    with pytest.raises(ValueError, match="makes its own prompts"):
        gym.make("LengthFormat-v0", prompts=["Hi"], **kwargs)


def test_the_solver_through_the_env_scores_the_optimum(tiny_model_dir):
    spec = get_task("constraints")
    kwargs = {"model": tiny_model_dir, "reward_model_kwargs": {"gate": "distinct"}}
    env = gym.make(spec.env_id, split="test", level=3, **kwargs)
    tokenizer = env.unwrapped.tokenizer
    prompt = env.reset(seed=1)[1]["prompt"]
    reply = tokenizer(spec.solver(prompt, 3), add_special_tokens=False)["input_ids"]
    info = run_episode(env, seed=1, actions=[*reply, tokenizer.eos_token_id])
    assert info["completion"] == spec.solver(prompt, 3)
    assert info["score"] == 1.0  # all constraints met, no repetition
