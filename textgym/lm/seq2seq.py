"""Encoder–decoder (T5-family) language models at run time: teacher-forced inputs and incremental decoding.

An encoder–decoder policy reads the prompt with its encoder once and writes the completion with its decoder, which
attends to the encoder's output. Everywhere textgym lays a prompt and a completion side by side (the env's rows, a
[RolloutBatch][agents.rollout.RolloutBatch]: prompt in the first ``P`` columns, completion after), an encoder–decoder
reads the prompt as its source and the completion, behind the decoder start token, as its decoder input
([seq2seq_inputs][textgym.lm.seq2seq.seq2seq_inputs]).

Which encoder–decoders are supported, and why, is [textgym.lm.models.is_encoder_decoder][]'s to say.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from textgym.lm.cache import CACHE_ARG, IncrementalLM, left_pad, write_cache_rows


def decoder_output_scale(config: Any) -> float:
    """The factor the model multiplies its decoder's last hidden state by before the output layer: ``d_model**-0.5``
    for T5 checkpoints with tied embeddings (the original T5), 1 otherwise (flan-t5)."""
    return config.d_model**-0.5 if getattr(config, "scale_decoder_outputs", False) else 1.0


def packed_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens moved to its start, in order, padding after (``(B, L)`` each): the encoder's source
    layout, whatever padding side a batch uses."""
    order = torch.argsort((mask == 0).long(), dim=1, stable=True)  # real columns first, each group in order
    return ids.gather(1, order), mask.gather(1, order)


def seq2seq_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int, start_token: int
) -> dict[str, torch.Tensor]:
    """An encoder–decoder's teacher-forced inputs from rows laid out prompt then completion ``(E, P + T)``: the
    prompt as the source, and the decoder start token followed by the completion's first ``T - 1`` tokens, so
    decoder column ``t`` predicts completion token ``t``."""
    width = input_ids.shape[1] - completion_width
    source, source_mask = packed_left(input_ids[:, :width], attention_mask[:, :width])
    start = torch.full_like(input_ids[:, :1], start_token)
    return {
        "input_ids": source,  # (E, P)
        "attention_mask": source_mask,  # (E, P)
        "decoder_input_ids": torch.cat([start, input_ids[:, width:-1]], dim=1),  # (E, T)
        "decoder_attention_mask": torch.cat([torch.ones_like(start), attention_mask[:, width:-1]], dim=1),  # (E, T)
    }


