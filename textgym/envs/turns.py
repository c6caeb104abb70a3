"""Whole turns per step: the wrappers for a generation server (vLLM, SGLang) that writes a turn at once.

A server generates a whole turn (a completion, or one move of a multi-turn game) in one call; stepping it into a
per-token env one token at a time costs a Python step per token. [TurnSteps][textgym.envs.turns.TurnSteps] (a
single env) and [TurnStepsVector][textgym.envs.turns.TurnStepsVector] (the vector env) take the turn as one
action, and are **equal** to per-token stepping: the observation, reward, ``terminated``, ``truncated`` and info
after a turn are those after its tokens stepped one at a time (tests/test_turn_steps.py checks every registered
env). Per-token stepping stays the default and the reference; these wrappers are an interface over it:

```python
import gymnasium as gym
from textgym.envs.turns import TurnSteps, TurnStepsVector

env = TurnSteps(gym.make("TextGen-v0"))
obs, info = env.reset(seed=0)
turn = [318, 1049, int(env.stop_token_ids[0])]  # token ids, as a server returns them
obs, reward, terminated, truncated, info = env.step(turn)  # the episode ends: info["score"], info["token_rewards"]

vec = TurnStepsVector(gym.make_vec("GuessNumber-v1", num_envs=4))
```

**The action** is ``Sequence(Discrete(vocab_size), stack=True)``: a 1-D array (or list) of token ids. The env takes
it up to where stepping it token by token would end the turn: its first stop token (the end-of-turn token in a
multi-turn game, after which the partner's reply is appended as in per-token mode), or the turn's length limit
(``max_new_tokens``; in a game also ``max_turn_tokens``). The tokens after that are **dropped**, as a server
stopping at the same tokens would never have written them; ``strict=True`` refuses them with a ``ValueError``
instead, which catches a server asked for more tokens than the turn has room for. The drop is the default
because an agent (or Gymnasium's env checker) sampling sequences cannot know where the turn will end. A
sequence may also stop short of the turn's end (no stop token, room left): the turn is then not over, nothing
ends, and the next step goes on with it, so a turn can be streamed in parts and one-token sequences are exactly
the per-token env. An empty sequence is refused. [turn_room][textgym.envs.turns.TurnSteps.turn_room] says how
many tokens the current turn can still take (a server's ``max_tokens``) and
[stop_token_ids][textgym.envs.turns.TurnSteps.stop_token_ids] where it ends.

**The reward** of a step is the sum of its tokens' per-token rewards. Without a reference model those are 0 but
at the turn's last token (the reward model's score at an episode's end; a game's turn score), so the sum is that
reward. With ``kl_coef`` every token earns ``kl_coef · log π_ref``: the info then keeps the per-token values.

**The info** is the info of the turn's last token (``prompt``, ``completion``, ``score``, ``gold_score`` at an
episode's end; ``turn`` and ``reply`` when a game's turn ends; ``ref_logprob`` and ``kl_reward`` of the last
token with a reference model), plus ``token_rewards``: the per-token rewards, one per token taken (its length
says how many were, so a dropped tail shows), and, with a reference model, ``ref_logprobs``: each token's
``ref_logprob``. An agent that credits tokens one by one (PPO's per-token advantages, its own ``−kl_coef ·
log π`` half of the KL penalty) reads them from there.

**Speed.** Without a reference model a token that ends nothing earns nothing and changes only the token arrays,
so the core appends a turn's tokens but the last with array writes, and steps only the last one through the
per-token step (its episode end, reward-model call and partner reply are that code's, unchanged): see
[TokenEpisodes.step_turns][textgym.envs.core.TokenEpisodes.step_turns]. In the vector env, the sub-envs whose turn
ends the episode are scored in one batched reward-model call, as in a per-token step. With a reference model
(``kl_coef``, action masks) the tokens are stepped one by one inside the call, since each needs the reference's
forward pass (a disallowed token raises ``ValueError`` as per-token stepping does). Whatever the error, the env
is left as it was before the call.

**Other wrappers** go above these: a wrapper below one would see only the turn's last token. Gymnasium's own
(``gym.make``'s order enforcing and passive env checker) are the only ones allowed below. Stable-Baselines3 has
no policy for sequence actions; its agents step per token.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorWrapper
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker

from textgym.envs.text_gen import TextGenEnv
from textgym.envs.vector import TextGenVectorEnv

TRANSPARENT_WRAPPERS = (OrderEnforcing, PassiveEnvChecker)
"""``gym.make``'s bookkeeping wrappers: they change no step's result, so a turn may go past them."""


def turn_space(vocab_size: int) -> spaces.Sequence:
    """The action space of a turn: sequences of token ids, stacked into a 1-D int64 array."""
    return spaces.Sequence(spaces.Discrete(vocab_size), stack=True)


class TurnSteps(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A textgym env whose action is a whole turn of token ids (see the module docstring for the rules).

    Args:
        env: a textgym env (``gym.make("TextGen-v0", ...)`` or any registered task), under no wrapper but
            ``gym.make``'s own.
        strict: refuse (``ValueError``) a turn with tokens after its end (a stop token, its length limit),
            instead of dropping them.
    """

    def __init__(self, env: gym.Env, strict: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, strict=strict)
        gym.Wrapper.__init__(self, env)
        inner = env
        while isinstance(inner, TRANSPARENT_WRAPPERS):
            inner = inner.env
        if not isinstance(inner, TextGenEnv):
            raise TypeError(
                f"TurnSteps wraps a textgym env directly (gym.make's own wrappers aside), got {inner}: apply other "
                "wrappers above TurnSteps, so that they see whole turns."
            )
        self.strict = strict
        self.action_space = turn_space(inner.episodes.vocab_size)

    @property
    def stop_token_ids(self) -> np.ndarray:
        """The tokens that end a turn (a server's ``stop_token_ids``)."""
        return self.env.unwrapped.episodes.stop_token_ids.copy()

    def turn_room(self) -> int:
        """How many tokens the current turn can still take (a server's ``max_tokens``)."""
        return self.env.unwrapped.episodes.turn_room(0)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        return self.env.unwrapped.step_turn(action, strict=self.strict)


