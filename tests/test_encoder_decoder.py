"""Encoder–decoder (T5) models in the environments and the rollout engine, on tiny T5s built from a config."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401  (registers the envs)

P, T = 16, 5


def make(model_dir, **kwargs):
    kwargs = {"model": model_dir, "max_prompt_tokens": P, "max_new_tokens": T, "prompt_truncation": "left", **kwargs}
    return gym.make("TextGen-v0", **kwargs)


def test_architecture_is_read_from_the_config(t5_model_dir, tiny_model_dir, tmp_path):
    from transformers import BartConfig

    from textgym.lm.models import is_encoder_decoder, load_causal_lm

    assert is_encoder_decoder(t5_model_dir) and not is_encoder_decoder(tiny_model_dir)
    BartConfig(vocab_size=64, d_model=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="T5 family"):
        is_encoder_decoder(tmp_path)
    with pytest.raises(ValueError, match="is an encoder–decoder, not a causal LM: load it with load_lm"):
        load_causal_lm(t5_model_dir)


def test_observation_layout_reward_and_info_match_the_causal_env(t5_model_dir):
    """The source is the prompt right-padded; the decoder's input the start token and the actions; the reward and
    the info are those of the causal env with the same tokenizer (the embedded model's)."""
    env, causal = make(t5_model_dir), make("embedded")
    start = env.unwrapped.episodes.decoder_start_token_id
    assert set(env.observation_space.spaces) == {"input_ids", "attention_mask", "decoder_input_ids",
                                                 "decoder_attention_mask"}  # fmt: skip
    assert env.observation_space["input_ids"].shape == (P,)
    assert env.observation_space["decoder_input_ids"].shape == (T + 1,)
    obs, info = env.reset(seed=4)
    causal_obs, causal_info = causal.reset(seed=4)
    assert info == causal_info
    n = int(obs["attention_mask"].sum())
    assert obs["attention_mask"].tolist() == [1] * n + [0] * (P - n)
    assert obs["input_ids"][:n].tolist() == causal_obs["input_ids"][P - n : P].tolist()
    assert obs["decoder_input_ids"][0] == start and obs["decoder_attention_mask"].tolist() == [1] + [0] * T
    actions = env.unwrapped.tokenizer(" a lovely, happy and great day")["input_ids"][:T]
    for t, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(action)
        expected = causal.step(action)[1:]
        assert (reward, terminated, truncated, info) == expected
        assert obs["decoder_input_ids"][1 : t + 2].tolist() == actions[: t + 1]
        assert obs["decoder_attention_mask"].sum() == t + 2
    assert truncated and info["score"] > 0.5  # VADER finds the completion positive


def test_passes_gymnasium_and_sb3_checkers(t5_model_dir):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(make(t5_model_dir).unwrapped, skip_render_check=False)
        sb3_check_env(make(t5_model_dir).unwrapped, warn=True)
        check_env(make(t5_model_dir, reference_model=t5_model_dir, kl_coef=0.1).unwrapped)


def test_vector_env_stacks_the_layout(t5_model_dir):
    envs = gym.make_vec("TextGen-v0", num_envs=3, model=t5_model_dir, max_prompt_tokens=P, max_new_tokens=T,
                        prompt_truncation="left", autoreset_mode="same_step")  # fmt: skip
    obs, _ = envs.reset(seed=0)
    assert obs["input_ids"].shape == (3, P) and obs["decoder_input_ids"].shape == (3, T + 1)
    for _ in range(T):
        obs, _, _, truncated, infos = envs.step(np.full(3, 300))
    assert truncated.all() and infos["final_obs"][0]["decoder_input_ids"][1:].tolist() == [300] * T
    assert (obs["decoder_attention_mask"].sum(axis=1) == 1).all()  # the next episodes started


def test_reference_kl_is_the_teacher_forced_logprob(t5_model_dir):
    """The env's reference (an encoder–decoder with its own KV cache) scores each action as one full pass does."""
    from textgym.lm.models import load_lm

    env = make(t5_model_dir, reference_model=t5_model_dir, kl_coef=0.5, stop_token_ids=[])
    obs, _ = env.reset(seed=1)
    actions = [400, 17, 2300, 5, 999]
    ref = []
    for action in actions:
        _, reward, _, _, info = env.step(action)
        ref.append(info["ref_logprob"])
        assert reward == pytest.approx(0.5 * info["ref_logprob"] + info.get("score", 0.0))
    model = load_lm(t5_model_dir)
    start = model.config.decoder_start_token_id
    n = int(obs["attention_mask"].sum())
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(obs["input_ids"][None, :n]),
                       decoder_input_ids=torch.tensor([[start, *actions[:-1]]])).logits  # fmt: skip
    expected = torch.log_softmax(logits[0], -1)[torch.arange(T), torch.tensor(actions)]
    np.testing.assert_allclose(ref, expected.numpy(), atol=1e-5)


def test_mismatched_reference_and_multi_turn_games_are_refused(t5_model_dir, tiny_model_dir):
    with pytest.raises(ValueError, match="encoder–decoder, and the reference"):
        make(t5_model_dir, reference_model="embedded", kl_coef=0.1)
    with pytest.raises(ValueError, match="Multi-turn envs need a causal LM"):
        gym.make("GuessNumber-v1", model=t5_model_dir)


