"""Stable-Baselines3 and sb3-contrib on textgym: the VecEnv adapter, the LM and GRU policies, masks, KV cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, VectorWrapper
from sb3_contrib import TRPO, MaskablePPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecMonitor
from synthetic_task import NEW_TOKENS, WORDS, yes_rate

import textgym  # noqa: F401
from agents.sb3 import (
    LMActorCriticPolicy,
    MaskableLMActorCriticPolicy,
    TextGenSB3VecEnv,
    TokenGRUExtractor,
    make_sb3_vec_env,
)

EXAMPLES = Path(__file__).parent.parent / "examples"
pytestmark = pytest.mark.usefixtures("one_thread")


def env_kwargs(model_dir: str, **extra) -> dict:
    return {
        "model": model_dir,
        "prompts": ["say yes", "please say yes", "say ok"],
        "max_prompt_tokens": 4,
        "max_new_tokens": NEW_TOKENS,
        "reward_model": yes_rate,
        **extra,
    }


class WordsOnly(VectorWrapper):
    """A fixed action mask: the words and EOS, no other special token (a mask that keeps "yes" in every state)."""

    def action_masks(self) -> np.ndarray:
        tokenizer = self.unwrapped.tokenizer
        allowed = [tokenizer.convert_tokens_to_ids(w) for w in WORDS] + [tokenizer.eos_token_id]
        masks = np.zeros((self.num_envs, self.single_action_space.n), dtype=bool)
        masks[:, allowed] = True
        return masks


def mean_return(model, venv: VecEnv, episodes: int, masked: bool = False) -> float:
    """Mean return of ``episodes`` episodes sampled from the policy (VecMonitor's ``info["episode"]``)."""
    returns: list[float] = []
    obs = venv.reset()
    while len(returns) < episodes:
        masks = np.stack(venv.env_method("action_masks")) if masked else None
        actions, _ = model.predict(obs, **({"action_masks": masks} if masked else {}))
        obs, _, _, infos = venv.step(actions)
        returns += [info["episode"]["r"] for info in infos if "episode" in info]
    return float(np.mean(returns[:episodes]))


# --- the VecEnv adapter -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [{}, {"reference_model": "SELF", "kl_coef": 0.1, "action_mask": "top_k", "top_k": 5}],
    ids=["plain", "reference-kl-top_k"],
)
def test_vec_env_adapter_equals_dummy_vec_env(words_model_dir, extra):
    """One batched vector env gives SB3 exactly what DummyVecEnv over single envs gives, masks included."""
    extra = {k: words_model_dir if v == "SELF" else v for k, v in extra.items()}
    kw = env_kwargs(words_model_dir, **extra)
    mine = TextGenSB3VecEnv("TextGen-v0", num_envs=4, bootstrap_on_truncation=True, **kw)
    reference = DummyVecEnv([lambda: gym.make("TextGen-v0", **kw) for _ in range(4)])
    for venv in (mine, reference):
        venv.seed(3)
    obs_a, obs_b = mine.reset(), reference.reset()
    assert mine.reset_infos == reference.reset_infos
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(40):
        for key in obs_a:
            assert np.array_equal(obs_a[key], obs_b[key])
        masks = np.stack(mine.env_method("action_masks"))
        assert np.array_equal(masks, np.stack(reference.env_method("action_masks")))
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in masks])
        (obs_a, rew_a, done_a, infos_a), (obs_b, rew_b, done_b, infos_b) = mine.step(actions), reference.step(actions)
        np.testing.assert_allclose(rew_a, rew_b, atol=1e-5)
        assert rew_a.dtype == rew_b.dtype and np.array_equal(done_a, done_b)
        for info_a, info_b in zip(infos_a, infos_b):
            assert info_a.keys() == info_b.keys()
            for key, value in info_b.items():
                if key == "terminal_observation":
                    assert all(np.array_equal(info_a[key][k], value[k]) for k in value)
                else:
                    assert info_a[key] == pytest.approx(value, abs=1e-5)
        assert mine.reset_infos == reference.reset_infos
        ended += int(done_a.sum())
    assert ended >= 8  # the comparison went through many autoresets
    assert mine.get_attr("tokenizer")[0] is mine.venv.tokenizer


