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
    # the chat template wraps the prompt, and the reply ends the assistant turn where the env stops
    text = sft.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert sft.tokenizer.decode(reply) == "You are doing great.<|im_end|>"


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


@pytest.mark.parametrize("chat_template", [True, False])
def test_an_example_over_max_length_is_a_clear_error(tiny_model_dir, chat_template):
    """Without the chat template too (it raised UnboundLocalError there): the message names the example's prompt."""
    with pytest.raises(ValueError, match=r"longer than max_length=8 \(prompt 'Say something kind\.'"):
        SFT(tiny_model_dir, DATA, max_length=8, chat_template=chat_template)


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


# --- SFT teaches exactly what the env asks for --------------------------------------------------------------------
@pytest.fixture(scope="module")
def bos_model_dir(tiny_model_dir, tmp_path_factory):
    from checkpoints import save_with_bos_tokenizer

    return save_with_bos_tokenizer(tiny_model_dir, tmp_path_factory.mktemp("bos"))


@pytest.mark.parametrize("chat_template", [False, True])
@pytest.mark.parametrize("which", ["tiny", "bos"])
def test_sft_prompts_are_the_env_observations_and_replies_end_with_a_stop_token(
    tiny_model_dir, bos_model_dir, which, chat_template
):
    import gymnasium as gym

    import textgym  # noqa: F401

    model_dir = {"tiny": tiny_model_dir, "bos": bos_model_dir}[which]
    data = [d for d in DATA if "prompt" in d]
    sft = SFT(model_dir, data, chat_template=chat_template, device="cpu")
    env = gym.make("TextGen-v0", model=model_dir, chat_template=chat_template, max_prompt_tokens=48).unwrapped
    for record, (prompt_ids, reply_ids) in zip(data, sft.examples):
        obs, _ = env.reset(options={"prompt": record["prompt"]})
        assert prompt_ids == obs["input_ids"][obs["attention_mask"] == 1].tolist()
        assert reply_ids[-1] in env.episodes.stop_token_ids
        assert not set(reply_ids[:-1]) & set(env.episodes.stop_token_ids)  # nothing after the stop token


@pytest.fixture(scope="module")
def gpt2_model_dir(words_model_dir, tmp_path_factory):
    from checkpoints import make_gpt2_model

    return make_gpt2_model(words_model_dir, tmp_path_factory.mktemp("gpt2"))


def test_gpt2_style_model_without_template_or_pad_token_through_env_and_sft(gpt2_model_dir):
    """Learned positions, no chat template, no pad token: the env pads with EOS, SFT ends replies with EOS."""
    import gymnasium as gym

    import textgym  # noqa: F401

    env = gym.make("TextGen-v0", model=gpt2_model_dir, prompts=["say yes"], max_prompt_tokens=4, max_new_tokens=3)
    tok = env.unwrapped.tokenizer
    obs, _ = env.reset(seed=0)
    assert (obs["input_ids"][obs["attention_mask"] == 0] == tok.eos_token_id).all()
    assert env.step(tok.convert_tokens_to_ids("yes"))[2:4] == (False, False)
    assert env.step(tok.eos_token_id)[2] is True
    sft = SFT(gpt2_model_dir, [{"prompt": "say yes", "completion": "yes yes"}] * 4, epochs=20, learning_rate=3e-3)
    prompt_ids, reply_ids = sft.examples[0]
    assert prompt_ids == obs["input_ids"][obs["attention_mask"] == 1].tolist()
    assert reply_ids == [tok.convert_tokens_to_ids("yes")] * 2 + [tok.eos_token_id]
    before = sft.evaluate()
    sft.learn(progress_bar=False)
    assert sft.evaluate() < 0.5 * before
