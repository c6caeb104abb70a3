"""ConceptCoverage-v0 and the ``concepts`` / ``concept-coverage`` reward models: inflections counted by
lemminflect, the fluency gate that stops a bare word list, levels, splits, the info, the solver."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from test_tasks import run_episode

import textgym  # noqa: F401  (registers the envs)
from reward_models import make_reward_model
from reward_models.concepts import parse_concepts
from textgym.envs.concepts import LEVELS, PROMPT, instances, load_concept_words, template_sentence
from textgym.tasks import get_task

PROMPT_4 = PROMPT.format(concepts="throw, child, ball, mouse")


def test_concepts_are_read_from_the_prompt():
    assert parse_concepts(PROMPT_4) == ["throw", "child", "ball", "mouse"]
    assert parse_concepts("Some chat.\nUse these: Dog , boat\n") == ["dog", "boat"]
    with pytest.raises(ValueError, match="comma-separated list"):
        parse_concepts("Write a sentence.")


def test_coverage_counts_inflections_irregular_ones_included_and_only_whole_words():
    coverage = make_reward_model("concept-coverage")
    scores = coverage(
        [PROMPT_4] * 5,
        [
            "The children threw two balls at the mice.",  # irregular plurals and past tense
            "A child is throwing the ball to a mouse.",
            "The child throws a ball.",  # three of four
            "Ballet for the childish thrower.",  # substrings and derived words are not inflections
            "",
        ],
    )
    assert scores.tolist() == [1.0, 1.0, 0.75, 0.0, 0.0]
    fixed = make_reward_model("concept-coverage", concepts=["leaf", "run"])
    assert fixed(["anything"], ["Leaves ran."])[0] == 1.0  # given concepts, the prompt is not read


def test_a_bare_list_covers_everything_but_the_gold_stops_it(tiny_model_dir):
    """With any fluency model: coverage is full, the gate multiplies it, and no concept means no LM call."""
    reward = make_reward_model("concepts", model=tiny_model_dir)
    fluency = reward.fn.fluency
    calls = []
    real = fluency.score_batch

    def counting(prompts, completions):
        calls.append(len(completions))
        return real(prompts, completions)

    fluency.score_batch = counting
    bare, none = "throw, child, ball, mouse", "Nothing relevant here."
    scores = reward([PROMPT_4, PROMPT_4], [bare, none])
    assert calls == [1] and scores[1] == 0.0
    gate = fluency(["Here is a sentence:"], [" " + bare])[0]
    assert scores[0] == pytest.approx(1.0 * gate)


@pytest.mark.slow
def test_with_the_embedded_model_a_bare_list_scores_low_and_a_sentence_high():
    coverage, gold = make_reward_model("concept-coverage"), make_reward_model("concepts")
    prompts = [PROMPT_4, PROMPT.format(concepts="dog, swim, boat")]
    bare = [", ".join(parse_concepts(p)) for p in prompts]
    sentences = ["The children threw the ball at a mouse.", "I saw a dog swimming near the boat."]
    assert coverage(prompts, bare).tolist() == [1.0, 1.0]
    assert gold(prompts, bare).max() < 0.1
    assert gold(prompts, sentences).min() > 0.6
    # Measured after the prompt, the list would pass: the reason the gate reads a neutral context instead.
    copied = make_reward_model("fluency")(prompts[1:], [" " + bare[1]])[0]
    assert copied > 0.9


def test_levels_splits_and_bad_arguments(tiny_model_dir):
    kinds = load_concept_words()
    for level in LEVELS:
        sets = [parse_concepts(p) for p in instances(level)]
        assert all(len(s) == level == len(set(s)) for s in sets)
        assert all(sum(kinds[c] == "verb" for c in s) >= 1 for s in sets)
        assert len({frozenset(s) for s in sets}) == len(sets)  # each concept set once, so splits are disjoint
    kwargs = {"model": tiny_model_dir, "fluency_model": tiny_model_dir, "max_new_tokens": 4}
    train = gym.make("ConceptCoverage-v0", split="train", level=2, **kwargs).unwrapped.episodes.prompts
    test = gym.make("ConceptCoverage-v0", split="test", level=2, **kwargs).unwrapped.episodes.prompts
    assert not set(train) & set(test) and sorted(train + test) == sorted(instances(2))
    assert 0.1 < len(test) / len(instances(2)) < 0.3
    with pytest.raises(ValueError, match=r"levels \[2, 3, 4\]"):
        gym.make("ConceptCoverage-v0", level=5, **kwargs)
    with pytest.raises(ValueError, match="sets reward_model itself"):
        gym.make("ConceptCoverage-v0", reward_model="vader", **kwargs)


def test_the_last_info_holds_coverage_and_the_gold_and_the_solver_uses_every_concept(tiny_model_dir):
    spec = get_task("concepts")
    kwargs = {"model": tiny_model_dir, "fluency_model": tiny_model_dir, "max_new_tokens": 64}  # tiny BPE: more tokens
    env = gym.make(spec.env_id, split="test", level=4, **kwargs)
    tokenizer = env.unwrapped.tokenizer
    prompt = env.reset(seed=0)[1]["prompt"]
    sentence = template_sentence(prompt, 4)
    reply = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    info = run_episode(env, actions=[*reply, tokenizer.eos_token_id])
    assert info["completion"] == sentence and info["coverage"] == 1.0
    assert info["gold_score"] == info["score"] <= info["coverage"]
    randoms = [run_episode(env.unwrapped.__class__(**{**kwargs, "max_new_tokens": 16}), seed=s) for s in range(10)]
    assert np.mean([i["coverage"] for i in randoms]) < 0.1
    vector = gym.make_vec(spec.env_id, num_envs=2, model=tiny_model_dir, fluency_model=tiny_model_dir, max_new_tokens=2)
    vector.reset(seed=0)
    for _ in range(2):
        *_, infos = vector.step(np.array([5, 6]))
    assert infos["coverage"].tolist() == [0.0, 0.0]


@pytest.mark.slow
def test_the_solver_reaches_the_optimum_and_random_tokens_score_about_0():
    spec = get_task("concepts")
    gold = make_reward_model("concepts")
    for level in LEVELS:
        prompts = list(instances(level)[:48])
        solver = gold(prompts, [template_sentence(p, level) for p in prompts]).mean()
        assert spec.normalized(solver, level) == pytest.approx(100, abs=10)


def test_info_models_may_not_overwrite_the_info_s_own_keys(tiny_model_dir):
    with pytest.raises(ValueError, match="info_models keys must not be"):
        gym.make("TextGen-v0", model=tiny_model_dir, info_models={"gold_score": "vader"})
