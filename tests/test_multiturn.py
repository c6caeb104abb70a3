"""Multi-turn envs (textgym.envs.conversation): the observation is the chat template of the transcript token for token,
the agent mask covers exactly the agent's tokens, the scripted solvers score the optimum, the vector env equals
N single envs, and bad input gets clear errors that leave the env usable."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from test_vector import assert_same_results

import textgym  # noqa: F401  (registers the envs)
from textgym.envs import guess_number, twenty_questions, word_guess

MULTI_TURN_TASKS = [guess_number.TASK, twenty_questions.TASK, word_guess.TASK]


def template_ids(tokenizer, messages):
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


def play_solver(env, task, level, seed=0, prompt=None, turn_limit=None):
    """Play the task's scripted solver; check the observation and agent mask after every turn. Return the last info."""
    episodes = env.unwrapped.episodes
    tokenizer = env.unwrapped.tokenizer
    obs, info = env.reset(seed=seed, options=None if prompt is None else {"prompt": prompt})
    agent_columns: list[int] = []
    while True:
        turn = task.solver(episodes.transcript(0), level)
        actions = tokenizer(turn, add_special_tokens=False)["input_ids"]
        if turn_limit is None:
            actions = [*actions, episodes.end_of_turn]
        for action in actions:
            agent_columns.append(int(np.flatnonzero(obs["attention_mask"])[-1]) + 1)  # the next free column
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                return info
        real = obs["attention_mask"] == 1
        assert obs["input_ids"][real].tolist() == template_ids(tokenizer, episodes.transcript(0))
        assert np.flatnonzero(obs["agent_mask"]).tolist() == agent_columns
        assert not (obs["agent_mask"] & ~real).any()


@pytest.mark.parametrize("task", MULTI_TURN_TASKS, ids=lambda task: task.name)
def test_observation_is_the_chat_template_of_the_transcript_and_the_solver_scores_the_optimum(tiny_model_dir, task):
    for level in task.levels:
        env = gym.make(task.env_id, model=tiny_model_dir, split="test", level=level)
        for seed in range(3):
            info = play_solver(env, task, level, seed)
            assert info["outcome"] == "solved"
            assert task.normalized(info["gold_score"], level) == pytest.approx(100.0)
            assert info["transcript"][0]["content"] == info["prompt"]


def test_a_turn_cut_at_its_token_limit_is_closed_by_the_env(tiny_model_dir):
    task = guess_number.TASK
    env = gym.make(task.env_id, model=tiny_model_dir, level=2, max_turn_tokens=1)
    info = play_solver(env, task, 2, turn_limit=1)  # single-token numbers: every turn hits the limit
    assert info["outcome"] == "solved" and info["gold_score"] == 1.0


@pytest.mark.parametrize(
    ("turn", "read"),
    [
        ("3", True),
        ("My guess is 3.", True),  # prose: the one number of the turn is the guess
        ("3, I say 3!", True),  # the same number twice is still one
        ("2 or 3", False),  # two different numbers: no guess, the partner does not choose
        ("Game 12: 3", False),
        ("3.5", False),  # not a whole number
        ("x3 and y3", False),  # digits glued to letters are no number
        ("17", False),  # out of range
        ("three", False),
    ],
)
def test_guess_number_reads_the_one_number_of_a_turn(turn, read):
    reply = guess_number.GuessNumberGame(16).respond(3, [turn])
    assert (reply.text, reply.valid, reply.outcome) == (
        ("correct", True, "solved") if read else ("a number from 1 to 16, please", False, None)
    )


@pytest.mark.parametrize(
    ("turn", "reply"),
    [
        ("My guess: cat!", "correct"),  # prose: the one listed word of the turn is the guess
        ("pig", "- - -. Your next guess?"),
        ("The cat, the CAT.", "correct"),  # the same word twice, any case
        ("cat or dog", "one word a turn. Your next guess?"),  # two listed words: no guess, no choosing for it
        ("kitten", "not in the list. Your next guess?"),
        ("cow", "not in the list. Your next guess?"),  # a word of the length, but not of this game's list
        ("xyz", "not in the list. Your next guess?"),
    ],
)
def test_word_guess_reads_the_one_listed_word_of_a_turn(turn, reply):
    answer = word_guess.WordGuessGame().respond(("cat", ("cat", "dog", "pig")), [turn])
    assert answer.text == reply and answer.valid == (not reply.startswith(("one word a turn", "not in the list")))
    assert answer.score == (1.0 if reply == "correct" else 0.0)


