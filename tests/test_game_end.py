"""How a multi-turn game ends (issue 27): the game's own rules terminate it, won (outcome "solved") or out of
guesses or questions at ``max_turns`` (outcome "lost"); only the token budget ``max_new_tokens`` truncates it
(outcome None). The LM agents' ``missing_eos_penalty`` and ``mask_truncated_completions`` read the terminated
flags, so they must touch the capped games only."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401  (registers the envs)
from textgym.envs import guess_number, twenty_questions, word_guess

TASKS = [guess_number.TASK, twenty_questions.TASK, word_guess.TASK]


def wrong_turn(task, secret) -> str:
    """A turn the partner reads (a valid guess or question) that never wins the game hiding ``secret``."""
    if task is guess_number.TASK:
        return "2" if secret != 2 else "3"
    if task is twenty_questions.TASK:
        return "Is it alive?"
    word, listed = secret
    return next(w for w in listed if w != word)


def play(env, turns, prompt=None, seed=0, close_turns=True):
    """Reset, then play ``turns`` (texts, each closed by the end-of-turn token unless ``close_turns`` is False)
    until the episode ends. Returns ``(turns played, steps, terminated, truncated, info)``; every step before the
    last is checked to end nothing."""
    episodes, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
    env.reset(seed=seed, options=None if prompt is None else {"prompt": prompt})
    steps = 0
    for played, turn in enumerate(turns, start=1):
        actions = tokenizer(turn, add_special_tokens=False)["input_ids"]
        for action in [*actions, episodes.end_of_turn] if close_turns else actions:
            *_, terminated, truncated, info = env.step(action)
            steps += 1
            if terminated or truncated:
                return played, steps, terminated, truncated, info
    raise AssertionError(f"the episode did not end after {len(turns)} turns")


def play_solver(env, task, prompt=None, seed=0):
    """Play the task's scripted solver (level 1) to the end; return what `play` returns."""
    episodes, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
    env.reset(seed=seed, options=None if prompt is None else {"prompt": prompt})
    played = steps = 0
    while True:
        turn = task.solver(episodes.transcript(0), 1)
        played += 1
        for action in [*tokenizer(turn, add_special_tokens=False)["input_ids"], episodes.end_of_turn]:
            *_, terminated, truncated, info = env.step(action)
            steps += 1
            if terminated or truncated:
                return played, steps, terminated, truncated, info


def a_game(env):
    """The first test game's opening and secret."""
    return next(iter(sorted(env.unwrapped.episodes.instances.items())))


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_a_won_game_terminates_as_solved(tiny_model_dir, task):
    env = gym.make(task.env_id, model=tiny_model_dir, level=1)
    *_, terminated, truncated, info = play_solver(env, task)
    assert terminated and not truncated and info["outcome"] == "solved" and info["gold_score"] > 0


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_a_game_out_of_turns_terminates_as_lost(tiny_model_dir, task):
    """With the default max_turns (the game's rules: 2·t*, MAX_TURNS[1], 8) and the default budget, max_turns wrong
    guesses or questions lose the game: it terminates at the last turn's end, not before, and is not truncated."""
    env = gym.make(task.env_id, model=tiny_model_dir, level=1)
    max_turns = env.unwrapped.episodes.max_turns
    assert max_turns == {"guess-number": 6, "twenty-questions": 8, "word-guess": 8}[task.name]
    prompt, secret = a_game(env)
    played, _, terminated, truncated, info = play(env, [wrong_turn(task, secret)] * (max_turns + 1), prompt)
    assert played == max_turns
    assert terminated and not truncated and info["outcome"] == "lost"
    assert info["turns"] == max_turns and info["gold_score"] == 0.0
    # a max_turns passed in is the game's limit too
    shorter = gym.make(task.env_id, model=tiny_model_dir, level=1, max_turns=2)
    played, _, terminated, truncated, info = play(shorter, [wrong_turn(task, secret)] * 3, prompt)
    assert (played, terminated, truncated, info["outcome"]) == (2, True, False, "lost")


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_a_game_cut_by_the_token_budget_is_truncated(tiny_model_dir, task):
    """A budget with room for one turn but not for the partner's reply: the time limit, not the game, ends it."""
    probe = gym.make(task.env_id, model=tiny_model_dir, level=1)
    prompt, secret = a_game(probe)
    turn = wrong_turn(task, secret)
    length = len(probe.unwrapped.tokenizer(turn, add_special_tokens=False)["input_ids"]) + 1  # with end of turn
    env = gym.make(task.env_id, model=tiny_model_dir, level=1, max_new_tokens=length + 2)
    played, _, terminated, truncated, info = play(env, [turn] * 3, prompt)
    assert (played, terminated, truncated, info["outcome"]) == (1, False, True, None)
    assert info["transcript"][-1]["role"] == "user"  # the partner answered; its reply did not fit


