"""The LM agents on checkpoints built the way published ones are: bf16 weights, dropout, autocast; and the trainer
options a real run needs. Each test fails if the behaviour it names is removed."""

from __future__ import annotations

import csv
import math
import platform
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from synthetic_task import NEW_TOKENS, yes_rate

import textgym  # noqa: F401
from agents import GRPO, PPO, RLOO
from agents.grpo import GRPOConfig
from agents.losses import (
    clipped_surrogate,
    completion_mean,
    kl_estimate,
    masked_mean,
    truncated_importance_weights,
)
from agents.optim import lr_factor
from agents.policy import _logprobs_and_entropy, completion_logits, selects_logits
from agents.sampling_copy import GROUPED_DECODE_ATTENTION, PackedLinear, can_pack, grouped_decode_attention

pytestmark = pytest.mark.usefixtures("one_thread")

# Sampled log-probs against one full forward pass, per precision. bf16 keeps 8 bits of mantissa: on the embedded
# model its KV-cached and full passes differ by up to 0.17 nats (mean 0.04) over 8 × 32 sampled tokens.
BF16_SAMPLER_TOLERANCE = 0.25


def make_envs(model_dir, num_envs: int = 4, reward_model=yes_rate, **kwargs):
    return gym.make_vec(
        "TextGen-v0",
        num_envs=num_envs,
        model=str(model_dir),
        prompts=["say yes", "please say yes", "say ok", "yes yes", "ok say", "please ok"],
        max_prompt_tokens=4,
        max_new_tokens=NEW_TOKENS,
        reward_model=reward_model,
        **kwargs,
    )


