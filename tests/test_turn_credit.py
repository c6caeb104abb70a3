"""Credit per turn (issue 27). The env side: the multi-turn games pay, with ``turn_rewards``, each turn's progress
(the share of the game's uncertainty its answer resolved, from the candidates every answer so far allows), left
out of the gold score. The agent side: with ``turn_credit`` the group methods give each agent token the
reward-to-go from its turn less the mean of the other episodes of its group at that turn, and that estimator's
expected gradient is the policy gradient even when the policy decides when the episode ends, while the per-turn
normalisation over the group, the episode itself included, is not."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import textgym  # noqa: F401  (registers the envs)
from agents.group import turn_advantages, turn_indices
from textgym.envs import guess_number, twenty_questions, word_guess


# --- env side: what the partner's answers allow, and the rewards per turn ----------------------------------------
def guess_number_game(rng):
    n = guess_number.LEVELS[3]
    moves = [*map(str, range(1, n + 1)), "no idea", "2 or 3", "100", "I guess 17.", "2.5"]
    secret = int(rng.integers(1, n + 1))
    return guess_number.GuessNumberGame(n), secret, list(range(1, n + 1)), lambda c: c, moves


def twenty_questions_game(rng):
    target, candidates = list(twenty_questions.instances(2).values())[int(rng.integers(500))]
    questions = [question for question, _ in twenty_questions.ATTRIBUTES.values()]
    guesses = [f"Is it a {name}?" for name in [*candidates, "car", "dog"]]
    moves = [*questions, *guesses, "Is it blue?", "Is it big and metal?"]
    return twenty_questions.TwentyQuestionsGame(), (target, candidates), candidates, lambda c: (c, candidates), moves


def word_guess_game(rng):
    word, listed = list(word_guess.instances(2).values())[int(rng.integers(500))]
    moves = [*listed, f"My guess: {listed[0].upper()}", "xyzw", f"{listed[0]} or {listed[1]}"]
    return word_guess.WordGuessGame(), (word, listed), listed, lambda c: (c, listed), moves


@pytest.mark.parametrize("make_game", [guess_number_game, twenty_questions_game, word_guess_game])
def test_candidates_left_are_those_the_partner_would_have_answered_the_same(make_game):
    """Brute force: a candidate is left after some turns iff, were it the secret, the partner would have given
    every one of those turns the same reply; each turn's progress is the log-ratio of the counts before and after."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        game, secret, pool, secret_of, moves = make_game(rng)
        turns = [str(rng.choice(moves)) for _ in range(int(rng.integers(1, 9)))]
        replies = [game.respond(secret, turns[: k + 1]) for k in range(len(turns))]
        answered = {c: [game.respond(secret_of(c), turns[: k + 1]).text for k in range(len(turns))] for c in pool}
        counts = [len(pool)]
        for k, reply in enumerate(replies):
            brute = sum(answered[c][: k + 1] == [r.text for r in replies[: k + 1]] for c in pool)
            assert game.candidates_left(secret, turns[: k + 1]) == brute, (turns[: k + 1], secret)
            expected = math.log(counts[-1] / brute) / math.log(len(pool)) if reply.valid else 0.0
            assert reply.progress == pytest.approx(expected) and 0 <= reply.progress <= 1
            counts.append(brute)
            if reply.outcome == "solved":
                assert brute == 1
                break


def turn_rewards_of(env, turns, prompt):
    """Play whole turns; return each turn's reward, and check that only the step that ends a turn pays."""
    eot, tokenizer = env.unwrapped.episodes.end_of_turn, env.unwrapped.tokenizer
    env.reset(options={"prompt": prompt})
    paid = []
    for turn in turns:
        actions = [*tokenizer(turn, add_special_tokens=False)["input_ids"], eot]
        rewards = [env.step(action)[1] for action in actions]
        assert rewards[:-1] == [0.0] * (len(actions) - 1)
        paid.append(rewards[-1])
    return paid, env.unwrapped.episodes


