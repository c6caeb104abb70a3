"""The token-episode core shared by the single and the vector text environments.

[TokenEpisodes][textgym.envs.core.TokenEpisodes] holds ``N`` episodes side by side in fixed-shape arrays, one row each.
Both [textgym.envs.text_gen.TextGenEnv][textgym.envs.text_gen.TextGenEnv] (``N = 1``) and
[textgym.envs.vector.TextGenVectorEnv][textgym.envs.vector.TextGenVectorEnv] run on it, so a vector env is exactly ``N``
single envs, except that the reward model scores every episode that ends in a step with one batched call.

Row layout, with ``P = max_prompt_tokens`` and ``T = max_new_tokens``::

    columns [0, P)       the prompt, left-padded (pad tokens, attention_mask 0); right-padded for an encoder–decoder
    columns [P, P + T)   generated tokens, one per step; not yet generated: pad, attention_mask 0

A causal LM's observation is the row itself; an encoder–decoder's splits it into the encoder's source and the
decoder's input ([TokenEpisodes.observation][textgym.envs.core.TokenEpisodes.observation]).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from reward_models import RewardFn, make_reward_model
from textgym.lm.models import (
    decoder_start_token_id,
    is_encoder_decoder,
    load_tokenizer,
    resolve_model_dir,
    vocab_size_of,
)
from textgym.lm.prompts import encode_prompt, load_prompts, pad_token_id, split_prompts, stop_token_ids

PROMPT_TRUNCATION = ("error", "left")


class TokenEpisodes:
    """Prompts, tokenizer, reward model and the state of ``num_rows`` episodes.

    Args:
        num_rows: how many episodes run side by side.
        model: the model whose tokenizer and vocabulary define the spaces (see
            [textgym.lm.models.resolve_model_dir][textgym.lm.models.resolve_model_dir]), and whose architecture (causal
            or encoder–decoder) the observation's layout; only the tokenizer and config are loaded, not weights.
        prompts: the prompt set (see [textgym.lm.prompts.load_prompts][textgym.lm.prompts.load_prompts]).
        split: ``"train"`` or ``"test"``: only that part of the prompt set (disjoint, about 80% / 20%; see
            [textgym.lm.prompts.split_prompts][textgym.lm.prompts.split_prompts]); ``None`` for all of it.
        reward_model: a registered reward model name or any callable ``(prompts, completions) -> scores``.
        reward_model_kwargs: keyword arguments for a registered reward model.
        gold_model: what a benchmark reports (``info["gold_score"]``) when it differs from the training reward
            (a proxy reward model, a shaped or partial-credit reward); ``None``: the reward itself is the gold.
        gold_model_kwargs: keyword arguments for a registered gold model.
        info_models: more scores for the last info, ``{key: reward model}`` (registered names or callables),
            e.g. a task's coverage next to its fluency-gated reward; each is scored on the ending episodes and
            its scores go to ``info[key]``.
        max_prompt_tokens: prompt width ``P``; prompts are left-padded to it.
        max_new_tokens: episode length limit ``T``; reaching it truncates the episode.
        chat_template: wrap each prompt as a user message in the tokenizer's chat template.
        stop_token_ids: tokens that terminate an episode; ``None`` for the model's (see
            [textgym.lm.prompts.stop_token_ids][textgym.lm.prompts.stop_token_ids]: EOS, the generation config's EOS ids
            and, with ``chat_template``, the template's end-of-turn token), ``[]`` for none.
        prompt_truncation: what a prompt longer than ``P`` tokens does: ``"error"`` raises (checked for the
            whole prompt set at construction), ``"left"`` keeps its last ``P`` tokens.
        reference_model: a frozen reference LM (``"embedded"``, ``"tiny"`` or a local directory with the env's
            tokenizer) for KL shaping and action masks; see [textgym.envs.reference][textgym.envs.reference].
        kl_coef: each step's reward gains ``kl_coef · log π_ref(a_t | s_t)``.
        action_mask: ``"top_k"`` or ``"top_p"``: allow only the reference's most likely tokens (and the stop
            tokens); a disallowed action is an error.
        top_k: the size of the ``"top_k"`` mask.
        top_p: the probability mass of the ``"top_p"`` mask.
        reference_device: where the reference model runs (default ``cpu``).
    """

    def __init__(
        self,
        num_rows: int,
        model: str | os.PathLike | None = None,
        prompts: str | os.PathLike | Sequence[str] | None = None,
        reward_model: str | RewardFn = "vader",
        reward_model_kwargs: dict[str, Any] | None = None,
        split: str | None = None,
        gold_model: str | RewardFn | None = None,
        gold_model_kwargs: dict[str, Any] | None = None,
        info_models: dict[str, str | RewardFn] | None = None,
        max_prompt_tokens: int = 64,
        max_new_tokens: int = 32,
        chat_template: bool = False,
        stop_token_ids: Sequence[int] | None = None,
        prompt_truncation: str = "error",
        reference_model: str | os.PathLike | None = None,
        kl_coef: float = 0.0,
        action_mask: str | None = None,
        top_k: int = 50,
        top_p: float = 0.9,
        reference_device: str | None = None,
    ) -> None:
        if num_rows < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_rows}.")
        if max_prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(
                "max_prompt_tokens and max_new_tokens must be at least 1, "
                f"got {max_prompt_tokens} and {max_new_tokens}."
            )
        if prompt_truncation not in PROMPT_TRUNCATION:
            raise ValueError(f"prompt_truncation must be one of {PROMPT_TRUNCATION}, got {prompt_truncation!r}.")
        self.model_dir = resolve_model_dir(model)
        self.tokenizer = load_tokenizer(self.model_dir)
        if chat_template and not self.tokenizer.chat_template:
            raise ValueError(f"chat_template=True, but the tokenizer of {self.model_dir} has no chat template.")
        self.vocab_size = vocab_size_of(self.model_dir)
        self.encoder_decoder = is_encoder_decoder(self.model_dir)
        self.decoder_start_token_id = decoder_start_token_id(self.model_dir) if self.encoder_decoder else None
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.chat_template = chat_template
        self.prompt_truncation = prompt_truncation
        self.stop_token_ids = self._stop_tokens(stop_token_ids)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.reward_model = make_reward_model(reward_model, **(reward_model_kwargs or {}))
        if gold_model is None and gold_model_kwargs:
            raise ValueError("gold_model_kwargs were given without a gold_model.")
        self.gold_model = None if gold_model is None else make_reward_model(gold_model, **(gold_model_kwargs or {}))
        reserved = {"prompt", "completion", "score", "gold_score", "ref_logprob", "kl_reward"}
        if reserved & set(info_models or {}):
            raise ValueError(f"info_models keys must not be one of the info's own keys {sorted(reserved)}.")
        self.info_models = {key: make_reward_model(model) for key, model in (info_models or {}).items()}
        if reference_model is None and (action_mask is not None or kl_coef != 0):
            raise ValueError(
                "action_mask and kl_coef need a reference model: pass reference_model='embedded' (or a local model "
                "directory with the env's tokenizer)."
            )
        self.kl_coef = float(kl_coef)
        self.reference = None
        if reference_model is not None:
            from textgym.envs.reference import ReferenceModel

            self.reference = ReferenceModel(
                resolve_model_dir(reference_model),
                num_rows,
                self.tokenizer,
                action_mask,
                top_k,
                top_p,
                always_allowed=self.stop_token_ids,
                device=reference_device,
                encoder_decoder=self.encoder_decoder,
            )

        self.prompts = split_prompts(load_prompts(prompts), split)
        self.prompt_token_ids = [self.encode_prompt(text, where=f"prompt {i}") for i, text in enumerate(self.prompts)]

        width = max_prompt_tokens + max_new_tokens
        tokens = lambda n: spaces.Box(0, self.vocab_size - 1, shape=(n,), dtype=np.int64)  # noqa: E731
        mask = lambda n: spaces.Box(0, 1, shape=(n,), dtype=np.int64)  # noqa: E731
        if self.encoder_decoder:  # the decoder's input is the start token and the tokens generated so far
            decoder = {
                "decoder_input_ids": tokens(max_new_tokens + 1),
                "decoder_attention_mask": mask(max_new_tokens + 1),
            }
            layout = {"input_ids": tokens(max_prompt_tokens), "attention_mask": mask(max_prompt_tokens), **decoder}
        else:
            layout = {"input_ids": tokens(width), "attention_mask": mask(width)}
        self.observation_space = spaces.Dict(layout)
        self.action_space = spaces.Discrete(self.vocab_size)
        self.input_ids = np.full((num_rows, width), self.pad_token_id, dtype=np.int64)
        self.attention_mask = np.zeros((num_rows, width), dtype=np.int64)
        self.num_generated = np.zeros(num_rows, dtype=np.int64)
        self.running = np.zeros(num_rows, dtype=bool)
        self.prompt_texts: list[str] = [""] * num_rows

    @property
    def max_steps(self) -> int:
        """The most actions an episode can take (what a training budget counts)."""
        return self.max_new_tokens

    # --- prompts -------------------------------------------------------------------------------------------
    def encode_prompt(self, text: str, where: str = "the prompt") -> list[int]:
        """Token ids of a prompt ([textgym.lm.prompts.encode_prompt][textgym.lm.prompts.encode_prompt]), checked against
        ``max_prompt_tokens``."""
        if not isinstance(text, str):
            raise TypeError(f"{where} must be a str, got {type(text).__name__}.")
        ids = encode_prompt(self.tokenizer, text, self.chat_template)
        if not ids:
            raise ValueError(f"{where} is empty after tokenization: {text!r}.")
        if len(ids) > self.max_prompt_tokens:
            if self.prompt_truncation == "error":
                raise ValueError(
                    f"{where} has {len(ids)} tokens, more than max_prompt_tokens={self.max_prompt_tokens}: "
                    f"{text[:80]!r}. Raise max_prompt_tokens, or pass prompt_truncation='left' to keep the last "
                    f"{self.max_prompt_tokens} tokens."
                )
            ids = ids[-self.max_prompt_tokens :]
        return list(ids)

    def sample_prompt(self, rng: np.random.Generator) -> int:
        """Index of a uniformly sampled prompt of the set."""
        return int(rng.integers(len(self.prompts)))

    # --- episodes ------------------------------------------------------------------------------------------
    def start(self, row: int, prompt_ids: list[int], prompt_text: str) -> None:
        """Begin a new episode in ``row`` with an encoded prompt."""
        width = self.max_prompt_tokens
        self.input_ids[row] = self.pad_token_id
        self.attention_mask[row] = 0
        first = 0 if self.encoder_decoder else width - len(prompt_ids)  # an encoder's source starts at column 0
        self.input_ids[row, first : first + len(prompt_ids)] = prompt_ids
        self.attention_mask[row, first : first + len(prompt_ids)] = 1
        self.num_generated[row] = 0
        self.running[row] = True
        self.prompt_texts[row] = prompt_text
        if self.reference is not None:
            self.reference.restart(row)

    def observation(self, row: int | slice = slice(None)) -> dict[str, np.ndarray]:
        """A copy of one row's observation (of every row's, stacked, by default).

        A causal LM's is the row; an encoder–decoder's is the prompt as ``input_ids``/``attention_mask`` (width
        ``P``) and the decoder's input, the start token then the generated tokens, as
        ``decoder_input_ids``/``decoder_attention_mask`` (width ``T + 1``): the keyword arguments of the model's
        ``forward``, whose last attended decoder column predicts the next action."""
        ids, mask = self.input_ids[row], self.attention_mask[row]
        if not self.encoder_decoder:
            return {"input_ids": ids.copy(), "attention_mask": mask.copy()}
        width = self.max_prompt_tokens
        start = np.full((*ids.shape[:-1], 1), self.decoder_start_token_id, dtype=np.int64)
        return {
            "input_ids": ids[..., :width].copy(),
            "attention_mask": mask[..., :width].copy(),
            "decoder_input_ids": np.concatenate([start, ids[..., width:]], axis=-1),
            "decoder_attention_mask": np.concatenate([np.ones_like(start), mask[..., width:]], axis=-1),
        }

    def action_masks(self, rows: np.ndarray) -> np.ndarray:
        """Allowed actions of ``rows``, bool ``(len(rows), V)``; all True without an ``action_mask``."""
        if self.reference is None or self.reference.action_mask is None:
            return np.ones((len(rows), self.vocab_size), dtype=bool)
        return self.reference.masks(self.observation(), self.running)[rows]

    def check_actions(self, actions: Any, expected: int) -> np.ndarray:
        """Validate actions as integer token ids in range; return them as an int64 array."""
        array = np.asarray(actions)
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"Actions must be integer token ids, got {array.dtype} ({actions!r}).")
        if array.size != expected:
            raise ValueError(f"Expected {expected} action(s), got {array.size}: {actions!r}.")
        array = array.reshape(expected).astype(np.int64)
        bad = (array < 0) | (array >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"Action(s) {array[bad].tolist()} outside the vocabulary: token ids go from 0 to {self.vocab_size - 1}."
            )
        return array

    def step(self, rows: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Append one token to each of ``rows``; score the episodes that end, all in one reward-model call.

        Nothing changes if an error is raised (the reward model failing included), so the env stays usable.

        Returns:
            ``rewards``, ``terminated``, ``truncated`` (one per row) and one info dict per row; an ending
            row's info holds ``prompt``, ``completion``, the raw reward-model ``score``, ``gold_score`` and one
            score per ``info_models`` key; with a reference model every step's info holds ``ref_logprob`` and
            ``kl_reward`` (``kl_coef · ref_logprob``).
        """
        if not self.running[rows].all():
            raise RuntimeError("step() called on an episode that is over or was never started: call reset() first.")
        ref_logprobs = self.reference_logprobs(rows, actions)
        position = self.max_prompt_tokens + self.num_generated[rows]
        terminated = np.isin(actions, self.stop_token_ids)
        truncated = ~terminated & (self.num_generated[rows] + 1 >= self.max_new_tokens)
        ending = np.flatnonzero(terminated | truncated)
        completions = []
        for k in ending:
            row, start = rows[k], self.max_prompt_tokens
            tokens = [*self.input_ids[row, start : position[k]], actions[k]]
            if terminated[k]:
                tokens = tokens[:-1]  # the stop token ends the text, it is not part of it
            completions.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
        prompts = [self.prompt_texts[rows[k]] for k in ending]
        scores = self.reward_model(prompts, completions) if len(ending) else np.zeros(0)
        gold_scores = scores if self.gold_model is None or not len(ending) else self.gold_model(prompts, completions)
        extra = {key: model(prompts, completions) for key, model in self.info_models.items()} if len(ending) else {}

        self.input_ids[rows, position] = actions
        self.attention_mask[rows, position] = 1
        self.num_generated[rows] += 1
        self.running[rows[ending]] = False
        rewards = self.kl_coef * ref_logprobs
        rewards[ending] += scores
        infos = self.advance_reference(rows, actions, ref_logprobs)
        for i, k in enumerate(ending):
            infos[k].update(prompt=prompts[i], completion=completions[i], score=float(scores[i]))
            infos[k].update(gold_score=float(gold_scores[i]), **{key: float(v[i]) for key, v in extra.items()})
        return rewards, terminated, truncated, infos

    # --- whole turns -----------------------------------------------------------------------------------------
    def check_turn(self, tokens: Any, where: str = "The turn") -> np.ndarray:
        """Validate a turn as a non-empty 1-D sequence of token ids in the vocabulary; return it as int64."""
        array = np.asarray(tokens)
        if array.size == 0:
            raise ValueError(f"{where} is empty: a turn is at least one token id.")
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{where} must be a 1-D sequence of integer token ids, got {array.dtype} {array.shape}.")
        bad = (array < 0) | (array >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"{where} has token(s) {array[bad].tolist()} outside the vocabulary: token ids go from 0 to "
                f"{self.vocab_size - 1}."
            )
        return array.astype(np.int64)

    def turn_room(self, row: int) -> int:
        """The most tokens the current turn of ``row`` can still take (the last of them reaches
        ``max_new_tokens``): what a generation server's ``max_tokens`` should be."""
        return int(self.max_new_tokens - self.num_generated[row])

    def turn_length(self, row: int, tokens: np.ndarray) -> int:
        """How many of ``tokens`` the current turn of ``row`` takes: up to its first stop token, at most
        [turn_room][textgym.envs.core.TokenEpisodes.turn_room]. Token by token, the env ends the turn there."""
        stops = np.flatnonzero((tokens[:, None] == self.stop_token_ids).any(axis=1))  # (np.isin is slower for few)
        end = int(stops[0]) + 1 if len(stops) else len(tokens)
        return min(end, self.turn_room(row))

    def extend(self, row: int, tokens: np.ndarray) -> None:
        """Append tokens that end nothing to ``row``: the bookkeeping of as many steps, which without a reference
        model is all those steps do (no stop token, within the turn's room, so no reward and no info)."""
        position = self.max_prompt_tokens + self.num_generated[row]
        self.input_ids[row, position : position + len(tokens)] = tokens
        self.attention_mask[row, position : position + len(tokens)] = 1
        self.num_generated[row] += len(tokens)

    def retract(self, row: int, num_generated: int) -> None:
        """Take ``row`` back to its first ``num_generated`` generated tokens, undoing
        [extend][textgym.envs.core.TokenEpisodes.extend] and steps that ended nothing (a turn that failed)."""
        start = self.max_prompt_tokens + num_generated
        self.input_ids[row, start:] = self.pad_token_id
        self.attention_mask[row, start:] = 0
        self.num_generated[row] = num_generated
        if self.reference is not None:
            self.reference.restart(row)  # re-reads the row when next asked

    def step_turns(
        self, rows: np.ndarray, turns: Sequence[np.ndarray], strict: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Append one turn to each of ``rows`` (checked token ids, lengths may differ): exactly what stepping its
        tokens one at a time with [step][textgym.envs.core.TokenEpisodes.step] does, in one call.

        Each turn is taken up to where the env ends it token by token
        ([turn_length][textgym.envs.core.TokenEpisodes.turn_length]: its first stop token, the length limit); the
        tokens after that are dropped, or with ``strict`` refused. A turn may also stop short of its end (no stop
        token, room left): the next call goes on with the same turn.

        Without a reference model, every token but each turn's last ends nothing and earns nothing, so those are
        appended with [extend][textgym.envs.core.TokenEpisodes.extend] (array writes) and only the last tokens
        go through [step][textgym.envs.core.TokenEpisodes.step], together: the rows that end are scored in one
        reward-model call, as in one per-token step. With a reference model, its log-prob of each token needs
        the forward pass that token would get, so the tokens before the last are stepped in lockstep (token
        ``j`` of every turn that has one), then the last ones together. Nothing changes if an error is raised.

        Returns:
            ``rewards`` (each turn's sum of its per-token rewards), ``terminated``, ``truncated`` and one info
            per row: the info of the turn's last token, plus ``token_rewards`` (the per-token rewards, float64,
            one per token taken: its length says how many were) and, with a reference model, ``ref_logprobs``
            (each token's ``ref_logprob``).
        """
        if not self.running[rows].all():
            raise RuntimeError("step() called on an episode that is over or was never started: call reset() first.")
        lengths = np.array([self.turn_length(row, turn) for row, turn in zip(rows, turns)], dtype=np.int64)
        for row, turn, length in zip(rows, turns, lengths):
            if strict and length < len(turn):
                raise ValueError(
                    f"The turn of row {row} ends after {length} of its {len(turn)} tokens (at a stop token or its "
                    f"length limit, {self.turn_room(row)} tokens from here): submit only the turn's own tokens."
                )
        token_rewards = [np.zeros(length) for length in lengths]
        ref_logprobs = [np.zeros(length) for length in lengths]
        before = self.num_generated[rows].copy()
        try:
            if self.reference is None:
                for row, turn, length in zip(rows, turns, lengths):
                    self.extend(row, turn[: length - 1])
            else:
                for j in range(int(lengths.max()) - 1):
                    going = np.flatnonzero(lengths - 1 > j)  # the turns with a token j before their last
                    step = self.step(rows[going], np.array([turns[k][j] for k in going], dtype=np.int64))
                    for k, reward, info in zip(going, step[0], step[3]):
                        token_rewards[k][j], ref_logprobs[k][j] = reward, info["ref_logprob"]
            last = np.array([turn[length - 1] for turn, length in zip(turns, lengths)], dtype=np.int64)
            rewards, terminated, truncated, infos = self.step(rows, last)
        except Exception:
            for row, generated in zip(rows, before):
                self.retract(row, int(generated))
            raise
        for k, info in enumerate(infos):
            token_rewards[k][-1] = rewards[k]
            info["token_rewards"] = token_rewards[k]
            if self.reference is not None:
                ref_logprobs[k][-1] = info["ref_logprob"]
                info["ref_logprobs"] = ref_logprobs[k]
        return np.array([r.sum() for r in token_rewards]), terminated, truncated, infos

    def reference_logprobs(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``log π_ref`` of each row's action (zeros without a reference model); a ``ValueError`` if an action is
        outside the action mask. Called before the step changes anything."""
        if self.reference is None:
            return np.zeros(len(rows))
        context = self.observation(), self.running
        if self.reference.action_mask is not None:
            allowed = self.reference.masks(*context)[rows, actions]
            if not allowed.all():
                raise ValueError(
                    f"Action(s) {actions[~allowed].tolist()} are not allowed by the {self.reference.action_mask} "
                    "action mask: choose among env.action_masks()."
                )
        return self.reference.logprobs(*context)[rows, actions]

    def advance_reference(self, rows: np.ndarray, actions: np.ndarray, ref_logprobs: np.ndarray) -> list[dict]:
        """After a step: append the actions of the rows still running to the reference's cache; one info dict per
        row, holding ``ref_logprob`` and ``kl_reward`` with a reference model (empty without)."""
        if self.reference is None:
            return [{} for _ in rows]
        continuing = np.zeros(len(self.running), dtype=bool)
        continuing[rows] = self.running[rows]
        tokens = np.zeros(len(self.running), dtype=np.int64)
        tokens[rows] = actions
        self.reference.advance(tokens, continuing)
        return [{"ref_logprob": float(lp), "kl_reward": float(self.kl_coef * lp)} for lp in ref_logprobs]

    def render_text(self, row: int) -> str:
        """The prompt and the text generated so far in ``row``."""
        start = self.max_prompt_tokens
        generated = self.input_ids[row, start : start + self.num_generated[row]]
        return f"{self.prompt_texts[row]}\u2502{self.tokenizer.decode(generated, skip_special_tokens=False)}"

    # --- set-up helpers ------------------------------------------------------------------------------------
    def _stop_tokens(self, explicit: Sequence[int] | None) -> np.ndarray:
        if explicit is None:
            explicit = stop_token_ids(self.tokenizer, self.model_dir, self.chat_template)
        ids = np.asarray(list(explicit), dtype=np.int64)
        if ((ids < 0) | (ids >= self.vocab_size)).any():
            raise ValueError(f"stop_token_ids {ids.tolist()} are outside the vocabulary [0, {self.vocab_size}).")
        return ids
