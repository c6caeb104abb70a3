"""Next-token logits of many growing token contexts, one KV cache for all of them.

Whatever steps a text vector env with a language model (a policy sampling actions, a frozen reference scoring them) must
not re-run the whole context every token. [IncrementalLM][textgym.lm.cache.IncrementalLM] keeps one KV cache for ``N``
rows whose contexts are at different points:

* the cache is one ``(N, heads, S, head_dim)`` tensor per layer plus an ``(N, S)`` attention mask; a row's
  context sits at the right end of its row, with masked (zero) columns in front of it;
* position ids are counted per row, so a row's place in the cache does not matter;
* a row whose context starts over (a new episode) is encoded alone and written into its row's tail; columns
  no row attends to any longer are dropped from the front;
* rows encoded together with identical contexts (a GRPO group's prompt) go through the model once and share
  the result.

Contexts come as the env's observations (``input_ids`` with ``attention_mask``), so a row can be rebuilt from
an observation at any time, e.g. after the model's weights changed.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

CACHE_ARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
"""What transformers calls a model's KV cache, in ``forward``'s arguments and in its outputs: ``cache`` from 5.24
on (where ``past_key_values`` warns, and stops working in 5.40), ``past_key_values`` before."""


class IncrementalLM:
    """A causal LM advanced one token at a time over ``num_rows`` contexts.

    ``outputs`` holds, per row, the next-token logits ``(N, V)``, or with ``hidden_states=True`` the trunk's
    last hidden state at the row's last token ``(N, H)`` (what a value head or an SB3 policy reads); float32,
    ``None`` until rows are encoded.
    """

    def __init__(self, model: PreTrainedModel, num_rows: int, hidden_states: bool = False) -> None:
        self.model = model
        self.num_rows = num_rows
        self.hidden_states = hidden_states
        self.device = next(model.parameters()).device
        # The output layer runs only on the columns whose logits are needed, where the model supports it.
        self._keeps_columns = not hidden_states and "logits_to_keep" in inspect.signature(model.forward).parameters
        self.outputs: torch.Tensor | None = None  # (N, V) or (N, H)
        self._cache: DynamicCache | None = None
        self._cache_mask: torch.Tensor | None = None  # (N, S)
        self._positions = torch.zeros(num_rows, dtype=torch.long, device=self.device)  # next position id

    def clear(self) -> None:
        """Forget every row (e.g. after a weight update); encode rows again before advancing."""
        self._cache = self._cache_mask = self.outputs = None

    @torch.inference_mode()
    def encode_rows(self, rows: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """(Re)build the contexts of the rows selected by the boolean mask ``rows`` from observation arrays.

        The first call may select only some rows (a vector env's first reset with a ``reset_mask``): the cache
        is sized for all ``N`` rows at once, those not yet encoded fully masked until they are.

        Args:
            rows: ``(N,)`` bool, the rows to encode.
            input_ids: ``(N, L)`` token ids of all rows' observations (only selected rows are read).
            attention_mask: ``(N, L)``, the observations' attention mask.
        """
        index = np.flatnonzero(rows)
        # Identical contexts (a GRPO group's prompt) are encoded once, then copied to each of their rows.
        unique, copies = _distinct_rows(np.concatenate([input_ids[index], attention_mask[index]], axis=1))
        ids = torch.as_tensor(input_ids[index[unique]], device=self.device)  # (U, L)
        mask = torch.as_tensor(attention_mask[index[unique]], device=self.device)  # (U, L)
        # Only the columns from the first real token of any row to the last: an observation's prompt is
        # left-padded to the env's whole prompt width (64 by default, for prompts of about 12 tokens).
        start = int(mask.long().argmax(dim=1).min())
        ids, mask = ids[:, start:], mask[:, start:]
        last = last_real_column(mask)  # (U,)
        width = int(last.max()) + 1
        ids, mask = ids[:, :width], mask[:, :width]
        keep = torch.unique(last)  # the positions whose outputs are needed, shared across rows
        outputs, cache = self._forward(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            **{CACHE_ARG: DynamicCache()},
            **({"logits_to_keep": keep} if self._keeps_columns else {}),
        )
        column = torch.searchsorted(keep, last) if self._keeps_columns else last
        outputs = outputs[torch.arange(len(unique), device=self.device), column]  # (U, V) or (U, H)
        if len(unique) < len(index):  # each encoded row's outputs, mask and cache, copied to the rows sharing it
            copies_t = torch.as_tensor(copies, device=self.device)  # (R,) indices into the encoded rows
            outputs, mask, cache = outputs[copies_t], mask[copies_t], select_cache_rows(cache, copies_t)
        if self.outputs is None:
            self.outputs = torch.zeros(self.num_rows, outputs.shape[-1], device=self.device)
        self.outputs[torch.as_tensor(index, device=self.device)] = outputs
        self._positions[torch.as_tensor(index, device=self.device)] = mask.sum(dim=1)
        self._write_rows(index, cache, mask)

    def advance(self, tokens: torch.Tensor, active: np.ndarray) -> None:
        """Append ``tokens[i]`` to the context of each active row; inactive rows keep their outputs.

        Args:
            tokens: ``(N,)`` token ids (any value on inactive rows).
            active: ``(N,)`` bool, the rows whose context grows.
        """
        self.extend(torch.as_tensor(tokens, device=self.device)[:, None], active[:, None])

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, mask: np.ndarray) -> None:
        """Append several tokens to each row in one forward pass (a multi-turn env's reply after the action).

        Args:
            tokens: ``(N, K)`` token ids, each row's new tokens right-aligned (any value where ``mask`` is 0).
            mask: ``(N, K)`` bool, 1 on each row's new tokens (all at the right end); a row with none keeps its
                outputs.
        """
        if self.outputs is None:
            raise RuntimeError("advance() before encode_rows(): encode the rows' contexts first.")
        mask_t = torch.as_tensor(mask, device=self.device).long()  # (N, K)
        active_t = mask_t[:, -1].bool()  # (N,) right-aligned: a row grows iff its last column is new
        if not active_t.any():
            return
        self._cache_mask = torch.cat([self._cache_mask, mask_t], dim=1)  # (N, S + K)
        outputs, self._cache = self._forward(
            input_ids=torch.as_tensor(tokens, device=self.device),  # (N, K)
            attention_mask=self._cache_mask,
            position_ids=self._positions[:, None] + position_ids(mask_t),  # (N, K)
            **{CACHE_ARG: self._cache},
        )
        self._positions += mask_t.sum(dim=1)
        self.outputs[active_t] = outputs[:, -1][active_t]

    def _forward(self, **inputs: Any) -> tuple[torch.Tensor, DynamicCache]:
        """Outputs ``(R, L', V or H)`` in float32 over the kept columns, and the grown KV cache."""
        if self.hidden_states:
            out = self.model.base_model(**inputs, use_cache=True)
            return out.last_hidden_state.float(), out[CACHE_ARG]
        out = self.model(**inputs, use_cache=True)
        return out.logits.float(), out[CACHE_ARG]

    def _write_rows(self, index: np.ndarray, rows_cache: DynamicCache, rows_mask: torch.Tensor) -> None:
        self._cache, self._cache_mask = write_cache_rows(
            self._cache, self._cache_mask, index, rows_cache, rows_mask, self.num_rows
        )


def write_cache_rows(
    cache: DynamicCache | None,
    cache_mask: torch.Tensor | None,
    index: np.ndarray,
    rows_cache: DynamicCache,
    rows_mask: torch.Tensor,
    num_rows: int,
) -> tuple[DynamicCache, torch.Tensor]:
    """``cache`` ``(N, heads, S, head_dim)`` per layer, with its mask ``(N, S)``, with rows ``index`` replaced by
    ``rows_cache`` and ``rows_mask`` (right-aligned, the narrower side left-padded with masked columns); ``None``
    before any row was written. Columns no row attends to any longer are dropped from the front, so the cache stays
    about one episode long."""
    if len(index) == num_rows:
        return rows_cache, rows_mask.clone()
    if cache is None:  # the first rows written are not all: the others start as fully masked rows
        return _spread_rows(rows_cache, rows_mask, index, num_rows)
    length, width = cache_mask.shape[1], rows_mask.shape[1]
    total = max(length, width)
    rows = torch.as_tensor(index, device=cache_mask.device)
    cache_mask = left_pad(cache_mask, total - length, dim=1)
    cache_mask[rows] = left_pad(rows_mask, total - width, dim=1)
    for layer, new in zip(_layers(cache), _layers(rows_cache)):
        layer.keys = left_pad(layer.keys, total - length, dim=2)
        layer.values = left_pad(layer.values, total - length, dim=2)
        layer.keys[rows] = left_pad(new.keys, total - width, dim=2)
        layer.values[rows] = left_pad(new.values, total - width, dim=2)
    first_used = int(cache_mask.any(dim=0).long().argmax())
    if first_used > 0:
        cache_mask = cache_mask[:, first_used:]
        for layer in _layers(cache):
            layer.keys, layer.values = layer.keys[:, :, first_used:], layer.values[:, :, first_used:]
    return cache, cache_mask


def _spread_rows(
    cache: DynamicCache, mask: torch.Tensor, index: np.ndarray, num_rows: int
) -> tuple[DynamicCache, torch.Tensor]:
    """``cache`` and ``mask`` of ``len(index)`` rows put at rows ``index`` of ``num_rows``; the rest masked."""
    rows = torch.as_tensor(index, device=mask.device)
    spread = mask.new_zeros((num_rows, mask.shape[1]))  # (N, S)
    spread[rows] = mask
    for layer in _layers(cache):
        keys = layer.keys.new_zeros((num_rows, *layer.keys.shape[1:]))  # (N, heads, S, head_dim)
        values = layer.values.new_zeros((num_rows, *layer.values.shape[1:]))
        keys[rows], values[rows] = layer.keys, layer.values
        layer.keys, layer.values = keys, values
    return cache, spread


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first occurrence of each distinct row of ``rows`` ``(R, L)``, in order, and for each row the position
    of its distinct row among them: ``rows[first][copies] == rows``."""
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # distinct rows in order of first appearance, not np.unique's sorted order
    return first[order], np.argsort(order)[inverse.reshape(-1)]


def select_cache_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """``cache`` with its rows taken at ``rows`` ``(R,)`` (in place, and returned); differentiable."""
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    return cache


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its row's context, ``(B, L)``, counted from the row's first attended column
    (left padding does not shift a row's positions; padding columns get 0)."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def last_real_column(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's last attended column, ``(B,)``: where a left-padded context ends."""
    return attention_mask.shape[1] - 1 - attention_mask.long().flip(1).argmax(dim=1)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = cache.layers
    for layer in layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"IncrementalLM edits full-attention KV caches row by row; this model's cache has a "
                f"{type(layer).__name__} layer, which it does not support."
            )
    return layers


def left_pad(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    """Prepend ``amount`` zeros along ``dim`` (masked cache columns)."""
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
