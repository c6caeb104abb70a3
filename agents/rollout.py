"""The rollout engine: a Hugging Face causal LM steps a text vector env with its KV cache kept across steps.

A generic RL library asks its policy for an action by re-running the whole context every step, which makes a completion
of ``T`` tokens cost ``O(T^2)`` forward work. [RolloutCollector][agents.rollout.RolloutCollector] instead keeps one KV
cache for the ``N`` sub-envs, feeds only the newest token each step, and when a sub-env starts a new episode rebuilds
just that row's cache from its observation, so every row's episode may be at a different point (the cache itself is
[textgym.lm.cache.IncrementalLM][textgym.lm.cache.IncrementalLM], which the envs' reference model uses too).

An encoder–decoder policy (T5; [textgym.lm.seq2seq][textgym.lm.seq2seq]) runs the same way: its encoder reads a row's
prompt once, when the row's episode starts, and each step feeds the decoder only the newest token, reusing the
encoder's output and the decoder's self- and cross-attention KV cache.

The env's observation always holds the whole context, so the cache can be rebuilt from it at any time: call
[RolloutCollector.invalidate_cache][agents.rollout.RolloutCollector.invalidate_cache] after a policy update and the next
step re-encodes the episodes still in progress with the new weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from transformers import PreTrainedModel

from agents.sampling import SamplingConfig, sample_tokens
from textgym.envs.vector import unbatch_infos
from textgym.lm.seq2seq import incremental_lm


@dataclass
class RolloutBatch:
    """Finished episodes, padded into tensors on the policy's device, ready for training.

    ``E`` episodes, prompts left-padded to ``P`` tokens, completions right-padded to ``T`` tokens. In a
    multi-turn episode the completion is the whole conversation after the opening: the agent's actions
    (``completion_mask``, the steps every loss sees) and between its turns the tokens the env wrote
    (``env_mask``), which the model reads but is never trained on.
    """

    prompt_ids: torch.Tensor  # (E, P) left-padded
    prompt_mask: torch.Tensor  # (E, P) 1 on prompt tokens
    completion_ids: torch.Tensor  # (E, T) the actions (and env-written tokens), right-padded
    completion_mask: torch.Tensor  # (E, T) 1 on actions
    logprobs: torch.Tensor  # (E, T) log-prob of each action under the sampling distribution; 0 elsewhere
    rewards: torch.Tensor  # (E, T) the env's reward at each step; 0 elsewhere
    terminated: torch.Tensor  # (E,) True if the episode ended on a stop token (or was solved or lost)
    env_mask: torch.Tensor | None = None  # (E, T) 1 on tokens the env wrote between turns; None: zeros
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)  # the final step's info of each episode

    def __post_init__(self) -> None:
        if self.env_mask is None:
            self.env_mask = torch.zeros_like(self.completion_mask)

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return of each episode, ``(E,)``."""
        return self.rewards.sum(dim=1)

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and completion side by side, ``(E, P + T)``, for one forward pass over whole sequences."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask | self.env_mask], dim=1)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def rows(self, index: slice | Sequence[int]) -> RolloutBatch:
        """The episodes ``index`` (a slice, e.g. one process's share of a batch, or a list of rows), with the
        same padded widths."""
        picked = list(range(len(self))[index]) if isinstance(index, slice) else list(index)
        position = torch.as_tensor(picked, dtype=torch.long, device=self.prompt_ids.device)
        tensors = {f: getattr(self, f)[position] for f in ("prompt_ids", "prompt_mask", "completion_ids",
                   "completion_mask", "logprobs", "rewards", "terminated", "env_mask")}  # fmt: skip
        return RolloutBatch(
            **tensors,
            prompts=[self.prompts[i] for i in picked],
            completions=[self.completions[i] for i in picked],
            infos=[self.infos[i] for i in picked],
        )


@dataclass
class EpisodeRecord:
    """One episode as it is rolled out: its prompt, then every token after it, each the agent's or the env's."""

    prompt_ids: np.ndarray
    tokens: list[int] = field(default_factory=list)  # the actions, and the tokens a multi-turn env wrote
    from_env: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # 0 on the env's tokens
    rewards: list[float] = field(default_factory=list)

    @classmethod
    def from_observation(cls, obs: dict[str, np.ndarray], row: int) -> EpisodeRecord:
        """A new episode whose prompt is ``row``'s context in ``obs``, kept from its first real token (a batch is
        then only as wide as its longest prompt), with -1 on the padding inside it."""
        ids, mask = obs["input_ids"][row], obs["attention_mask"][row]
        real = np.flatnonzero(mask)
        window = slice(int(real[0]), int(real[-1]) + 1)  # the prompt ends at the last real token
        return cls(prompt_ids=np.where(mask[window] == 1, ids[window], -1))

    def add(self, tokens: list[int], from_env: bool, logprob: float = 0.0, reward: float = 0.0) -> None:
        self.tokens += tokens
        self.from_env += [from_env] * len(tokens)
        self.logprobs += [logprob] * len(tokens)
        self.rewards += [reward] * len(tokens)