class TurnStepsVector(VectorWrapper):
    """A textgym vector env whose action is a whole turn of token ids per sub-env, lengths free to differ (see the
    module docstring for the rules; autoreset as in [TextGenVectorEnv][textgym.envs.vector.TextGenVectorEnv]: with
    next-step autoreset a sub-env that ended ignores its next turn, which may then be empty).

    The infos' per-token arrays (``token_rewards``, ``ref_logprobs``) are object arrays holding one array per
    sub-env, since their lengths differ.

    Args:
        env: a textgym vector env (``gym.make_vec("TextGen-v0", num_envs=N, ...)`` or any registered task's).
        strict: refuse (``ValueError``) a turn with tokens after its end, instead of dropping them.
    """

    def __init__(self, env: TextGenVectorEnv, strict: bool = False) -> None:
        if not isinstance(env, TextGenVectorEnv):
            raise TypeError(
                f"TurnStepsVector wraps a textgym vector env directly, got {env}: apply other wrappers above it."
            )
        super().__init__(env)
        self.strict = strict
        self.single_action_space = turn_space(env.episodes.vocab_size)
        self.action_space = batch_space(self.single_action_space, env.num_envs)

    @property
    def stop_token_ids(self) -> np.ndarray:
        """The tokens that end a turn (a server's ``stop_token_ids``)."""
        return self.env.episodes.stop_token_ids.copy()

    def turn_rooms(self) -> np.ndarray:
        """How many tokens each sub-env's current turn can still take (a server's ``max_tokens``), int ``(N,)``; 0
        for a sub-env whose episode is over (the next step resets it, or it waits for a reset)."""
        episodes = self.env.episodes
        return np.array([episodes.turn_room(row) if episodes.running[row] else 0 for row in range(self.num_envs)])

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        return self.env.step_turns(actions, strict=self.strict)
