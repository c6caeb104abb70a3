"""Policies that let Stable-Baselines3 and sb3-contrib train on textgym's environments, unmodified.

* [LMActorCriticPolicy][agents.sb3.LMActorCriticPolicy] (``PPO``, ``A2C``) and
  [MaskableLMActorCriticPolicy][agents.sb3.MaskableLMActorCriticPolicy] (``MaskablePPO``): a Hugging Face causal LM is
  the actor, a linear value head on its last hidden state the critic; with an encoder–decoder (T5-family) model the
  features are [Seq2SeqFeaturesExtractor][agents.sb3.Seq2SeqFeaturesExtractor]'s: the decoder's last hidden state at
  each row's last decoder token, with a KV cache that encodes each episode's source once;
* [TokenGRUExtractor][agents.sb3.TokenGRUExtractor]: token embedding + GRU, for SB3's own ``MultiInputPolicy`` to learn
  a small-vocabulary task from scratch (a word-level tokenizer: ``textgym.lm.models.make_tiny_model(dir, words=...)``);
* [TextGenSB3VecEnv][agents.sb3_vec_env.TextGenSB3VecEnv] / [make_sb3_vec_env][agents.sb3_vec_env.make_sb3_vec_env]:
  SB3's ``VecEnv`` over textgym's batched vector env;
* [KLPenaltyCallback][agents.sb3.KLPenaltyCallback]: the policy's half of the KL penalty,
  ``−kl_coef · log π(a_t | s_t)``, added to the rewards SB3 stores, to complete the env's
  ``kl_coef · log π_ref(a_t | s_t)``.

The LM policies fit SB3's structure as it is: the LM trunk is the features extractor (the hidden state at each
row's last real token), the LM's own output layer is ``action_net`` and ``value_net`` reads the same features.
SB3 calls the policy on whole observations, so without a cache every rollout step re-runs the full context. With
``kv_cache=True`` (the default) the extractor keeps a per-row KV cache while SB3 runs it without gradients in
eval mode (rollouts, ``predict``): a row whose observation is the previous one plus a token costs one token's
forward. The cache is keyed by the observations' content, so it needs nothing from the env or the algorithm,
and it is dropped whenever SB3 switches to training mode or weights are loaded.

Real checkpoints: the LM is loaded in float32 whatever dtype it was saved in (the optimizer's master weights;
bfloat16 weights would swallow small updates), and it stays in eval mode while SB3 toggles ``train()``, so
dropout never makes the training log-probs differ from the rollout's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn
from transformers import PreTrainedModel

from agents.sb3_vec_env import TextGenSB3VecEnv, make_sb3_vec_env
from textgym.lm.cache import IncrementalLM, last_real_column, position_ids
from textgym.lm.models import is_encoder_decoder, load_lm, resolve_model_dir, vocab_size_of
from textgym.lm.seq2seq import IncrementalSeq2SeqLM, decoder_output_scale, packed_left

__all__ = [
    "KLPenaltyCallback",
    "LMActorCriticPolicy",
    "LMFeaturesExtractor",
    "MaskableLMActorCriticPolicy",
    "Seq2SeqFeaturesExtractor",
    "TextGenSB3VecEnv",
    "TokenGRUExtractor",
    "make_sb3_vec_env",
]

FLOAT32_EXACT_IDS = 2**24
"""SB3 hands ``Box`` observations over as float32, which holds every integer token id below 2**24 exactly."""

_FIXED_POLICY_KWARGS = ("net_arch", "ortho_init", "features_extractor_class", "features_extractor_kwargs")


def _token_context(obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` back as integers (SB3 turned them into floats)."""
    return obs["input_ids"].long(), obs["attention_mask"].long()


def _check_token_observations(observation_space: spaces.Space) -> None:
    if not (
        isinstance(observation_space, spaces.Dict) and {"input_ids", "attention_mask"} <= set(observation_space.keys())
    ):
        raise ValueError(
            f"The token policies need Dict observations with 'input_ids' and 'attention_mask' (as TextGen-v0's), "
            f"got {observation_space}."
        )