def teacher_forced_seq2seq(model, batch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of a rollout batch's completions from one pass of the encoder and the decoder (no cache)."""
    from textgym.lm.seq2seq import seq2seq_inputs

    width = batch.completion_ids.shape[1]
    inputs = seq2seq_inputs(batch.input_ids, batch.attention_mask, width, model.config.decoder_start_token_id)
    with torch.no_grad():
        logits = model(**inputs).logits.float() / temperature  # (E, T, V)
    logprobs = torch.log_softmax(logits, -1).gather(2, batch.completion_ids[..., None]).squeeze(-1)
    return logprobs * batch.completion_mask


def make_vec(model_dir, num_envs=4, **kwargs):
    kwargs = {"max_prompt_tokens": P, "max_new_tokens": 8, "prompt_truncation": "left", **kwargs}
    return gym.make_vec("TextGen-v0", num_envs=num_envs, model=model_dir, stop_token_ids=list(range(3, 4000)), **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["next_step", "same_step", "disabled"])
def test_cached_logprobs_equal_a_full_forward_pass(t5_model_dir, precision, mode):
    """Rows reset apart (many stop tokens), so episodes at different points share the cache; the encoder runs once
    an episode (counted), and each step feeds the decoder one token."""
    from agents import RolloutCollector, SamplingConfig
    from textgym.lm.models import load_lm

    model = load_lm(t5_model_dir)
    envs = make_vec(t5_model_dir, autoreset_mode=mode)
    encoded = []
    model.get_encoder().register_forward_hook(lambda module, args, out: encoded.append(len(out.last_hidden_state)))
    collector = RolloutCollector(model, envs, SamplingConfig(temperature=0.7), seed=0)
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        batch = collector.collect(16)
        started = 16 + len(collector._finished) + sum(record is not None for record in collector._records)
        assert sum(encoded) == started  # one source encoded per episode, none again at the decoding steps
        expected = teacher_forced_seq2seq(model, batch, temperature=0.7)
    lengths = batch.completion_mask.sum(1)
    assert lengths.min() < lengths.max()  # episodes of different lengths
    tolerance = 1e-4 if precision == "fp32" else 5e-2
    torch.testing.assert_close(batch.logprobs, expected, atol=tolerance, rtol=tolerance)


def test_incremental_decoder_equals_full_passes_with_idle_and_restarted_rows(words_t5_dir):
    """Rows advance or idle independently and restart with longer sources; after every call each row's next-token
    logits are those of one full pass over its own source and decoder tokens (T5 counts idle columns as distance,
    so an idle row's cache must stay contiguous)."""
    from textgym.lm.models import load_lm
    from textgym.lm.seq2seq import IncrementalSeq2SeqLM

    model = load_lm(words_t5_dir)
    start, vocab = model.config.decoder_start_token_id, model.config.vocab_size
    rng = np.random.default_rng(0)
    rows, width = 3, 12
    sources = [list(rng.integers(5, vocab, n)) for n in (2, 5, 3)]
    decoded = [[start, *rng.integers(5, vocab, n)] for n in (4, 1, 3)]

    def observation():
        obs = {key: np.zeros((rows, width), dtype=np.int64) for key in ("input_ids", "attention_mask",
               "decoder_input_ids", "decoder_attention_mask")}  # fmt: skip
        for row in range(rows):
            obs["input_ids"][row, : len(sources[row])], obs["attention_mask"][row, : len(sources[row])] = (
                sources[row],
                1,
            )
            obs["decoder_input_ids"][row, : len(decoded[row])] = decoded[row]
            obs["decoder_attention_mask"][row, : len(decoded[row])] = 1
        return obs

    def check():
        for row in range(rows):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([sources[row]]), decoder_input_ids=torch.tensor([decoded[row]]))
            torch.testing.assert_close(lm.outputs[row], logits.logits[0, -1], atol=1e-5, rtol=1e-4)

    lm = IncrementalSeq2SeqLM(model, rows)
    lm.encode_rows(np.ones(rows, dtype=bool), **observation())
    check()
    for active in ([1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]):
        tokens = rng.integers(5, vocab, rows)
        for row in np.flatnonzero(active):
            decoded[row].append(int(tokens[row]))
        lm.advance(torch.as_tensor(tokens), np.array(active, dtype=bool))
        check()
    sources[1], decoded[1] = list(rng.integers(5, vocab, width)), [start]  # a new, longer episode in row 1
    lm.encode_rows(np.array([False, True, False]), **observation())
    check()
    for _ in range(2):
        tokens = rng.integers(5, vocab, rows)
        for row in range(rows):
            decoded[row].append(int(tokens[row]))
        lm.advance(torch.as_tensor(tokens), np.ones(rows, dtype=bool))
        check()


def test_a_policy_and_an_env_of_different_kinds_are_refused(t5_model_dir):
    from agents import RolloutCollector
    from textgym.lm.models import load_lm

    with pytest.raises(TypeError, match="another kind of model"):
        RolloutCollector(load_lm(t5_model_dir), make_vec("embedded"))
    with pytest.raises(TypeError, match="another kind of model"):
        RolloutCollector(load_lm("embedded"), make_vec(t5_model_dir))
