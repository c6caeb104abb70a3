"""Supervised instruction tuning and the `textgym train` command."""

from __future__ import annotations

import json

import pytest
import torch

from agents.cli import main as train_main
from agents.sft import SFT, load_sft_examples

DATA = [
    {"prompt": "Say something kind.", "completion": "You are doing great."},
    {"prompt": "Name a colour.", "completion": "Blue."},
    {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, friend."}]},
    {"prompt": "Describe the film.", "completion": "A warm, funny story."},
]


def test_loss_counts_completion_tokens_only(tiny_model_dir):
    sft = SFT(tiny_model_dir, DATA, device="cpu")
    prompt, reply = sft.examples[0]
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logits = sft.model(input_ids=ids).logits[0, :-1]  # (L - 1, V)
        expected = torch.nn.functional.cross_entropy(logits[len(prompt) - 1 :], ids[0, len(prompt) :])
        torch.testing.assert_close(sft.loss([sft.examples[0]]), expected)
    # the chat template wraps the prompt, and the reply ends the assistant turn
    text = sft.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert sft.tokenizer.decode(reply).endswith("<|im_end|>\n")


def test_training_lowers_the_loss(tiny_model_dir, tmp_path):
    sft = SFT(tiny_model_dir, DATA, epochs=30, batch_size=4, learning_rate=3e-3)
    before = sft.evaluate()
    sft.learn(progress_bar=False)
    assert sft.evaluate() < 0.5 * before
    sft.save(tmp_path / "sft")
    assert (tmp_path / "sft" / "config.json").exists() and (tmp_path / "sft" / "tokenizer.json").exists()


def test_shipped_instructions_load():
    examples = load_sft_examples("instructions")
    assert len(examples) >= 200
    assert all(messages[-1]["role"] == "user" and completion for messages, completion in examples)


def test_bad_data_names_file_and_line(tmp_path, tiny_model_dir):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(DATA[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"data.jsonl:2"):
        load_sft_examples(path)
    path.write_text(json.dumps({"prompt": "only a prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"data.jsonl:1: expected"):
        load_sft_examples(path)
    with pytest.raises(ValueError, match="max_length"):
        SFT(tiny_model_dir, DATA, max_length=8)


def test_cli_runs_sft_then_grpo(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DATA))
    sft_dir = tmp_path / "sft"
    assert train_main(["--algo", "sft", "--model", tiny_model_dir, "--data", str(data), "--out", str(sft_dir)]) == 0
    env_kwargs = json.dumps({"max_new_tokens": 4, "prompts": ["Say something kind."], "reward_model": "vader"})
    args = ["--algo", "grpo", "--model", str(sft_dir), "--num-envs", "4", "--total-episodes", "8"]
    args += ["--env-kwargs", env_kwargs, "--out", str(tmp_path / "grpo"), "--set", "batch_size=8"]
    assert train_main(args) == 0
    assert (tmp_path / "grpo" / "final" / "model.safetensors").exists()
    assert "mean reward" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        train_main([*args[:-2], "--set", "no_such_field=1"])