@pytest.mark.parametrize("task", MULTI_TURN_TASKS, ids=lambda task: task.name)
def test_uniform_tokens_still_score_about_nothing(task):
    """The lenient partners must not pay noise: uniform tokens of the embedded model's vocabulary (the benchmark's
    random policy) rarely write a readable turn and never win, so random still defines 0. (Twenty questions' attribute
    patterns match word pieces: about 5% of its random turns are read as questions, as before the partners read
    prose.)"""
    # format_reward=1 counts the readable turns: an episode's score less its gold score
    envs = gym.make_vec(task.env_id, num_envs=50, split="test", level=task.default_level, format_reward=1.0)
    envs.reset(seed=0)
    rng, golds, readable, turns = np.random.default_rng(0), [], 0, 0
    while len(golds) < 100:
        *_, terminated, truncated, infos = envs.step(rng.integers(envs.single_action_space.n, size=50))
        for i in np.flatnonzero(terminated | truncated):
            golds.append(infos["gold_score"][i])
            readable += infos["score"][i] - infos["gold_score"][i]
            turns += infos["turns"][i]
    assert np.mean(golds) < 0.02 and readable / turns < 0.1, (np.mean(golds), readable / turns)


def test_random_tokens_score_nothing_and_lose_at_the_turn_limit(tiny_model_dir):
    env = gym.make("GuessNumber-v1", model=tiny_model_dir, level=3, max_turn_tokens=3)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps = 0
    while True:
        *_, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
        if terminated or truncated:
            break
    assert terminated and not truncated and info["outcome"] == "lost" and info["gold_score"] == 0.0
    assert info["turns"] == env.unwrapped.episodes.max_turns and steps <= 3 * info["turns"]


def test_guess_number_rewards_and_format_reward(tiny_model_dir):
    env = gym.make("GuessNumber-v1", model=tiny_model_dir, level=1, format_reward=0.1)
    eot = env.unwrapped.episodes.end_of_turn
    tokenizer = env.unwrapped.tokenizer
    env.reset(options={"prompt": next(p for p, s in env.unwrapped.episodes.instances.items() if s == 4)})
    replies = []
    for guess in ["no idea", "2", "9", "4"]:
        for action in [*tokenizer(guess, add_special_tokens=False)["input_ids"], eot]:
            _, reward, terminated, _, info = env.step(action)
        replies.append((info["reply"], reward))
    assert replies == [
        ("a number from 1 to 4, please", 0.0),
        ("higher. Your next guess?", 0.1),
        ("a number from 1 to 4, please", 0.0),
        ("correct", pytest.approx(0.1 + 3 / 4)),  # found at turn 4, binary search's worst case is 3
    ]
    assert terminated and info["gold_score"] == pytest.approx(0.75) and info["score"] == pytest.approx(0.95)


def random_turn_actions(rng, env, n):
    """Mostly turn-ending and number tokens, so that episodes end at different steps (some solved)."""
    eot = env.unwrapped.episodes.end_of_turn
    tokenizer = env.unwrapped.tokenizer
    useful = [eot, *(tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 5))]
    return np.array([rng.choice(useful) if rng.random() < 0.8 else rng.integers(50, 400) for _ in range(n)])