def test_guess_number_pays_each_guess_s_progress_on_the_step_that_ends_its_turn(tiny_model_dir):
    settings = {"model": tiny_model_dir, "level": 2, "format_reward": 0.1}
    shaped = gym.make("GuessNumber-v1", turn_rewards=0.5, **settings)
    prompt = next(p for p, s in shaped.unwrapped.episodes.instances.items() if s == 13)
    turns = ["8", "12", "no idea", "14", "13"]  # 1-16 -> 9-16 -> 13-16 -> (no guess) -> 13-13 -> correct
    paid, episodes = turn_rewards_of(shaped, turns, prompt)
    progress = [1 / 4, 1 / 4, 0, 2 / 4, 0]  # log2(16/8), log2(8/4), -, log2(4/1), log2(1/1), over log2(16)
    score = min(1, guess_number.optimal_turns(16) / 5)
    valid = [1, 1, 0, 1, 1]
    expected = [0.1 * v + 0.5 * p for v, p in zip(valid, progress)]
    expected[-1] += score
    assert paid == pytest.approx(expected)
    assert episodes.scores[0] == pytest.approx(score) and episodes.returns[0] == pytest.approx(sum(expected))
    plain, _ = turn_rewards_of(gym.make("GuessNumber-v1", **settings), turns, prompt)  # the default pays none
    assert plain == pytest.approx([0.1, 0.1, 0.0, 0.1, 0.1 + score])


@pytest.mark.parametrize("task", [guess_number.TASK, twenty_questions.TASK, word_guess.TASK], ids=lambda t: t.name)
def test_a_solved_game_s_progress_sums_to_one_and_the_gold_score_leaves_it_out(tiny_model_dir, task):
    """The scripted solver's games, with ``turn_rewards=True`` (weight 1): the return is the gold score plus 1."""
    env = gym.make(task.env_id, model=tiny_model_dir, split="test", turn_rewards=True)
    episodes, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
    assert episodes.turn_rewards == 1.0
    for seed in range(3):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            turn = task.solver(episodes.transcript(0), task.default_level)
            for action in [*tokenizer(turn, add_special_tokens=False)["input_ids"], episodes.end_of_turn]:
                _, reward, terminated, truncated, info = env.step(action)
                total += reward
                done = terminated or truncated
                if done:
                    break
        assert info["outcome"] == "solved" and task.normalized(info["gold_score"], task.default_level) == 100.0
        assert total == pytest.approx(info["score"]) and info["score"] == pytest.approx(info["gold_score"] + 1)


# --- agent side: per-turn advantages -------------------------------------------------------------------------------
def episodes_from(layouts: list[str], rewards: list[dict[int, float]], dtype: torch.dtype = torch.float32):
    """Batch tensors from layouts (``A`` an agent token, ``e`` one the env wrote, ``.`` padding) and
    ``{column: reward}`` per episode."""
    width = max(map(len, layouts))
    completion_mask = torch.zeros(len(layouts), width, dtype=torch.long)
    env_mask = torch.zeros_like(completion_mask)
    reward = torch.zeros(len(layouts), width, dtype=dtype)
    for i, (layout, paid) in enumerate(zip(layouts, rewards)):
        for t, kind in enumerate(layout):
            completion_mask[i, t], env_mask[i, t] = kind == "A", kind == "e"
        for t, value in paid.items():
            reward[i, t] = value
    return reward, completion_mask, env_mask


# Two groups of three: episodes of 1 to 3 turns, turns of 1 to 3 tokens, replies of 1 to 3 tokens, a reward paid
# mid-turn (column 3 of episode 2: a turn's rewards are summed), padding.
LAYOUTS = ["AAeeAeAA", "AAA.....", "AeeeAA..", "AeA.....", "AeA.....", "AeAeA..."]
REWARDS = [{1: 0.2, 4: 0.5, 7: 1.0}, {2: 0.6}, {0: 0.1, 4: 0.3}, {2: 1.0}, {}, {0: 0.5, 2: 0.5, 4: 0.5}]
# γ = 0.5. Rewards-to-go per turn: e0 [0.7, 1.0, 1.0], e1 [0.6], e2 [0.25, 0.3]; e3 [0.5, 1], e4 [0, 0],
# e5 [0.875, 0.75, 0.5]. Baselines: the mean of the others of the group at the same turn, 0 if none got there.
EXPECTED_BY_TURN = [
    [0.7 - (0.6 + 0.25) / 2, 1.0 - 0.3, 1.0],
    [0.6 - (0.7 + 0.25) / 2],
    [0.25 - (0.7 + 0.6) / 2, 0.3 - 1.0],
    [0.5 - (0 + 0.875) / 2, 1 - (0 + 0.75) / 2],
    [0 - (0.5 + 0.875) / 2, 0 - (1 + 0.75) / 2],
    [0.875 - (0.5 + 0) / 2, 0.75 - (1 + 0) / 2, 0.5],
]


