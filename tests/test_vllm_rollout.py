"""The vLLM rollout backend (agents/vllm_rollout.py): its turns step the env as their tokens one at a time would, its
log-probs are the trained model's, the weights pushed to it change what it samples, and an agent trains with it.

The tests marked ``vllm`` need vLLM (the ``vllm`` extra) and skip without it; ``make test-vllm`` builds an environment
with it (.venv-vllm) and runs them. Each engine takes about 100 s to start on a CPU, so one is shared where it can be.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401  (registers the envs)
from textgym.envs.vector import unbatch_infos

NEEDS_VLLM = "needs vLLM: pip install -e '.[vllm]' in an environment of its own (`make test-vllm` builds .venv-vllm)"
BF16_SAMPLER_TOLERANCE = 0.25
"""Largest |log-prob| difference per token between a bfloat16 sampler and the float32 trainer (as for the native
engine's bfloat16 copy, tests/test_agents_real_checkpoints.py)."""
SEED = 3


LONG_PROMPT = 160
"""Tokens of the prompts that fill one of vLLM's 128-token KV blocks on a CPU: the prefix cache keeps whole blocks."""


def text_length(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward that differs between completions, so that every GRPO update moves the weights."""
    return [float(len(completion)) for completion in completions]


def make_envs(model_dir: str, env_id: str = "TextGen-v0", prompt_tokens: int = 16, **kwargs) -> gym.vector.VectorEnv:
    if env_id != "TextGen-v0":
        return gym.make_vec(env_id, num_envs=4, model=model_dir, max_turn_tokens=4)
    from textgym.lm.prompts import load_prompts

    shipped = load_prompts()
    prompts = shipped if prompt_tokens <= 16 else [" ".join(shipped[i : i + 40]) for i in range(8)]
    kwargs = {"max_new_tokens": 8, "max_prompt_tokens": prompt_tokens, "prompt_truncation": "left", **kwargs}
    return gym.make_vec(env_id, num_envs=4, model=model_dir, prompts=prompts, **kwargs)


def test_the_vllm_backend_without_vllm_names_the_extra(tiny_model_dir, tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the error for its absence cannot be raised")
    from agents import GRPO
    from agents.cli import main as train_main

    with pytest.raises(ImportError, match=r"\.\[vllm\]"):
        GRPO(tiny_model_dir, make_envs(tiny_model_dir), batch_size=8, group_size=4, rollout_backend="vllm")
    command = ["--algo", "grpo", "--model", tiny_model_dir, "--out", str(tmp_path), "--num-envs", "4"]
    env = ["--env-kwargs", '{"max_new_tokens": 4, "prompt_truncation": "left"}', "--set", "batch_size=8"]
    with pytest.raises(ImportError, match=r"\.\[vllm\]"):
        train_main([*command, *env, "--set", "group_size=4", "--rollout-backend", "vllm"])


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory) -> str:
    """The tiny random Llama with 64-wide attention heads (the CPU backend's kernels take 32, 64, 80, ... wide); every
    test of vLLM starts from it, so each skips without vLLM."""
    pytest.importorskip("vllm", reason=NEEDS_VLLM)
    from textgym.lm.models import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("vllm-tiny"), hidden_size=256))


@pytest.fixture(scope="module")
def trainer(vllm_model_dir):
    from textgym.lm.models import load_causal_lm

    return load_causal_lm(vllm_model_dir)


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    """One vLLM engine for the tests of the collector, serving the longest context of their envs."""
    from agents.vllm_rollout import context_length, start_engine

    envs = [make_envs(vllm_model_dir, "GuessNumber-v1"), make_envs(vllm_model_dir, prompt_tokens=LONG_PROMPT)]
    return start_engine(vllm_model_dir, max(map(context_length, envs)), enforce_eager=True)


@pytest.fixture(scope="module")
def collector(engine, vllm_model_dir):
    from agents.vllm_rollout import VLLMCollector

    return VLLMCollector(engine, make_envs(vllm_model_dir), seed=SEED)


def replay_per_token(envs: gym.vector.VectorEnv, prompts: list[str], batch) -> list[dict]:
    """Step ``batch``'s agent tokens one at a time through the per-token vector env ``envs`` (reset as the collector
    reset its own): each row's rewards, terminated flag, final info and the tokens the env wrote between turns."""
    rows = [{"tokens": batch.completion_ids[i][batch.completion_mask[i] == 1].tolist(), "rewards": [], "written": []}
            for i in range(len(prompts))]  # fmt: skip
    ended = np.zeros(len(prompts), dtype=bool)
    obs, _ = envs.reset(seed=SEED, options={"prompts": prompts})
    while not ended.all():
        actions = [0 if ended[i] else row["tokens"][len(row["rewards"])] for i, row in enumerate(rows)]
        next_obs, rewards, terminated, truncated, infos = envs.step(np.array(actions))
        for i in np.flatnonzero(~ended):
            rows[i]["rewards"].append(float(rewards[i]))
            if terminated[i] or truncated[i]:
                ended[i] = True
                rows[i].update(terminated=bool(terminated[i]), info=unbatch_infos(infos, len(prompts))[i])
                continue
            grown = int(next_obs["attention_mask"][i].sum() - obs["attention_mask"][i].sum()) - 1  # a game's reply
            if grown > 0:
                real = np.flatnonzero(next_obs["attention_mask"][i])
                rows[i]["written"] += next_obs["input_ids"][i, real[-grown:]].tolist()
        obs = next_obs
    return rows


@pytest.mark.vllm
def test_vllm_turns_step_the_env_as_their_tokens_one_at_a_time(collector, vllm_model_dir):
    prompts = list(collector.envs.env.prompts[:4])
    batch = collector.collect_prompts(prompts)
    mask = batch.completion_mask.bool()
    assert (mask.sum(dim=1) >= 1).all() and batch.logprobs[mask].lt(0).all()
    stops = set(collector.stop_token_ids)
    for i, row in enumerate(replay_per_token(make_envs(vllm_model_dir), prompts, batch)):
        tokens = row["tokens"]
        assert all(token not in stops for token in tokens[:-1])  # the turn ended at its first stop token or room
        np.testing.assert_allclose(batch.rewards[i][mask[i]].numpy(), row["rewards"], atol=1e-6)
        assert bool(batch.terminated[i]) == row["terminated"] == (tokens[-1] in stops)
        assert batch.completions[i] == row["info"]["completion"] and batch.prompts[i] == prompts[i]
        assert row["written"] == []  # a single-turn task writes nothing between turns


@pytest.mark.vllm
def test_vllm_turns_of_a_multi_turn_game_step_it_as_its_tokens_one_at_a_time(engine, vllm_model_dir):
    from agents.vllm_rollout import VLLMCollector

    game = VLLMCollector(engine, make_envs(vllm_model_dir, "GuessNumber-v1"), seed=SEED)
    prompts = list(game.envs.env.prompts[:4])
    batch = game.collect_prompts(prompts)
    assert batch.env_mask.sum() > 0  # the partner replied between turns
    for i, row in enumerate(replay_per_token(make_envs(vllm_model_dir, "GuessNumber-v1"), prompts, batch)):
        np.testing.assert_allclose(batch.rewards[i][batch.completion_mask[i] == 1].numpy(), row["rewards"], atol=1e-6)
        assert batch.completion_ids[i][batch.env_mask[i] == 1].tolist() == row["written"]
        assert bool(batch.terminated[i]) == row["terminated"]


@pytest.mark.vllm
def test_vllm_logprobs_are_the_trainers_within_bfloat16_rounding(collector, trainer, teacher_forced):
    batch = collector.collect_prompts(list(collector.envs.env.prompts[:8]))
    mask = batch.completion_mask.bool()
    error = (teacher_forced(trainer, batch) - batch.logprobs)[mask].abs()
    assert error.max() < BF16_SAMPLER_TOLERANCE and error.mean() < 0.05, (error.max(), error.mean())


@pytest.mark.vllm
def test_weights_pushed_to_vllm_change_what_it_samples(engine, trainer, teacher_forced, vllm_model_dir):
    from agents.vllm_rollout import VLLMCollector
    from textgym.lm.models import load_causal_lm

    def errors(model, batch) -> torch.Tensor:
        return (teacher_forced(model, batch) - batch.logprobs)[batch.completion_mask.bool()].abs()

    perturbed = load_causal_lm(vllm_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.add_(torch.randn_like(param) * param.std().clamp(min=0.02))
    # Prompts longer than a KV block: the first rollout leaves their keys and values in vLLM's prefix cache, which
    # the new weights must not reuse.
    collector = VLLMCollector(engine, make_envs(vllm_model_dir, prompt_tokens=LONG_PROMPT), seed=SEED)
    prompts = list(collector.envs.env.prompts[:4])
    assert errors(trainer, collector.collect_prompts(prompts)).max() < BF16_SAMPLER_TOLERANCE
    try:
        collector.load_weights(perturbed)
        batch = collector.collect_prompts(prompts)
    finally:
        collector.load_weights(trainer)
    assert errors(perturbed, batch).max() < BF16_SAMPLER_TOLERANCE, errors(perturbed, batch).max()
    assert errors(trainer, batch).mean() > 10 * errors(perturbed, batch).mean()
    assert errors(trainer, collector.collect_prompts(prompts)).max() < BF16_SAMPLER_TOLERANCE  # restored


@pytest.mark.vllm
def test_a_short_grpo_run_with_vllm_rollouts_syncs_weights_and_corrects_the_drift(
    engine, vllm_model_dir, teacher_forced, monkeypatch
):
    from agents import GRPO
    from textgym.lm.models import load_causal_lm

    # The agent starts its engine with start_engine; it gets the shared one (its weights are pushed before every
    # rollout). vLLM keeps its parallel state in globals: a second engine's teardown would break the first.
    monkeypatch.setattr("agents.vllm_rollout.start_engine", lambda *args, **kwargs: engine)

    # Two steps per batch: π_old by a pass before the update (vLLM's log-probs are not the trainer's): drift shows.
    settings = {"batch_size": 8, "minibatch_size": 4, "group_size": 4, "learning_rate": 1e-3, "rollout_backend": "vllm"}
    agent = GRPO(vllm_model_dir, make_envs(vllm_model_dir, reward_model=text_length), **settings)
    initial, errors, train = load_causal_lm(vllm_model_dir), [], agent.train_on_batch

    def checked(batch):  # before its update: the policy's weights now are those that sampled the batch
        mask = batch.completion_mask.bool()
        errors.append([(teacher_forced(lm, batch) - batch.logprobs)[mask].abs() for lm in (agent.policy.lm, initial)])
        return train(batch)

    agent.train_on_batch = checked
    agent.learn(24, progress_bar=False)
    assert len(agent.history) == 3
    for row in agent.history:
        assert row["time/weight_sync_seconds"] > 0 and 0 < row["time/weight_sync_share"] < 1
        assert 0 < row["train/sampler_logprob_error"] < row["train/sampler_logprob_error_max"] < BF16_SAMPLER_TOLERANCE
    # The last batch was sampled by the weights of two updates on (lr 1e-3 moves them far): vLLM had them.
    to_current, to_initial = errors[-1]
    assert to_current.max() < BF16_SAMPLER_TOLERANCE and to_initial.mean() > 3 * to_current.mean()
