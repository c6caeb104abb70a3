"""IncrementalLM, the KV cache over many growing contexts: its outputs equal full forward passes."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from textgym.lm.cache import CACHE_ARG, IncrementalLM


def full_logits(model, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Next-token logits ``(N, V)`` at each row's last real token, from one pass over whole contexts."""
    ids_t, mask_t = torch.as_tensor(ids), torch.as_tensor(mask)
    with torch.no_grad():
        logits = model(input_ids=ids_t, attention_mask=mask_t, position_ids=(mask_t.cumsum(1) - 1).clamp(min=0)).logits
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return logits[torch.arange(len(ids)), torch.as_tensor(last)].float()


def test_rows_encoded_in_parts_then_advanced_together(tiny_policy):
    """The first encode_rows may cover only some rows (a vector env's first reset with a reset_mask)."""
    rng = np.random.default_rng(0)
    width = 12
    ids = rng.integers(5, 200, size=(4, width))
    mask = np.zeros((4, width), dtype=np.int64)
    for row, length in enumerate([3, 6, 2, 5]):
        mask[row, 8 - length : 8] = 1
    lm = IncrementalLM(tiny_policy, 4)
    lm.encode_rows(np.array([True, False, True, False]), ids, mask)
    lm.encode_rows(np.array([False, True, False, True]), ids, mask)
    torch.testing.assert_close(lm.outputs, full_logits(tiny_policy, ids, mask), atol=1e-4, rtol=1e-4)
    for column in (8, 9):
        mask[:, column] = 1
        lm.advance(torch.as_tensor(ids[:, column]), np.ones(4, dtype=bool))
        torch.testing.assert_close(lm.outputs, full_logits(tiny_policy, ids, mask), atol=1e-4, rtol=1e-4)


def test_identical_contexts_are_encoded_once_and_advance_apart(tiny_policy):
    """A GRPO group's rows share their prompt: the model sees it once (without the columns of left padding that
    every row has), and the rows then grow independently."""
    rng = np.random.default_rng(1)
    width = 10
    shared, other = rng.integers(5, 200, size=width), rng.integers(5, 200, size=width)
    ids = np.stack([shared, other, shared, shared])
    mask = np.zeros((4, width), dtype=np.int64)
    mask[:, 2:7] = 1
    mask[1, 1] = 1  # the second row is longer, so it differs in its mask too
    encoded = []  # (rows, columns) of each pass
    hook = tiny_policy.register_forward_hook(lambda _, args, kwargs, out: encoded.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)  # fmt: skip
    lm = IncrementalLM(tiny_policy, 4)
    lm.encode_rows(np.ones(4, dtype=bool), ids, mask)
    hook.remove()
    assert encoded == [(2, 6)]  # 2 distinct rows, columns 1 to 6
    torch.testing.assert_close(lm.outputs, full_logits(tiny_policy, ids, mask), atol=1e-4, rtol=1e-4)
    mask[:, 7] = 1
    ids[:, 7] = [11, 12, 13, 14]  # the copies of the shared prompt now diverge
    lm.advance(torch.as_tensor(ids[:, 7]), np.ones(4, dtype=bool))
    torch.testing.assert_close(lm.outputs, full_logits(tiny_policy, ids, mask), atol=1e-4, rtol=1e-4)


def test_the_cache_is_passed_under_the_name_the_models_take(tiny_policy):
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
    assert CACHE_ARG in inspect.signature(type(tiny_policy).forward).parameters
    out = tiny_policy(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
    assert out[CACHE_ARG].get_seq_length() == 3
