"""PPO, GRPO and RLOO: they learn a small task, their pieces compute what they claim, runs save and resume."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from synthetic_task import NEW_TOKENS, yes_rate

import textgym  # noqa: F401
from agents import GRPO, PPO, RLOO
from agents.ppo import gae

pytestmark = pytest.mark.usefixtures("one_thread")


def make_envs(model_dir: str, num_envs: int = 8, reward_model=yes_rate):
    return gym.make_vec(
        "TextGen-v0",
        num_envs=num_envs,
        model=model_dir,
        prompts=["say yes", "please say yes", "say ok"],
        max_prompt_tokens=4,
        max_new_tokens=NEW_TOKENS,
        reward_model=reward_model,
    )


# Seed 0, 2400 episodes (75 iterations of 32), β = 0.01; each run takes seconds on a CPU.
@pytest.mark.parametrize(("algo", "lr"), [(PPO, 3e-3), (GRPO, 1e-3), (RLOO, 1e-3)])
def test_learns_synthetic_task_to_90_percent_of_max(words_model_dir, algo, lr):
    agent = algo(
        words_model_dir, make_envs(words_model_dir), batch_size=32, minibatch_size=16, learning_rate=lr, kl_coef=0.01
    )
    agent.learn(2400, progress_bar=False)
    rewards = [h["rollout/reward_mean"] for h in agent.history]
    assert rewards[0] < 0.2  # the untrained policy is near random
    assert np.mean(rewards[-3:]) >= 0.9, rewards[-10:]
    assert agent.history[-1]["train/kl_ref"] > 1  # it moved away from the reference to get there


def test_gae_matches_direct_computation():
    rewards = torch.tensor([[0.0, 0.5, 1.0, 0.0], [0.2, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 0.4, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values * mask, mask, gamma, lam)
    for row in range(2):
        n = int(mask[row].sum())
        v = [*values[row, :n].tolist(), 0.0]  # the value after the last step is 0
        deltas = [rewards[row, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        expected = [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]
        torch.testing.assert_close(advantages[row, :n], torch.tensor(expected))
        torch.testing.assert_close(returns[row, :n], advantages[row, :n] + values[row, :n])
        assert advantages[row, n:].abs().sum() == 0


def test_group_advantages(words_model_dir):
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 4.0])
    kl = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    grpo = GRPO(words_model_dir, make_envs(words_model_dir, 4), group_size=4, batch_size=8, kl_coef=0.5)
    adv = grpo.advantages(scores, kl).view(2, 4)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(2))
    torch.testing.assert_close(adv.std(dim=1), torch.ones(2), atol=1e-3, rtol=0)
    rloo = RLOO(words_model_dir, make_envs(words_model_dir, 4), group_size=4, batch_size=8, kl_coef=0.5)
    adv = rloo.advantages(scores, kl)
    rewards = scores - 0.5 * kl
    torch.testing.assert_close(adv[0], rewards[0] - rewards[1:4].mean())
    torch.testing.assert_close(adv[7], rewards[7] - rewards[4:7].mean())


def test_training_pass_reproduces_sampling_logprobs(words_model_dir):
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=16, temperature=0.7)
    batch = agent.collect()
    width = batch.completion_ids.shape[1]
    with torch.no_grad():
        out = agent.policy.evaluate(batch.input_ids, batch.attention_mask, width, temperature=0.7, with_values=True)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(out.logprobs[mask], batch.logprobs[mask], atol=1e-4, rtol=0)
    # before any update the reference is the policy
    ref = agent.policy.reference_logprobs(batch.input_ids, batch.attention_mask, width, temperature=0.7)
    torch.testing.assert_close(ref[mask], out.logprobs[mask])


def test_rows_sharing_a_prompt_run_it_once_with_the_same_outputs_and_gradients(words_model_dir):
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=8)
    batch = agent.collect()
    ids, mask, width = batch.input_ids.clone(), batch.attention_mask.clone(), batch.completion_ids.shape[1]
    prompt = ids.shape[1] - width
    for first, rows in ((0, slice(0, 5)), (5, slice(5, 8))):  # two groups: rows 0-4 share row 0's prompt, 5-7 row 5's
        ids[rows, :prompt], mask[rows, :prompt] = ids[first, :prompt], mask[first, :prompt]
    params = agent.policy.trainable_parameters()

    def outputs_and_gradients(rows: list[slice]) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        evals = [agent.policy.evaluate(ids[r], mask[r], width, 0.7, with_values=True) for r in rows]
        outs = [torch.cat([getattr(e, name) for e in evals]) for name in ("logprobs", "entropy", "values")]
        loss = sum((o * batch.completion_mask).sum() for o in outs)
        return [o.detach() for o in outs], torch.autograd.grad(loss, params)

    positions = []  # how many token positions the trunk ran
    hook = agent.policy.lm.get_input_embeddings().register_forward_hook(lambda m, i, o: positions.append(i[0].numel()))
    shared, shared_grads = outputs_and_gradients([slice(0, 8)])
    hook.remove()
    assert sum(positions) == 2 * prompt + 8 * (width - 1)  # each prompt once, then the completions on its cache
    alone, alone_grads = outputs_and_gradients([slice(i, i + 1) for i in range(8)])  # one row: nothing to share
    for a, b in zip(shared, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for a, b in zip(shared_grads, alone_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_seeded_runs_are_reproducible(words_model_dir):
    runs = []
    for _ in range(2):
        agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=16, learning_rate=1e-3, seed=3)
        agent.learn(48, progress_bar=False)
        runs.append((agent.history, agent.policy.lm.model.embed_tokens.weight.detach().clone()))
    assert [h["rollout/reward_mean"] for h in runs[0][0]] == [h["rollout/reward_mean"] for h in runs[1][0]]
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=0, rtol=0)


def test_save_writes_a_hugging_face_model(words_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, learning_rate=1e-3)
    agent.learn(16, progress_bar=False)
    agent.save(tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    for name, tensor in agent.policy.lm.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert (tmp_path / "model" / "value_head.safetensors").exists()
    # and the saved policy drives an env made from the same directory
    PPO(str(tmp_path / "model"), make_envs(str(tmp_path / "model")), batch_size=8).learn(8, progress_bar=False)


@pytest.mark.parametrize("algo", [PPO, GRPO])
def test_resume_continues_a_run(words_model_dir, tmp_path, algo):
    settings = {"batch_size": 8, "minibatch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 2}
    first = algo(words_model_dir, make_envs(words_model_dir, 4), run_dir=tmp_path, **settings)
    first.learn(40, progress_bar=False)  # 5 iterations: checkpoints after 2, 4 and the last
    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-000005"]  # only the newest is kept

    again = algo(words_model_dir, make_envs(words_model_dir, 4), run_dir=tmp_path, **settings)
    with pytest.raises(FileExistsError, match="resume=True"):
        again.learn(64, progress_bar=False)
    again.learn(64, resume=True, progress_bar=False)
    assert (again.iteration, again.episodes_seen) == (8, 64)
    smaller = algo(words_model_dir, make_envs(words_model_dir, 4), run_dir=tmp_path, **settings, microbatch_size=2)
    smaller.learn(64, resume=True, progress_bar=False)  # fewer episodes a pass: the same run, taken over
    assert smaller.iteration == 8
    for name, tensor in first.policy.lm.state_dict().items():  # it started from the first run's weights...
        assert not torch.equal(again.policy.lm.state_dict()[name], tensor) or "norm" in name
    rows = (tmp_path / "progress.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [8 * i for i in range(1, 9)]  # ...and logged every step once
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "checkpoint-000008"}

    other = algo(words_model_dir, make_envs(words_model_dir, 4), run_dir=tmp_path, **{**settings, "learning_rate": 1})
    with pytest.raises(ValueError, match="another run"):
        other.learn(80, resume=True, progress_bar=False)


@pytest.mark.parametrize("model", ["words_model_dir", "words_t5_dir"])  # a causal LM, an encoder–decoder
def test_lora_uses_the_base_weights_as_reference(request, model):
    model_dir = request.getfixturevalue(model)
    agent = PPO(model_dir, make_envs(model_dir), batch_size=16, lora_rank=4, learning_rate=1e-2)
    assert agent.policy.reference is None  # no copy of the trunk
    batch = agent.collect()
    width = batch.completion_ids.shape[1]
    before = agent.policy.reference_logprobs(batch.input_ids, batch.attention_mask, width)
    agent.train_on_batch(batch)
    with torch.no_grad():
        now = agent.policy.evaluate(batch.input_ids, batch.attention_mask, width).logprobs
    after = agent.policy.reference_logprobs(batch.input_ids, batch.attention_mask, width)
    torch.testing.assert_close(after, before)  # adapters off: the reference did not move...
    assert not torch.allclose(now, before)  # ...while the policy did


def test_separate_critic_trains(words_model_dir):
    """The value head reads a trunk of its own, a copy of the policy's that the value loss trains at the value
    learning rate: its weights share no storage with the policy's, sit in the critic's optimizer group, and move."""
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=16, separate_critic=True)
    critic, actor = agent.policy.critic_trunk, agent.policy.lm
    assert critic is not None
    assert not {p.data_ptr() for p in critic.parameters()} & {p.data_ptr() for p in actor.parameters()}
    assert {id(p) for p in critic.parameters()} <= {id(p) for p in agent.optimizer.param_groups[1]["params"]}
    before = {name: p.detach().clone() for name, p in critic.named_parameters()}
    agent.learn(16, progress_bar=False)
    moved = [name for name, p in critic.named_parameters() if not torch.equal(p, before[name])]
    assert len(moved) > len(before) // 2, moved  # the value loss's gradients reached the critic's trunk
    assert np.isfinite(agent.history[-1]["train/value_loss"])


def test_bad_settings_fail_clearly(words_model_dir, tiny_model_dir):
    with pytest.raises(ValueError, match="not a multiple of the env's num_envs"):
        PPO(words_model_dir, make_envs(words_model_dir, 8), batch_size=12, minibatch_size=4)
    with pytest.raises(ValueError, match="tokenizer"):
        PPO(tiny_model_dir, make_envs(words_model_dir))
    with pytest.raises(ValueError, match="group_size"):
        GRPO(words_model_dir, make_envs(words_model_dir), batch_size=16, group_size=3)
    with pytest.raises(TypeError, match="vector env"):
        PPO(words_model_dir, gym.make("TextGen-v0", model=words_model_dir, prompts=["say yes"]))


def test_nan_reward_stops_training_with_the_reward_models_name(words_model_dir):
    def broken(prompts, completions):
        return [float("nan")] * len(completions)

    agent = GRPO(words_model_dir, make_envs(words_model_dir, reward_model=broken), batch_size=16)
    with pytest.raises(ValueError, match="NaN"):
        agent.learn(16, progress_bar=False)


@pytest.mark.parametrize("algo", [PPO, GRPO])
def test_zero_kl_coef_skips_the_reference_pass(words_model_dir, algo):
    agent = algo(words_model_dir, make_envs(words_model_dir), batch_size=16, kl_coef=0.0)

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference pass ran although β = 0")

    agent.policy.reference_logprobs = no_reference
    agent.learn(16, progress_bar=False)
    assert np.isnan(agent.history[-1]["train/kl_ref"])
