"""The KV-cached rollout engine: its log-probs equal one full forward pass, in every autoreset mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textgym  # noqa: F401
from agents import RolloutCollector, SamplingConfig, sample_tokens

STOPS = list(range(3, 40))  # many stop tokens: random episodes end at different steps, so rows reset apart


def make_envs(tiny_model_dir, num_envs=4, **extra):
    settings = {
        "model": tiny_model_dir,
        "max_prompt_tokens": 16,
        "max_new_tokens": 8,
        "prompt_truncation": "left",
        "stop_token_ids": STOPS,
        "reward_model": lambda p, c: [float(len(x)) for x in c],
        **extra,
    }
    return gym.make_vec("TextGen-v0", num_envs=num_envs, **settings)


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_cached_logprobs_equal_a_full_forward_pass(tiny_model_dir, tiny_policy, teacher_forced, mode):
    envs = make_envs(tiny_model_dir, autoreset_mode=mode)
    collector = RolloutCollector(tiny_policy, envs, SamplingConfig(temperature=0.7), seed=0)
    batch = collector.collect(24)
    lengths = batch.completion_mask.sum(1)
    assert len(batch) == 24 and lengths.min() < lengths.max()  # episodes of different lengths
    expected = teacher_forced(tiny_policy, batch, temperature=0.7)
    torch.testing.assert_close(batch.logprobs, expected, atol=1e-4, rtol=1e-4)


def test_batch_matches_what_the_env_saw(tiny_model_dir, tiny_policy):
    envs = make_envs(tiny_model_dir)
    tok = envs.tokenizer
    batch = RolloutCollector(tiny_policy, envs, seed=1).collect(12)
    for i in range(len(batch)):
        steps = int(batch.completion_mask[i].sum())
        actions = batch.completion_ids[i, :steps].tolist()
        text_tokens = actions[:-1] if batch.terminated[i] else actions
        assert batch.completions[i] == tok.decode(text_tokens, skip_special_tokens=True)
        assert batch.terminated[i] == (actions[-1] in STOPS)
        assert batch.returns[i].item() == pytest.approx(float(len(batch.completions[i])))
        assert batch.rewards[i, : steps - 1].abs().sum() == 0  # sparse: only the last step is rewarded
        prompt = batch.prompt_ids[i][batch.prompt_mask[i] == 1].tolist()
        assert prompt == tok(batch.prompts[i])["input_ids"][-16:]


@pytest.mark.parametrize("model", ["tiny_model_dir", "t5_model_dir"])  # a causal LM, an encoder–decoder
def test_seeded_collection_is_reproducible_and_survives_cache_invalidation(request, model):
    """Invalidated caches are rebuilt mid-episode from the observations (an encoder–decoder's decoder tokens too)."""
    from textgym.lm.models import load_lm

    model_dir = request.getfixturevalue(model)
    policy = load_lm(model_dir)
    plain = RolloutCollector(policy, make_envs(model_dir), seed=3)
    first = [plain.collect(5) for _ in range(3)]
    rebuilt = RolloutCollector(policy, make_envs(model_dir), seed=3)
    second = []
    for _ in range(3):
        second.append(rebuilt.collect(5))
        rebuilt.invalidate_cache()  # in-progress episodes are re-encoded from their observations
    for a, b in zip(first, second):
        assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)


class EpisodeLog(gym.vector.VectorWrapper):
    """Every episode the vector env finishes, in order, as the env reports it: ``(prompt, completion, length)``,
    the length read from the final observation (next-step autoreset: the step that ends it returns it)."""

    def __init__(self, env):
        super().__init__(env)
        self.finished = []

    def step(self, actions):
        obs, rewards, terminated, truncated, infos = super().step(actions)
        for row in np.flatnonzero(terminated | truncated):
            length = int(obs["attention_mask"][row, 16:].sum())  # the columns after max_prompt_tokens
            self.finished.append((infos["prompt"][row], infos["completion"][row], length))
        return obs, rewards, terminated, truncated, infos


