"""Playing single-env episodes in tests."""

from __future__ import annotations

import numpy as np


def run_episode(env, seed=0, actions=None):
    """Step a single env to its end with uniform actions (or the given ones); return the last info."""
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(10_000):
        action = actions[t] if actions is not None else int(rng.integers(env.action_space.n))
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info
    raise AssertionError("the episode did not end")
