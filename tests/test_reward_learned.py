"""Learned reward models: Bradley–Terry training, save/load, HF classifier directories, use in an env, the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401  (registers the envs)
from reward_models import make_reward_model, training
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


def noisy_sentiment_pairs(num_prompts: int, flip_prob: float, seed: int = 0) -> list[PreferencePair]:
    """``sentiment_pairs`` with a share of the labels flipped: a small head memorises them and overfits."""
    rng = random.Random(seed + 100)
    return [
        dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) if rng.random() < flip_prob else p
        for p in sentiment_pairs(num_prompts, seed=seed)
    ]


# 16 prompts, 30% of the labels flipped, a fast learning rate: held-out accuracy is highest in the first epochs.
OVERFITTING = dict(epochs=12, eval_fraction=0.25, lr=1e-2, hidden_size=64, dropout=0.0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def overfit_pairs():
    return noisy_sentiment_pairs(16, flip_prob=0.3)


@pytest.fixture(scope="module")
def kept_best(overfit_pairs):
    return train_reward_model(overfit_pairs, TrainConfig(**OVERFITTING))


def best_held_out_epoch(history: list[dict]) -> int:
    """By brute force: the highest held-out accuracy, then the lowest held-out loss, then the earliest epoch."""
    return min(history, key=lambda h: (-h["eval_accuracy"], h["eval_loss"], h["epoch"]))["epoch"]


def test_early_stopping_keeps_the_weights_of_the_best_held_out_epoch(kept_best, overfit_pairs):
    report = kept_best.report
    accuracies = [h["eval_accuracy"] for h in report["history"]]
    assert len(accuracies) == 12 and accuracies[-1] < max(accuracies)  # it does overfit, else this tests nothing
    assert report["best_epoch"] == report["kept_epoch"] == best_held_out_epoch(report["history"]) < 12
    assert report["eval"]["accuracy"] == max(accuracies)
    # The model is the one trained for best_epoch epochs, its normalisation computed on those weights.
    config = TrainConfig(**{**OVERFITTING, "epochs": report["best_epoch"], "early_stopping": False})
    short = train_reward_model(overfit_pairs, config)
    assert short.report["history"] == report["history"][: report["best_epoch"]]
    assert kept_best.model.normalization == short.model.normalization
    prompts, completions = ["Review 1 of the film:"] * 3, [" The film was great.", " It was dull.", " The show."]
    np.testing.assert_array_equal(kept_best.model(prompts, completions), short.model(prompts, completions))


def test_without_early_stopping_the_last_epoch_is_kept(kept_best, overfit_pairs):
    result = train_reward_model(overfit_pairs, TrainConfig(**OVERFITTING, early_stopping=False))
    report = result.report
    assert report["history"] == kept_best.report["history"]  # the same training, only another epoch kept
    assert report["best_epoch"] == kept_best.report["best_epoch"] and report["kept_epoch"] == 12
    assert report["eval"]["accuracy"] == report["history"][-1]["eval_accuracy"] < kept_best.report["eval"]["accuracy"]


def test_patience_stops_after_that_many_epochs_without_a_new_best(kept_best, overfit_pairs):
    full = kept_best.report["history"]
    # By brute force on the full run: the first epoch 2 epochs past the best of the epochs up to it.
    bests = [best_held_out_epoch(full[:epoch]) for epoch in range(1, 13)]
    stop = next(epoch for epoch, best in enumerate(bests, 1) if epoch - best >= 2)
    best = bests[stop - 1]
    assert stop < 12
    result = train_reward_model(overfit_pairs, TrainConfig(**OVERFITTING, patience=2))
    report = result.report
    assert report["history"] == full[:stop] and report["best_epoch"] == report["kept_epoch"] == best
    assert report["eval"]["accuracy"] == full[best - 1]["eval_accuracy"]


def test_without_a_held_out_split_every_epoch_runs_unless_early_stopping_was_asked_for():
    result = train_reward_model(sentiment_pairs(6), TrainConfig(epochs=3, eval_fraction=0.0, progress=False))
    assert len(result.report["history"]) == 3 and result.report["eval"] is None
    assert result.report["best_epoch"] is None and result.report["kept_epoch"] == 3
    with pytest.raises(ValueError, match="eval_fraction is 0: hold some out"):
        TrainConfig(eval_fraction=0.0, early_stopping=True)
    with pytest.raises(ValueError, match="eval_fraction is 0: hold some out"):
        TrainConfig(eval_fraction=0.0, patience=3)
    with pytest.raises(ValueError, match="patience=3 needs early stopping"):
        TrainConfig(early_stopping=False, patience=3)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        TrainConfig(patience=0)


def test_lm_backbone_early_stopping_restores_every_trainable_weight(tiny_model_dir, monkeypatch):
    """The LM backbone fine-tunes the whole model: the best epoch's copy must cover all of it. The held-out
    figures are scripted (best at epoch 2 of 3) so that the restore always happens."""
    figures = iter([(0.5, 0.7), (1.0, 0.6), (0.5, 0.5)])
    monkeypatch.setattr(
        training,
        "_held_out_metrics",
        lambda *_: dict(zip(("eval_accuracy", "eval_loss"), next(figures), strict=True)),
    )
    config = dict(backbone="lm", model=tiny_model_dir, lr=1e-3, batch_size=8, eval_fraction=0.25, progress=False)
    result = train_reward_model(sentiment_pairs(8), TrainConfig(**config, epochs=3))
    assert result.report["best_epoch"] == result.report["kept_epoch"] == 2 and len(result.report["history"]) == 3
    monkeypatch.undo()
    two_epochs = train_reward_model(sentiment_pairs(8), TrainConfig(**config, epochs=2, early_stopping=False))
    kept, reference = result.model.model.state_dict(), two_epochs.model.model.state_dict()
    assert kept.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(kept[name], tensor, atol=0, rtol=0, msg=name)
    assert result.model.normalization == two_epochs.model.normalization


def test_cli_options_of_early_stopping():
    from reward_models.cli import _add_dataclass_options

    parser = argparse.ArgumentParser()
    _add_dataclass_options(parser, TrainConfig)
    assert (parser.parse_args([]).early_stopping, parser.parse_args([]).patience) == (None, None)
    assert parser.parse_args(["--no-early-stopping"]).early_stopping is False
    args = parser.parse_args(["--early-stopping", "--patience", "3"])
    assert (args.early_stopping, args.patience) == (True, 3)


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
    printed = capsys.readouterr().out
    assert "held out" in printed and "best held-out epoch" in printed
    assert json.loads((out / "training_report.json").read_text())["best_epoch"] in (1, 2, 3)
    assert cli(["evaluate", "--model", str(out), "--data", str(prefs)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] > 0 and 0 <= report["accuracy"] <= 1
    with pytest.raises(SystemExit):
        cli(["train", "--data", str(prefs)])  # --out is required
