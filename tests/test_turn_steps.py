"""Whole turns per step (textgym/envs/turns.py) equal per-token steps: for every registered env and many seeds, the
observation, reward, terminated, truncated and info after a turn are those after its tokens stepped one at a time;
the vector env's turns equal the per-token vector env and single per-token envs; Gymnasium's checker passes."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import TimeLimit
from test_envs import ENV_IDS, tiny_kwargs
from test_vector import assert_same_results

import textgym  # noqa: F401  (registers the envs)
from textgym.envs.turns import TurnSteps, TurnStepsVector
from textgym.envs.vector import PER_TOKEN_INFO, unbatch_infos

SEEDS = range(4)
LEARNED_REWARDS = ("TextGenPreference-v0", "ProxyPositivity-v0")
"""Envs whose reward (or gold) model is learned: its batched forward pass scores a row a little differently in a
batch than alone, so a vector env's floats are close to, not equal to, single envs'."""


def random_turn(rng: np.random.Generator, env: gym.Env) -> np.ndarray:
    """Random tokens (digits often, so that some guesses are read) of random length, up to 3 past the turn's limit:
    half the turns have a stop token at a random place, so turns end there (sometimes with tokens after it, which
    the env drops), run to the length limit (and past it) or stop short of both."""
    episodes, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
    limit = getattr(episodes, "max_turn_tokens", episodes.max_new_tokens)
    digits = tokenizer.convert_tokens_to_ids([str(d) for d in range(1, 10)])
    length = int(rng.integers(1, limit + 4))
    tokens = [
        int(rng.choice(digits)) if rng.random() < 0.4 else int(rng.integers(episodes.vocab_size)) for _ in range(length)
    ]
    if rng.random() < 0.5:
        tokens[int(rng.integers(length))] = int(rng.choice(episodes.stop_token_ids))
    return np.array(tokens, dtype=np.int64)


def step_tokens(env: gym.Env, turn: np.ndarray) -> tuple[tuple, list[float], list[dict]]:
    """Step ``turn``'s tokens one at a time until the env ends the turn (the episode ends, or a game's partner
    replies: the info has ``turn``); return the last step's ``(obs, terminated, truncated, info)``, the rewards
    and the infos."""
    rewards, infos = [], []
    for token in turn:
        obs, reward, terminated, truncated, info = env.step(int(token))
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated or "turn" in info:
            break
    return (obs, terminated, truncated, info), rewards, infos


def assert_turn_equals_tokens(result: tuple, tokens: tuple) -> None:
    """A turn step's result equals its tokens' per-token steps: the same observation, flags and (but for the
    per-token arrays) info as the last token's step; the reward is the sum of the per-token rewards."""
    (obs, reward, terminated, truncated, info), ((token_obs, token_term, token_trunc, token_info), rewards, infos) = (
        result,
        tokens,
    )
    assert data_equivalence(obs, token_obs, exact=True)
    assert (terminated, truncated) == (token_term, token_trunc)
    assert np.array_equal(info["token_rewards"], rewards) and reward == info["token_rewards"].sum()
    if "ref_logprob" in token_info:
        assert np.array_equal(info["ref_logprobs"], [i["ref_logprob"] for i in infos])
    assert data_equivalence({k: v for k, v in info.items() if k not in PER_TOKEN_INFO}, token_info, exact=True)


def assert_turn_close_to_tokens(result: tuple, tokens: tuple) -> None:
    """As `assert_turn_equals_tokens`, but with the floats of the rewards and the info within 1e-4."""
    (obs, reward, terminated, truncated, info), ((token_obs, token_term, token_trunc, token_info), rewards, _) = (
        result,
        tokens,
    )
    assert data_equivalence(obs, token_obs, exact=True) and (terminated, truncated) == (token_term, token_trunc)
    np.testing.assert_allclose(info["token_rewards"], rewards, atol=1e-4)
    assert reward == info["token_rewards"].sum()
    rest = {k: v for k, v in info.items() if k not in PER_TOKEN_INFO}
    assert set(rest) == set(token_info)
    for key, value in token_info.items():
        assert rest[key] == pytest.approx(value, abs=1e-4) if isinstance(value, float) else rest[key] == value, key