@dataclass
class FinishedEpisode:
    """An episode that ended: ``terminated`` as the env said, ``info`` its last step's."""

    record: EpisodeRecord
    terminated: bool
    info: dict[str, Any]


class RolloutCollector:
    """Steps a text vector env with a causal LM as the policy, keeping the LM's KV cache across steps.

    Args:
        policy: a Hugging Face causal LM, or encoder–decoder, whose output layer matches the env's action space (an
            env made with the same model has the observation layout of the policy's architecture).
        envs: a vector env with ``Dict`` observations holding ``input_ids`` and ``attention_mask`` (such as
            ``gym.make_vec("TextGen-v0", num_envs=N)``), in any autoreset mode. The collector owns it: it
            resets it on first use and steps it from then on.
        sampling: temperature, top-k, top-p or greedy.
        seed: seeds the env's first reset and the sampling generator, for reproducible rollouts. The generator
            lives on the CPU whatever the policy's device, so its state (``generator.get_state()``) moves
            between machines: a run checkpointed on a GPU resumes on a CPU and back.

    Example::

        envs = gym.make_vec("TextGen-v0", num_envs=16)
        policy = textgym.lm.models.load_causal_lm()
        collector = RolloutCollector(policy, envs, SamplingConfig(top_p=0.9), seed=0)
        batch = collector.collect(64)           # 64 finished episodes
        batch.returns.mean()
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        envs: VectorEnv,
        sampling: SamplingConfig | None = None,
        seed: int | None = None,
    ) -> None:
        self.policy = policy
        self.envs = envs
        self.sampling = sampling or SamplingConfig()
        self.seed = seed
        self.num_envs = envs.num_envs
        self.device = next(policy.parameters()).device
        self._check_spaces()
        self.autoreset_mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self._warpers = self.sampling.warpers()
        self.generator = torch.Generator()  # on the CPU: its state must resume on any device
        if seed is not None:
            self.generator.manual_seed(seed)
        self._obs: dict[str, np.ndarray] | None = None
        self._records: list[EpisodeRecord | None] = [None] * self.num_envs
        self._finished: list[FinishedEpisode] = []
        self._pending_reset = np.zeros(self.num_envs, dtype=bool)  # next step autoresets the row (next-step mode)
        self._lm = incremental_lm(policy, self.num_envs)  # the policy's KV cache over all sub-envs
        self.tokens_generated = 0
        self._seeded = False

    # --- public API ----------------------------------------------------------------------------------------
    def collect(self, num_episodes: int, progress: bool = False) -> RolloutBatch:
        """Step the envs until ``num_episodes`` episodes have finished, and return exactly those.

        Episodes still running, and any extra that finished on the last step, carry over to the next call, so no sampled
        token is lost. Carried-over episodes were partly sampled before the call: after a policy update they are
        off-policy. Training uses [collect_prompts][agents.rollout.RolloutCollector.collect_prompts], whose episodes all
        start and end within the call.
        """
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be at least 1, got {num_episodes}.")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_episodes, desc="rollout", unit="episode")
        with torch.inference_mode():
            if self._obs is None:
                self._obs, _ = self.envs.reset(**self._reset_seed())
                self._pending_reset[:] = False
                self._start_episodes(np.ones(self.num_envs, dtype=bool))
            while len(self._finished) < num_episodes:
                before = len(self._finished)
                self._step()
                if bar is not None:
                    bar.update(min(len(self._finished), num_episodes) - min(before, num_episodes))
        if bar is not None:
            bar.close()
        taken, self._finished = self._finished[:num_episodes], self._finished[num_episodes:]
        return episodes_to_batch(taken, self.device)

    def collect_prompts(self, prompts: list[str]) -> RolloutBatch:
        """One episode for each of ``prompts``, returned in the same order.

        Group methods (GRPO, RLOO) pass each prompt ``G`` times. The prompts run in waves of ``num_envs`` (so
        ``len(prompts)`` must be a multiple of it), each wave started by a reset that forces its prompts; a sub-env that
        finishes early runs on with a new prompt until its wave is done, and that episode is dropped. Episodes in
        progress from [collect][agents.rollout.RolloutCollector.collect] are dropped (finished ones are kept for it).
        """
        if not prompts or len(prompts) % self.num_envs:
            raise ValueError(
                f"collect_prompts needs a positive multiple of num_envs={self.num_envs} prompts, got "
                f"{len(prompts)}: make the batch size a multiple of the number of sub-envs."
            )
        streamed, self._finished = self._finished, []
        episodes: list[FinishedEpisode] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.num_envs):
                wave = list(prompts[start : start + self.num_envs])
                self._obs, _ = self.envs.reset(**self._reset_seed(), options={"prompts": wave})
                self._pending_reset[:] = False
                self._start_episodes(np.ones(self.num_envs, dtype=bool))
                order = {id(record): row for row, record in enumerate(self._records)}
                while sum(id(e.record) in order for e in self._finished) < self.num_envs:
                    self._step()  # a row that finished early starts an episode that is later dropped
                episodes += sorted(
                    (e for e in self._finished if id(e.record) in order), key=lambda e: order[id(e.record)]
                )
                self._finished = []
        self._finished, self._obs = streamed, None  # the next collect() starts from a fresh reset
        self._records = [None] * self.num_envs
        return episodes_to_batch(episodes, self.device)

    def invalidate_cache(self) -> None:
        """Drop the KV cache, e.g. after a policy update; the next step rebuilds it from the observations."""
        self._lm.clear()

    def _reset_seed(self) -> dict[str, int]:
        """The seed for the env's first reset only; later resets continue its random streams."""
        if self._seeded or self.seed is None:
            return {}
        self._seeded = True
        return {"seed": self.seed}

    # --- one env step --------------------------------------------------------------------------------------
    def _step(self) -> None:
        if self._lm.outputs is None:  # invalidated: re-encode every row from its current observation
            self._lm.encode_rows(np.ones(self.num_envs, dtype=bool), **self._context(self._obs))
        actions, logprobs = self._sample(self._lm.outputs)
        actions_np = actions.cpu().numpy()
        obs, rewards, terminated, truncated, infos = self.envs.step(actions_np)
        self.tokens_generated += int((~self._pending_reset).sum())

        acted = ~self._pending_reset  # rows whose action was taken, not ignored by an autoreset
        done = (terminated | truncated) & acted
        logprobs_np = logprobs.cpu().numpy()
        # A multi-turn env may write tokens after the action (the partner's reply): the context grew by more.
        grown = self._context_length(obs) - self._context_length(self._obs) - 1  # (N,)
        inserted = [
            last_real_tokens(obs, row, int(grown[row])) if acted[row] and not done[row] and grown[row] > 0 else []
            for row in range(self.num_envs)
        ]
        for row in np.flatnonzero(acted):
            record = self._records[row]
            record.add([int(actions_np[row])], False, float(logprobs_np[row]), float(rewards[row]))
            record.add(inserted[row], True)
        final_infos = infos.get("final_info", {}) if self.autoreset_mode == AutoresetMode.SAME_STEP else infos
        row_infos = unbatch_infos(final_infos, self.num_envs) if done.any() else []
        for row in np.flatnonzero(done):
            info = row_infos[row]
            self._finished.append(FinishedEpisode(self._records[row], bool(terminated[row]), info))
            self._records[row] = None

        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            started = self._pending_reset  # this step reset them: obs holds their new prompt
            self._pending_reset = done
        elif self.autoreset_mode == AutoresetMode.SAME_STEP:
            started = done
        else:  # disabled: we reset finished rows ourselves
            started = done
            if done.any():
                reset_obs, _ = self.envs.reset(options={"reset_mask": done})
                for key in obs:
                    obs[key][done] = reset_obs[key][done]
        self._obs = obs
        self._feed(actions, acted & ~done, inserted)
        if started.any():
            self._start_episodes(started)

    def _feed(self, actions: torch.Tensor, rows: np.ndarray, inserted: list[list[int]]) -> None:
        """Append each continuing row's action, and the tokens the env wrote after it, to the KV cache: one
        forward call, each row's tokens right-aligned in a chunk as wide as the most any row got."""
        width = 1 + max(len(tokens) for tokens in inserted)
        if width == 1:
            self._lm.advance(actions, rows)
            return
        chunk = np.zeros((self.num_envs, width), dtype=np.int64)
        mask = np.zeros((self.num_envs, width), dtype=bool)
        actions_np = actions.cpu().numpy()
        for row in np.flatnonzero(rows):
            tokens = [int(actions_np[row]), *inserted[row]]
            chunk[row, width - len(tokens) :], mask[row, width - len(tokens) :] = tokens, True
        self._lm.extend(torch.as_tensor(chunk), mask)

    def _start_episodes(self, rows: np.ndarray) -> None:
        for row in np.flatnonzero(rows):
            self._records[row] = EpisodeRecord.from_observation(self._obs, row)
        self._lm.encode_rows(rows, **self._context(self._obs))

    # --- sampling and batching -------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_tokens(logits, self.sampling, self._warpers, self.generator)

    def _context(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The observation's token context, what the model reads (a multi-turn env's ``agent_mask`` is not)."""
        return {key: obs[key] for key in self._context_keys}

    def _context_length(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Each row's context length ``(N,)``: its attended tokens (an encoder–decoder's source and decoder both)."""
        return sum(obs[key].sum(axis=1) for key in self._context_keys if key.endswith("attention_mask"))

    def _check_spaces(self) -> None:
        obs_space, action_space = self.envs.single_observation_space, self.envs.single_action_space
        decoder, encoder_decoder = (
            ("decoder_input_ids", "decoder_attention_mask"),
            self.policy.config.is_encoder_decoder,
        )
        self._context_keys = ("input_ids", "attention_mask", *(decoder if encoder_decoder else ()))
        if isinstance(obs_space, spaces.Dict) and (decoder[0] in obs_space.spaces) != encoder_decoder:
            raise TypeError(
                "The env's observations are laid out for another kind of model than the policy (causal LM or "
                "encoder–decoder): make the env with the policy's model, gym.make_vec(..., model=<its directory>)."
            )
        if not isinstance(obs_space, spaces.Dict) or not set(self._context_keys) <= set(obs_space.spaces):
            raise TypeError(
                f"RolloutCollector needs a vector env whose observations are a Dict with {list(self._context_keys)} "
                f"(such as gym.make_vec('TextGen-v0', model=<the policy's directory>)); got {obs_space}."
            )
        if not isinstance(action_space, spaces.Discrete):
            raise TypeError(f"RolloutCollector needs a Discrete token action space; got {action_space}.")
        vocab = self.policy.get_output_embeddings().weight.shape[0]
        if vocab != action_space.n:
            raise ValueError(
                f"The policy's output layer has {vocab} tokens but the env's action space has {action_space.n}: "
                "make the env with the same model (gym.make_vec(..., model=<the policy's directory>))."
            )


