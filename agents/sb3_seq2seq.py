"""The SB3 LM policies' features for an encoder–decoder policy: the decoder's last hidden state, what its output layer
reads, at each row's last decoder token.

[LMActorCriticPolicy][agents.sb3.LMActorCriticPolicy] and its maskable twin pick
[Seq2SeqFeaturesExtractor][agents.sb3_seq2seq.Seq2SeqFeaturesExtractor] for an encoder–decoder model directory; the env
made with the same model gives the encoder–decoder observation (the source, and the decoder's input so far; see
[textgym.envs.core.TokenEpisodes.observation][textgym.envs.core.TokenEpisodes.observation]). Its KV cache, for SB3's
calls without gradients, is [textgym.lm.seq2seq.IncrementalSeq2SeqLM][textgym.lm.seq2seq.IncrementalSeq2SeqLM]: a row
whose observation is the previous one with one more decoder token costs one decoder token's forward, and a new
episode's source is encoded once.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from agents.sb3 import LMFeaturesExtractor
from textgym.lm.seq2seq import IncrementalSeq2SeqLM, decoder_output_scale, packed_left

DECODER_KEYS = ("decoder_input_ids", "decoder_attention_mask")


class Seq2SeqFeaturesExtractor(LMFeaturesExtractor):
    """[LMFeaturesExtractor][agents.sb3.LMFeaturesExtractor] for an encoder–decoder (same arguments): features
    ``(B, H)`` scaled as the model scales them before its output layer (T5 with tied embeddings), so the policy's
    ``action_net(features)`` are the model's logits."""

    def __init__(self, observation_space: spaces.Dict, **kwargs: object) -> None:
        if not set(DECODER_KEYS) <= set(observation_space.keys()):
            raise ValueError(
                f"An encoder–decoder policy needs the env's encoder–decoder observations ({DECODER_KEYS} too): make "
                f"the env with the policy's model; got {observation_space}."
            )
        super().__init__(observation_space, **kwargs)
        self.output_scale = decoder_output_scale(self.lm.config)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        obs = {key: value.long() for key, value in obs.items()}  # SB3 turned the token ids into floats
        if self.kv_cache and not self.training and not torch.is_grad_enabled():
            return self._cached_seq2seq_features(obs) * self.output_scale
        return self._seq2seq_features(obs) * self.output_scale

    def _seq2seq_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One pass of the encoder and the decoder over every row."""
        source, source_mask = packed_left(obs["input_ids"], obs["attention_mask"])
        out = self.lm(
            input_ids=source,
            attention_mask=source_mask,
            decoder_input_ids=obs["decoder_input_ids"],
            decoder_attention_mask=obs["decoder_attention_mask"],
            output_hidden_states=True,
            use_cache=False,
        )
        last = obs["decoder_attention_mask"].sum(dim=1) - 1  # (B,) decoder tokens are right-padded
        return out.decoder_hidden_states[-1][torch.arange(len(last), device=last.device), last]  # (B, H)

    def _cached_seq2seq_features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = len(obs["input_ids"])
        if self._cache is None or self._cache.num_rows != rows:
            self._cache = IncrementalSeq2SeqLM(self.lm, rows, hidden_states=True)
            self._cached_obs = None
        decoded = obs["decoder_attention_mask"].sum(dim=1)  # (B,)
        fresh = np.ones(rows, dtype=bool)
        if self._cached_obs is not None:
            old = self._cached_obs
            same_source = (obs["input_ids"] == old["input_ids"]).all(1) & (
                obs["attention_mask"] == old["attention_mask"]
            ).all(1)
            old_kept = (
                (obs["decoder_input_ids"] == old["decoder_input_ids"]) | (old["decoder_attention_mask"] == 0)
            ).all(1)
            growth = decoded - old["decoder_attention_mask"].sum(dim=1)  # (B,) decoder tokens appended
            kept = same_source & old_kept & ((growth == 0) | (growth == 1))
            grown = (kept & (growth == 1)).cpu().numpy()
            fresh = ~kept.cpu().numpy()  # a new episode (or anything else): encode the row from scratch
            if grown.any():
                tokens = obs["decoder_input_ids"].gather(1, (decoded - 1)[:, None])[:, 0]  # (B,) each row's newest
                self._cache.advance(tokens, grown)  # unchanged rows keep their features
        if fresh.any():
            self._cache.encode_rows(fresh, **obs)
        self._cached_obs = {key: value.clone() for key, value in obs.items()}
        return self._cache.outputs.clone()  # (B, H)