def play_both(per_token: gym.Env, turns: TurnSteps, rng: np.random.Generator, seed: int | None) -> list[tuple]:
    """Reset both envs with ``seed`` and play one episode of random turns in both; return ``(turn, info)`` pairs."""
    assert data_equivalence(per_token.reset(seed=seed), turns.reset(seed=seed), exact=True)
    played, done = [], False
    while not done:
        turn = random_turn(rng, per_token)
        assert turns.turn_room() >= 1
        result = turns.step(turn)
        assert_turn_equals_tokens(result, step_tokens(per_token, turn))
        played.append((turn, result[-1]))
        done = result[2] or result[3]
    return played


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_a_turn_equals_its_tokens_stepped_one_at_a_time(env_id, tiny_model_dir):
    kwargs = tiny_kwargs(env_id, tiny_model_dir)
    per_token, turns = gym.make(env_id, **kwargs), TurnSteps(gym.make(env_id, **kwargs))
    rng = np.random.default_rng(0)
    played, ended = [], []
    for seed in SEEDS:
        for episode_seed in (seed, None):  # the second episode draws from the seeded generator
            episode = play_both(per_token, turns, rng, episode_seed)
            played += episode
            ended.append("gold_score" in episode[-1][1])
    taken = [len(info["token_rewards"]) for _, info in played]
    # The random turns covered turns of one token and of several, turns whose tail was dropped, and the episodes
    # ended with their final info.
    assert min(taken) == 1 and max(taken) > 2 and all(ended)
    assert any(n < len(turn) for n, (turn, _) in zip(taken, played))


@pytest.mark.parametrize("env_id", ["TextGen-v0", "GuessNumber-v1"])
def test_a_turn_equals_its_tokens_with_kl_shaping(env_id, tiny_model_dir):
    """With a reference model every token earns ``kl_coef · log π_ref``: the info keeps the per-token rewards and
    log-probs, and the turn's reward is their sum."""
    kwargs = {**tiny_kwargs(env_id, tiny_model_dir), "reference_model": tiny_model_dir, "kl_coef": 0.5}
    per_token, turns = gym.make(env_id, **kwargs), TurnSteps(gym.make(env_id, **kwargs))
    rng = np.random.default_rng(1)
    for seed in range(2):
        played = play_both(per_token, turns, rng, seed)
        assert any(len(info["ref_logprobs"]) > 1 and np.all(info["token_rewards"] != 0) for _, info in played)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_the_wrapper_passes_gymnasium_checker_and_remakes_from_its_spec(env_id, tiny_model_dir):
    env = TurnSteps(gym.make(env_id, **tiny_kwargs(env_id, tiny_model_dir)))
    assert isinstance(env.action_space, gym.spaces.Sequence)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*is different from the unwrapped version")  # it is a wrapper
        check_env(env, skip_render_check=False)
    remade = gym.make(env.spec)
    assert isinstance(remade, TurnSteps) and remade.spec == env.spec


def vector_kwargs(env_id: str, model: str) -> dict:
    """Shorter games than the checker's, so that sub-envs end (and autoreset) often."""
    return {**tiny_kwargs(env_id, model), **({"max_turn_tokens": 3} if env_id.endswith("-v1") else {})}


def pop_token_arrays(info: dict) -> int | None:
    """Remove the per-token arrays of a sub-env's info (or of its ``final_info``); the number of tokens taken."""
    taken = None
    for d in (info, info.get("final_info", {})):
        taken = d.pop("token_rewards", taken)
        d.pop("ref_logprobs", None)
    return None if taken is None else len(taken)