def test_turn_advantages_of_a_small_batch_by_hand():
    rewards, completion_mask, env_mask = episodes_from(LAYOUTS, REWARDS)
    assert turn_indices(env_mask)[0].tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    expected = torch.zeros_like(rewards)
    for i, layout in enumerate(LAYOUTS):
        turn = 0
        for t, kind in enumerate(layout):
            if kind == "A":
                expected[i, t] = EXPECTED_BY_TURN[i][turn]
            elif kind == "e" and layout[t + 1] == "A":
                turn += 1
    advantages = turn_advantages(rewards, completion_mask, env_mask, group_size=3, discount=0.5)
    torch.testing.assert_close(advantages, expected)

    # An episode's baseline never holds its own rewards: raise episode 0's last reward, and its own advantages
    # rise by exactly its reward-to-go's change (γ² at turn 0, γ at turn 1, 1 at turn 2), while the others of its
    # group that reached those turns see a higher baseline. The other group does not move.
    rewards[0, 7] += 4.0
    moved = turn_advantages(rewards, completion_mask, env_mask, group_size=3, discount=0.5) - advantages
    torch.testing.assert_close(moved[0], torch.tensor([1.0, 1.0, 0, 0, 2.0, 0, 4.0, 4.0]))
    torch.testing.assert_close(moved[1], torch.tensor([-0.5, -0.5, -0.5, 0, 0, 0, 0, 0]))  # 4·γ² / 2 others
    torch.testing.assert_close(moved[2], torch.tensor([-0.5, 0, 0, 0, -2.0, -2.0, 0, 0]))  # and 4·γ / 1 other
    assert moved[3:].abs().sum() == 0


def test_one_turn_episodes_get_rloo_s_advantage():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25], [0.0, 0.0, 2.0]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    advantages = turn_advantages(rewards, completion_mask, torch.zeros_like(completion_mask), group_size=2)
    returns = rewards.sum(1)
    others = returns.view(2, 2).flip(1).flatten()  # with two in a group, the other one's return
    torch.testing.assert_close(advantages, (returns - others)[:, None] * completion_mask)


