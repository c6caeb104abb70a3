"""A frozen reference LM inside the env: KL-shaped rewards and top-k / top-p action masks.

With a reference model ``π_ref``, each step's reward gains ``kl_coef · log π_ref(a_t | s_t)``. That is half of
RLHF's per-token KL penalty; the agent adds the other half, ``−kl_coef · log π(a_t | s_t)`` (only it knows π;
for SB3, [agents.sb3.KLPenaltyCallback][agents.sb3.KLPenaltyCallback]). The return then has expectation

    E[task reward] − kl_coef · Σ_t KL(π ‖ π_ref)(s_t),

the KL-regularised objective, and its policy gradient is that objective's gradient. An entropy bonus of the
same coefficient instead of the ``−log π`` reward (SB3's ``ent_coef``) gives the same objective *value*, since
``KL(π‖π_ref) = −H(π) − E_π[log π_ref]``, but not its gradient: the bonus is paid per visited state outside
the return, so it ignores how an action changes the entropy of later states.

Action masks allow only the reference's ``top_k`` tokens, or its smallest set of tokens reaching probability
``top_p`` (always with the stop tokens), as NLPO does.

The reference keeps one KV cache over the env's rows ([textgym.lm.cache.IncrementalLM][textgym.lm.cache.IncrementalLM]),
so scoring a step costs one batched single-token forward pass.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

ACTION_MASKS = ("top_k", "top_p")

_CONTEXT_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
"""The observation's arrays the reference reads (a causal LM the first two, an encoder–decoder all four)."""


class ReferenceModel:
    """The reference LM over ``num_rows`` episodes: next-token log-probs and action masks per row.

    Args:
        model: ``"embedded"``, ``"tiny"`` or a local HF model directory; its tokenizer must be the env's.
        num_rows: episodes side by side.
        env_tokenizer: the env's tokenizer, to check against the reference's.
        action_mask: ``None``, ``"top_k"`` or ``"top_p"``.
        top_k: the size of the ``"top_k"`` mask.
        top_p: the probability mass of the ``"top_p"`` mask.
        always_allowed: token ids every mask allows (the env's stop tokens).
        device: where the reference runs (default ``cpu``).
        encoder_decoder: whether the env's model, hence its observations, is an encoder–decoder; the reference
            must be one too.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        num_rows: int,
        env_tokenizer: Any,
        action_mask: str | None = None,
        top_k: int = 50,
        top_p: float = 0.9,
        always_allowed: np.ndarray | None = None,
        device: str | None = None,
        encoder_decoder: bool = False,
    ) -> None:
        from textgym.lm.models import is_encoder_decoder, load_lm, load_tokenizer
        from textgym.lm.seq2seq import incremental_lm

        if action_mask not in (None, *ACTION_MASKS):
            raise ValueError(f"action_mask must be None, 'top_k' or 'top_p', got {action_mask!r}.")
        if action_mask == "top_k" and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
        if action_mask == "top_p" and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}.")
        if load_tokenizer(model).get_vocab() != env_tokenizer.get_vocab():
            raise ValueError(
                f"The reference model {model!r} has another tokenizer than the env's model: its log-probs would "
                "score other tokens. Use a reference with the env's tokenizer."
            )
        if is_encoder_decoder(model) != encoder_decoder:
            kind = "an encoder–decoder" if encoder_decoder else "a causal LM"
            raise ValueError(
                f"The env's model is {kind}, and the reference model {str(model)!r} is not: use one like it."
            )
        self.action_mask = action_mask
        self.top_k, self.top_p = top_k, top_p
        self.always_allowed = np.asarray([] if always_allowed is None else always_allowed, dtype=np.int64)
        self.lm = incremental_lm(load_lm(model, device=device or "cpu"), num_rows)
        self._stale = np.ones(num_rows, dtype=bool)  # rows whose context changed outside step()
        # This step's log-probs and masks, computed once however often they are asked for (SB3's MaskablePPO
        # asks for the masks, then steps, which checks the action against them).
        self._logprobs: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def restart(self, row: int) -> None:
        """Row ``row`` starts a new episode; it is encoded lazily, batched with the other restarted rows."""
        self._stale[row] = True
        self._logprobs = self._masks = None

    def logprobs(self, observation: dict[str, np.ndarray], running: np.ndarray) -> np.ndarray:
        """Log-probs ``(N, V)`` of every next token under the reference, for the running rows' contexts (the env's
        observation of all rows)."""
        import torch

        if self.lm.outputs is None:
            self._stale[:] = True
        stale = self._stale & running
        if stale.any():
            context = {key: observation[key] for key in _CONTEXT_KEYS if key in observation}  # not agent_mask
            self.lm.encode_rows(stale, **context)
            self._stale[stale] = False
            self._logprobs = self._masks = None
        if self._logprobs is None:
            self._logprobs = torch.log_softmax(self.lm.outputs, dim=-1).cpu().numpy()
        return self._logprobs

    def masks(self, observation: dict[str, np.ndarray], running: np.ndarray) -> np.ndarray:
        """Allowed actions ``(N, V)`` bool under ``action_mask``, from the reference's current log-probs."""
        logprobs = self.logprobs(observation, running)
        if self._masks is None:
            self._masks = self._allowed(logprobs)
        return self._masks

    def _allowed(self, logprobs: np.ndarray) -> np.ndarray:
        if self.action_mask is None:
            return np.ones(logprobs.shape, dtype=bool)
        order = np.argsort(-logprobs, axis=1, kind="stable")  # (N, V) most likely first
        if self.action_mask == "top_k":
            keep_sorted = np.arange(logprobs.shape[1]) < self.top_k
            keep_sorted = np.broadcast_to(keep_sorted, logprobs.shape)
        else:
            probs = np.take_along_axis(np.exp(logprobs), order, axis=1)
            before = np.cumsum(probs, axis=1) - probs  # mass of the more likely tokens
            keep_sorted = before < self.top_p  # the smallest prefix whose mass reaches top_p
        allowed = np.zeros(logprobs.shape, dtype=bool)
        np.put_along_axis(allowed, order, keep_sorted, axis=1)
        allowed[:, self.always_allowed] = True
        return allowed

    def advance(self, tokens: np.ndarray, active: np.ndarray) -> None:
        """Append ``tokens`` to the active rows' contexts."""
        import torch

        self.lm.advance(torch.as_tensor(tokens), active)
        self._logprobs = self._masks = None