@pytest.mark.parametrize("mode", list(AutoresetMode))
@pytest.mark.parametrize("task", MULTI_TURN_TASKS, ids=lambda task: task.name)
def test_vector_env_equals_sync_vector_env_of_single_envs(tiny_model_dir, task, mode):
    n, settings = 3, {"model": tiny_model_dir, "level": 1, "max_turn_tokens": 3}
    mine = gym.make_vec(task.env_id, num_envs=n, autoreset_mode=mode, **settings)
    reference = SyncVectorEnv([lambda: gym.make(task.env_id, **settings) for _ in range(n)], autoreset_mode=mode)
    assert mine.single_observation_space == reference.single_observation_space
    assert_same_results(mine.reset(seed=7), reference.reset(seed=7))
    single = gym.make(task.env_id, **settings)
    rng = np.random.default_rng(0)
    ended = []  # the final infos' outcomes
    for _ in range(120):
        actions = random_turn_actions(rng, single, n)
        result = mine.step(actions)
        assert_same_results(result, reference.step(actions))
        done = result[2] | result[3]
        if done.any():  # same-step autoreset puts the final infos apart
            final = result[4]["final_info"] if mode == AutoresetMode.SAME_STEP else result[4]
            ended += final["outcome"][done].tolist()
        if mode == AutoresetMode.DISABLED and done.any():
            options = {"reset_mask": done}
            assert_same_results(mine.reset(options=dict(options)), reference.reset(options=dict(options)))
    assert len(ended) > 10 and "lost" in ended
    if task.name == "guess-number":
        assert "solved" in ended  # some solved (by the number tokens among the actions), some lost


def test_bad_input_gets_clear_errors_and_leaves_the_env_usable(tiny_model_dir):
    settings = {"model": tiny_model_dir, "level": 1}
    with pytest.raises(ValueError, match="max_turns"):
        gym.make("GuessNumber-v1", max_turns=0, **settings)
    with pytest.raises(ValueError, match="do not take"):
        gym.make("GuessNumber-v1", stop_token_ids=[1], **settings)
    with pytest.raises(ValueError, match="sets prompts itself"):
        gym.make("GuessNumber-v1", prompts=["hi"], **settings)
    with pytest.raises(ValueError, match=r"has levels \[1, 2, 3, 4\], got 9"):
        gym.make("GuessNumber-v1", model=tiny_model_dir, level=9)
    env = gym.make("GuessNumber-v1", **settings)
    eot = env.unwrapped.episodes.end_of_turn
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not the opening of one of this task's instances"):
        env.reset(options={"prompt": "Guess my number"})  # the episode in progress goes on
    solved = None
    for guess in "1234":
        for action in [*env.unwrapped.tokenizer(guess, add_special_tokens=False)["input_ids"], eot]:
            _, _, solved, _, _ = env.step(action)
        if solved:
            break
    assert solved
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(eot)
    obs, _ = env.reset(seed=1)  # still usable
    assert obs["agent_mask"].sum() == 0


def test_a_reply_that_does_not_fit_truncates_the_episode(tiny_model_dir):
    env = gym.make("GuessNumber-v1", model=tiny_model_dir, level=1, max_new_tokens=6)
    eot = env.unwrapped.episodes.end_of_turn
    env.reset(options={"prompt": next(p for p, s in env.unwrapped.episodes.instances.items() if s == 4)})
    two = env.unwrapped.tokenizer("2", add_special_tokens=False)["input_ids"]
    env.step(two[0])
    obs, _, terminated, truncated, info = env.step(eot)
    assert truncated and not terminated
    assert info["transcript"][-1] == {"role": "user", "content": "higher. Your next guess?"}  # not in the obs
    width = env.unwrapped.episodes.max_prompt_tokens
    assert obs["attention_mask"].sum() == obs["attention_mask"][:width].sum() + 2


def runs(mask):
    """The maximal runs of columns where ``mask`` is 1, as lists of column indices."""
    out: list[list[int]] = []
    for column in np.flatnonzero(mask):
        if out and out[-1][-1] == column - 1:
            out[-1].append(int(column))
        else:
            out.append([int(column)])
    return out