def test_vec_env_adapter_settings(words_model_dir):
    info_keys = set()
    venv = TextGenSB3VecEnv("TextGen-v0", num_envs=2, **env_kwargs(words_model_dir, stop_token_ids=[]))
    venv.reset()
    for _ in range(NEW_TOKENS):
        _, _, dones, infos = venv.step(np.array([6, 6]))
        info_keys |= {key for info in infos for key in info}
    assert dones.all() and not any(info["TimeLimit.truncated"] for info in infos)  # no bootstrapping by default
    assert {"terminal_observation", "score", "completion"} <= info_keys
    with pytest.raises(ValueError, match="same-step"):
        TextGenSB3VecEnv(gym.make_vec("TextGen-v0", num_envs=2, **env_kwargs(words_model_dir)))
    with pytest.raises(TypeError, match="only apply when env is an id"):
        made = gym.make_vec(
            "TextGen-v0", num_envs=2, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs(words_model_dir)
        )
        TextGenSB3VecEnv(made, max_new_tokens=3)
    venv.set_options([{"prompt": "say yes"}, {"prompt": "say ok"}])
    with pytest.raises(ValueError, match="same dict for all"):
        venv.reset()


# --- learning the synthetic task ----------------------------------------------------------------------------------
# Seed 0, 8 sub-envs; the threshold is a mean return of 0.5 over 64 sampled episodes (random policy: about 1/16).
PPO_SETTINGS = {"n_steps": 32, "batch_size": 64, "n_epochs": 4, "learning_rate": 3e-3}
LEARNERS = {  # algorithm, policy, timesteps, algorithm settings, extra policy kwargs
    "PPO": (PPO, LMActorCriticPolicy, 4096, PPO_SETTINGS, {}),
    "A2C": (A2C, LMActorCriticPolicy, 6144, {"n_steps": 8, "learning_rate": 3e-3}, {}),
    "MaskablePPO": (MaskablePPO, MaskableLMActorCriticPolicy, 4096, PPO_SETTINGS, {}),
    # TRPO's Hessian-vector products need attention with a second derivative: the eager kernel.
    "TRPO": (TRPO, LMActorCriticPolicy, 6144, {"n_steps": 32, "batch_size": 64}, {"attn_implementation": "eager"}),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_lm_policy_learns_the_synthetic_task(words_model_dir, name):
    algo, policy, steps, settings, extra = LEARNERS[name]
    masked = algo is MaskablePPO
    if masked:  # the masks come from the vector env through env_method("action_masks")
        vector_env = gym.make_vec(
            "TextGen-v0", num_envs=8, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs(words_model_dir)
        )
        venv = VecMonitor(TextGenSB3VecEnv(WordsOnly(vector_env)))
        venv.seed(0)
    else:
        venv = make_sb3_vec_env("TextGen-v0", 8, seed=0, **env_kwargs(words_model_dir))
    model = algo(policy, venv, policy_kwargs={"model": words_model_dir, **extra}, seed=0, **settings)
    before = mean_return(model, venv, 64, masked)
    model.learn(steps)
    after = mean_return(model, venv, 64, masked)
    assert before < 0.2 and after >= 0.5, (before, after)


def test_gru_extractor_learns_with_stock_multi_input_policy(words_model_dir):
    venv = make_sb3_vec_env("TextGen-v0", 8, seed=0, **env_kwargs(words_model_dir))
    model = PPO(
        "MultiInputPolicy",
        venv,
        policy_kwargs={"features_extractor_class": TokenGRUExtractor},
        n_steps=32,
        batch_size=64,
        n_epochs=4,
        learning_rate=3e-3,
        seed=0,
    )
    before = mean_return(model, venv, 64)
    model.learn(8192)
    after = mean_return(model, venv, 64)
    assert before < 0.2 and after >= 0.5, (before, after)


# --- the LM policy's pieces ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["words_model_dir", "words_t5_dir"])  # a causal LM, an encoder–decoder
def test_kv_cached_features_equal_full_context_features(request, model):
    """Rollout-mode features (per-row KV cache) equal a full forward pass, across growth and resets."""
    model_dir = request.getfixturevalue(model)
    venv = TextGenSB3VecEnv("TextGen-v0", num_envs=4, **env_kwargs(model_dir, max_new_tokens=4))
    venv.seed(0)
    policy = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": model_dir}).policy
    extractor = policy.features_extractor
    obs, rng = venv.reset(), np.random.default_rng(0)
    policy.set_training_mode(False)
    for _ in range(20):
        tensors, _ = policy.obs_to_tensor(obs)
        with torch.no_grad():
            cached = extractor(tensors)
        with torch.enable_grad():
            full = extractor(tensors)
        torch.testing.assert_close(cached, full.detach(), atol=1e-5, rtol=1e-5)
        obs, *_ = venv.step(rng.integers(2, 16, size=4))
    assert extractor._cache is not None
    policy.set_training_mode(True)  # an update follows: the cache must go
    assert extractor._cache is None


def test_training_features_share_prefix_passes_exactly(words_model_dir):
    """A minibatch of states from a few episodes runs one pass per longest context, with per-state results."""
    venv = make_sb3_vec_env("TextGen-v0", 4, seed=0, **env_kwargs(words_model_dir))
    model = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": words_model_dir}, n_steps=16, seed=0)
    model.learn(64)
    obs = {k: torch.as_tensor(v.reshape(-1, v.shape[-1])) for k, v in model.rollout_buffer.observations.items()}
    extractor = model.policy.features_extractor.train()
    calls = []
    hook = extractor.lm.base_model.register_forward_hook(lambda _m, _i, out: calls.append(len(out.last_hidden_state)))
    shared = extractor(obs)
    hook.remove()
    one_by_one = torch.cat([extractor({k: v[i : i + 1] for k, v in obs.items()}) for i in range(len(shared))])
    torch.testing.assert_close(shared, one_by_one, atol=1e-5, rtol=1e-5)
    assert calls[0] < len(shared) / 2  # 64 states of about 12 episodes


def test_save_load_predict_round_trip(words_model_dir, tmp_path):
    venv = make_sb3_vec_env("TextGen-v0", 4, seed=0, **env_kwargs(words_model_dir))
    model = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": words_model_dir}, n_steps=16, learning_rate=3e-3)
    model.learn(128)
    model.save(tmp_path / "ppo")
    loaded = PPO.load(tmp_path / "ppo", env=venv)
    for name, tensor in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[name], tensor, atol=0, rtol=0)
    obs = venv.reset()
    single = {key: value[0] for key, value in obs.items()}
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded.predict(single, deterministic=True)[0].shape == ()  # one unbatched observation
    tensors, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        torch.testing.assert_close(model.policy.predict_values(tensors), loaded.policy.predict_values(tensors))
    model.policy.save(tmp_path / "policy.pth")  # the policy alone, too
    alone = LMActorCriticPolicy.load(tmp_path / "policy.pth")
    assert alone.lm_kwargs["model"] == words_model_dir
    with torch.no_grad():
        torch.testing.assert_close(alone.predict_values(tensors), model.policy.predict_values(tensors))


