"""Next-token logits of many growing token contexts, one KV cache for all of them.

Whatever steps a text vector env with a language model (a policy sampling actions, a frozen reference scoring
them) must not re-run the whole context every token. :class:`IncrementalLM` keeps one KV cache for ``N`` rows
whose contexts are at different points:

* the cache is one ``(N, heads, S, head_dim)`` tensor per layer plus an ``(N, S)`` attention mask; a row's
  context sits at the right end of its row, with masked (zero) columns in front of it;
* position ids are counted per row, so a row's place in the cache does not matter;
* a row whose context starts over (a new episode) is encoded alone and written into its row's tail; columns
  no row attends to any longer are dropped from the front.

Contexts come as the env's observations (``input_ids`` with ``attention_mask``), so a row can be rebuilt from
an observation at any time, e.g. after the model's weights changed.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer


class IncrementalLM:
    """A causal LM advanced one token at a time over ``num_rows`` contexts.

    ``logits`` holds each row's next-token logits ``(N, V)`` (float32), or ``None`` until rows are encoded.
    """

    def __init__(self, model: PreTrainedModel, num_rows: int) -> None:
        self.model = model
        self.num_rows = num_rows
        self.device = next(model.parameters()).device
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.logits: torch.Tensor | None = None  # (N, V)
        self._cache: DynamicCache | None = None
        self._cache_mask: torch.Tensor | None = None  # (N, S)
        self._positions = torch.zeros(num_rows, dtype=torch.long, device=self.device)  # next position id

    def clear(self) -> None:
        """Forget every row (e.g. after a weight update); encode rows again before advancing."""
        self._cache = self._cache_mask = self.logits = None

    @torch.inference_mode()
    def encode_rows(self, rows: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """(Re)build the contexts of the rows selected by the boolean mask ``rows`` from observation arrays.

        Args:
            rows: ``(N,)`` bool, the rows to encode.
            input_ids, attention_mask: ``(N, L)`` observations of all rows (only selected rows are read).
        """
        index = np.flatnonzero(rows)
        ids = torch.as_tensor(input_ids[index], device=self.device)  # (R, L)
        mask = torch.as_tensor(attention_mask[index], device=self.device)  # (R, L)
        last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)  # (R,) column of each row's last real token
        width = int(last.max()) + 1
        ids, mask = ids[:, :width], mask[:, :width]
        keep = torch.unique(last)  # the positions whose logits are needed, shared across rows
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
            past_key_values=DynamicCache(),
            use_cache=True,
            **({"logits_to_keep": keep} if self._keeps_last_logits else {}),
        )
        column = torch.searchsorted(keep, last) if self._keeps_last_logits else last
        logits = out.logits[torch.arange(len(index), device=self.device), column].float()  # (R, V)
        if self.logits is None:
            self.logits = torch.zeros(self.num_rows, logits.shape[-1], device=self.device)
        self.logits[torch.as_tensor(index, device=self.device)] = logits
        self._positions[torch.as_tensor(index, device=self.device)] = mask.sum(dim=1)
        self._write_rows(index, out.past_key_values, mask)

    @torch.inference_mode()
    def advance(self, tokens: torch.Tensor, active: np.ndarray) -> None:
        """Append ``tokens[i]`` to the context of each active row; inactive rows' logits become 0.

        Args:
            tokens: ``(N,)`` token ids (any value on inactive rows).
            active: ``(N,)`` bool, the rows whose context grows.
        """
        if self.logits is None:
            raise RuntimeError("advance() before encode_rows(): encode the rows' contexts first.")
        next_logits = torch.zeros_like(self.logits)
        if active.any():
            active_t = torch.as_tensor(active, device=self.device)
            self._cache_mask = torch.cat([self._cache_mask, active_t.long()[:, None]], dim=1)  # (N, S + 1)
            out = self.model(
                input_ids=torch.as_tensor(tokens, device=self.device)[:, None],  # (N, 1)
                attention_mask=self._cache_mask,
                position_ids=self._positions[:, None],
                past_key_values=self._cache,
                use_cache=True,
            )
            self._positions += active_t.long()
            next_logits[active_t] = out.logits[:, -1].float()[active_t]
        self.logits = next_logits

    def _write_rows(self, index: np.ndarray, rows_cache: DynamicCache, rows_mask: torch.Tensor) -> None:
        if self._cache is None or len(index) == self.num_rows:
            self._cache, self._cache_mask = rows_cache, rows_mask.clone()
            return
        length, width = self._cache_mask.shape[1], rows_mask.shape[1]
        total = max(length, width)
        rows = torch.as_tensor(index, device=self.device)
        self._cache_mask = _left_pad(self._cache_mask, total - length, dim=1)
        self._cache_mask[rows] = _left_pad(rows_mask, total - width, dim=1)
        for layer, new in zip(_layers(self._cache), _layers(rows_cache)):
            layer.keys = _left_pad(layer.keys, total - length, dim=2)
            layer.values = _left_pad(layer.values, total - length, dim=2)
            layer.keys[rows] = _left_pad(new.keys, total - width, dim=2)
            layer.values[rows] = _left_pad(new.values, total - width, dim=2)
        # Drop the leading columns that no row attends to any more, so the cache stays about one episode long.
        first_used = int(self._cache_mask.any(dim=0).long().argmax())
        if first_used > 0:
            self._cache_mask = self._cache_mask[:, first_used:]
            for layer in _layers(self._cache):
                layer.keys, layer.values = layer.keys[:, :, first_used:], layer.values[:, :, first_used:]


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = cache.layers
    for layer in layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"IncrementalLM edits full-attention KV caches row by row; this model's cache has a "
                f"{type(layer).__name__} layer, which it does not support."
            )
    return layers


def _left_pad(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    """Prepend ``amount`` zeros along ``dim`` (masked cache columns)."""
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