@pytest.mark.parametrize("mode", list(AutoresetMode))
def test_rollout_ingests_replies_and_its_logprobs_equal_a_full_forward_pass(
    tiny_model_dir, tiny_policy, teacher_forced, mode
):
    from agents import RolloutCollector, SamplingConfig

    envs = gym.make_vec(
        "GuessNumber-v1", num_envs=3, model=tiny_model_dir, level=1, max_turn_tokens=3, autoreset_mode=mode
    )
    collector = RolloutCollector(tiny_policy, envs, SamplingConfig(temperature=0.7), seed=0)
    batch = collector.collect(8)
    assert batch.env_mask.sum() > 0 and not (batch.env_mask & batch.completion_mask).any()
    torch.testing.assert_close(batch.logprobs, teacher_forced(tiny_policy, batch, 0.7), atol=1e-4, rtol=1e-4)
    assert (batch.logprobs[batch.completion_mask == 0] == 0).all() and (batch.rewards[batch.env_mask == 1] == 0).all()
    # The agent mask covers exactly the sampled tokens: its runs are the agent's turns of the transcript.
    tokenizer, eot = envs.tokenizer, envs.episodes.end_of_turn
    for i, info in enumerate(batch.infos):
        turns = [m["content"] for m in info["transcript"][1:] if m["role"] == "assistant"]
        sampled = [batch.completion_ids[i, run].tolist() for run in runs(batch.completion_mask[i].cpu().numpy())]
        assert len(sampled) == len(turns) == info["turns"]
        for tokens, text in zip(sampled, turns):
            assert tokenizer.decode([t for t in tokens if t != eot] if tokens[-1] == eot else tokens) == text
        replies = [batch.completion_ids[i, run].tolist() for run in runs(batch.env_mask[i].cpu().numpy())]
        assert len(replies) == len(turns) - 1  # the last reply ends the episode and is not in the context
        for tokens, reply in zip(replies, info["transcript"][2::2]):
            assert reply["content"] in tokenizer.decode(tokens)
    assert (batch.returns.cpu().numpy() == [info["score"] for info in batch.infos]).all()


def test_gae_runs_across_turns_over_the_env_tokens():
    from agents.ppo import gae

    rewards = torch.tensor([[0.0, 0.5, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1, 0, 0, 1, 0]])  # two agent tokens, two env tokens, one agent token, padding
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    steps = mask[0] == 1
    expected, _ = gae(rewards[:, steps], values[:, steps], torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages[:, steps], expected)  # as if the env's tokens were not there
    assert advantages[:, ~steps].abs().sum() == 0 and returns[:, ~steps].abs().sum() == 0


def mean_test_gold(policy, model_dir, **settings):
    from agents import RolloutCollector

    envs = gym.make_vec("GuessNumber-v1", num_envs=8, model=model_dir, split="test", **settings)
    batch = RolloutCollector(policy, envs, seed=1).collect_prompts(list(envs.prompts[:64]))
    return np.mean([info["gold_score"] for info in batch.infos])


@pytest.mark.usefixtures("one_thread")
def test_grpo_learns_guess_the_number_at_the_easiest_level(tiny_model_dir):
    """N = 4 with one-token turns and a small reward for a number in range: the random tiny model must first find
    the digit tokens, which it does in about 20 s on one core. Measured with these settings: test gold score 0.02
    before, 0.54 after (a uniform guesser among 1-4 would score 0.73, binary search 1)."""
    from agents import GRPO

    settings = {"level": 1, "max_turn_tokens": 1, "format_reward": 0.1}
    envs = gym.make_vec("GuessNumber-v1", num_envs=8, model=tiny_model_dir, split="train", **settings)
    agent = GRPO(tiny_model_dir, envs, batch_size=64, minibatch_size=32, learning_rate=3e-3, kl_coef=0.0, seed=0)
    before = mean_test_gold(agent.policy.generator_model, tiny_model_dir, **settings)
    agent.learn(1280, progress_bar=False)
    after = mean_test_gold(agent.policy.generator_model, tiny_model_dir, **settings)
    assert before < 0.1 and after > 0.3, (before, after)


@pytest.mark.parametrize("algo", ["PPO", "GRPO", "RLOO"])
def test_every_agent_trains_on_a_multi_turn_env(tiny_model_dir, algo):
    import agents

    envs = gym.make_vec("GuessNumber-v1", num_envs=4, model=tiny_model_dir, level=1, max_turn_tokens=2)
    extra = {} if algo == "PPO" else {"group_size": 4}
    agent = getattr(agents, algo)(tiny_model_dir, envs, batch_size=8, minibatch_size=4, **extra)
    agent.learn(8, progress_bar=False)
    metrics = agent.history[-1]
    assert np.isfinite(metrics["train/policy_loss"]) and np.isfinite(metrics["train/kl_ref"])
    assert metrics["train/sampler_logprob_error"] < 1e-4  # the training pass scores the tokens that were sampled
    if algo != "PPO":  # a group is one instance (one opening, so one hidden number) played group_size times
        groups = np.array(agent.collect().prompts).reshape(-1, 4)
        assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 2