def test_the_last_turn_cut_by_the_budget_is_truncated_a_whole_one_lost(tiny_model_dir):
    """At the last allowed turn, the budget decides only if it cut the turn: a turn the budget ends mid-way is
    truncated (the agent was still writing), a turn closed by the agent on the budget's last token is lost."""
    settings = {"model": tiny_model_dir, "level": 1, "max_turns": 1, "max_turn_tokens": 8}
    env = gym.make("GuessNumber-v1", max_new_tokens=2, **settings)
    prompt, secret = a_game(env)
    wrong = wrong_turn(guess_number.TASK, secret)
    assert len(env.unwrapped.tokenizer(wrong, add_special_tokens=False)["input_ids"]) == 1
    _, steps, terminated, truncated, info = play(env, [wrong + " is my guess"], prompt, close_turns=False)
    assert (steps, terminated, truncated, info["outcome"]) == (2, False, True, None)
    _, steps, terminated, truncated, info = play(env, [wrong], prompt)  # the guess and its end of turn: 2 tokens
    assert (steps, terminated, truncated, info["outcome"]) == (2, True, False, "lost")


def batch_of(episodes):
    """A RolloutBatch of ``(steps, last reward, terminated)`` episodes, as the collector builds it from the env's
    flags (``FinishedEpisode.terminated`` is the env's terminated flag of the last step)."""
    from agents.rollout import RolloutBatch

    width = max(steps for steps, _, _ in episodes)
    mask = torch.tensor([[1] * steps + [0] * (width - steps) for steps, _, _ in episodes])
    rewards = torch.zeros(len(episodes), width)
    for row, (steps, reward, _) in enumerate(episodes):
        rewards[row, steps - 1] = reward
    return RolloutBatch(
        prompt_ids=torch.ones(len(episodes), 1, dtype=torch.long),
        prompt_mask=torch.ones(len(episodes), 1, dtype=torch.long),
        completion_ids=mask.clone(),
        completion_mask=mask,
        logprobs=torch.zeros(len(episodes), width),
        rewards=rewards,
        terminated=torch.tensor([done for _, _, done in episodes]),
    )


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_missing_eos_penalty_and_truncation_mask_touch_only_capped_games(tiny_model_dir, task):
    """The agents' penalty and loss mask, on a batch of one won, one lost and one capped game of each task (the
    flags the env gives): the penalty is subtracted from the capped game only, and the mask drops it only."""
    from agents import GRPO

    env = gym.make(task.env_id, model=tiny_model_dir, level=1)
    prompt, secret = a_game(env)
    wrong = wrong_turn(task, secret)
    won = play_solver(env, task, prompt)
    lost = play(env, [wrong] * 20, prompt)
    capped_env = gym.make(task.env_id, model=tiny_model_dir, level=1, max_new_tokens=3)
    capped = play(capped_env, ["hmm, hmm, hmm, hmm"], prompt, close_turns=False)  # cut mid-turn by the budget
    games = {"solved": won, "lost": lost, None: capped}
    assert {name: (game[2], game[3]) for name, game in games.items()} == {
        "solved": (True, False),
        "lost": (True, False),
        None: (False, True),
    }
    assert [game[4]["outcome"] for game in games.values()] == list(games)
    batch = batch_of([(game[1], game[4]["score"], bool(game[2])) for game in games.values()])

    envs = gym.make_vec("GuessNumber-v1", num_envs=4, model=tiny_model_dir, level=1)
    agent = GRPO(tiny_model_dir, envs, batch_size=8, minibatch_size=8, group_size=4)
    plain = agent.task_rewards(batch).sum(1)
    agent.config.missing_eos_penalty = 0.5
    torch.testing.assert_close(agent.task_rewards(batch).sum(1), plain - torch.tensor([0.0, 0.0, 0.5]))
    agent.config.mask_truncated_completions = True
    torch.testing.assert_close(agent.loss_mask(batch).sum(1), torch.tensor([won[1], lost[1], 0.0]))


@pytest.mark.usefixtures("one_thread")
def test_the_collector_keeps_the_env_flags_lost_games_terminated(tiny_model_dir, tiny_policy):
    """Through the rollout engine: the tiny model's games (one-token turns) end solved or lost with the default
    budget, all terminated, so the options leave them alone; a budget with no room for a reply truncates every game
    its first guess does not win. ``batch.terminated`` (what the options read) is the env's flag in both."""
    from agents import RolloutCollector

    settings = {"model": tiny_model_dir, "level": 1, "max_turn_tokens": 1}
    outcomes = {}
    for name, budget in [("rules", None), ("capped", 4)]:
        envs = gym.make_vec("GuessNumber-v1", num_envs=4, max_new_tokens=budget, **settings)
        batch = RolloutCollector(tiny_policy, envs, seed=0).collect(8)
        outcomes[name] = [info["outcome"] for info in batch.infos]
        np.testing.assert_array_equal(batch.terminated.cpu().numpy(), [o is not None for o in outcomes[name]])
    assert "lost" in outcomes["rules"] and None not in outcomes["rules"]
    assert set(outcomes["capped"]) <= {None, "solved"} and None in outcomes["capped"]