def resave(src: str, out, dtype: torch.dtype = torch.float32, **config_changes):
    """The model in ``src`` saved again in ``dtype`` with some config fields changed (e.g. dropout)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **config_changes)
    model.to(dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def bf16_model_dir(words_model_dir, tmp_path_factory):
    return resave(words_model_dir, tmp_path_factory.mktemp("bf16"), torch.bfloat16)


@pytest.fixture(scope="module")
def dropout_model_dir(words_model_dir, tmp_path_factory):
    return resave(words_model_dir, tmp_path_factory.mktemp("dropout"), attention_dropout=0.3)


def first_minibatch_kl(agent) -> float:
    """Approximate KL to π_old of an update's first minibatch, before any weight changed: 0 if π_old is π. With
    several minibatches per batch π_old comes from the sampler or a pass before the update (with one, from the
    update's own pass: its ratio is 1 by construction and would test nothing)."""
    assert not agent.one_step_per_batch
    seen = []
    agent.kl_exceeded = lambda approx_kl: seen.append(approx_kl) or False  # called once per minibatch, in order
    agent.learn(agent.config.batch_size, progress_bar=False)
    return seen[0]


# --- bf16 checkpoints, dropout, precision ----------------------------------------------------------------------
def test_bf16_checkpoint_trains_in_fp32_master_weights(bf16_model_dir):
    import json
    from pathlib import Path

    assert json.loads((Path(bf16_model_dir) / "config.json").read_text())["dtype"] == "bfloat16"
    agent = PPO(bf16_model_dir, make_envs(bf16_model_dir), batch_size=8, minibatch_size=8, learning_rate=1e-5)
    before = {k: v.float().clone() for k, v in agent.policy.lm.state_dict().items()}
    agent.learn(8, progress_bar=False)
    changed = sum((v.float() != before[k]).sum().item() for k, v in agent.policy.lm.state_dict().items())
    total = sum(v.numel() for v in before.values())
    assert changed / total > 0.5  # in pure bf16 an update of 1e-5 rounds away: 0.00 of the elements changed
    assert agent.policy.lm.dtype == torch.float32


@pytest.mark.parametrize("algo", [PPO, GRPO, RLOO])
def test_dropout_is_off_so_the_first_ratio_is_one(dropout_model_dir, algo):
    group = {} if algo is PPO else {"group_size": 4}
    agent = algo(dropout_model_dir, make_envs(dropout_model_dir), batch_size=8, minibatch_size=4, epochs=1, **group)
    assert first_minibatch_kl(agent) < 1e-7  # under dropout: ~1e-3
    assert agent.policy.lm.config.attention_dropout == 0.3  # the model has dropout; it is just never active
    assert not agent.policy.lm.training


@pytest.fixture
def native_bf16(monkeypatch):
    """bf16's numbers are tested on any CPU; only its speed needs bfloat16 hardware."""
    monkeypatch.setattr("agents.precision.cpu_has_native_bf16", lambda: True)


@pytest.mark.parametrize("algo", [GRPO, RLOO])
def test_bf16_autocast_recomputes_old_logprobs_in_the_update_precision(words_model_dir, algo, native_bf16):
    settings = {"batch_size": 8, "minibatch_size": 4, "group_size": 4, "precision": "bf16", "kl_coef": 0.1}
    agent = algo(words_model_dir, make_envs(words_model_dir), **settings)
    assert first_minibatch_kl(agent) < 1e-10
    # the bf16 sampler's log-probs taken as π_old under an autocast update: ratio != 1
    stale = algo(words_model_dir, make_envs(words_model_dir), recompute_old_logprobs=False, **settings)
    assert first_minibatch_kl(stale) > 1e-8


@pytest.mark.parametrize("algo", [PPO, GRPO, RLOO])
def test_one_step_per_batch_takes_pi_old_from_the_update_pass_without_another_pass(words_model_dir, algo, monkeypatch):
    group = {} if algo is PPO else {"group_size": 4, "recompute_old_logprobs": True}
    settings = {"batch_size": 8, "minibatch_size": 8, "epochs": 1, "kl_coef": 0.1, **group}

    def first_update(separate_pass: bool) -> tuple[dict[str, float], int]:
        agent = algo(words_model_dir, make_envs(words_model_dir), **settings)
        if separate_pass:  # the path of several steps per batch: π_old (and values) by a pass before the update
            monkeypatch.setattr(type(agent), "one_step_per_batch", property(lambda self: False))
        chunked, calls = agent.policy.evaluate_in_chunks, []
        monkeypatch.setattr(agent.policy, "evaluate_in_chunks", lambda *a, **k: calls.append(1) or chunked(*a, **k))
        agent.learn(8, progress_bar=False)
        monkeypatch.undo()
        return agent.history[0], len(calls)

    (own, own_passes), (separate, separate_passes) = first_update(False), first_update(True)
    passes, histories = [own_passes, separate_passes], [own, separate]
    assert passes == [0, 1]
    assert histories[0]["train/approx_kl"] == 0.0  # the ratio is exactly 1
    for key in ("train/policy_loss", "train/grad_norm", "train/kl_ref", "rollout/reward_mean"):
        assert histories[0][key] == pytest.approx(histories[1][key], rel=1e-5, abs=1e-7), key
    if algo is PPO:
        assert histories[0]["train/value_loss"] == pytest.approx(histories[1]["train/value_loss"], rel=1e-5)


@pytest.mark.parametrize("algo", [PPO, GRPO, RLOO])
@pytest.mark.parametrize(("batch_size", "epochs"), [(8, 1), (16, 2)])
def test_a_minibatch_in_micro_batches_takes_the_step_of_one_pass(words_model_dir, algo, batch_size, epochs):
    """Minibatches of 8 in passes of 3, 3 and 2 episodes: the summed gradients, the step and the logged losses are
    those of one pass. With one minibatch per batch π_old then comes from a pass of its own (in fp32 equal to the
    update's); with two, the second minibatch's passes run on the weights the first one's step left."""
    group = {} if algo is PPO else {"group_size": 4}
    settings = {"batch_size": batch_size, "minibatch_size": 8, "epochs": epochs, "kl_coef": 0.1, "ent_coef": 0.01}

    def first_update(microbatch_size: int | None) -> tuple[dict[str, float], list[torch.Tensor], int]:
        agent = algo(words_model_dir, make_envs(words_model_dir), microbatch_size=microbatch_size, **settings, **group)
        gradients, forward = [], agent.policy.evaluate
        passes = []  # the update's passes (with gradients), by their episodes

        def evaluate(ids, *args, **kwargs):
            passes.extend([len(ids)] if torch.is_grad_enabled() else [])
            return forward(ids, *args, **kwargs)

        agent.policy.evaluate = evaluate
        step = agent.optimizer.step
        params = agent.policy.trainable_parameters()
        agent.optimizer.step = lambda *a, **k: gradients.append(torch.cat([p.grad.flatten() for p in params])) or step()
        agent.learn(batch_size, progress_bar=False)
        return agent.history[0], gradients, passes

    (whole, whole_grads, whole_passes), (micro, micro_grads, micro_passes) = first_update(None), first_update(3)
    assert whole_passes == [8] * (batch_size // 8 * epochs)
    assert micro_passes == [3, 3, 2] * (batch_size // 8 * epochs)
    assert len(micro_grads) == len(whole_grads) == batch_size // 8 * epochs
    for a, b in zip(whole_grads, micro_grads):
        assert (a - b).norm() < 1e-5 * a.norm()
    names = ["policy_loss", "entropy", "clip_fraction", "approx_kl", "grad_norm", "kl_ref"]
    for key in [f"train/{name}" for name in names + (["value_loss"] if algo is PPO else [])]:
        assert micro[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key


def test_micro_batches_larger_than_the_minibatch_are_refused(words_model_dir):
    with pytest.raises(ValueError, match="microbatch_size must be positive and at most minibatch_size"):
        GRPO(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=4, microbatch_size=5)


def test_ppo_bf16_autocast_first_ratio_is_one(words_model_dir, native_bf16):
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=4, epochs=1, precision="bf16")
    assert first_minibatch_kl(agent) < 1e-7


def test_whole_sequence_passes_use_math_attention_under_cpu_bf16_autocast_only():
    from agents.policy import whole_sequence_attention

    cpu = torch.device("cpu")
    with whole_sequence_attention(cpu):  # float32: the fused kernel is the faster one, PyTorch keeps its choice
        assert torch.backends.cuda.flash_sdp_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16), whole_sequence_attention(cpu):  # its backward is slow
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()


@pytest.mark.skipif(not can_pack(), reason="oneDNN's bfloat16 linear layers do not run on this CPU")
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_gives_f_linear_bit_for_bit(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80, bias=bias)
    packed = PackedLinear(linear, rows_hint=8)
    for rows in ([8, 48], [3, 5, 48]):  # a decode step; a prompt's encoding
        x = torch.randn(rows).to(torch.bfloat16)
        bf16_bias = None if linear.bias is None else linear.bias.to(torch.bfloat16)
        expected = torch.nn.functional.linear(x, linear.weight.to(torch.bfloat16), bf16_bias)
        assert torch.equal(packed(x), expected)
    assert torch.equal(packed.weight, linear.weight.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_decode_attention_equals_sdpa(dtype):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    for queries in (1, 4):  # a decode step (grouped), a prompt (transformers' own path)
        query = torch.randn(2, 6, queries, 8).to(dtype)  # (B, heads, L, d)
        key, value = torch.randn(2, 2, 5, 8).to(dtype), torch.randn(2, 2, 5, 8).to(dtype)  # 2 key/value heads
        expected, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.3)
        got, _ = grouped_decode_attention(module, query, key, value, None, scaling=0.3)
        assert got.shape == expected.shape == (2, queries, 6, 8)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_bf16_samples_with_a_bfloat16_copy_refreshed_before_each_rollout(words_model_dir, teacher_forced, native_bf16):
    settings = {"batch_size": 8, "minibatch_size": 4, "group_size": 4, "learning_rate": 1e-3}
    agent = GRPO(words_model_dir, make_envs(words_model_dir), precision="bf16", **settings)
    assert agent.sampling_lm is not agent.policy.lm and agent.sampling_lm.dtype == torch.bfloat16
    packed = {name: m for name, m in agent.sampling_lm.named_modules() if isinstance(m, PackedLinear)}
    assert ("lm_head" in packed) == can_pack()  # on a CPU with oneDNN bfloat16, every linear layer is packed
    assert agent.sampling_lm.config._attn_implementation == GROUPED_DECODE_ATTENTION
    assert agent.policy.lm.config._attn_implementation == "sdpa"  # the copy's, not the policy's
    errors, train = [], agent.train_on_batch

    def checked(batch):  # sampled by the bf16 rounding of the current weights, with that model's log-probs
        master = dict(agent.policy.lm.named_parameters(remove_duplicate=False))
        sampler = {**dict(agent.sampling_lm.named_parameters()), **{f"{n}.weight": m.weight for n, m in packed.items()}}
        assert len(sampler) > len(packed) and all(
            torch.equal(w, master[n].to(torch.bfloat16)) for n, w in sampler.items()
        )
        mask = batch.completion_mask.bool()
        errors.append((teacher_forced(agent.sampling_lm, batch) - batch.logprobs)[mask].abs().max().item())
        return train(batch)

    agent.train_on_batch = checked
    agent.learn(24, progress_bar=False)
    assert len(errors) == 3 and max(errors) < BF16_SAMPLER_TOLERANCE, errors


def test_bf16_on_a_cpu_without_native_bfloat16_falls_back_to_fp32_with_a_warning(words_model_dir, monkeypatch):
    monkeypatch.setattr("agents.precision.cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16"):
        agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=8, precision="bf16")
    assert agent.precision == "fp32" and agent.sampling_lm is agent.policy.lm


# In a process of its own, so that the heap's history is known. torch asks for 64-byte-aligned blocks, and glibc
# (before 2.38) serves an aligned request from a free block only if it has room to spare for the alignment: the first
# block freed is a few bytes short for the second request of its size, so the steady state starts at the third.
_FAULTS_FILLING = """
import resource, torch
from agents.precision import keep_freed_host_memory

assert keep_freed_host_memory()

def faults_filling(megabytes):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)  # freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

warm = [faults_filling(256) for _ in range(3)]
print(warm, sum(faults_filling(megabytes) for megabytes in (256, 256, 128, 64, 256)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_memory_freed_by_the_process_is_reused_without_faulting_it_in_again():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _FAULTS_FILLING], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    warm, steady = run.stdout.rsplit(maxsplit=1)
    # glibc's defaults: a fresh mapping for every block, all its pages faulted in: 65,536 for each 256 MiB
    assert int(steady) < 256 * 2**20 / 4096 / 10, f"warming up: {warm} page faults, then {steady}"


# --- the sampler's drift: truncated importance sampling ----------------------------------------------------------
def test_truncated_importance_weights_are_the_capped_ratio_without_gradient():
    trainer = torch.tensor([[0.5, 0.2, 0.9, 0.3]]).log().requires_grad_()
    sampler = torch.tensor([[1.0, 0.2, 0.3, 0.6]]).log()
    weights = truncated_importance_weights(trainer, sampler, cap=2.0)  # ratios 0.5, 1, 3, 0.5
    torch.testing.assert_close(weights, torch.tensor([[0.5, 1.0, 2.0, 0.5]]))
    assert not weights.requires_grad


def with_sampler_ratios(agent, teacher_forced, ratios: Callable[[torch.Tensor], torch.Tensor]):
    """One batch of ``agent``'s whose sampler log-probs are set so that π_old / π_sampler is ``ratios(mask)`` per
    token, the ratios, and the metrics of the update on it (one step per batch: π_old is the update's own pass)."""
    batch = agent.collect()
    mask = batch.completion_mask.float()  # (E, T)
    chosen = ratios(mask)  # (E, T)
    batch.logprobs = (teacher_forced(agent.policy.lm, batch) - chosen.log()) * mask
    return batch, chosen, agent.train_on_batch(batch)


def test_grpo_weights_each_tokens_policy_gradient_by_the_capped_sampler_ratio(words_model_dir, teacher_forced):
    settings = {"batch_size": 8, "minibatch_size": 8, "group_size": 4, "kl_coef": 0.0}
    agent = GRPO(words_model_dir, make_envs(words_model_dir), tis_cap=2.0, **settings)
    pattern = torch.tensor([0.5, 1.0, 3.0, 0.8, 1.5])  # a period that is no divisor of the width: rows differ
    cycle = lambda mask: pattern[torch.arange(mask.numel()) % 5].view_as(mask)  # noqa: E731
    batch, ratios, metrics = with_sampler_ratios(agent, teacher_forced, cycle)
    mask = batch.completion_mask.float()
    scores = batch.rewards.sum(dim=1).view(-1, 4)  # (B, G)
    advantages = ((scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-4)).flatten()
    weighted = completion_mean(-advantages[:, None] * ratios.clamp(max=2.0), mask)  # the ratio π/π_old is 1
    assert weighted.item() != pytest.approx(completion_mean(-advantages[:, None] * mask, mask).item(), abs=1e-3)
    assert metrics["train/policy_loss"] == pytest.approx(weighted.item(), rel=1e-4, abs=1e-6)
    assert metrics["train/tis_ratio_mean"] == pytest.approx(masked_mean(ratios, mask).item(), rel=1e-4)
    assert metrics["train/tis_capped_fraction"] == pytest.approx(masked_mean((ratios > 2).float(), mask).item())
    assert metrics["train/sampler_logprob_error"] == pytest.approx(masked_mean(ratios.log().abs(), mask).item(), 1e-4)
    assert metrics["train/sampler_logprob_error_max"] == pytest.approx(math.log(3), rel=1e-4)


@pytest.mark.parametrize("algo", [PPO, GRPO, RLOO])
@pytest.mark.parametrize("ratio", [0.5, 3.0])
def test_every_algorithm_scales_its_policy_gradient_by_the_capped_ratio(words_model_dir, teacher_forced, algo, ratio):
    group = {"vf_coef": 0.0} if algo is PPO else {"group_size": 4}  # the value loss is not a policy gradient
    settings = {"batch_size": 8, "minibatch_size": 8, "epochs": 1, "kl_coef": 0.0, "max_grad_norm": 1e9, **group}

    def grad_norm(tis_cap: float | None) -> float:
        agent = algo(words_model_dir, make_envs(words_model_dir), tis_cap=tis_cap, **settings)
        _, _, metrics = with_sampler_ratios(agent, teacher_forced, lambda mask: torch.full_like(mask, ratio))
        return metrics["train/grad_norm"]

    plain = grad_norm(None)
    assert plain > 0
    assert grad_norm(2.0) == pytest.approx(min(ratio, 2.0) * plain, rel=1e-4)


@pytest.mark.parametrize("algo", [PPO, GRPO, RLOO])
def test_truncated_importance_sampling_is_a_no_op_when_the_trainer_samples_in_fp32(words_model_dir, algo):
    group = {} if algo is PPO else {"group_size": 4, "recompute_old_logprobs": True}  # π_old from a pass, not a copy
    settings = {"batch_size": 8, "minibatch_size": 4, "epochs": 2, "kl_coef": 0.1, **group}
    runs = [algo(words_model_dir, make_envs(words_model_dir), tis_cap=cap, **settings) for cap in (2.0, None)]
    corrected, plain = (agent.learn(16, progress_bar=False).history for agent in runs)
    for row, other in zip(corrected, plain):
        assert row["train/sampler_logprob_error_max"] < 1e-4 and row["train/tis_capped_fraction"] == 0
        assert row["train/tis_ratio_mean"] == pytest.approx(1, abs=1e-5)
        for key in ("train/policy_loss", "train/grad_norm", "train/approx_kl"):
            assert row[key] == pytest.approx(other[key], rel=1e-4, abs=1e-7), key


def test_the_bf16_sampling_copys_drift_is_logged_and_corrected(words_model_dir, native_bf16, tmp_path):
    settings = {"batch_size": 8, "minibatch_size": 8, "group_size": 4, "precision": "bf16", "tensorboard": False}
    corrected = GRPO(words_model_dir, make_envs(words_model_dir), run_dir=tmp_path, **settings)
    assert corrected.sampling_lm.dtype == torch.bfloat16
    plain = GRPO(words_model_dir, make_envs(words_model_dir), tis_cap=None, **settings)
    corrected.learn(16, progress_bar=False), plain.learn(8, progress_bar=False)
    with (tmp_path / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        assert 1e-4 < float(row["train/sampler_logprob_error"]) < float(row["train/sampler_logprob_error_max"])
        assert float(row["train/tis_ratio_mean"]) != 1.0
    assert corrected.history[0]["train/grad_norm"] != pytest.approx(plain.history[0]["train/grad_norm"], rel=1e-6)


# --- on-policy batches and exact resume ------------------------------------------------------------------------
@pytest.mark.parametrize("algo", [PPO, GRPO])
def test_every_token_was_sampled_by_the_weights_it_is_credited_to(words_model_dir, teacher_forced, algo):
    agent = algo(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=4, learning_rate=3e-3)
    errors = []
    train = agent.train_on_batch

    def checked(batch):  # the batch's sampled log-probs must be the current (pre-update) weights' log-probs
        mask = batch.completion_mask.bool()
        errors.append((teacher_forced(agent.policy.lm, batch) - batch.logprobs)[mask].abs().max().item())
        return train(batch)

    agent.train_on_batch = checked
    agent.learn(40, progress_bar=False)
    assert max(errors) < 1e-4, errors  # streamed batches carried episodes over updates: errors of ~1


@pytest.mark.parametrize("algo", [PPO, GRPO])
def test_resume_continues_exactly_as_an_uninterrupted_run(words_model_dir, tmp_path, algo):
    settings = {
        "batch_size": 8,
        "minibatch_size": 4,
        "learning_rate": 1e-3,
        "checkpoint_every": 1,
        "lr_schedule": "linear",
        "warmup_steps": 2,
        "normalize_rewards": True,
    }
    straight = algo(words_model_dir, make_envs(words_model_dir), **settings)
    straight.learn(32, progress_bar=False)

    first = algo(words_model_dir, make_envs(words_model_dir), run_dir=tmp_path, **settings)
    train = first.train_on_batch

    def killed_in_the_third_update(batch):
        if first.iteration == 2:
            raise KeyboardInterrupt
        return train(batch)

    first.train_on_batch = killed_in_the_third_update
    with pytest.raises(KeyboardInterrupt):
        first.learn(32, progress_bar=False)
    resumed = algo(words_model_dir, make_envs(words_model_dir), run_dir=tmp_path, **settings)
    resumed.learn(32, resume=True, progress_bar=False)

    keys = ("rollout/reward_mean", "train/policy_loss", "train/learning_rate")
    assert [[h[k] for k in keys] for h in straight.history] == [[h[k] for k in keys] for h in first.history] + [
        [h[k] for k in keys] for h in resumed.history
    ]
    for name, tensor in straight.policy.state_dict().items():
        torch.testing.assert_close(resumed.policy.state_dict()[name], tensor, atol=0, rtol=0)
    assert resumed.return_stats == straight.return_stats
    assert resumed.collector.generator.device.type == "cpu"  # sampler state loads on any device
    assert len((tmp_path / "progress.csv").read_text().splitlines()) == 1 + 4


# --- memory-light passes -----------------------------------------------------------------------------------------
def test_chunked_passes_equal_one_pass(words_model_dir):
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=8)
    batch = agent.collect()
    ids, mask, width = batch.input_ids, batch.attention_mask, batch.completion_ids.shape[1]
    with torch.no_grad():
        whole = agent.policy.evaluate(ids, mask, width, 0.7, with_values=True)
    chunked = agent.policy.evaluate_in_chunks(ids, mask, width, 0.7, with_values=True, chunk_size=3)
    for name in ("logprobs", "entropy", "values"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-5, rtol=0)
    ref = agent.policy.reference_logprobs(ids, mask, width, 0.7, chunk_size=3)
    torch.testing.assert_close(ref, whole.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_output_layer_on_kept_positions_equals_the_whole_pass_there(words_model_dir, precision):
    """A multi-turn batch's env-written tokens need no logits: computed only where ``keep`` says, the log-probs,
    entropies, values and gradients equal the whole pass's there, and are 0 elsewhere."""
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, minibatch_size=8)
    batch = agent.collect()
    ids, mask, width = batch.input_ids, batch.attention_mask, batch.completion_ids.shape[1]
    ids = torch.cat([ids, ids[:3]])  # rows sharing a prompt: the pass over shared prompts too
    mask = torch.cat([mask, mask[:3]])
    keep = torch.rand(len(ids), width, generator=torch.Generator().manual_seed(0)) < 0.3
    assert selects_logits(agent.policy.lm)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    results = []
    for kept in (None, keep):
        agent.policy.zero_grad()
        with autocast:
            out = agent.policy.evaluate(ids, mask, width, 0.7, with_values=True, keep=kept)
        ((out.logprobs * keep).sum() + (out.entropy * keep).sum()).backward()
        grads = [p.grad.clone() for p in agent.policy.lm.parameters()]
        with autocast:
            ref = agent.policy.reference_logprobs(ids, mask, width, 0.7, chunk_size=3, keep=kept)
            chunked = agent.policy.evaluate_in_chunks(ids, mask, width, 0.7, with_values=True, chunk_size=3, keep=kept)
        results.append((out, grads, ref, chunked))
    (whole, whole_grads, whole_ref, whole_chunked), (part, part_grads, part_ref, part_chunked) = results
    tol = {"atol": 1e-5, "rtol": 0} if precision == "fp32" else {"atol": 0.05, "rtol": 0}  # bf16: another matmul shape
    for name in ("logprobs", "entropy"):
        assert not getattr(part, name)[~keep].any() and not getattr(part_chunked, name)[~keep].any()
        torch.testing.assert_close(getattr(part, name)[keep], getattr(whole, name)[keep].detach(), **tol)
        torch.testing.assert_close(getattr(part_chunked, name), getattr(whole_chunked, name) * keep, **tol)
    torch.testing.assert_close(part.values, whole.values, **tol)  # values need only the hidden states
    torch.testing.assert_close(part_ref, whole_ref * keep, **tol)
    for a, b in zip(part_grads, whole_grads):
        torch.testing.assert_close(
            a, b, **({"atol": 1e-4, "rtol": 1e-3} if precision == "fp32" else {"atol": 0.05, "rtol": 0.02})
        )


def test_models_whose_logits_are_not_the_output_layer_alone_compute_every_position(words_model_dir):
    from transformers import LlamaForCausalLM

    class Scaled(LlamaForCausalLM):  # a logit scale, as some architectures have
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 2 * out.logits
            return out

    model = Scaled.from_pretrained(words_model_dir)
    assert not selects_logits(model)
    ids = torch.randint(0, 8, (2, 6))
    logits, _ = completion_logits(model, ids, torch.ones_like(ids), 4, False, keep=torch.ones(2, 4, dtype=torch.bool))
    assert logits.shape[:2] == (2, 4)  # every position's logits, the model's own


@pytest.mark.parametrize("entropy_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_and_entropy_match_log_softmax(entropy_grad, dtype):
    """In float32 whatever the logits' dtype (bfloat16 under autocast): equal to a float32 log-softmax."""
    logits = (4 * torch.randn(3, 5, 11)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 11, (3, 5))
    logprobs, entropy = _logprobs_and_entropy(logits, tokens, entropy_grad)
    logp = torch.log_softmax(logits.double(), -1)
    assert logprobs.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logprobs, logp.gather(2, tokens[..., None]).squeeze(-1).float())
    torch.testing.assert_close(entropy, -(logp.exp() * logp).sum(-1).float())
    assert entropy.requires_grad == entropy_grad and logprobs.requires_grad
    logprobs.sum().backward()
    assert logits.grad.dtype == dtype


# --- the smaller fixes --------------------------------------------------------------------------------------------
def test_target_kl_stops_group_methods_early(words_model_dir):
    settings = {"batch_size": 8, "minibatch_size": 4, "group_size": 4, "epochs": 4, "learning_rate": 1e-2}
    agent = GRPO(words_model_dir, make_envs(words_model_dir), target_kl=1e-6, **settings)
    agent.learn(8, progress_bar=False)
    steps = {int(s["step"]) for s in agent.optimizer.state.values()}
    assert steps == {1}  # stopped after the first minibatch, not 4 epochs x 2 minibatches
    full = GRPO(words_model_dir, make_envs(words_model_dir), **settings)
    full.learn(8, progress_bar=False)
    assert {int(s["step"]) for s in full.optimizer.state.values()} == {8}


@pytest.mark.parametrize("algo", [PPO, GRPO])
def test_target_kl_stop_before_the_first_step_logs_grad_norm_as_nan(words_model_dir, tmp_path, algo):
    """An iteration that target_kl stops at its first minibatch takes no step: its row has the same columns, with
    train/grad_norm NaN, in history, progress.csv and TensorBoard (the run log refused the row before)."""
    group = {} if algo is PPO else {"group_size": 4}
    settings = {"batch_size": 8, "minibatch_size": 4, "epochs": 2, "target_kl": 0.01, **group}
    agent = algo(words_model_dir, make_envs(words_model_dir), run_dir=tmp_path, **settings)
    agent.kl_exceeded = lambda approx_kl: agent.iteration == 1  # the second iteration stops before any step
    agent.learn(16, progress_bar=False)
    first, second = agent.history
    assert list(first) == list(second)
    assert np.isfinite(first["train/grad_norm"]) and np.isnan(second["train/grad_norm"])
    rows = (tmp_path / "progress.csv").read_text().splitlines()
    column = rows[0].split(",").index("train/grad_norm")
    assert len(rows) == 3 and rows[2].split(",")[column] == "nan"


def test_refused_settings(words_model_dir):
    from agents import PPOConfig

    with pytest.raises(ValueError, match="kl_coef > 0"):
        PPOConfig(kl_coef=0.0, kl_target=6.0)
    with pytest.raises(ValueError, match="reference_device has no effect"):
        PPOConfig(lora_rank=4, reference_device="cpu")
    with pytest.raises(ValueError, match="penalised twice"):
        PPO(words_model_dir, make_envs(words_model_dir, reference_model=words_model_dir, kl_coef=0.1), batch_size=8)
    env_kl = make_envs(words_model_dir, reference_model=words_model_dir, kl_coef=0.1)
    PPO(words_model_dir, env_kl, batch_size=8, kl_coef=0.0)  # one KL, the env's: allowed
    with pytest.raises(ValueError, match="action_mask"):
        PPO(words_model_dir, make_envs(words_model_dir, reference_model=words_model_dir, action_mask="top_k"))
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="tokens")


def test_optimizer_defaults_and_value_learning_rate(words_model_dir):
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8, learning_rate=1e-5, value_learning_rate=1e-3)
    groups = agent.optimizer.param_groups
    assert all(g["weight_decay"] == 0.0 for g in groups)
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    value_ids = {id(p) for p in agent.policy.value_head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == value_ids


def test_warmup_and_linear_schedule(words_model_dir):
    agent = GRPO(
        words_model_dir,
        make_envs(words_model_dir),
        batch_size=8,
        minibatch_size=8,
        group_size=4,
        learning_rate=1e-3,
        lr_schedule="linear",
        warmup_steps=2,
    )
    agent.learn(40, progress_bar=False)  # 5 optimizer steps: lr after each is logged
    lrs = [h["train/learning_rate"] for h in agent.history]
    np.testing.assert_allclose(lrs, [0.5e-3, 1e-3, 2 / 3 * 1e-3, 1 / 3 * 1e-3, 0.0], atol=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_schedule_spans_the_declared_episodes_however_learn_is_sliced(words_model_dir, tmp_path, schedule):
    """learn() once per update, as the benchmark calls it, with the run's length declared: the rates of one call
    over all of it, through a resume that does not declare it again. (The first call alone sized the schedule:
    the rate was 0 from the second update on.)"""
    settings = {"batch_size": 8, "minibatch_size": 4, "group_size": 4, "learning_rate": 1e-3, "lr_schedule": schedule}
    settings = {**settings, "warmup_steps": 1, "checkpoint_every": 1}
    whole = GRPO(words_model_dir, make_envs(words_model_dir), **settings)
    whole.learn(32, progress_bar=False)
    expected = [h["train/learning_rate"] for h in whole.history]
    steps = [2, 4, 6, 8]  # optimizer steps after each update: 2 minibatches each, 8 in all
    np.testing.assert_allclose(expected, [1e-3 * lr_factor(schedule, n, 1, 8) for n in steps], atol=1e-12)

    sliced = GRPO(words_model_dir, make_envs(words_model_dir), run_dir=tmp_path, **settings)
    for end in (8, 16):
        sliced.learn(end, progress_bar=False, schedule_episodes=32)
    resumed = GRPO(words_model_dir, make_envs(words_model_dir), run_dir=tmp_path, **settings)
    for end in (24, 32):
        resumed.learn(end, resume=True, progress_bar=False)  # the checkpoint keeps the declared span
    rates = [h["train/learning_rate"] for h in sliced.history + resumed.history]
    assert rates == expected
    assert rates[1] > 0 and rates[-1] == 0.0

    undeclared = GRPO(words_model_dir, make_envs(words_model_dir), **settings)
    undeclared.learn(8, progress_bar=False)
    assert undeclared.history[-1]["train/learning_rate"] == 0.0  # one update's schedule, ended
    with pytest.warns(UserWarning, match="schedule_episodes"):
        undeclared.learn(16, progress_bar=False)


def test_reward_shaping_options(words_model_dir):
    agent = PPO(words_model_dir, make_envs(words_model_dir), batch_size=8)
    batch = agent.collect()
    truncated = ~batch.terminated
    assert truncated.any()  # the words model rarely says EOS within 6 tokens
    plain = agent.task_rewards(batch).sum(1)
    agent.config.missing_eos_penalty = 1.0
    penalised = agent.task_rewards(batch).sum(1)
    torch.testing.assert_close(penalised, plain - truncated.float())
    agent.config.missing_eos_penalty, agent.config.reward_clip = None, 0.1
    assert agent.task_rewards(batch).abs().max() <= 0.1
    agent.config.reward_clip, agent.config.normalize_rewards = None, True
    normalised = agent.task_rewards(batch).sum(1)
    torch.testing.assert_close(normalised, plain / plain.std(unbiased=False).clamp(min=1e-4))
    agent.config.mask_truncated_completions = True
    assert (agent.loss_mask(batch)[truncated] == 0).all() and (agent.loss_mask(batch)[~truncated].sum(1) > 0).all()


def test_grpo_loss_types_and_asymmetric_clipping(words_model_dir):
    agent = GRPO(words_model_dir, make_envs(words_model_dir), batch_size=8, group_size=4)
    per_token = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    zeros = torch.zeros(2, 4)
    advantages = -per_token[:, :1].expand(2, 4)  # with ratio 1 the surrogate is −A per token: [1, 4]
    seq, _, _ = agent.policy_loss(zeros, zeros, None, advantages, mask)
    assert seq.item() == pytest.approx((1 + 4) / 2)  # each completion weighs the same
    agent.config.loss_type = "token"
    tok, _, _ = agent.policy_loss(zeros, zeros, None, advantages, mask)
    assert tok.item() == pytest.approx((4 * 1 + 4) / 5)  # each token weighs the same

    logprobs, old = torch.log(torch.tensor([1.25])), torch.zeros(1)
    loss, clipped, _ = clipped_surrogate(logprobs, old, torch.ones(1), 0.2)
    assert clipped.item() == 1 and loss.item() == pytest.approx(-1.2)
    loss, clipped, _ = clipped_surrogate(logprobs, old, torch.ones(1), 0.2, clip_range_high=0.28)
    assert clipped.item() == 0 and loss.item() == pytest.approx(-1.25)


def test_kl_estimators_are_unbiased_and_k3_non_negative():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, generator=gen), 0)
    q = torch.softmax(torch.randn(50, generator=gen), 0)
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    true_kl = (p * (p / q).log()).sum()
    for estimator in ("k1", "k3"):
        estimate = kl_estimate(p.log()[tokens], q.log()[tokens], estimator)
        assert estimate.mean().item() == pytest.approx(true_kl.item(), rel=0.02)
    assert (kl_estimate(p.log()[tokens], q.log()[tokens], "k3") >= 0).all()
