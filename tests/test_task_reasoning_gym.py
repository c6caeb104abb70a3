"""ReasoningGym-v0, the ``reasoning-gym`` reward model and the ``rg:DATASET`` benchmark tasks: reasoning-gym's
generators and scoring as textgym tasks (the optional extra ``textgym[reasoning]``, part of ``dev``)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from episodes import run_episode
from gymnasium.utils.env_checker import check_env, data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textgym  # noqa: F401  (registers the envs)
from agents.bench import read_runs
from agents.bench.cli import main as bench_main
from reward_models import make_reward_model
from reward_models.reasoning_gym import (
    TEST_SEED,
    TRAIN_SEED,
    level_configs,
    level_count,
    load_level,
    read_answer,
    solve,
)
from textgym.tasks import get_task, task_names

reasoning_gym = pytest.importorskip("reasoning_gym", reason="the optional extra textgym[reasoning]")
ENV = "ReasoningGym-v0"


@pytest.fixture(scope="module", autouse=True)
def forget_resolved_envs():
    """``rg:`` tasks register ``ReasoningGym/DATASET-v0`` ids; drop them after this module, so the suites that check
    every registered env see only the built-in ones."""
    yield
    for env_id in [env_id for env_id in gym.registry if env_id.startswith("ReasoningGym/")]:
        del gym.registry[env_id]


def test_import_textgym_does_not_import_reasoning_gym():
    code = "import sys, textgym.tasks; textgym.tasks.get_task('positivity'); print('reasoning_gym' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_levels_are_the_curriculum_s_global_levels():
    from reasoning_gym.factory import CURRICULA

    configs = level_configs("leg_counting")
    curriculum = CURRICULA["leg_counting"]()
    for level in (1, 2, len(configs)):
        curriculum.set_global_level(level - 1)
        assert configs[level - 1] == curriculum.generate_configuration()
    assert all(a != b for a, b in itertools.pairwise(configs))  # each level changes the configuration
    assert (configs[0].max_animals, configs[1].max_animals) == (1, 2)  # harder: more kinds of animal
    one_kind = [p.rsplit("have ", 1)[1] for p in load_level("leg_counting", 1).prompts()]
    assert all("," not in question for question in one_kind)
    assert level_count("acre") == 1  # no curriculum: one level, the default configuration


def test_splits_are_disjoint_seed_ranges():
    level = load_level("count_bits", 2)
    train, test = level.prompts("train"), level.prompts("test")
    assert train and test and not set(train) & set(test) and len(train) + len(test) == len(level.entries)
    assert 0.1 < len(test) / len(level.entries) < 0.3
    generator = reasoning_gym.create_dataset("count_bits", **{**vars(level.config), "seed": 0, "size": 10**6 + 200})
    train_questions = {generator[TRAIN_SEED + i]["question"] for i in range(800)}
    test_questions = {generator[TEST_SEED + i]["question"] for i in range(200)}
    assert {level.entry(p)["question"] for p in train} <= train_questions
    assert {level.entry(p)["question"] for p in test} <= test_questions
    assert not {e["question"] for e in level.examples} & test_questions  # no test answer in any prompt
    # A level with few possible questions (110) is still split about 80 / 20, disjoint.
    small = load_level("leg_counting", 1)
    assert not set(small.prompts("train")) & set(small.prompts("test")) and len(small.prompts("test")) >= 5


def test_env_splits_levels_and_errors(tiny_model_dir):
    kwargs = {"model": tiny_model_dir, "dataset": "count_bits", "level": 2}
    for split in ("train", "test"):
        env = gym.make(ENV, split=split, **kwargs).unwrapped
        assert env.episodes.prompts == load_level("count_bits", 2).prompts(split)
    prompt = env.episodes.prompts[0]
    assert prompt.endswith("\nAnswer:") and prompt.count("\nAnswer:") == 2  # one worked example
    bare = gym.make(ENV, split="test", shots=0, **kwargs).unwrapped.episodes.prompts[0]
    assert bare.count("\nAnswer:") == 1
    with pytest.raises(ValueError, match=r"Unknown reasoning-gym dataset 'nope'; the datasets are: .*leg_counting"):
        gym.make(ENV, dataset="nope", model=tiny_model_dir)
    with pytest.raises(ValueError, match="not supported"):
        gym.make(ENV, dataset="composite", model=tiny_model_dir)
    with pytest.raises(ValueError, match="levels 1 to 4, got 9"):
        gym.make(ENV, dataset="count_bits", level=9, model=tiny_model_dir)
    with pytest.raises(ValueError, match="sets reward_model itself"):
        gym.make(ENV, reward_model="vader", model=tiny_model_dir)
    with pytest.raises(ValueError, match="split must be"):
        gym.make(ENV, split="validation", model=tiny_model_dir)


@pytest.mark.parametrize("dataset", ["spell_backward", "rotate_matrix"])
def test_passes_gymnasium_and_sb3_checkers(dataset, tiny_model_dir):
    env_id = get_task(f"rg:{dataset}").env_id
    kwargs = {"model": tiny_model_dir, "max_new_tokens": 6}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make(env_id, **kwargs).unwrapped, skip_render_check=False)
        sb3_check_env(gym.make(env_id, **kwargs).unwrapped, warn=True)
    first, second = (run_episode(gym.make(env_id, **kwargs), seed=3) for _ in range(2))
    assert data_equivalence(first, second, exact=True) and first["score"] == first["gold_score"]


@pytest.mark.parametrize("dataset", ["leg_counting", "word_sorting", "rotate_matrix"])
def test_the_solver_scores_the_optimum_and_a_wrong_answer_low(dataset, tiny_model_dir):
    spec = get_task(f"rg:{dataset}")
    env = gym.make(spec.env_id, split="test", level=2, model=tiny_model_dir)
    tokenizer = env.unwrapped.tokenizer
    for seed in range(3):
        prompt = env.reset(seed=seed)[1]["prompt"]
        reply = tokenizer(spec.solver(prompt, 2), add_special_tokens=False)["input_ids"]
        assert len(reply) < env.unwrapped.episodes.max_new_tokens  # the default width fits the answer
        info = run_episode(env, seed=seed, actions=[*reply, tokenizer.eos_token_id])
        assert spec.normalized(info["gold_score"], 2) == 100.0
        wrong = tokenizer(" banana", add_special_tokens=False)["input_ids"]
        info = run_episode(env, seed=seed, actions=[*wrong, tokenizer.eos_token_id])
        assert info["gold_score"] == 0.0
    randoms = [run_episode(env, seed=seed)["gold_score"] for seed in range(10)]
    assert np.mean(randoms) < 0.05


def test_the_reward_model_scores_as_the_dataset_does():
    level = load_level("leg_counting", 2)
    reward = make_reward_model("reasoning-gym", dataset="leg_counting", level=2)
    prompts = level.prompts("test")[:3]
    answers = [level.entry(p)["answer"] for p in prompts]
    replies = [f" {answers[0]}\nThe legs are many.", f"\n\n  {answers[1]} legs", " many legs"]
    scores = reward(prompts, replies)
    assert scores[0] == 1.0  # the first line is the answer; later lines are not read
    expected = level.score_answer(f"{answers[1]} legs", level.entry(prompts[1]))  # the dataset's partial credit
    assert scores[1] == pytest.approx(expected) and 0 < expected < 1
    assert scores[2] == 0.0
    with pytest.raises(ValueError, match="not a prompt of reasoning-gym's 'leg_counting' at level 2"):
        reward(["How many legs has a cat?\nAnswer:"], [" 4"])
    # A multi-line answer (a matrix) is read over as many lines as the dataset's own answer has.
    grid = load_level("rotate_matrix", 1)
    prompt = grid.prompts("test")[0]
    answer = grid.entry(prompt)["answer"]
    assert "\n" in answer and read_answer(f" {answer}\n\nMore text.", grid.entry(prompt)) == answer
    matrix = make_reward_model("reasoning-gym", dataset="rotate_matrix", level=1)
    assert matrix([prompt] * 2, [solve("rotate_matrix", prompt, 1), answer.splitlines()[0]]).tolist() == [1.0, 0.0]


def test_rg_tasks_resolve_on_demand_and_unknown_ones_list_the_datasets():
    spec = get_task("rg:leg_counting")
    assert spec.env_id == "ReasoningGym/leg_counting-v0" and gym.spec(spec.env_id).kwargs["dataset"] == "leg_counting"
    assert spec.levels == tuple(range(1, level_count("leg_counting") + 1)) and spec.default_level == 1
    assert "rg:leg_counting" not in task_names()  # the suite lists the registered tasks only
    assert get_task("rg:graph_color").solver is None  # its items carry no answer: no oracle
    with pytest.raises(KeyError, match=r"Unknown reasoning-gym dataset 'nope'; the datasets are: .*word_sorting"):
        get_task("rg:nope")
    with pytest.raises(KeyError, match="or rg:DATASET"):
        get_task("nope")


def test_bench_runs_an_rg_task(tmp_path, one_thread, capsys):
    out = tmp_path / "bench"
    args = ["--tasks", "rg:leg_counting", "--algos", "zero-shot,oracle", "--quick", "--eval-episodes", "4"]
    assert bench_main([*args, "--no-progress", "--out", str(out)]) == 0
    rows = read_runs(out)
    assert {r["algorithm"] for r in rows} == {"zero-shot", "oracle"}
    assert {r["task"] for r in rows} == {"rg:leg_counting"}
    assert all(r["normalized_score"] == 100 for r in rows if r["algorithm"] == "oracle")
    assert all(r["normalized_score"] < 50 for r in rows if r["algorithm"] == "zero-shot")  # a random tiny model
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--tasks", "rg:nope", "--algos", "oracle", "--quick", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "Unknown reasoning-gym dataset 'nope'; the datasets are: ab, acre," in capsys.readouterr().err