@pytest.mark.parametrize("algorithm", ["grpo", "sb3-a2c"])
def test_bench_trains_on_the_format_reward_it_is_given(tiny_model_dir, algorithm):
    from agents.bench.algorithms import ALGORITHMS, Cell
    from agents.bench.hparams import hparams_for

    hparams = hparams_for("guess-number", algorithm, quick=True, extra={"format_reward": 0.25})
    trained = ALGORITHMS[algorithm](Cell(guess_number.TASK, 1, algorithm, 0, tiny_model_dir, hparams))
    envs = trained.agent.envs if algorithm == "grpo" else trained.model.get_env()
    episodes = envs.episodes if algorithm == "grpo" else envs.get_attr("episodes")[0]
    assert episodes.format_reward == 0.25
    trained.close()


def test_sb3_policy_reads_the_replies_from_the_observation(tiny_model_dir):
    """The SB3 LM policy's KV-cached features equal a full forward pass over the conversation; the env's replies
    join its cache in one pass (a row is re-encoded only when a new episode starts), and SB3's PPO trains."""
    from stable_baselines3 import PPO

    from agents.sb3 import LMActorCriticPolicy
    from agents.sb3_vec_env import TextGenSB3VecEnv

    venv = TextGenSB3VecEnv("GuessNumber-v1", num_envs=3, model=tiny_model_dir, level=1, max_turn_tokens=2)
    venv.seed(0)
    model = PPO(LMActorCriticPolicy, venv, policy_kwargs={"model": tiny_model_dir}, n_steps=8, batch_size=12)
    policy, single = model.policy, gym.make("GuessNumber-v1", model=tiny_model_dir, level=1)
    extractor = policy.features_extractor
    obs, rng = venv.reset(), np.random.default_rng(0)
    policy.set_training_mode(False)
    encoded, replies, starts = [], 0, 0
    with torch.no_grad():
        extractor(policy.obs_to_tensor(obs)[0])  # builds the cache; count the rows encoded from scratch from now on
    encode_rows = extractor._cache.encode_rows
    extractor._cache.encode_rows = lambda rows, *a: (encoded.append(int(rows.sum())), encode_rows(rows, *a))
    for _ in range(30):
        tensors, _ = policy.obs_to_tensor(obs)
        with torch.no_grad():
            cached = extractor(tensors)
        with torch.enable_grad():
            full = extractor(tensors)
        torch.testing.assert_close(cached, full.detach(), atol=1e-5, rtol=1e-5)
        before = obs["attention_mask"].sum(1)
        obs, _, dones, _ = venv.step(random_turn_actions(rng, single, 3))
        replies += int(((obs["attention_mask"].sum(1) - before > 1) & ~dones).sum())
        starts += int(dones.sum())
    assert replies > 5 and starts > 0 and sum(encoded) == starts
    policy.set_training_mode(True)
    model.learn(24)


def play_turns(env, turns, prompt):
    """Reset to ``prompt`` and play whole turns; return ``(reply, reward)`` per turn and the last step's result."""
    eot, tokenizer = env.unwrapped.episodes.end_of_turn, env.unwrapped.tokenizer
    env.reset(options={"prompt": prompt})
    replies = []
    for turn in turns:
        for action in [*tokenizer(turn, add_special_tokens=False)["input_ids"], eot]:
            result = env.step(action)
        replies.append((result[-1]["reply"], result[1]))
    return replies, result


def test_twenty_questions_answers_by_the_table(tiny_model_dir):
    env = gym.make("TwentyQuestions-v1", model=tiny_model_dir, level=1, format_reward=0.1)
    prompt, (_, candidates) = next((p, s) for p, s in env.unwrapped.episodes.instances.items() if s[0] == "whale")
    turns = ["Is it a mammal?", "Can it fly?", "Is it blue?", "Is it big and metal?", "Is it a dog?", "Is it a whale?"]
    replies, (*_, terminated, _, info) = play_turns(env, turns, prompt)
    t_star = twenty_questions.solver_turns("whale", candidates)
    assert replies == [
        ("yes. Your next question?", 0.1),
        ("no. Your next question?", 0.1),
        ("unknown. Your next question?", 0.0),  # about no attribute, or about two: unanswerable, no reward
        ("unknown. Your next question?", 0.0),
        ("no. Your next question?", 0.1),  # a wrong guess
        ("correct", pytest.approx(0.1 + min(1, t_star / 6))),
    ]
    assert terminated and info["gold_score"] == pytest.approx(min(1, t_star / 6))