def test_no_episode_is_lost_or_repeated_between_calls(tiny_model_dir, tiny_policy):
    envs = EpisodeLog(make_envs(tiny_model_dir, num_envs=8))
    collector = RolloutCollector(tiny_policy, envs, seed=0)
    batches = [collector.collect(n) for n in (3, 1, 7, 2, 5, 3)]
    assert [len(b) for b in batches] == [3, 1, 7, 2, 5, 3]
    taken = [
        (prompt, completion, int(length))
        for b in batches
        for prompt, completion, length in zip(b.prompts, b.completions, b.completion_mask.sum(1))
    ]
    # The batches hold the env's finished episodes in the order it finished them, each once; the rest carry over.
    assert len(envs.finished) > len(taken) and taken == envs.finished[: len(taken)]
    episodes = envs.unwrapped.episodes
    running = int(episodes.num_generated[episodes.running].sum())
    assert collector.tokens_generated == sum(length for *_, length in envs.finished) + running


def test_works_on_a_sync_vector_env_of_single_envs(tiny_model_dir, tiny_policy, teacher_forced):
    settings = {
        "model": tiny_model_dir,
        "max_prompt_tokens": 16,
        "max_new_tokens": 6,
        "prompt_truncation": "left",
        "stop_token_ids": STOPS,
    }
    envs = SyncVectorEnv([lambda: gym.make("TextGen-v0", **settings) for _ in range(3)])
    batch = RolloutCollector(tiny_policy, envs, seed=0).collect(6)
    torch.testing.assert_close(batch.logprobs, teacher_forced(tiny_policy, batch), atol=1e-4, rtol=1e-4)


def test_top_k_one_is_greedy(tiny_model_dir, tiny_policy):
    top1 = RolloutCollector(tiny_policy, make_envs(tiny_model_dir), SamplingConfig(top_k=1), seed=0).collect(6)
    greedy = RolloutCollector(tiny_policy, make_envs(tiny_model_dir), SamplingConfig(greedy=True), seed=0).collect(6)
    assert torch.equal(top1.completion_ids, greedy.completion_ids)
    assert torch.allclose(top1.logprobs, torch.zeros_like(top1.logprobs))  # one allowed token: probability 1


def test_bad_input(tiny_model_dir, tiny_policy):
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)
    other_vocab = make_envs(tiny_model_dir)
    other_vocab.single_action_space = gym.spaces.Discrete(other_vocab.single_action_space.n + 1)
    with pytest.raises(ValueError, match="output layer"):
        RolloutCollector(tiny_policy, other_vocab)
    with pytest.raises(ValueError, match="num_episodes"):
        RolloutCollector(tiny_policy, make_envs(tiny_model_dir)).collect(0)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(TypeError, match="input_ids"):
        RolloutCollector(tiny_policy, envs)


def test_prompt_ids_keep_their_padding_separate(tiny_model_dir, tiny_policy):
    batch = RolloutCollector(
        tiny_policy, make_envs(tiny_model_dir, prompts=["a", "a much longer prompt here"]), seed=0
    ).collect(8)
    widths = batch.prompt_mask.sum(1).unique()
    assert len(widths) == 2 and np.all(batch.prompt_mask[:, -1].cpu().numpy() == 1)


def test_sampling_follows_the_warped_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).repeat(100_000, 1)
    generator = torch.Generator().manual_seed(0)
    actions, logprobs = sample_tokens(logits, SamplingConfig(temperature=2.0), generator=generator)
    expected = torch.softmax(logits[0] / 2.0, -1)
    torch.testing.assert_close(torch.bincount(actions, minlength=5) / len(actions), expected, atol=5e-3, rtol=0)
    torch.testing.assert_close(logprobs, expected.log()[actions])
    top2, _ = sample_tokens(logits, SamplingConfig(top_k=2), generator=generator)
    assert set(top2.tolist()) == {0, 1}
    nucleus, _ = sample_tokens(logits, SamplingConfig(top_p=0.5), generator=generator)
    assert set(nucleus.tolist()) == {0}  # p(token 0) = 0.53 already reaches 0.5