class StopOrGoOn:
    """A toy game the policy ends: at turn k it stops (action 0) or goes on (1), earning ``REWARD[k][a]``; the
    third turn ends it either way. A tabular softmax policy, one row of logits per turn; every group of
    ``G`` episodes is enumerated with its exact probability."""

    REWARD = torch.tensor([[0.3, 0.0], [0.0, 0.1], [1.0, 0.0]], dtype=torch.float64)
    GAMES = ((0,), (1, 0), (1, 1, 0), (1, 1, 1))

    def __init__(self, logits: torch.Tensor, group_size: int) -> None:
        self.logits, self.group_size = logits, group_size
        groups = list(itertools.product(range(len(self.GAMES)), repeat=group_size))
        episodes = [self.GAMES[g] for group in groups for g in group]
        layouts = ["e".join("A" * len(game)) for game in episodes]  # one token a turn, one token of reply between
        paid = [{2 * k: float(self.REWARD[k, a]) for k, a in enumerate(game)} for game in episodes]
        self.rewards, self.completion_mask, self.env_mask = episodes_from(layouts, paid, torch.float64)
        # Each episode's weight in the expectation of the batch-mean gradient: its group's probability / G.
        group_probability = torch.stack([self.probability(logits, group) for group in groups])
        self.weight = group_probability.repeat_interleave(group_size) / group_size  # (E,)
        policy = torch.softmax(logits, dim=1)  # (K, 2)
        self.score = torch.zeros(*self.rewards.shape, *logits.shape, dtype=torch.float64)  # (E, T, K, 2)
        for i, game in enumerate(episodes):
            for k, action in enumerate(game):
                self.score[i, 2 * k, k] = torch.nn.functional.one_hot(torch.tensor(action), 2) - policy[k]
        self.episodes = episodes

    def probability(self, logits: torch.Tensor, group: tuple[int, ...]) -> torch.Tensor:
        policy = torch.softmax(logits, dim=1)
        return math.prod(policy[k, a] for g in group for k, a in enumerate(self.GAMES[g]))

    def true_gradient(self) -> torch.Tensor:
        """∇ of the expected undiscounted return, by autograd over the four games' probabilities."""
        logits = self.logits.clone().requires_grad_(True)
        policy = torch.softmax(logits, dim=1)
        value = sum(
            math.prod(policy[k, a] for k, a in enumerate(game)) * sum(self.REWARD[k, a] for k, a in enumerate(game))
            for game in self.GAMES
        )
        return torch.autograd.grad(value, logits)[0]

    def expected_gradient(self, advantages: torch.Tensor) -> torch.Tensor:
        """E[mean over the group of Σ_t A_t ∇ log π(a_t | s_t)], exactly, for per-token advantages ``(E, T)``."""
        return torch.einsum("e,et,etkj->kj", self.weight, advantages, self.score)

    def by_turn(self, discount: float) -> list[list[float]]:
        """Each episode's discounted rewards-to-go per turn, computed directly."""
        out = []
        for game in self.episodes:
            paid = [float(self.REWARD[k, a]) for k, a in enumerate(game)]
            out.append([sum(discount**j * r for j, r in enumerate(paid[k:])) for k in range(len(game))])
        return out

    def per_token(self, by_turn: list[list[float]]) -> torch.Tensor:
        advantages = torch.zeros_like(self.rewards)
        for i, values in enumerate(by_turn):
            for k, value in enumerate(values):
                advantages[i, 2 * k] = value
        return advantages


@pytest.mark.parametrize("discount", [1.0, 0.5])
def test_the_turn_baseline_leaves_the_gradient_unbiased_where_per_turn_normalisation_does_not(discount):
    """Exact expectations over every group of 3 episodes of a game the policy ends: the leave-one-out turn
    baseline's expected gradient equals the estimator without a baseline (at γ = 1, the policy gradient itself);
    normalising each turn by the mean and std of the episodes that reached it, the episode itself included, the
    common per-turn normalisation, points elsewhere."""
    group_size = 3
    toy = StopOrGoOn(torch.tensor([[0.2, -0.1], [0.5, 0.3], [-0.4, 0.1]], dtype=torch.float64), group_size)
    to_go = toy.by_turn(discount)
    without_baseline = toy.expected_gradient(toy.per_token(to_go))
    if discount == 1.0:
        torch.testing.assert_close(without_baseline, toy.true_gradient())

    advantages = turn_advantages(toy.rewards, toy.completion_mask, toy.env_mask, group_size, discount)
    torch.testing.assert_close(toy.expected_gradient(advantages), without_baseline, rtol=1e-9, atol=1e-12)

    normalised = []  # the biased variant, by loops: (R − mean) / std over the group's episodes at that turn
    for start in range(0, len(to_go), group_size):
        group = to_go[start : start + group_size]
        for values in group:
            normalised.append([])
            for k, value in enumerate(values):
                there = torch.tensor([other[k] for other in group if len(other) > k], dtype=torch.float64)
                spread = there.std() if len(there) > 1 else torch.tensor(0.0)
                normalised[-1].append(float((value - there.mean()) / (spread + 1e-4)))
    biased = toy.expected_gradient(toy.per_token(normalised))
    cosine = torch.nn.functional.cosine_similarity(biased.flatten(), without_baseline.flatten(), dim=0)
    assert cosine < 0.95, cosine  # not the policy gradient scaled: another direction


