"""A Stable-Baselines3 ``VecEnv`` over a batched Gymnasium vector env such as ``TextGenVectorEnv``.

SB3 does not take ``gymnasium.vector`` envs: given a plain env it builds a ``DummyVecEnv`` of ``N`` copies, so
every step calls the reward model (and the env's reference model) ``N`` times with one episode each. The
adapter steps textgym's vector env instead, so each step makes one batched call for all sub-envs, and hands SB3
what ``DummyVecEnv`` would: ``dones``, a list of infos with ``terminal_observation``, ``reset_infos``, per-env
seeds, and ``env_method("action_masks")`` for sb3-contrib's ``MaskablePPO``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from textgym.envs.vector import unbatch_infos

PER_ENV_METHODS = ("action_masks", "render")
"""Vector-env methods whose result has one entry per sub-env; ``env_method`` hands each index its own entry."""


class TextGenSB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` API over one Gymnasium vector env in same-step autoreset mode.

    SB3 expects a finished sub-env to be reset within the same ``step``, its last observation in
    ``info["terminal_observation"]``: Gymnasium's ``AutoresetMode.SAME_STEP``, which the adapter asks for when it
    makes the env itself. Any vector env in that mode works; textgym's scores all episodes ending in a step with
    one reward-model call.

    Args:
        env: a registered env id (made with ``gym.make_vec(env, num_envs, autoreset_mode=SAME_STEP, **env_kwargs)``)
            or a vector env already in same-step autoreset mode.
        num_envs: number of sub-envs, when ``env`` is an id.
        bootstrap_on_truncation: mark truncated episodes with ``info["TimeLimit.truncated"]`` so SB3 adds
            ``γ·V(terminal_observation)`` to their last reward, as ``DummyVecEnv`` does. Off by default: in
            TextGen the step count is part of the observation and the reward model scores the truncated
            completion, so nothing follows a truncation and bootstrapping only adds the value head's guess at a
            state it never trains on (plus one full-context forward per truncated episode).
        **env_kwargs: keyword arguments of the env, when ``env`` is an id.

    ``get_attr`` and ``set_attr`` reach the vector env's attributes, shared by all sub-envs (``tokenizer``,
    ``reward_model``, ...). ``env_method`` calls the vector env's method once; ``action_masks`` and ``render``
    return one entry per sub-env and each index gets its own, any other method's result goes to every index.
    """

    def __init__(
        self,
        env: str | VectorEnv = "TextGen-v0",
        num_envs: int = 8,
        bootstrap_on_truncation: bool = False,
        **env_kwargs: Any,
    ) -> None:
        if isinstance(env, str):
            env = gym.make_vec(env, num_envs=num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **env_kwargs)
        elif env_kwargs:
            raise TypeError(f"env_kwargs {sorted(env_kwargs)} only apply when env is an id, not a made vector env.")
        if not isinstance(env, VectorEnv):
            raise TypeError(f"env must be an env id or a gymnasium VectorEnv, got {type(env).__name__}.")
        mode = env.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3 needs same-step autoreset, but the vector env's autoreset_mode is {mode}. Make it with "
                "gym.make_vec(..., autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP), or pass the env id."
            )
        self.venv = env
        self.bootstrap_on_truncation = bootstrap_on_truncation
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    def reset(self) -> VecEnvObs:
        seeds = None if all(seed is None for seed in self._seeds) else list(self._seeds)
        obs, infos = self.venv.reset(seed=seeds, options=self._shared_options())
        self.reset_infos = unbatch_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        step_infos = unbatch_infos(infos, self.num_envs)
        dones = terminated | truncated
        out_infos: list[dict[str, Any]] = []
        for row, info in enumerate(step_infos):
            if dones[row]:  # SAME_STEP: the row is reset already; info is the new episode's reset info
                self.reset_infos[row] = {k: v for k, v in info.items() if k not in ("final_obs", "final_info")}
                info = {**info["final_info"], "terminal_observation": info["final_obs"]}
            info["TimeLimit.truncated"] = bool(self.bootstrap_on_truncation and truncated[row] and not terminated[row])
            out_infos.append(info)
        # float32 rewards, as DummyVecEnv's reward buffer holds them
        return obs, rewards.astype(np.float32), dones, out_infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if len(self._indices(indices)) != self.num_envs:
            raise ValueError(f"The sub-envs share one vector env, so {attr_name!r} can only be set for all of them.")
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        rows = self._indices(indices)
        if method_name in PER_ENV_METHODS and result is not None:  # render() in "human" mode returns None
            return [result[row] for row in rows]
        return [result] * len(rows)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._indices(indices))  # no per-env Gymnasium wrappers exist

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def _shared_options(self) -> dict[str, Any] | None:
        """The vector env takes one options dict for all sub-envs; SB3 keeps one per sub-env."""
        first = self._options[0]
        if any(options != first for options in self._options):
            raise ValueError(
                "The sub-envs share one vector env and one set of reset options: call set_options(dict) with the "
                'same dict for all, e.g. {"prompts": [one prompt per sub-env]}.'
            )
        return first or None


def make_sb3_vec_env(
    env_id: str = "TextGen-v0",
    n_envs: int = 8,
    seed: int | None = None,
    bootstrap_on_truncation: bool = False,
    **env_kwargs: Any,
) -> VecMonitor:
    """``TextGenSB3VecEnv`` in SB3's ``VecMonitor`` (episode returns and lengths for SB3's logs), seeded.

    The batched counterpart of SB3's ``make_vec_env(env_id, n_envs, seed)``: sub-env ``i`` is seeded
    ``seed + i`` at the first reset, as there.
    """
    venv = TextGenSB3VecEnv(env_id, n_envs, bootstrap_on_truncation=bootstrap_on_truncation, **env_kwargs)
    if seed is not None:
        venv.seed(seed)
    return VecMonitor(venv)