def episodes_to_batch(episodes: list[FinishedEpisode], device: torch.device) -> RolloutBatch:
    """Finished episodes padded into a [RolloutBatch][agents.rollout.RolloutBatch] on ``device``, in their order."""
    n = len(episodes)
    prompt_width = max(len(e.record.prompt_ids) for e in episodes)
    length = max(len(e.record.tokens) for e in episodes)
    pad = 0
    prompt_ids = np.full((n, prompt_width), pad, dtype=np.int64)
    prompt_mask = np.zeros((n, prompt_width), dtype=np.int64)
    completion_ids = np.full((n, length), pad, dtype=np.int64)
    completion_mask = np.zeros((n, length), dtype=np.int64)
    env_mask = np.zeros((n, length), dtype=np.int64)
    logprobs = np.zeros((n, length), dtype=np.float32)
    rewards = np.zeros((n, length), dtype=np.float32)
    for i, episode in enumerate(episodes):
        record = episode.record
        prompt = record.prompt_ids
        real = prompt >= 0
        prompt_ids[i, prompt_width - len(prompt) :] = np.where(real, prompt, pad)
        prompt_mask[i, prompt_width - len(prompt) :] = real
        steps = len(record.tokens)
        completion_ids[i, :steps] = record.tokens
        completion_mask[i, :steps] = ~np.array(record.from_env)
        env_mask[i, :steps] = record.from_env
        logprobs[i, :steps] = record.logprobs
        rewards[i, :steps] = record.rewards
    to_device = lambda array: torch.as_tensor(array, device=device)  # noqa: E731
    return RolloutBatch(
        prompt_ids=to_device(prompt_ids),
        prompt_mask=to_device(prompt_mask),
        completion_ids=to_device(completion_ids),
        completion_mask=to_device(completion_mask),
        logprobs=to_device(logprobs),
        rewards=to_device(rewards),
        terminated=to_device(np.array([e.terminated for e in episodes])),
        env_mask=to_device(env_mask),
        prompts=[e.info.get("prompt", "") for e in episodes],
        completions=[e.info.get("completion", "") for e in episodes],
        infos=[e.info for e in episodes],
    )


def last_real_tokens(obs: dict[str, np.ndarray], row: int, count: int) -> list[int]:
    """The last ``count`` tokens of ``row``'s context in an observation (what the env appended last)."""
    real = np.flatnonzero(obs["attention_mask"][row])
    return obs["input_ids"][row, real[-count:]].tolist()
