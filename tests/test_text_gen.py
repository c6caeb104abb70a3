"""TextGen-v0, the single env: the contract of the issue and every bad input (the checkers: tests/test_envs.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import textgym  # noqa: F401  (registers the envs)

P, T = 16, 6


def make(tiny_model_dir, **kwargs):
    kwargs = {
        "model": tiny_model_dir,
        "max_prompt_tokens": P,
        "max_new_tokens": T,
        "prompt_truncation": "left",
        **kwargs,
    }
    return gym.make("TextGen-v0", **kwargs)


def test_spaces_and_public_attributes(tiny_model_dir):
    env = make(tiny_model_dir)
    vocab = env.unwrapped.tokenizer.vocab_size
    assert env.action_space == gym.spaces.Discrete(vocab)
    for key in ("input_ids", "attention_mask"):
        box = env.observation_space[key]
        assert box.shape == (P + T,) and box.dtype == np.int64
    assert env.unwrapped.reward_model(["a"], ["good"]).shape == (1,)


def test_observation_layout_reward_and_info(tiny_model_dir):
    seen = []

    def reward(prompts, completions):
        seen.append((prompts, completions))
        return [float(len(c)) for c in completions]

    env = make(tiny_model_dir, reward_model=reward, stop_token_ids=[])
    tok = env.unwrapped.tokenizer
    obs, info = env.reset(options={"prompt": "The movie was"})
    prompt_ids = tok("The movie was")["input_ids"]
    n = len(prompt_ids)
    assert info["prompt"] == "The movie was"
    assert obs["input_ids"][P - n : P].tolist() == prompt_ids
    assert obs["attention_mask"].tolist() == [0] * (P - n) + [1] * n + [0] * T
    actions = [tok.convert_tokens_to_ids(t) for t in tok.tokenize(" good and kind fun")][:T]
    actions += [actions[0]] * (T - len(actions))
    for t, action in enumerate(actions):
        obs, reward_value, terminated, truncated, info = env.step(action)
        assert obs["input_ids"][P + t] == action and obs["attention_mask"][P + t] == 1
        assert obs["attention_mask"][P + t + 1 :].sum() == 0
        if t < T - 1:
            assert (reward_value, terminated, truncated, info) == (0.0, False, False, {})
    assert truncated and not terminated
    completion = tok.decode(actions, skip_special_tokens=True)
    score = float(len(completion))
    assert info == {"prompt": "The movie was", "completion": completion, "score": score, "gold_score": score}
    assert reward_value == float(len(completion))
    assert seen == [(["The movie was"], [completion])]  # the reward model ran once, at the end


def test_terminates_on_eos_which_is_not_part_of_the_completion(tiny_model_dir):
    env = make(tiny_model_dir, reward_model=lambda p, c: [1.0] * len(c))
    tok = env.unwrapped.tokenizer
    env.reset(seed=0)
    hello = tok("hello")["input_ids"][0]
    assert env.step(hello)[2:4] == (False, False)
    _, reward_value, terminated, truncated, info = env.step(tok.eos_token_id)
    assert (reward_value, terminated, truncated) == (1.0, True, False)
    assert info["completion"] == tok.decode([hello])


def test_seeded_resets_are_reproducible_and_cover_the_prompt_set(tiny_model_dir):
    env = make(tiny_model_dir)
    first = [env.reset(seed=s)[1]["prompt"] for s in range(20)]
    again = [env.reset(seed=s)[1]["prompt"] for s in range(20)]
    assert first == again
    env.reset(seed=123)
    stream = {env.reset()[1]["prompt"] for _ in range(50)}
    assert len(stream) > 30


def test_chat_template_wraps_the_prompt(tiny_model_dir):
    env = make(tiny_model_dir, chat_template=True, max_prompt_tokens=32)
    tok = env.unwrapped.tokenizer
    obs, _ = env.reset(options={"prompt": "Say something nice"})
    expected = tok.apply_chat_template(
        [{"role": "user", "content": "Say something nice"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    real = obs["input_ids"][obs["attention_mask"] == 1].tolist()
    assert real == list(expected)
    assert "<|im_start|>assistant" in tok.decode(real)


def test_prompts_from_list_txt_and_jsonl(tiny_model_dir, tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "from jsonl"}) + "\n" + json.dumps("plain string") + "\n")
    for prompts, expected in (
        (["only one"], {"only one"}),
        (str(txt), {"first prompt", "second prompt"}),
        (str(jsonl), {"from jsonl", "plain string"}),
    ):
        env = make(tiny_model_dir, prompts=prompts)
        assert set(env.unwrapped.episodes.prompts) == expected
        assert {env.reset(seed=s)[1]["prompt"] for s in range(30)} == expected


def test_render_modes(tiny_model_dir, capsys):
    env = make(tiny_model_dir, render_mode="ansi")
    env.reset(options={"prompt": "Once upon a time"})
    assert env.render().startswith("Once upon a time")
    human = make(tiny_model_dir, render_mode="human")
    human.reset(options={"prompt": "Once upon a time"})
    assert "Once upon a time" in capsys.readouterr().out


@pytest.mark.parametrize(
    "action, error", [(10**6, ValueError), (-1, ValueError), (1.5, TypeError), ("a", TypeError), ([1, 2], ValueError)]
)
def test_bad_actions_raise_and_the_env_stays_usable(tiny_model_dir, action, error):
    env = make(tiny_model_dir).unwrapped
    env.reset(seed=0)
    with pytest.raises(error):
        env.step(action)
    after, *_ = env.step(5)
    assert after["input_ids"][P] == 5 and after["attention_mask"][P:].sum() == 1


def test_step_before_reset_and_after_the_end(tiny_model_dir):
    env = make(tiny_model_dir).unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(5)
    env.reset(seed=0)
    env.step(env.tokenizer.eos_token_id)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(5)
    env.reset()
    env.step(5)


def test_bad_configuration_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="No prompts"):
        make(tiny_model_dir, prompts=[])
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        make(tiny_model_dir, prompts=["word " * 50], prompt_truncation="error")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        make(str(tmp_path))
    with pytest.raises(KeyError, match="Unknown reward model"):
        make(tiny_model_dir, reward_model="no-such-reward")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "fine"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        make(tiny_model_dir, prompts=str(bad_jsonl))


def test_long_prompts_are_left_truncated_when_asked(tiny_model_dir):
    env = make(tiny_model_dir, prompts=["word " * 50], prompt_truncation="left")
    tok = env.unwrapped.tokenizer
    obs, _ = env.reset(seed=0)
    assert obs["attention_mask"][:P].all()
    assert obs["input_ids"][:P].tolist() == tok("word " * 50)["input_ids"][-P:]
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        make(tiny_model_dir, prompt_truncation="error").reset(options={"prompt": "word " * 50})


@pytest.mark.parametrize(
    "broken", [lambda p, c: [0.0] * (len(c) + 1), lambda p, c: [float("nan")] * len(c), lambda p, c: "not numbers"]
)
def test_broken_reward_model_raises_and_the_env_stays_usable(tiny_model_dir, broken):
    env = make(tiny_model_dir, reward_model=broken).unwrapped
    env.reset(seed=0)
    env.step(7)
    with pytest.raises(ValueError, match="Reward model"):
        env.step(env.tokenizer.eos_token_id)
    env.reward_model.fn = lambda p, c: [2.0] * len(c)  # fix the reward: the failed step left no trace
    obs, reward_value, terminated, *_ = env.step(env.tokenizer.eos_token_id)
    assert (reward_value, terminated) == (2.0, True)
    assert obs["attention_mask"][P:].sum() == 2


def test_import_is_light_and_module_form_of_make_works(tiny_model_dir):
    code = (
        "import sys, gymnasium as gym\n"
        "import textgym\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        f"env = gym.make('textgym:TextGen-v0', model={tiny_model_dir!r}, max_prompt_tokens=64)\n"
        "obs, info = env.reset(seed=0)\n"
        "env.step(env.action_space.sample())\n"
        "print('ok')\n"
    )
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert light.returncode == 0, light.stderr
    module_form = (
        "import gymnasium as gym\n"
        f"env = gym.make('textgym:TextGen-v0', model={tiny_model_dir!r}, max_prompt_tokens=64)\n"
        "env.reset(seed=0); print(type(env.unwrapped).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", module_form], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "TextGenEnv", out.stderr


def test_chat_template_end_of_turn_token_terminates(tiny_model_dir):
    """A chat model ends its reply with the template's end-of-turn token (ChatML's <|im_end|>), not EOS."""
    env = make(tiny_model_dir, chat_template=True, max_prompt_tokens=32, reward_model=lambda p, c: [1.0] * len(c))
    tok = env.unwrapped.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    env.reset(seed=0)
    hello = tok("hello")["input_ids"][0]
    env.step(hello)
    _, _, terminated, truncated, info = env.step(im_end)
    assert (terminated, truncated) == (True, False) and info["completion"] == tok.decode([hello])
    without_template = make(tiny_model_dir)  # then <|im_end|> is an ordinary token
    without_template.reset(seed=0)
    assert without_template.step(im_end)[2:4] == (False, False)
    explicit = make(tiny_model_dir, chat_template=True, max_prompt_tokens=32, stop_token_ids=[hello])
    explicit.reset(seed=0)
    assert explicit.step(im_end)[2] is False and explicit.step(hello)[2] is True


def test_every_eos_of_the_generation_config_terminates(tiny_model_dir, tmp_path):
    """generation_config.json may list several EOS ids (Llama-3 chat: <|end_of_text|> and <|eot_id|>)."""
    from checkpoints import add_generation_eos

    model_dir = add_generation_eos(tiny_model_dir, tmp_path / "two-eos", eos_token_ids=[7, 9])
    for action, ends in [(8, False), (7, True), (9, True), (2, True)]:  # 2 is the tokenizer's EOS
        env = make(model_dir)
        env.reset(seed=0)
        assert env.step(action)[2] is ends, action


def test_stop_token_ids_of_real_checkpoint_layouts(tiny_model_dir, tmp_path):
    from checkpoints import add_generation_eos
    from transformers import AutoTokenizer

    from textgym.lm.prompts import end_of_turn_token_id, stop_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert end_of_turn_token_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, tiny_model_dir) == [tok.eos_token_id]
    assert stop_token_ids(tok, tiny_model_dir, chat_template=True) == [2, 4]
    assert stop_token_ids(tok, add_generation_eos(tiny_model_dir, tmp_path / "one", 5)) == [2, 5]
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # no special token ends a turn
    assert end_of_turn_token_id(tok) is None
