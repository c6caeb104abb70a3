"""The batched TextGen vector env: ``N`` episodes in one set of arrays, one reward-model call per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textgym.envs.text_gen import TextGenEnv

PER_TOKEN_INFO = ("token_rewards", "ref_logprobs")
"""The info keys of a turn step that hold one value per token taken."""


class TextGenVectorEnv(VectorEnv):
    """``num_envs`` TextGen episodes stepped together (``gym.make_vec("TextGen-v0", num_envs=N)``).

    Behaves exactly as ``gymnasium.vector.SyncVectorEnv`` over ``N`` [TextGenEnv][textgym.envs.text_gen.TextGenEnv]
    with the same seeds (sub-env ``i`` is seeded ``seed + i``), but the episodes live in one array and every
    episode that ends in a step is scored in a single batched reward-model call.

    Args:
        num_envs: number of sub-envs.
        autoreset_mode: ``"next_step"`` (Gymnasium's default: a finished sub-env is reset by the next
            ``step``, whose action for it is ignored), ``"same_step"`` (reset at once; the last observation
            and info go to ``info["final_obs"]`` and ``info["final_info"]``) or ``"disabled"`` (reset
            finished sub-envs yourself with ``reset(options={"reset_mask": mask})``).
        render_mode: ``"ansi"`` or ``"human"``, as for the single env.
        **kwargs: the arguments of [TextGenEnv][textgym.envs.text_gen.TextGenEnv] (of ``env_class``).

    A task env with its own arguments gets its vector env as a subclass naming it: ``class
    ConceptCoverageVectorEnv(TextGenVectorEnv): env_class = ConceptCoverageEnv``.

    ``reset(options=...)`` takes ``{"prompt": str}`` (every reset sub-env gets that prompt), ``{"prompts":
    [str] * num_envs}`` and ``{"reset_mask": bool array}`` (reset only those sub-envs).
    """

    env_class: type[TextGenEnv] = TextGenEnv
    """The single env whose [episode_kwargs][textgym.envs.text_gen.TextGenEnv.episode_kwargs] reads the arguments."""

    def __init__(
        self,
        num_envs: int = 1,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if render_mode not in (None, "ansi", "human"):
            raise ValueError(f"render_mode must be 'ansi', 'human' or None, got {render_mode!r}.")
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.metadata = {"render_modes": ["ansi", "human"], "render_fps": 4, "autoreset_mode": self.autoreset_mode}
        self.render_mode = render_mode
        self.episodes = self.env_class.episodes_class(num_envs, **self.env_class.episode_kwargs(**kwargs))
        self.num_envs = num_envs
        self.tokenizer = self.episodes.tokenizer
        self.reward_model = self.episodes.reward_model
        self.prompts = self.episodes.prompts  # the prompt set, e.g. for group methods that force prompts
        self.single_observation_space = self.episodes.observation_space
        self.single_action_space = self.episodes.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs: list[np.random.Generator] | None = None
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._seed(seed)
        options = dict(options or {})
        rows = np.arange(self.num_envs)
        if "reset_mask" in options:
            mask = np.asarray(options.pop("reset_mask"))
            if mask.dtype != bool or mask.shape != (self.num_envs,) or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with at least one True."
                )
            rows = np.flatnonzero(mask)
        texts = self._forced_prompts(options)
        # Encode every forced prompt before touching any sub-env, so a bad prompt leaves the env as it was.
        forced = (
            {
                row: (texts[row], self.episodes.encode_prompt(texts[row], where=f"the prompt of sub-env {row}"))
                for row in rows
            }
            if texts is not None
            else {}
        )
        infos: dict[str, Any] = {}
        for row in rows:
            infos = self._add_info(infos, self._start(row, forced.get(row)), row)
        self._needs_reset[rows] = False
        self._render_if_human()
        return self.episodes.observation(), infos

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._check_started()
        actions = self.episodes.check_actions(actions, expected=self.num_envs)
        return self._step(lambda rows: self.episodes.step(rows, actions[rows]))

    def step_turns(
        self, turns: Sequence[Any], strict: bool = False
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Take a whole turn per sub-env (sequences of token ids, lengths may differ) in one call, exactly as
        stepping each sub-env through its turn token by token would: what
        [textgym.envs.turns.TurnStepsVector][textgym.envs.turns.TurnStepsVector] calls (see it for the rules).

        Autoreset works as for ``step``: with next-step autoreset a sub-env that ended is reset and its turn
        ignored (it may be empty). The per-token arrays of the infos (``token_rewards``, ``ref_logprobs``) differ
        in length between sub-envs, so they come as object arrays of arrays.
        """
        self._check_started()
        turns = list(turns)
        if len(turns) != self.num_envs:
            raise ValueError(f"Expected {self.num_envs} turns, one per sub-env, got {len(turns)}.")
        ignored = self._autoresetting()
        checked = [
            None
            if ignored[row] and np.size(turn) == 0
            else self.episodes.check_turn(turn, f"The turn of sub-env {row}")
            for row, turn in enumerate(turns)
        ]
        return self._step(lambda rows: self.episodes.step_turns(rows, [checked[row] for row in rows], strict))

    def _check_started(self) -> None:
        if self._rngs is None:
            raise RuntimeError("step() called before reset(): call reset() first.")

    def _autoresetting(self) -> np.ndarray:
        """The sub-envs the next step resets instead of stepping (next-step autoreset), bool ``(num_envs,)``."""
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            return self._needs_reset.copy()
        return np.zeros_like(self._needs_reset)

    def _step(
        self, step_rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]]
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """A vector step, ``step_rows(rows)`` stepping the episodes of the sub-envs not being autoreset."""
        autoreset = self._autoresetting()
        stepped = np.flatnonzero(~autoreset)
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        row_infos: list[dict] = [{} for _ in range(self.num_envs)]
        if len(stepped):
            step_rewards, step_term, step_trunc, step_infos = step_rows(stepped)
            rewards[stepped], terminated[stepped], truncated[stepped] = step_rewards, step_term, step_trunc
            for row, info in zip(stepped, step_infos):
                row_infos[row] = info
        for row in np.flatnonzero(autoreset):
            row_infos[row] = self._start(row)

        infos: dict[str, Any] = {}
        done = terminated | truncated
        for row in range(self.num_envs):
            if self.autoreset_mode == AutoresetMode.SAME_STEP and done[row]:
                final = {"final_obs": self.episodes.observation(row), "final_info": row_infos[row]}
                infos = self._add_info(infos, final, row)
                row_infos[row] = self._start(row)
            infos = self._add_info(infos, row_infos[row], row)
        self._needs_reset = done
        self._render_if_human()
        return self.episodes.observation(), rewards, terminated, truncated, infos

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        # A turn's per-token arrays differ in length between sub-envs: batch them as an object array of arrays
        # (Gymnasium would stack arrays into one of the first one's shape).
        for key in PER_TOKEN_INFO:
            if key in env_info and key not in vector_infos:
                vector_infos[key] = np.full(self.num_envs, None, dtype=object)
        return super()._add_info(vector_infos, env_info, env_num)

    def action_masks(self) -> np.ndarray:
        """The actions allowed now in each sub-env, bool ``(num_envs, vocab_size)``, from one batched reference
        pass; all True without ``action_mask``. A sub-env awaiting its autoreset allows everything."""
        masks = np.ones((self.num_envs, self.single_action_space.n), dtype=bool)
        running = np.flatnonzero(self.episodes.running)
        if len(running):
            masks[running] = self.episodes.action_masks(running)
        return masks

    def render(self) -> tuple[str, ...] | None:
        texts = tuple(self.episodes.render_text(row) for row in range(self.num_envs))
        if self.render_mode == "human":
            print("\n".join(f"[{row}] {text}" for row, text in enumerate(texts)))
            return None
        return texts

    # --- helpers -------------------------------------------------------------------------------------------
    def _seed(self, seed: int | list[int | None] | None) -> None:
        """Seed sub-env ``i`` with ``seed + i`` (or ``seed[i]``), exactly as ``SyncVectorEnv`` does."""
        if seed is None and self._rngs is not None:
            return
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"Got {len(seeds)} seeds for num_envs={self.num_envs}.")
        old = self._rngs or [None] * self.num_envs
        self._rngs = [rng if s is None and rng is not None else seeding.np_random(s)[0] for s, rng in zip(seeds, old)]

    def _forced_prompts(self, options: dict[str, Any]) -> list[str] | None:
        if "prompt" in options and "prompts" in options:
            raise ValueError("Pass options['prompt'] (one for all) or options['prompts'] (one each), not both.")
        if "prompt" in options:
            return [options["prompt"]] * self.num_envs
        if "prompts" in options:
            texts = list(options["prompts"])
            if len(texts) != self.num_envs:
                raise ValueError(f"options['prompts'] has {len(texts)} prompts for num_envs={self.num_envs}.")
            return texts
        return None

    def _start(self, row: int, forced: tuple[str, list[int]] | None = None) -> dict[str, Any]:
        """Begin an episode in ``row``: the forced ``(text, token ids)``, or a prompt drawn with its own rng."""
        if forced is None:
            index = self.episodes.sample_prompt(self._rngs[row])
            forced = self.episodes.prompts[index], self.episodes.prompt_token_ids[index]
        text, ids = forced
        self.episodes.start(row, ids, text)
        return {"prompt": text}

    def _render_if_human(self) -> None:
        if self.render_mode == "human":
            self.render()


def _autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    """An ``AutoresetMode``, or its name in any case (``"same_step"``) or its value (``"SameStep"``)."""
    if isinstance(mode, AutoresetMode):
        return mode
    for member in AutoresetMode:
        if str(mode) in (member.value, member.name, member.name.lower()):
            return member
    names = [m.name.lower() for m in AutoresetMode]
    raise ValueError(f"autoreset_mode must be an AutoresetMode or one of {names}, got {mode!r}.")


def unbatch_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Turn a Gymnasium vector env's info (arrays with ``_key`` masks, nested dicts) into one dict per sub-env."""
    rows: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        present = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        per_row = unbatch_infos(value, num_envs) if isinstance(value, dict) else value
        for row in np.flatnonzero(present):
            item = per_row[row]
            rows[row][key] = item.item() if isinstance(item, np.generic) else item
    return rows