class IncrementalSeq2SeqLM:
    """[IncrementalLM][textgym.lm.cache.IncrementalLM] for an encoder–decoder: ``num_rows`` decoders advanced a
    token at a time, each row's source encoded once when the row is (re)encoded.

    The encoder's output stays per row (``(N, S, H)`` with its mask); the decoder's KV cache is an
    ``EncoderDecoderCache``: its self-attention part grows a column a step, its cross-attention part (the
    encoder output's keys and values, computed on the row's first decoder pass) is reused to the episode's end.
    Rows are right-aligned in both, as in the causal cache; T5's relative positions make the padding harmless.

    Contexts come as the env's encoder–decoder observations: ``input_ids``/``attention_mask`` the source,
    ``decoder_input_ids``/``decoder_attention_mask`` the start token and the tokens generated so far.
    """

    def __init__(self, model: PreTrainedModel, num_rows: int, hidden_states: bool = False) -> None:
        self.model = model
        self.num_rows = num_rows
        self.hidden_states = hidden_states
        self.device = next(model.parameters()).device
        self.outputs: torch.Tensor | None = None  # (N, V) or (N, H)
        self._encoded: torch.Tensor | None = None  # (N, S, H) the encoder's output
        self._source_mask: torch.Tensor | None = None  # (N, S)
        self._cache: Any = None  # EncoderDecoderCache
        self._decoder_mask: torch.Tensor | None = None  # (N, D)

    def clear(self) -> None:
        """Forget every row (e.g. after a weight update); encode rows again before advancing."""
        self._cache = self._encoded = self._source_mask = self._decoder_mask = self.outputs = None

    @torch.inference_mode()
    def encode_rows(
        self,
        rows: np.ndarray,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        decoder_input_ids: np.ndarray,
        decoder_attention_mask: np.ndarray,
    ) -> None:
        """(Re)build the rows selected by the boolean mask ``rows`` from observation arrays ``(N, ·)``: run the
        encoder on their sources and the decoder on their tokens so far."""
        index = np.flatnonzero(rows)
        tensor = lambda array: torch.as_tensor(array[index], device=self.device)  # noqa: E731
        source, source_mask = packed_left(tensor(input_ids), tensor(attention_mask))
        width = int(source_mask.sum(dim=1).max())
        source, source_mask = source[:, :width], source_mask[:, :width]  # (R, S)
        decoder_ids, decoder_mask = _right_aligned(tensor(decoder_input_ids), tensor(decoder_attention_mask))
        encoded = self.model.get_encoder()(input_ids=source, attention_mask=source_mask).last_hidden_state  # (R, S, H)
        outputs, cache = self._forward(
            encoded,
            source_mask,
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask,
            **{CACHE_ARG: EncoderDecoderCache(DynamicCache(), DynamicCache())},
        )
        if self.outputs is None:
            self.outputs = torch.zeros(self.num_rows, outputs.shape[-1], device=self.device)
        self.outputs[torch.as_tensor(index, device=self.device)] = outputs[:, -1]
        if self._cache is None:
            self._cache = cache  # its rows are replaced below, spread over all N when these are not all
            self_cache, cross_cache = None, None
        else:
            self_cache, cross_cache = self._cache.self_attention_cache, self._cache.cross_attention_cache
        self._cache.self_attention_cache, self._decoder_mask = write_cache_rows(
            self_cache, self._decoder_mask, index, cache.self_attention_cache, decoder_mask, self.num_rows
        )
        self._cache.cross_attention_cache, _ = write_cache_rows(
            cross_cache, self._source_mask, index, cache.cross_attention_cache, source_mask, self.num_rows
        )
        self._encoded, self._source_mask = _write_encoded(
            self._encoded, self._source_mask, index, encoded, source_mask, self.num_rows
        )

    @torch.inference_mode()
    def advance(self, tokens: torch.Tensor, active: np.ndarray) -> None:
        """Append ``tokens[i]`` to the decoder of each active row; inactive rows keep their outputs."""
        if self.outputs is None:
            raise RuntimeError("advance() before encode_rows(): encode the rows' contexts first.")
        active_t = torch.as_tensor(active, device=self.device)
        if not active_t.any():
            return
        self._decoder_mask = torch.cat([self._decoder_mask, active_t[:, None].long()], dim=1)  # (N, D + 1)
        outputs, self._cache = self._forward(
            self._encoded,
            self._source_mask,
            decoder_input_ids=torch.as_tensor(tokens, device=self.device)[:, None],  # (N, 1)
            decoder_attention_mask=self._decoder_mask,
            **{CACHE_ARG: self._cache},
        )
        self.outputs[active_t] = outputs[:, -1][active_t]
        if not active_t.all():  # an idle row's new (masked) column goes to its front: T5 would count it as a gap
            idle = ~active_t
            for layer in self._cache.self_attention_cache.layers:
                layer.keys[idle], layer.values[idle] = layer.keys[idle].roll(1, 2), layer.values[idle].roll(1, 2)
            self._decoder_mask[idle] = self._decoder_mask[idle].roll(1, 1)

    def _forward(self, encoded: torch.Tensor, source_mask: torch.Tensor, **inputs: Any) -> tuple[torch.Tensor, Any]:
        """Outputs ``(R, D', V or H)`` in float32 over the decoder columns given, and the grown cache."""
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
            attention_mask=source_mask,
            use_cache=True,
            output_hidden_states=self.hidden_states,
            **inputs,
        )
        states = out.decoder_hidden_states[-1] if self.hidden_states else out.logits
        return states.float(), out[CACHE_ARG]


def _right_aligned(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of right-padded tokens made left-padded ``(B, D)``: each row's last token in the last column, where the
    cache appends the next one."""
    order = torch.argsort((mask != 0).long(), dim=1, stable=True)  # padding first, then the real columns in order
    ids, mask = ids.gather(1, order), mask.gather(1, order)
    first = int((mask != 0).long().argmax(dim=1).min())  # drop the columns of padding every row has
    return ids[:, first:], mask[:, first:]


def _write_encoded(
    encoded: torch.Tensor | None,
    mask: torch.Tensor | None,
    index: np.ndarray,
    rows_encoded: torch.Tensor,
    rows_mask: torch.Tensor,
    num_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder outputs ``(N, S, H)`` and masks ``(N, S)`` with rows ``index`` replaced, right-aligned as
    [write_cache_rows][textgym.lm.cache.write_cache_rows] aligns the cross-attention keys (the columns must match)."""
    if mask is None:
        mask = rows_mask.new_zeros((num_rows, 0))
        encoded = rows_encoded.new_zeros((num_rows, 0, rows_encoded.shape[-1]))
    total = max(mask.shape[1], rows_mask.shape[1])
    encoded, mask = left_pad(encoded, total - mask.shape[1], dim=1), left_pad(mask, total - mask.shape[1], dim=1)
    rows = torch.as_tensor(index, device=mask.device)
    encoded[rows] = left_pad(rows_encoded, total - rows_mask.shape[1], dim=1)
    mask[rows] = left_pad(rows_mask, total - rows_mask.shape[1], dim=1)
    first_used = int(mask.any(dim=0).long().argmax())
    return encoded[:, first_used:], mask[:, first_used:]


def incremental_lm(model: PreTrainedModel, num_rows: int, hidden_states: bool = False) -> Any:
    """``model`` advanced over ``num_rows`` contexts: an [IncrementalLM][textgym.lm.cache.IncrementalLM], or for an
    encoder–decoder an [IncrementalSeq2SeqLM][textgym.lm.seq2seq.IncrementalSeq2SeqLM] (the same interface; its
    ``encode_rows`` takes the encoder–decoder observation's four arrays)."""
    if model.config.is_encoder_decoder:
        return IncrementalSeq2SeqLM(model, num_rows, hidden_states)
    return IncrementalLM(model, num_rows, hidden_states)