def test_bad_policy_settings_fail_at_construction(words_model_dir, tiny_model_dir):
    venv = make_sb3_vec_env("TextGen-v0", 2, **env_kwargs(words_model_dir))
    with pytest.raises(ValueError, match="vocabulary of 512 tokens"):
        PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": tiny_model_dir})
    with pytest.raises(ValueError, match="net_arch"):
        PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": words_model_dir, "net_arch": [64]})
    flat = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="input_ids"):
        PPO(LMActorCriticPolicy, flat, policy_kwargs={"model": words_model_dir})


# --- the env's reference model: KL shaping and action masks -------------------------------------------------------
def test_maskable_ppo_with_reference_masks_and_kl_reward(words_model_dir):
    kw = env_kwargs(words_model_dir, reference_model=words_model_dir, kl_coef=0.05, action_mask="top_k", top_k=4)
    venv = make_sb3_vec_env("TextGen-v0", 4, seed=0, **kw)
    kl_rewards = []

    def record(local_vars: dict, _globals: dict) -> bool:
        infos = local_vars["infos"]
        kl_rewards.extend(info["kl_reward"] == pytest.approx(0.05 * info["ref_logprob"]) for info in infos)
        return True  # keep training

    # The env refuses a masked action, so a run that finishes never sampled one.
    model = MaskablePPO(MaskableLMActorCriticPolicy, venv, policy_kwargs={"model": words_model_dir}, n_steps=16, seed=0)
    model.learn(128, callback=record)
    assert len(kl_rewards) == 128 and all(kl_rewards)  # every step's info reached SB3 with its KL reward
    buffer_masks = model.rollout_buffer.action_masks  # float32 (n_steps * n_envs, vocab) after flattening
    assert buffer_masks.dtype == np.float32 and (buffer_masks.sum(axis=-1) <= 5).all()

    single = gym.make("TextGen-v0", **kw)  # the snippet: predict with one env's masks
    obs, _ = single.reset(seed=0)
    for _ in range(NEW_TOKENS):
        masks = single.unwrapped.action_masks()
        action, _ = model.predict(obs, action_masks=masks)
        assert masks[action]
        obs, _, terminated, truncated, _ = single.step(int(action))
        if terminated or truncated:
            break


