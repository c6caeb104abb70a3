"""Learned reward models: Bradley–Terry training, save/load, HF classifier directories, use in an env, the CLI."""

from __future__ import annotations

import json
import random

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401  (registers the envs)
from reward_models import make_reward_model
from reward_models.cli import main as cli
from reward_models.hf_classifier import HFClassifierReward
from reward_models.preferences import PreferencePair
from reward_models.training import TrainConfig, pairwise_accuracy, train_reward_model
from textgym.lm.jsonl import write_jsonl

GOOD = ["wonderful", "great", "lovely", "excellent", "delightful", "fantastic", "superb", "charming", "brilliant"]
BAD = ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "poor", "disappointing", "bland"]
NOUNS = ["film", "meal", "hotel", "book", "concert", "service", "show", "trip", "game"]


def sentiment_pairs(num_prompts: int, per_prompt: int = 3, seed: int = 0) -> list[PreferencePair]:
    """A learnable task: the completion with a positive adjective beats the one with a negative adjective."""
    rng = random.Random(seed)
    pairs = []
    for i in range(num_prompts):
        prompt = f"Review {i} of the {rng.choice(NOUNS)}:"
        for _ in range(per_prompt):
            noun = rng.choice(NOUNS)
            pairs.append(
                PreferencePair(prompt, f" The {noun} was {rng.choice(GOOD)}.", f" The {noun} was {rng.choice(BAD)}.")
            )
    return pairs


@pytest.fixture(scope="module")
def trained_minilm(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "minilm"
    config = TrainConfig(epochs=8, eval_fraction=0.25, progress=False, device="cpu", seed=0)
    return train_reward_model(sentiment_pairs(40), config, out_dir=out), out


def test_minilm_head_learns_the_task_and_reports_held_out_accuracy(trained_minilm):
    result, out = trained_minilm
    report = result.report
    assert report["eval"]["accuracy"] >= 0.9 and report["eval"]["prompts"] == 10
    assert len(report["history"]) == 8 and "eval_accuracy" in report["history"][-1]
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    saved = json.loads((out / "training_report.json").read_text())
    assert saved["eval"] == report["eval"]
    fresh = sentiment_pairs(20, seed=1)  # unseen prompts and combinations
    assert pairwise_accuracy(result.model, fresh).accuracy >= 0.9


def test_save_load_round_trip_scores_identically_and_normalises(trained_minilm):
    result, out = trained_minilm
    assert {p.name for p in out.iterdir()} == {"reward_model.json", "head.safetensors", "training_report.json"}
    prompts = ["Review 1 of the film:", "Anything"] * 3
    completions = [" The film was great.", " It was awful.", "", " ok", " The meal was dull.", " Superb!"]
    loaded = make_reward_model(str(out))
    np.testing.assert_array_equal(loaded(prompts, completions), result.model(prompts, completions))
    raw = make_reward_model(str(out), normalize=False)(prompts, completions)
    norm = result.model.normalization
    np.testing.assert_allclose(loaded(prompts, completions), (raw - norm.mean) / norm.std)


def test_training_is_reproducible():
    config = TrainConfig(epochs=2, eval_fraction=0.2, progress=False, device="cpu", seed=3, hidden_size=16)
    pairs = sentiment_pairs(10)
    a, b = train_reward_model(pairs, config), train_reward_model(pairs, config)
    texts = [" The show was lovely.", " The trip was bland."]
    np.testing.assert_array_equal(a.model(["p", "p"], texts), b.model(["p", "p"], texts))
    assert a.report["history"] == b.report["history"]


def test_env_by_path_scores_with_the_saved_model(trained_minilm, tiny_model_dir):
    _, out = trained_minilm
    envs = gym.make_vec("TextGen-v0", num_envs=2, model=tiny_model_dir, reward_model=str(out), max_new_tokens=2)
    scores = envs.unwrapped.reward_model(["a", "b"], [" The film was great.", " The film was awful."])
    assert scores[0] > scores[1]
    envs.reset(seed=0)
    for _ in range(2):
        *_, infos = envs.step(np.full(2, 7))
    assert infos["_score"].all() and np.isfinite(infos["score"]).all()


def test_lm_backbone_trains_and_saves_an_hf_sequence_classifier(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "lm-rm"
    config = TrainConfig(backbone="lm", model=tiny_model_dir, epochs=3, lr=1e-3, batch_size=8, progress=False)
    result = train_reward_model(sentiment_pairs(8), config, out_dir=out)
    history = result.report["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    # Other tools load it as a plain one-logit classifier...
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    # ...and textgym reloads it with its normalisation, scoring exactly as the trained model.
    prompts, completions = ["Review 1:", "Review 2:"], [" The film was great.", " The hotel was dull."]
    np.testing.assert_allclose(make_reward_model(str(out))(prompts, completions), result.model(prompts, completions))


@pytest.fixture(scope="module")
def tiny_bert_classifier(tmp_path_factory, tiny_model_dir):
    """A tiny random 3-label BertForSequenceClassification directory, as trained elsewhere."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("bert-cls")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_hf_classifier_label_probability(tiny_bert_classifier):
    model = make_reward_model(str(tiny_bert_classifier), label="positive")
    by_index = make_reward_model("hf-classifier", path=str(tiny_bert_classifier), label=2)
    prompts, completions = ["a", "b", "c"], [" nice", " bad", " a much longer completion than the others"]
    scores = model(prompts, completions)
    assert ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(scores, by_index(prompts, completions))
    # Batching does not change the scores (padding is masked).
    one_by_one = HFClassifierReward.load(tiny_bert_classifier, label="positive", batch_size=1)
    np.testing.assert_allclose(one_by_one(prompts, completions), scores, atol=1e-6)


def test_hf_classifier_errors(tiny_bert_classifier, tmp_path):
    with pytest.raises(ValueError, match=r"3 labels \['negative', 'neutral', 'positive'\].*label"):
        make_reward_model(str(tiny_bert_classifier))
    with pytest.raises(ValueError, match="no label 'happy'"):
        make_reward_model(str(tiny_bert_classifier), label="happy")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_bert_classifier / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match=r"no .safetensors weights \(only \['pytorch_model.bin'\]\)"):
        make_reward_model(str(pickled), label=0)


def test_cli_synth_train_evaluate(tmp_path, capsys):
    completions = tmp_path / "completions.jsonl"
    write_jsonl(
        completions,
        [
            {"prompt": f"Review {i}:", "completions": [f" It was {g}.", f" It was {b}.", f" It was {g}!"]}
            for i, (g, b) in enumerate(zip(GOOD * 2, BAD[::-1] * 2))
        ],
    )
    prefs, out = tmp_path / "prefs.jsonl", tmp_path / "rm"
    assert cli(["synth", "--completions", str(completions), "--out", str(prefs), "--gold", "vader"]) == 0
    assert "wrote" in capsys.readouterr().out
    train_args = ["train", "--data", str(prefs), "--out", str(out), "--epochs", "3", "--no-progress"]
    assert cli([*train_args, "--hidden-size", "32", "--eval-fraction", "0.2", "--device", "cpu"]) == 0
    assert "held out" in capsys.readouterr().out
    assert cli(["evaluate", "--model", str(out), "--data", str(prefs)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] > 0 and 0 <= report["accuracy"] <= 1
    with pytest.raises(SystemExit):
        cli(["train", "--data", str(prefs)])  # --out is required