@pytest.mark.parametrize(
    ("env_id", "mode"),
    [(env_id, AutoresetMode.NEXT_STEP) for env_id in ENV_IDS]
    + [(env_id, mode) for env_id in ("TextGen-v0", "GuessNumber-v1") for mode in ("same_step", "disabled")],
)
def test_vector_turns_equal_the_per_token_vector_env(env_id, mode, tiny_model_dir):
    """Turns of the same length in every sub-env, stepped token by token in lockstep by the per-token vector env:
    a stop token (or not) at the end of each, none before. A sub-env waiting for its next-step autoreset ignores
    its action, so a step with one is a one-token step."""
    n, kwargs = 3, vector_kwargs(env_id, tiny_model_dir)
    per_token = gym.make_vec(env_id, num_envs=n, autoreset_mode=mode, **kwargs)
    turns = TurnStepsVector(gym.make_vec(env_id, num_envs=n, autoreset_mode=mode, **kwargs))
    assert_same_results(turns.reset(seed=5), per_token.reset(seed=5))
    stops = per_token.episodes.stop_token_ids
    filler = next(t for t in range(3, 100) if t not in stops)
    rng = np.random.default_rng(2)
    waiting, ended = np.zeros(n, dtype=bool), 0
    for _ in range(25):
        rooms = turns.turn_rooms()
        assert np.array_equal(rooms > 0, ~waiting)
        length = 1 if waiting.any() else int(rng.integers(1, rooms.min() + 1))
        tokens = rng.integers(3, per_token.single_action_space.n, size=(n, length))
        tokens[np.isin(tokens, stops)] = filler  # no stop token but at the end
        tokens[rng.random(n) < 0.5, -1] = stops[0]
        result = turns.step(list(tokens))
        for j in range(length):
            expected = per_token.step(tokens[:, j])
        infos = unbatch_infos(result[-1], n)
        assert [pop_token_arrays(info) for info in infos] == [None if w else length for w in waiting]
        assert_same_results((*result[:-1], batch(infos, per_token)), expected)
        done = result[2] | result[3]
        ended += done.sum()
        waiting = done & (turns.env.autoreset_mode == AutoresetMode.NEXT_STEP)
        if turns.env.autoreset_mode == AutoresetMode.DISABLED and done.any():
            options = {"reset_mask": done}
            assert_same_results(turns.reset(options=dict(options)), per_token.reset(options=dict(options)))
    assert ended >= 3


def batch(infos: list[dict], env: gym.vector.VectorEnv) -> dict:
    """Per-sub-env infos batched back as a vector env batches them."""
    batched: dict = {}
    for row, info in enumerate(infos):
        batched = env._add_info(batched, info, row)
    return batched


@pytest.mark.parametrize(
    ("env_id", "kl"), [(env_id, False) for env_id in ENV_IDS] + [("TextGen-v0", True)], ids=[*ENV_IDS, "TextGen-v0-kl"]
)
def test_vector_turns_of_different_lengths_equal_single_envs_stepped_per_token(env_id, kl, tiny_model_dir):
    """Sub-env ``i`` of the vector env with next-step autoreset plays as a single per-token env seeded ``seed +
    i``: reset the step after its episode ends (its turn, empty, ignored), its turns stepped token by token
    otherwise. Equal exactly, but for the floats of models whose batched forward pass gives other floats for a
    batch of rows than for a row alone (a learned reward model, the reference model), as for the per-token vector
    env (tests/test_reference.py): close."""
    n, kwargs = 3, vector_kwargs(env_id, tiny_model_dir)
    if kl:
        kwargs |= {"reference_model": tiny_model_dir, "kl_coef": 0.5}
    turns = TurnStepsVector(gym.make_vec(env_id, num_envs=n, **kwargs))
    singles = [gym.make(env_id, **kwargs) for _ in range(n)]
    obs, infos = turns.reset(seed=11)
    for row, (single, info) in enumerate(zip(singles, unbatch_infos(infos, n))):
        assert data_equivalence(single.reset(seed=11 + row), ({k: v[row] for k, v in obs.items()}, info), exact=True)
    rng = np.random.default_rng(3)
    waiting, taken, ended = np.zeros(n, dtype=bool), set(), 0
    for _ in range(20):
        action = [np.zeros(0, dtype=np.int64) if waiting[row] else random_turn(rng, singles[row]) for row in range(n)]
        obs, rewards, terminated, truncated, infos = turns.step(action)
        for row, (single, info) in enumerate(zip(singles, unbatch_infos(infos, n))):
            mine = ({k: v[row] for k, v in obs.items()}, rewards[row], terminated[row], truncated[row], info)
            if waiting[row]:
                assert data_equivalence((mine[0], info), single.reset(), exact=True)
                assert rewards[row] == 0 and not terminated[row] and not truncated[row]
                continue
            taken.add(len(info["token_rewards"]))
            tokens = step_tokens(single, action[row])
            if kl or env_id in LEARNED_REWARDS:
                assert_turn_close_to_tokens(mine, tokens)
            else:
                assert_turn_equals_tokens(mine, tokens)
        waiting = terminated | truncated
        ended += waiting.sum()
    assert ended >= 3 and len(taken) >= 3