# --- examples -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script, extra",
    [
        ("sb3_ppo.py", ["--algo", "ppo"]),
        ("sb3_ppo.py", ["--algo", "a2c"]),
        ("sb3_maskable_ppo.py", []),
    ],
)
def test_sb3_example_runs(tmp_path, script, extra):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--model", "tiny", "--timesteps", "64", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "reward" in result.stdout


# --- real checkpoints: bfloat16, dropout, GPT-2 -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_words_dir(words_model_dir, tmp_path_factory):
    from checkpoints import save_bf16_copy

    return save_bf16_copy(words_model_dir, tmp_path_factory.mktemp("bf16"))


@pytest.mark.parametrize("name", ["PPO", "MaskablePPO"])
def test_lm_policy_trains_fp32_master_weights_of_a_bf16_checkpoint(bf16_words_dir, name):
    """A bfloat16 checkpoint trains (no dtype clash of the LM and the value head), and with a small learning rate
    its weights still move: updates to bfloat16 weights would round to nothing."""
    algo, policy = (PPO, LMActorCriticPolicy) if name == "PPO" else (MaskablePPO, MaskableLMActorCriticPolicy)
    lengths = env_kwargs(bf16_words_dir, reward_model=lambda prompts, completions: [len(c) / 9 for c in completions])
    venv = make_sb3_vec_env("TextGen-v0", 2, seed=0, **lengths)
    model = algo(policy, venv, policy_kwargs={"model": bf16_words_dir}, n_steps=8, batch_size=16, learning_rate=1e-5)
    assert all(p.dtype == torch.float32 for p in model.policy.parameters())
    before = {key: p.detach().clone() for key, p in model.policy.named_parameters()}
    model.learn(16)
    weight = "features_extractor.lm.model.layers.0.self_attn.q_proj.weight"
    moved = (model.policy.get_parameter(weight) != before[weight]).float().mean()
    assert moved > 0.5  # in bfloat16 only the weights smaller than about 128 * lr would move
    # The heads follow whatever dtype the trunk is in (here cast to bfloat16 after loading).
    model.policy.features_extractor.lm.to(torch.bfloat16)
    tensors, _ = model.policy.obs_to_tensor(venv.reset())
    with torch.no_grad():
        _, values, log_probs = model.policy(tensors)
    assert values.dtype == log_probs.dtype == torch.float32