# --- the agents and the benchmark ----------------------------------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_grpo_with_turn_credit_trains_on_guess_number_with_turn_rewards(tiny_model_dir):
    from agents import GRPO

    settings = {"level": 1, "max_turn_tokens": 2, "turn_rewards": True, "format_reward": 0.1}
    envs = gym.make_vec("GuessNumber-v1", num_envs=8, model=tiny_model_dir, split="train", **settings)
    agent = GRPO(tiny_model_dir, envs, batch_size=8, group_size=4, minibatch_size=8, turn_credit=True, seed=0)
    agent.learn(16, progress_bar=False)  # two updates
    assert len(agent.history) == 2
    assert all(np.isfinite(h["train/policy_loss"]) and np.isfinite(h["train/grad_norm"]) for h in agent.history)
    batch = agent.collect()
    assert turn_indices(batch.env_mask).max() > 0  # several turns to credit apart
    advantages = agent._batch_advantages(batch, batch.logprobs, None)
    expected = turn_advantages(agent.task_rewards(batch), batch.completion_mask, batch.env_mask, 4)
    torch.testing.assert_close(advantages, expected)


def test_rloo_with_turn_credit_charges_each_turn_its_kl(tiny_model_dir):
    from agents import RLOO

    envs = gym.make_vec("GuessNumber-v1", num_envs=4, model=tiny_model_dir, level=1, max_turn_tokens=2)
    settings = {"batch_size": 4, "group_size": 4, "minibatch_size": 4, "kl_coef": 0.5}
    agent = RLOO(tiny_model_dir, envs, turn_credit=True, turn_discount=0.9, **settings)
    batch = agent.collect()
    mask = batch.completion_mask.float()
    ref = batch.logprobs - 0.2 * torch.arange(mask.shape[1]) / mask.shape[1]  # a KL that differs between turns
    advantages = agent._batch_advantages(batch, batch.logprobs, ref)
    kl = (batch.logprobs - ref) * mask  # RLOO's k1
    expected = turn_advantages(agent.task_rewards(batch) - 0.5 * kl, batch.completion_mask, batch.env_mask, 4, 0.9)
    torch.testing.assert_close(advantages, expected)
    assert (advantages != 0).any()
    plain = RLOO(tiny_model_dir, envs, **settings)._batch_advantages(
        batch, batch.logprobs, ref
    )  # without turn_credit every token of an episode gets the episode's advantage
    torch.testing.assert_close(plain, plain[:, :1] * mask)


def test_a_checkpoint_written_before_turn_credit_resumes_at_its_defaults(tiny_model_dir):
    from agents import GRPO

    envs = gym.make_vec("GuessNumber-v1", num_envs=4, model=tiny_model_dir, level=1)
    agent = GRPO(tiny_model_dir, envs, batch_size=4, group_size=4, minibatch_size=4)
    older = {k: v for k, v in dataclasses.asdict(agent.config).items() if k not in ("turn_credit", "turn_discount")}
    state = {"algo": "grpo", "model": agent.model_name, "config": older}
    agent._check_same_run(state, Path("older"))  # it ran with what are now the defaults
    agent.config.turn_credit = True
    with pytest.raises(ValueError, match="differing in turn_credit"):
        agent._check_same_run(state, Path("older"))


def test_bench_sends_turn_rewards_to_the_training_env_only(tiny_model_dir):
    from agents.bench.algorithms import ALGORITHMS, Cell
    from agents.bench.cli import parse_sets
    from agents.bench.hparams import hparams_for

    extra = parse_sets(["grpo.turn_rewards=true", "grpo.turn_credit=true"])["grpo"]
    hparams = hparams_for("guess-number", "grpo", quick=True, extra=extra)
    cell = Cell(guess_number.TASK, 1, "grpo", 0, tiny_model_dir, hparams)
    trained = ALGORITHMS["grpo"](cell)
    assert trained.agent.envs.episodes.turn_rewards == 1.0 and trained.agent.config.turn_credit is True
    test = cell.test_set(4)
    assert test.envs().episodes.turn_rewards == 0.0
    trained.close()
    test.close()