def test_a_task_table_that_fails_to_load_is_a_clear_error(tiny_model_dir, tmp_path):
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("object,alive\ndog,1\n")
    bad_row = tmp_path / "row.csv"
    bad_row.write_text(twenty_questions.TABLE_FILE.read_text().replace("dog,1,1,1", "dog,1,yes,1"))
    for path, message in [(bad_header, "header"), (bad_row, "row"), (tmp_path / "missing.csv", "Cannot read")]:
        with pytest.raises(ValueError, match=message) as caught:
            gym.make("TwentyQuestions-v1", model=tiny_model_dir, table=str(path))
        assert str(path) in str(caught.value)
    good = tmp_path / "good.csv"
    good.write_text(twenty_questions.TABLE_FILE.read_text())
    obs, _ = gym.make("TwentyQuestions-v1", model=tiny_model_dir, table=str(good)).reset(seed=0)
    assert obs["attention_mask"].sum() > 0


def test_word_guess_marks_letters_and_an_invalid_guess_earns_nothing(tiny_model_dir):
    assert word_guess.marks("eerie", "there") == "Y - Y - G"  # a repeated letter is marked as often as it occurs
    assert word_guess.marks("abbey", "kebab") == "Y Y G Y -"
    env = gym.make("WordGuess-v1", model=tiny_model_dir, level=2, format_reward=0.1)
    games = env.unwrapped.episodes.instances.items()
    prompt, (_, listed) = next((p, s) for p, s in games if s[0] == "lamp" and "lake" in s[1])
    replies, (*_, terminated, _, info) = play_turns(env, ["xyzw", "Lake", "lamp"], prompt)
    assert replies == [
        ("not in the list. Your next guess?", 0.0),
        ("G G - -. Your next guess?", 0.1),
        ("correct", pytest.approx(0.1 + info["gold_score"])),
    ]
    assert terminated and info["gold_score"] == min(1, word_guess.solver_turns("lamp", listed) / 3)


def test_twenty_questions_default_turns_leave_the_solver_room():
    for level in twenty_questions.LEVELS:
        worst = max(twenty_questions.solver_turns(o, c) for o, c in twenty_questions.instances(level).values())
        assert twenty_questions.MAX_TURNS[level] == worst + 2


def test_reference_model_scores_every_action_in_the_whole_conversation(tiny_model_dir, tiny_policy):
    """The env's reference model (KL reward, and action masks from the same log-probs) re-reads a row after the
    partner's reply: each step's ``ref_logprob`` equals a full forward pass over the observation it acted in."""
    env = gym.make("GuessNumber-v1", model=tiny_model_dir, level=1, reference_model=tiny_model_dir, kl_coef=0.5)
    episodes, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
    obs, _ = env.reset(seed=0)
    done, steps = False, 0
    while not done:
        turn = guess_number.TASK.solver(episodes.transcript(0), 1)
        for action in [*tokenizer(turn, add_special_tokens=False)["input_ids"], episodes.end_of_turn]:
            context = torch.as_tensor(obs["input_ids"][obs["attention_mask"] == 1])[None]
            with torch.no_grad():
                expected = torch.log_softmax(tiny_policy(context).logits[0, -1].float(), -1)[action].item()
            obs, reward, terminated, truncated, info = env.step(action)
            assert info["ref_logprob"] == pytest.approx(expected, abs=1e-4)
            task_reward = reward - 0.5 * info["ref_logprob"]
            assert task_reward == pytest.approx(info.get("score", 0.0) if terminated else 0.0, abs=1e-6)
            steps += 1
            done = terminated or truncated
            if done:
                break
    assert terminated and info["gold_score"] == 1.0 and steps > 2