@pytest.fixture(scope="module")
def dropout_dirs(words_model_dir, tmp_path_factory):
    from checkpoints import make_gpt2_model, save_with_attention_dropout

    return {
        "llama-attention-dropout": save_with_attention_dropout(words_model_dir, tmp_path_factory.mktemp("dropout")),
        "gpt2": make_gpt2_model(words_model_dir, tmp_path_factory.mktemp("gpt2"), dropout=0.3),
    }


@pytest.mark.parametrize("kind", ["llama-attention-dropout", "gpt2"])
def test_dropout_is_off_so_training_log_probs_equal_rollout_log_probs(dropout_dirs, kind):
    """SB3 rolls out in eval mode and trains in train mode: with the LM's dropout on, the ratio at PPO's first
    step would not be 1."""
    model_dir = dropout_dirs[kind]
    venv = make_sb3_vec_env("TextGen-v0", 4, seed=0, **env_kwargs(model_dir))
    policy = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": model_dir}, seed=0).policy
    obs, _ = policy.obs_to_tensor(venv.reset())
    actions = torch.arange(4, 8)
    policy.set_training_mode(False)
    with torch.no_grad():
        rollout = policy.get_distribution(obs).log_prob(actions)
    policy.set_training_mode(True)
    _, training, _ = policy.evaluate_actions(obs, actions)
    torch.testing.assert_close(training.detach(), rollout, atol=1e-6, rtol=0)


def test_kv_cache_tells_a_prompt_with_a_token_in_front_from_an_appended_token(words_model_dir):
    """A new episode whose prompt is the old context with one more token in front is no one-token extension."""
    venv = make_sb3_vec_env("TextGen-v0", 2, **env_kwargs(words_model_dir))
    policy = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": words_model_dir}).policy
    extractor = policy.features_extractor
    policy.set_training_mode(False)
    tok = venv.get_attr("tokenizer")[0]
    width = venv.observation_space["input_ids"].shape[0]

    def observation(prompts: list[str]) -> dict[str, torch.Tensor]:
        ids, mask = np.zeros((2, width), dtype=np.int64), np.zeros((2, width), dtype=np.int64)
        for row, text in enumerate(prompts):
            tokens = tok(text)["input_ids"]
            ids[row, 4 - len(tokens) : 4], mask[row, 4 - len(tokens) : 4] = tokens, 1
        return {"input_ids": torch.as_tensor(ids).float(), "attention_mask": torch.as_tensor(mask).float()}

    with torch.no_grad():
        extractor(observation(["say yes", "say ok"]))
        new = observation(["please say yes", "say ok"])
        cached = extractor(new)
    with torch.enable_grad():
        full = extractor(new).detach()
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["PPO", "MaskablePPO"])
def test_kl_penalty_callback_completes_the_kl_reward_in_the_rollout_buffer(words_model_dir, name):
    """The buffer's reward is the env's (score + kl_coef · log π_ref) minus kl_coef · log π(a_t | s_t)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from agents.sb3 import KLPenaltyCallback

    class Recorder(BaseCallback):
        def _on_step(self) -> bool:
            env_rewards.append(self.locals["rewards"].copy())
            return True

    algo, policy = (PPO, LMActorCriticPolicy) if name == "PPO" else (MaskablePPO, MaskableLMActorCriticPolicy)
    kw = env_kwargs(words_model_dir, reference_model=words_model_dir, kl_coef=0.2)
    venv = make_sb3_vec_env("TextGen-v0", 2, seed=0, **kw)
    model = algo(policy, venv, policy_kwargs={"model": words_model_dir}, n_steps=8, batch_size=16, seed=0)
    env_rewards: list[np.ndarray] = []
    model.learn(16, callback=[Recorder(), KLPenaltyCallback(0.2)])
    buffer = model.rollout_buffer
    log_probs = buffer.log_probs.reshape(2, 8).T  # SB3 flattened it env-major for training; rewards it left
    expected = np.stack(env_rewards) - 0.2 * log_probs  # (n_steps, n_envs)
    np.testing.assert_allclose(buffer.rewards, expected, atol=1e-5)
    assert not np.allclose(buffer.rewards, np.stack(env_rewards))