class LMFeaturesExtractor(BaseFeaturesExtractor):
    """A causal LM's last hidden state at each row's last real token, ``(B, H)``: what both heads read.

    Observations are a prompt left-padded to ``P`` columns, the generated tokens, then padding; the last real
    token is each row's last attended column. Columns no row attends to are cut before the forward pass.

    Args:
        observation_space: TextGen's ``Dict(input_ids, attention_mask)``.
        model: a model name or local directory (see
            [textgym.lm.models.resolve_model_dir][textgym.lm.models.resolve_model_dir]), loaded with its weights; a name
            or path, so SB3 can pickle it with the policy's kwargs and rebuild the LM on load.
        kv_cache: keep a per-row KV cache for calls without gradients in eval mode (module docstring).
        attn_implementation: the LM's attention kernel, e.g. ``"eager"`` for sb3-contrib's ``TRPO``, whose
            Hessian-vector products need a second derivative that PyTorch's fused CPU attention lacks.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        model: str = "embedded",
        kv_cache: bool = True,
        attn_implementation: str | None = None,
    ) -> None:
        _check_token_observations(observation_space)
        # fp32 master weights whatever the checkpoint's dtype: Adam's small steps round to nothing in bfloat16.
        lm = load_lm(model, dtype=torch.float32)
        if attn_implementation is not None:
            lm.set_attn_implementation(attn_implementation)
        super().__init__(observation_space, features_dim=lm.config.get_text_config().hidden_size)
        self.lm = lm
        self.kv_cache = kv_cache
        self._cache: IncrementalLM | None = None
        self._cached_obs: tuple[torch.Tensor, torch.Tensor] | None = None  # the (ids, mask) the cache holds
        # Loading weights (model.load, set_parameters) makes cached features stale.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_cache())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = _token_context(obs)
        if self.kv_cache and not self.training and not torch.is_grad_enabled():
            return self._cached_features(input_ids, attention_mask)
        return self._features(input_ids, attention_mask)

    def train(self, mode: bool = True) -> LMFeaturesExtractor:
        if mode:  # SB3 switches to training mode before every update: the cached keys and values go stale
            self.clear_cache()
        super().train(mode)
        # The LM stays in eval mode: SB3 rolls out in eval mode and trains in train mode, so the LM's dropout
        # would make PPO's ratio differ from 1 before any update (TRL turns dropout off for the same reason).
        self.lm.eval()
        return self

    def clear_cache(self) -> None:
        """Forget the cached contexts; needed only after changing the LM's weights outside SB3's training."""
        self._cache = self._cached_obs = None

    def _features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Features from full forward passes, one per distinct longest context.

        SB3 trains on single states, so a minibatch holds many states of one episode, each the previous one plus a
        token. A causal LM's hidden state at a position depends only on the tokens up to it, so a row whose
        context is a prefix of another row's reads its features off that row's pass: a minibatch costs about one
        forward pass per episode in it, as whole-sequence training does, instead of one per state.
        """
        tokens = torch.where(attention_mask.bool(), input_ids, -1)  # (B, L) padding sorts before every token id
        unique, row_of = torch.unique(tokens, dim=0, return_inverse=True)  # (U, L) in lexicographic order
        # In lexicographic order a context's extensions come right after it: a row is a prefix of some other row
        # iff it is a prefix of the next one, and the next row that is no prefix is the longest context holding it.
        last = last_real_column(unique >= 0)  # (U,)
        columns = torch.arange(unique.shape[1], device=unique.device)
        is_prefix = ((unique[:-1] == unique[1:]) | (columns > last[:-1, None])).all(dim=1)  # (U - 1,) of the next
        longest = torch.cat([~is_prefix, is_prefix.new_ones(1)]).nonzero().flatten()  # (M,) rows to run
        runner = torch.searchsorted(longest, torch.arange(len(unique), device=unique.device))  # (U,)
        hidden, start = self._hidden_states(unique[longest].clamp(min=0), (unique[longest] >= 0).long())
        return hidden[runner[row_of], last[row_of] - start]  # (B, H)

    def _hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Last hidden states ``(M, L', H)`` over the columns some row attends to, and the first such column."""
        used = attention_mask.any(dim=0).nonzero().flatten()
        start, end = int(used[0]), int(used[-1]) + 1
        attention_mask = attention_mask[:, start:end]  # (M, L')
        hidden = self.lm.base_model(
            input_ids=input_ids[:, start:end],
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state
        return hidden, start

    def _cached_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = len(input_ids)
        if self._cache is None or self._cache.num_rows != rows:
            self._cache = IncrementalLM(self.lm, rows, hidden_states=True)
            self._cached_obs = None
        cache = self._cache
        if self._cached_obs is None:
            cache.encode_rows(np.ones(rows, dtype=bool), input_ids, attention_mask)
        else:
            old_ids, old_mask = self._cached_obs
            added = attention_mask - old_mask  # (B, L) 1 where a token was appended
            count = added.sum(dim=1)  # (B,) tokens appended: one action, or more where a multi-turn env replied
            kept = ((added >= 0) & ((input_ids == old_ids) | (old_mask == 0))).all(dim=1)  # old tokens in place
            # Appended after the old context's last token: not in front of it (a new episode's prompt can be the
            # old context with one token before it).
            after_old = added.argmax(dim=1) > last_real_column(old_mask)  # (B,)
            grown = kept & (count > 0) & after_old
            same = (kept & (count == 0)).cpu().numpy()
            fresh = ~(grown.cpu().numpy() | same)  # a new episode (or anything else): encode the row from scratch
            if grown.any():
                width = int(count[grown].max())
                columns = torch.argsort(added, dim=1, stable=True)[
                    :, -width:
                ]  # (B, K) the appended ones last, in order
                new_mask = added.gather(1, columns).bool() & grown[:, None]  # (B, K) right-aligned
                cache.extend(input_ids.gather(1, columns), new_mask.cpu().numpy())  # unchanged rows keep features
            if fresh.any():
                cache.encode_rows(fresh, input_ids, attention_mask)
        self._cached_obs = (input_ids.clone(), attention_mask.clone())
        return cache.outputs.clone()  # (B, H)


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


class LMPolicyMixin:
    """What both LM policies add to SB3's actor-critic: the LM as extractor and actor head, a value head; its
    arguments are theirs (pass them in ``policy_kwargs``).

    Args:
        model: the policy LM, a name or local directory (see
            [textgym.lm.models.resolve_model_dir][textgym.lm.models.resolve_model_dir]); a causal LM, or a T5-family
            encoder–decoder (features: [Seq2SeqFeaturesExtractor][agents.sb3.Seq2SeqFeaturesExtractor]).
            Its output layer must match the env's ``Discrete(vocab_size)``; make the env with the same model.
        kv_cache: see [LMFeaturesExtractor][agents.sb3.LMFeaturesExtractor].
        attn_implementation: see [LMFeaturesExtractor][agents.sb3.LMFeaturesExtractor].
        **kwargs: the base policy's other arguments (optimizer, ...). ``net_arch``, ``ortho_init`` and the
            features extractor are fixed: the heads are the LM's own, and orthogonal init would erase the LM.
    """

    features_extractor: LMFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        model: str = "embedded",
        kv_cache: bool = True,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> None:
        fixed = sorted(set(kwargs) & set(_FIXED_POLICY_KWARGS))
        if fixed:
            raise ValueError(f"{type(self).__name__} sets {fixed} itself (the heads are the LM's); leave them out.")
        model = str(model)
        _check_token_observations(observation_space)
        vocab = vocab_size_of(resolve_model_dir(model))  # from the config: fail before loading any weights
        if not isinstance(action_space, spaces.Discrete) or action_space.n != vocab:
            raise ValueError(
                f"The policy model {model!r} has a vocabulary of {vocab} tokens, but the env's action space is "
                f"{action_space}. Make the env with the same model: gym.make('TextGen-v0', model={model!r})."
            )
        if vocab > FLOAT32_EXACT_IDS:
            raise ValueError(
                f"SB3 passes token ids as float32, exact below {FLOAT32_EXACT_IDS} only; vocab is {vocab}."
            )
        self.lm_kwargs = {"model": model, "kv_cache": kv_cache, "attn_implementation": attn_implementation}
        extractor = LMFeaturesExtractor
        if is_encoder_decoder(resolve_model_dir(model)):
            extractor = Seq2SeqFeaturesExtractor
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[],  # the MLP extractor is the identity: the heads read the LM's hidden state directly
            ortho_init=False,
            features_extractor_class=extractor,
            features_extractor_kwargs=dict(self.lm_kwargs),
            **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        self._build_mlp_extractor()
        lm = self.features_extractor.lm
        self.action_net = lm.get_output_embeddings()  # (H -> V): the LM's own logits
        _check_plain_output_layer(lm)
        self.value_net = _ValueHead(self.features_dim, 1)
        nn.init.zeros_(self.value_net.weight)  # start at V = 0: no random value targets leak into the advantages
        nn.init.zeros_(self.value_net.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> Any:
        """The LM's logits as float32 whatever the trunk's dtype, so log-probs and ratios are exact enough."""
        weight = self.action_net.weight  # (V, H)
        logits = self.action_net(latent_pi.to(weight.dtype)).float()  # (B, V)
        return self.action_dist.proba_distribution(action_logits=logits)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in _FIXED_POLICY_KWARGS:
            data.pop(key, None)
        return {**data, **self.lm_kwargs}


class _ValueHead(nn.Linear):
    """The critic, a linear layer that reads features of any dtype (the LM's) in its own (float32)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.to(self.weight.dtype))


@torch.no_grad()
def _check_plain_output_layer(lm: PreTrainedModel) -> None:
    """The policy computes logits as ``output_layer(hidden)`` (an encoder–decoder's hidden state scaled as T5 scales
    it); refuse models that change them afterwards."""
    ids = torch.tensor([[1, 2, 3]], device=lm.device)
    if lm.config.is_encoder_decoder:
        from textgym.lm.seq2seq import decoder_output_scale

        out = lm(input_ids=ids, decoder_input_ids=ids, output_hidden_states=True)
        expected, hidden = out.logits[:, -1], out.decoder_hidden_states[-1][:, -1] * decoder_output_scale(lm.config)
    else:
        expected, hidden = lm(input_ids=ids).logits[:, -1], lm.base_model(input_ids=ids).last_hidden_state[:, -1]
    got = lm.get_output_embeddings()(hidden)
    if not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise ValueError(
            f"{type(lm).__name__} transforms its logits after the output layer (scaling or soft-capping), which "
            "the SB3 LM policies do not reproduce; use a model whose logits are output_layer(hidden_state)."
        )


class LMActorCriticPolicy(LMPolicyMixin, ActorCriticPolicy):
    """SB3 ``ActorCriticPolicy`` whose actor is a causal LM; for ``PPO`` and ``A2C``.

    ``PPO(LMActorCriticPolicy, env, policy_kwargs={"model": "path/or/name"})``; see
    [LMPolicyMixin][agents.sb3.LMPolicyMixin] for the arguments.
    """


class MaskableLMActorCriticPolicy(LMPolicyMixin, MaskableActorCriticPolicy):
    """sb3-contrib ``MaskableActorCriticPolicy`` whose actor is a causal LM; for ``MaskablePPO``.

    Masked tokens get probability 0 in rollouts and updates; the env's ``action_masks()`` (e.g. a reference
    model's top-p tokens) supplies the masks. See [LMPolicyMixin][agents.sb3.LMPolicyMixin] for the arguments.
    """


class KLPenaltyCallback(BaseCallback):
    """Adds ``−kl_coef · log π(a_t | s_t)`` to each step's rewards before SB3 stores them in its rollout buffer.

    With the env's ``kl_coef · log π_ref(a_t | s_t)`` (``TextGen-v0(reference_model=..., kl_coef=β)``, the same
    ``β`` here) each stored reward is ``r_t − β · log(π / π_ref)(a_t | s_t)``, RLHF's per-token KL penalty: the
    expected return is ``E[score] − β · Σ_t KL(π ‖ π_ref)(s_t)`` and its policy gradient is that objective's
    gradient. (SB3's ``ent_coef = β`` instead gives the same value but not the gradient: its entropy bonus sits
    outside the return, so it ignores how an action changes later states' entropy.) Use ``ent_coef=0`` with it.

    ``PPO``, ``A2C``, ``TRPO`` and ``MaskablePPO`` hand their callbacks the step's locals after ``env.step`` and
    before ``rollout_buffer.add``; the callback edits that ``rewards`` array in place. Episode returns logged by
    ``VecMonitor`` stay the env's.

    ``model.learn(n, callback=KLPenaltyCallback(kl_coef=0.05))``
    """

    def __init__(self, kl_coef: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.kl_coef = float(kl_coef)

    def _on_step(self) -> bool:
        rewards, log_probs = self.locals["rewards"], self.locals["log_probs"]  # (n_envs,) numpy, (n_envs,) torch
        rewards -= self.kl_coef * log_probs.detach().cpu().numpy().astype(rewards.dtype)  # in place: SB3 stores it
        return True


class TokenGRUExtractor(BaseFeaturesExtractor):
    """Token embedding + GRU over each row's real tokens: features for SB3's stock policies, learnt from scratch.

    ``PPO("MultiInputPolicy", env, policy_kwargs={"features_extractor_class": TokenGRUExtractor})``. Meant for
    small vocabularies (a word-level tokenizer from ``make_tiny_model(dir, words=[...])``): the embedding has one
    row per token id of the observation space.

    Args:
        observation_space: TextGen's ``Dict(input_ids, attention_mask)``.
        embedding_dim: token embedding width.
        hidden_size: GRU state width, the features' size.
    """

    def __init__(self, observation_space: spaces.Dict, embedding_dim: int = 32, hidden_size: int = 64) -> None:
        _check_token_observations(observation_space)
        super().__init__(observation_space, features_dim=hidden_size)
        vocab = int(observation_space["input_ids"].high.max()) + 1
        self.embedding = nn.Embedding(vocab, embedding_dim)
        self.gru = nn.GRU(embedding_dim, hidden_size, batch_first=True)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids, attention_mask = _token_context(obs)
        # Real tokens first, in their order, so the GRU reads exactly the attended tokens and stops after them.
        order = torch.argsort(attention_mask, dim=1, descending=True, stable=True)  # (B, L)
        embedded = self.embedding(input_ids.gather(1, order))  # (B, L, E)
        lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        _, last_state = self.gru(packed)  # (1, B, hidden)
        return last_state[0]
