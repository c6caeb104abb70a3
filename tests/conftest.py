"""Shared fixtures: a tiny random Llama with a BPE tokenizer, built once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from textgym.lm.models import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def words_model_dir(tmp_path_factory) -> str:
    """A tiny Llama whose vocabulary is the synthetic task's words (plus special tokens)."""
    from synthetic_task import WORDS

    from textgym.lm.models import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("words"), words=WORDS, hidden_size=32))


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run fastest on one thread; several threads mostly wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    from textgym.lm.models import load_causal_lm

    return load_causal_lm(tiny_model_dir)


def teacher_forced_logprobs(policy, batch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of a rollout batch's completions from one forward pass over whole sequences (no cache)."""
    ids, mask = batch.input_ids, batch.attention_mask
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    width = batch.prompt_ids.shape[1]
    logits = logits[:, width - 1 : -1] / temperature  # (E, T, V): the logits that chose each completion token
    logprobs = torch.log_softmax(logits, -1).gather(2, batch.completion_ids[..., None]).squeeze(-1)
    return logprobs * batch.completion_mask


@pytest.fixture
def teacher_forced():
    return teacher_forced_logprobs


@pytest.fixture(scope="session")
def t5_model_dir(tmp_path_factory) -> str:
    """A tiny random T5 with the embedded model's tokenizer, laid out as a user's local flan-t5 directory."""
    from textgym.lm.models import make_tiny_seq2seq, resolve_model_dir

    return str(make_tiny_seq2seq(tmp_path_factory.mktemp("t5"), resolve_model_dir("embedded")))


@pytest.fixture(scope="session")
def words_t5_dir(tmp_path_factory, words_model_dir) -> str:
    """A tiny T5 whose vocabulary is the synthetic task's words (the words Llama's tokenizer)."""
    from textgym.lm.models import make_tiny_seq2seq

    return str(make_tiny_seq2seq(tmp_path_factory.mktemp("words-t5"), words_model_dir))
