"""textgym.trl: the single-turn tasks as TRL datasets and reward functions, checked against the envs and run in TRL's
own GRPOTrainer on the tiny model. Skipped without TRL (``pip install trl``, in the ``dev`` and ``bench`` extras)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("trl")

import textgym  # noqa: F401  (registers the envs)
from textgym.tasks import get_task, task_names
from textgym.trl import trl_task

pytestmark = pytest.mark.usefixtures("one_thread")
SINGLE_TURN = [name for name in task_names() if not get_task(name).multi_turn]


def env_episode(spec, level, model, prompt, completion_ids, env_kwargs=None) -> tuple[float, dict, int]:
    """The reward, last info and steps of the task env writing ``completion_ids`` after ``prompt``, a token a step
    (with the task's tiny judges, or ``env_kwargs``)."""
    env_kwargs = spec.tiny_judges if env_kwargs is None else env_kwargs
    env = gym.make(spec.env_id, split="test", level=level, model=model, **env_kwargs)
    env.reset(seed=0, options={"prompt": prompt})
    for steps, token in enumerate(completion_ids, start=1):
        _, reward, terminated, truncated, info = env.step(token)
        if terminated or truncated:
            env.close()
            return reward, info, steps
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("name", SINGLE_TURN)
def test_the_reward_function_pays_what_the_env_pays_for_the_same_tokens(name, tiny_model_dir):
    """Random completions (some stopped early, some cut by max_new_tokens, some going on past a stop token) and the
    scripted solver's, on every single-turn task: the TRL reward and gold functions return the env's ``score`` and
    ``gold_score``, and its reward (no KL part)."""
    spec = get_task(name)
    task = trl_task(name, split="test", model=tiny_model_dir, score_batch_size=4, **spec.tiny_judges)
    assert len(task.dataset) == len(set(task.dataset["task_prompt"])) > 10
    rng = np.random.default_rng(0)
    rows = task.dataset.select(range(6))
    tokenizer = task.reward_func.scorer.core.tokenizer
    stop, length = task.stop_token_ids[-1], task.max_new_tokens
    completion_ids = []
    for i in range(len(rows)):
        ids = rng.integers(5, tokenizer.vocab_size, size=length + 3).tolist()
        if i % 3 == 0:
            ids[rng.integers(length)] = stop  # stops early; tokens after the stop are not played
        completion_ids.append(ids)
    solved = tokenizer.encode(spec.solver(rows["task_prompt"][0], task.level), add_special_tokens=False)
    completion_ids.append([*solved[: length - 1], stop])
    prompts = [*rows["task_prompt"], rows["task_prompt"][0]]

    logged = {}
    kwargs = {"completion_ids": completion_ids, "task_prompt": prompts}
    rewards = task.reward_func(prompts, ["unused"] * len(prompts), log_metric=logged.__setitem__, **kwargs)
    golds = task.gold_func(prompts, ["unused"] * len(prompts), **kwargs)
    assert len(rewards) == len(golds) == 7
    expected = [env_episode(spec, task.level, tiny_model_dir, p, ids) for p, ids in zip(prompts, completion_ids)]
    np.testing.assert_allclose(rewards, [info["score"] for _, info, _ in expected], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rewards, [reward for reward, _, _ in expected], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(golds, [info["gold_score"] for _, info, _ in expected], rtol=1e-6, atol=1e-9)
    assert logged["textgym/gold_score"] == pytest.approx(np.mean(golds))
    if name == "concepts":
        assert logged["textgym/coverage"] == pytest.approx(np.mean([info["coverage"] for _, info, _ in expected]))
    steps = [n for _, _, n in expected]
    assert task.completion_tokens == 2 * sum(steps)  # both functions played every episode to its end, no further
    assert min(steps) < length == max(steps)  # some stopped early, some were cut at max_new_tokens
    task.close()


def test_prompt_column_is_text_or_one_user_message_as_the_env_formats_it(tiny_model_dir):
    assert SINGLE_TURN == ["positivity", "concepts", "instructions", "constraints", "overoptimization"]
    plain = trl_task("instructions", model=tiny_model_dir)
    chat = trl_task("constraints", model=tiny_model_dir, **get_task("constraints").tiny_judges)
    assert plain.dataset["prompt"] == plain.dataset["task_prompt"]
    assert chat.dataset["prompt"][0] == [{"role": "user", "content": chat.dataset["task_prompt"][0]}]
    assert plain.stop_token_ids == [2] and chat.stop_token_ids == [2, 4]  # the tiny model's </s>, and <|im_end|>
    # By hand, with text completions: tokenised and closed by a stop token (here, the text is the solver's).
    prompt = plain.dataset["task_prompt"][0]
    answer = get_task("instructions").solver(prompt, 1)
    assert plain.reward_func([prompt], [answer]) == [1.0]
    assert chat.reward_func(chat.dataset["prompt"][:1], [[{"role": "assistant", "content": "hi"}]]) == [0.0]
    for task in (plain, chat):
        task.close()


def test_refusals_name_what_to_do_instead(tiny_model_dir):
    with pytest.raises(ValueError, match=r"multi-turn.*environment_factory"):
        trl_task("guess-number", model=tiny_model_dir)
    with pytest.raises(ValueError, match=r"kl_coef.*beta"):
        trl_task("positivity", model=tiny_model_dir, kl_coef=0.1)
    with pytest.raises(KeyError, match="Unknown task"):
        trl_task("no-such-task")
    task = trl_task("positivity", model=tiny_model_dir)
    with pytest.raises(ValueError, match=r"max_completion_length=task\.max_new_tokens"):
        task.reward_func(["Hi"], ["x"], completion_ids=[[5, 6]], task_prompt=["The film was"])
    task.close()


# A plain-text prompt; a chat-template one, its gate the distinct-bigram share alone (the tiny model's fluency gate
# scores every one of its texts 0, and equal rewards teach nothing).
@pytest.mark.parametrize(
    ("name", "env_kwargs"), [("positivity", {}), ("constraints", {"reward_model_kwargs": {"gate": "distinct"}})]
)
def test_grpo_trainer_trains_on_a_task_through_the_bridge(name, env_kwargs, tiny_model_dir, tmp_path):
    """TRL's GRPOTrainer, two steps on the tiny model: it generates from the env's prompt tokens, stops at the env's
    stop tokens, every reward it receives is the env's for the same prompt and tokens, and the weights move."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    from textgym.lm.models import load_causal_lm, load_tokenizer
    from textgym.lm.prompts import encode_prompt

    spec = get_task(name)
    task = trl_task(name, model=tiny_model_dir, level=1, **env_kwargs)
    seen = []

    def reward(prompts, completions, completion_ids, task_prompt, **kwargs):
        rewards = task.reward_func(prompts, completions, completion_ids, task_prompt, **kwargs)
        seen.extend(zip(task_prompt, completion_ids, rewards))
        return rewards

    model = task.prepare_model(load_causal_lm(tiny_model_dir))
    generated_from = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        generated_from.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))
        return generate(*args, **kwargs)

    model.generate = recording_generate
    before = [p.detach().clone() for p in model.parameters()]
    config = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=task.max_new_tokens,
        learning_rate=1e-2,
        beta=0.05,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=task.dataset,
        processing_class=load_tokenizer(tiny_model_dir),
    )
    trainer.train()

    assert len(seen) == 8  # two steps of four completions
    tokenizer = load_tokenizer(tiny_model_dir)
    chat = name == "constraints"
    assert sorted(generated_from) == sorted(encode_prompt(tokenizer, p, chat) for p, _, _ in seen)
    for prompt, ids, value in seen:
        reward_value, info, _ = env_episode(spec, 1, tiny_model_dir, prompt, ids, env_kwargs)
        assert value == pytest.approx(info["score"]) and value == pytest.approx(reward_value)
        stops = [i for i, token in enumerate(ids) if token in task.stop_token_ids]
        assert stops in ([], [len(ids) - 1])  # TRL stopped at the env's first stop token, the chat's included
    assert task.completion_tokens == sum(len(ids) for _, ids, _ in seen)
    assert len({value for _, _, value in seen}) > 1
    assert any("textgym/gold_score" in log for log in trainer.state.log_history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    task.close()


# --- textgym bench --algos trl-grpo ---------------------------------------------------------------------------------
def test_trl_grpo_trains_update_by_update_and_pauses_in_between(tiny_model_dir):
    """The bench algorithm runs GRPOTrainer.train() once, in a thread that pauses after each update: each
    train_until makes whole updates until the scored tokens reach the target, and close() ends the thread."""
    from agents.bench.algorithms import ALGORITHMS, Cell
    from agents.bench.hparams import hparams_for

    hparams = hparams_for("positivity", "trl-grpo", quick=True)
    cell = Cell(get_task("positivity"), 2, "trl-grpo", 0, tiny_model_dir, hparams, budget_tokens=10_000)
    algorithm = ALGORITHMS["trl-grpo"](cell)
    trainer, steps = algorithm.trainer, algorithm.steps_per_update
    assert steps == 2 and trainer.args.beta == 0.05 and trainer.args.num_generations == 4  # 8 completions, 2 steps
    assert trainer.args.loss_type == "grpo" and trainer.args.lr_scheduler_type == "constant"
    algorithm.train_until(0)
    assert algorithm.train_tokens == 0 and not algorithm.thread.is_alive()
    algorithm.train_until(1)
    first = algorithm.train_tokens
    assert trainer.state.global_step == steps and 8 <= first <= 8 * 32  # one update of 8 completions
    assert first == algorithm.task.completion_tokens
    algorithm.train_until(first + 1)
    assert trainer.state.global_step == 2 * steps and algorithm.train_tokens > first
    assert algorithm.train_seconds > 0 and algorithm.thread.is_alive()
    algorithm.close()
    assert not algorithm.thread.is_alive()


def test_bench_runs_trl_grpo_beside_grpo_with_one_update(tmp_path):
    from agents.bench import BenchConfig, read_runs, run_benchmark

    config = BenchConfig(
        tasks=["positivity"], algorithms=["grpo", "trl-grpo"], quick=True, out=str(tmp_path), progress=False
    )
    rows = {(r["algorithm"], r["budget_fraction"]): r for r in read_runs(run_benchmark(config))}
    assert set(rows) == {(a, f) for a in ("grpo", "trl-grpo") for f in (0.0, 1.0)}
    start, end = rows["trl-grpo", 0.0], rows["trl-grpo", 1.0]
    assert start["train_tokens"] == 0 and 8 <= end["train_tokens"] <= 8 * 32  # one update of 8 completions
    assert start["kl"] == pytest.approx(0, abs=1e-3) and abs(end["kl"]) > 1e-3  # the trained model was evaluated
    assert end["start_gold_score"] == rows["grpo", 1.0]["start_gold_score"]  # the same starting model and test set
    assert np.isfinite(end["normalized_score"]) and end["train_seconds"] > 0
