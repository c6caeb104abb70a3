"""The reward protocol: checking wrapper, base class, registry, entry points, directories, registered envs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import reward_models.registry as registry
import textgym  # noqa: F401  (registers the envs)
from reward_models import make_reward_model, registered_names
from reward_models.base import BatchedRewardModel, Normalization


@pytest.mark.parametrize(
    "broken, message",
    [
        (lambda p, c: [1.0], "shape"),
        (lambda p, c: [float("nan")] * len(c), "NaN or inf"),
        (lambda p, c: [float("inf")] * len(c), "NaN or inf"),
        (lambda p, c: ["a"] * len(c), "must return numbers"),
    ],
)
def test_checking_wrapper_names_what_is_wrong(broken, message):
    with pytest.raises(ValueError, match=message):
        make_reward_model(broken)(["p", "q"], ["a", "b"])


class Doubling(BatchedRewardModel):
    """Scores the completion's length twice; records the batch sizes it was called with."""

    def __init__(self, **kwargs):
        super().__init__(device="cpu", **kwargs)
        self.calls = []

    def score_batch(self, prompts, completions):
        self.calls.append(len(completions))
        return [2.0 * len(c) for c in completions]


def test_base_class_batches_and_normalises():
    model = Doubling(batch_size=3, normalization=Normalization(mean=2.0, std=4.0), name="doubling")
    scores = make_reward_model(model)(["p"] * 7, ["a", "bb", "ccc", "", "a", "a", "a"])
    assert model.calls == [3, 3, 1]
    np.testing.assert_allclose(scores, (np.array([2, 4, 6, 0, 2, 2, 2]) - 2.0) / 4.0)
    assert make_reward_model(model).name == "doubling"
    assert Normalization.of(np.array([1.0, 1.0])).std > 0  # constant scores still give a usable std
    with pytest.raises(ValueError, match="std > 0"):
        Normalization(0.0, 0.0)


def test_registry_and_kwargs_checks():
    assert {
        "vader",
        "keywords",
        "exact-match",
        "length",
        "format",
        "rouge",
        "hf-classifier",
        "positivity-minilm",
    } <= set(registered_names())
    with pytest.raises(KeyError, match="Unknown reward model"):
        make_reward_model("no-such-reward")
    with pytest.raises(TypeError, match="only accepted together with a registered"):
        make_reward_model(lambda p, c: [0.0] * len(c), scale=2)


class FakeEntryPoint:
    name, value, group = "third-party", "thirdparty.rewards:make", registry.ENTRY_POINT_GROUP

    def __init__(self, target):
        self.target = target

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


@pytest.fixture
def entry_points(monkeypatch):
    """Install fake entry points of the reward-model group; returns a setter."""
    installed = []

    def fake(**params):
        return [ep for ep in installed if ep.group == params.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # loaded entry points must not leak
    return installed.append


def test_entry_point_discovery_is_lazy_and_passes_kwargs(entry_points, tiny_model_dir):
    loads = []

    def factory(scale=1.0):
        loads.append(scale)
        return lambda p, c: [scale * len(x) for x in c]

    entry_points(FakeEntryPoint(factory))
    assert "third-party" in registered_names()
    assert loads == []  # listing names imports nothing
    model = make_reward_model("third-party", scale=2.0)
    assert model.name == "third-party"
    np.testing.assert_allclose(model(["p"], ["abc"]), [6.0])
    env = gym.make("TextGen-v0", model=tiny_model_dir, reward_model="third-party", reward_model_kwargs={"scale": 3.0})
    np.testing.assert_allclose(env.unwrapped.reward_model(["p"], ["ab"]), [6.0])


def test_a_broken_entry_point_says_which(entry_points):
    entry_points(FakeEntryPoint(ModuleNotFoundError("No module named 'thirdparty'")))
    with pytest.raises(ImportError, match=r"thirdparty.rewards:make.*No module named"):
        make_reward_model("third-party")


def test_directories_that_are_not_reward_models(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match=r"neither reward_model\.json nor config\.json"):
        make_reward_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not a reward model directory.*LlamaForCausalLM.*--backbone lm"):
        make_reward_model(tiny_model_dir)  # a causal LM is not a reward model
    with pytest.raises(KeyError, match="not an existing directory"):
        make_reward_model(str(tmp_path / "missing"))


def test_preference_env_is_registered_and_import_stays_light():
    spec = gym.spec("TextGenPreference-v0")
    assert spec.kwargs["reward_model"] == "positivity-minilm"
    code = "import sys, textgym, reward_models; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_preference_env_scores_with_the_learned_model(tiny_model_dir):
    env = gym.make("TextGenPreference-v0", model=tiny_model_dir, max_new_tokens=4)
    env.reset(seed=0)
    *_, info = env.step(env.unwrapped.tokenizer.eos_token_id)
    assert np.isfinite(info["score"])