def test_strict_refuses_tokens_after_the_turn_and_errors_leave_the_env_as_it_was(tiny_model_dir):
    env = TurnSteps(gym.make("GuessNumber-v1", model=tiny_model_dir), strict=True)
    with pytest.raises(RuntimeError, match="reset"):
        env.step([5, 6])
    obs, _ = env.reset(seed=0)
    eot = int(env.stop_token_ids[0])
    with pytest.raises(ValueError, match="ends after 2 of its 3 tokens"):
        env.step([5, eot, 6])
    with pytest.raises(ValueError, match="ends after 8 of its 9 tokens"):
        env.step([5] * (env.turn_room() + 1))
    with pytest.raises(ValueError, match="empty"):
        env.step([])
    with pytest.raises(TypeError, match="integer token ids"):
        env.step([1.5, 2.0])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step([5, 10**6])
    assert data_equivalence(env.unwrapped.episodes.observation(0), obs, exact=True)
    _, _, _, _, info = env.step([5, eot])
    assert info["turn"] == 0 and len(info["token_rewards"]) == 2


def test_a_failing_reward_model_leaves_the_env_as_it_was(tiny_model_dir):
    def failing(prompts, completions):
        raise RuntimeError("the reward server is down")

    env = TurnSteps(gym.make("TextGen-v0", **tiny_kwargs("TextGen-v0", tiny_model_dir), reward_model=failing))
    obs, _ = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="reward server"):
        env.step([5, 6, 7, 8, 9, 10])
    assert data_equivalence(env.unwrapped.episodes.observation(0), obs, exact=True)
    assert env.turn_room() == 6


def test_a_token_outside_the_action_mask_is_refused_and_leaves_the_env_as_it_was(tiny_model_dir):
    kwargs = {**tiny_kwargs("TextGen-v0", tiny_model_dir), "reference_model": tiny_model_dir, "action_mask": "top_k"}
    env, per_token = (gym.make("TextGen-v0", **kwargs, top_k=3) for _ in range(2))
    turns = TurnSteps(env)
    obs, _ = turns.reset(seed=0)
    per_token.reset(seed=0)
    stops = per_token.unwrapped.episodes.stop_token_ids
    turn = []
    for _ in range(2):  # two allowed tokens (not stop tokens), then one the mask refuses after them
        turn.append(int(next(t for t in np.flatnonzero(per_token.unwrapped.action_masks()) if t not in stops)))
        per_token.step(turn[-1])
    turn.append(int(np.flatnonzero(~per_token.unwrapped.action_masks())[0]))
    with pytest.raises(ValueError, match="action mask"):
        turns.step(turn)
    assert data_equivalence(env.unwrapped.episodes.observation(0), obs, exact=True)
    per_token.reset(seed=0)
    assert_turn_equals_tokens(turns.step(turn[:2]), step_tokens(per_token, turn[:2]))


def test_wrappers_below_a_turn_wrapper_are_refused(tiny_model_dir):
    env = gym.make("TextGen-v0", **tiny_kwargs("TextGen-v0", tiny_model_dir))
    with pytest.raises(TypeError, match="above TurnSteps"):
        TurnSteps(TimeLimit(env, 10))
    with pytest.raises(TypeError, match="vector env"):
        TurnStepsVector(env)
