"""GuessNumber: find a hidden number from 1 to N, the env answering each guess with higher, lower or correct."""

from __future__ import annotations

import math
import re
from functools import cache, lru_cache

import numpy as np

from textgym.envs.conversation import (
    ConversationEnv,
    Reply,
    answer_of,
    ask_next,
    conversation_task,
    progress,
    the_one,
)
from textgym.envs.vector import TextGenVectorEnv

LEVELS = {1: 4, 2: 16, 3: 64, 4: 256}
"""GuessNumber-v1's levels: the numbers go from 1 to ``LEVELS[level]``."""
GAMES_PER_LEVEL = 500
"""Instances per level (before the train/test split): game ``k`` hides a number drawn for it."""
NUMBER = re.compile(r"(?<![^\W\d_])\d+(?:[.,]\d+)*(?![^\W\d_])")
"""A number written in a turn: digits not glued to letters (``x2`` is none), decimals and digit groups whole
(``2.5`` and ``1,000`` are one number each, neither a whole number from 1 to N)."""


def optimal_turns(n: int) -> int:
    """The turns binary search needs at worst to find a number from 1 to ``n``: ``⌈log₂(n + 1)⌉``, its last guess
    being the one answered "correct"."""
    return math.ceil(math.log2(n + 1))


def read_guess(turn: str, n: int) -> int | None:
    """The number a turn guesses: its one number, if a whole number from 1 to ``n``; else ``None`` (no guess)."""
    number = the_one(NUMBER.findall(turn))
    guess = int(number) if number is not None and number.isdigit() else None
    return guess if guess is not None and 1 <= guess <= n else None


@lru_cache(maxsize=1 << 14)
def interval_left(n: int, secret: int, turns: tuple[str, ...]) -> tuple[int, int]:
    """The numbers ``(low, high)`` the answers to ``turns`` leave possible: the interval the highers and lowers
    leave, ``(secret, secret)`` once a guess is correct. Memoised on the turns so that each turn of a game costs
    one step from the interval before it."""
    if not turns:
        return 1, n
    low, high = interval_left(n, secret, turns[:-1])
    guess = read_guess(turns[-1], n)
    if guess == secret:
        return secret, secret
    if guess is None:
        return low, high
    return (max(low, guess + 1), high) if guess < secret else (low, min(high, guess - 1))


class GuessNumberGame:
    """The partner: a turn that writes one number, a whole one from 1 to N, is a guess (``"My guess is 3."`` guesses
    3, as a bare ``"3"`` does), answered higher, lower or correct; a turn with no number, two different ones or a
    number out of range is no guess. Small models answer in prose; reading the one number in it lets them play
    without ever choosing between two numbers for them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def candidates_left(self, secret: int, turns: list[str]) -> int:
        """How many numbers the answers to ``turns`` leave possible (see `interval_left`)."""
        low, high = interval_left(self.n, secret, tuple(turns))
        return high - low + 1

    def respond(self, secret: int, turns: list[str]) -> Reply:
        guess = read_guess(turns[-1], self.n)
        if guess is None:
            return Reply(f"a number from 1 to {self.n}, please", valid=False)
        resolved = progress(self.candidates_left(secret, turns[:-1]), self.candidates_left(secret, turns), self.n)
        if guess == secret:
            # Solving in turn t scores min(1, t*/t): binary search, never slower than t*, scores 1 on every game.
            score = min(1.0, optimal_turns(self.n) / len(turns))
            return Reply("correct", score=score, outcome="solved", progress=resolved)
        return Reply(ask_next("higher" if guess < secret else "lower", "guess"), progress=resolved)


class GuessNumberEnv(ConversationEnv):
    """
    ## Description

    A multi-turn game. The env thinks of a whole number from 1 to N and the agent guesses it; after each guess
    the env answers ``higher``, ``lower`` or ``correct`` as the next user message of the chat (``higher. Your next
    guess?``: a reply that lets the game go on asks for the next move, see ``ask_next``). Binary search
    finds any number in ``t* = ⌈log₂(N + 1)⌉`` guesses, so the optimum is known exactly. The episode is a whole
    conversation: the agent writes its turns token by token, the env appends its replies in the chat template
    (see [textgym.envs.conversation][]).

    ## Action Space

    ``Discrete(vocab_size)``: the next token of the agent's turn (as in ``TextGen-v0``).

    ## Observation Space

    A ``Dict`` of three int64 ``Box`` arrays of shape ``(max_prompt_tokens + max_new_tokens,)``:

    | key              | content                                                                         |
    |------------------|---------------------------------------------------------------------------------|
    | `input_ids`      | the opening message in the chat template, left-padded; then the conversation     |
    | `attention_mask` | 1 where `input_ids` holds a real token, 0 on padding                             |
    | `agent_mask`     | 1 on the tokens the agent wrote, 0 on the opening, the env's replies and padding  |

    After every turn, the real tokens are exactly ``tokenizer.apply_chat_template(transcript,
    add_generation_prompt=True)``.

    ## Rewards

    0 on every step but those that end a turn. The turn that finds the number at turn ``t`` earns
    ``min(1, t*/t)``; ``format_reward`` (default 0) is added to every turn holding a number from 1 to N.
    The final ``info`` holds ``gold_score`` (the ``min(1, t*/t)``, 0 if unsolved, what benchmarks report: task
    ``guess-number``, 0 is the uniform-random policy, 100 binary search) and ``score`` (the return).

    Rewards per turn (``turn_rewards``, a weight: ``True`` is 1, the default 0 pays none): each guess also earns
    ``turn_rewards`` times its progress, the share of the game's uncertainty its answer resolved:
    ``log(before / after) / log(N)``, where ``before`` and ``after`` count the numbers the answers allow before and
    after it (a higher or lower cuts the interval, a correct guess leaves one number). A guess of binary search
    earns about ``1 / log₂(N)``; a guess outside the interval left, or a turn with no guess, earns 0; a game's
    progress sums to 1 when solved, less when lost. It is paid on the step that ends the turn, with the turn's
    other rewards; ``gold_score`` leaves it out.

    ## Starting State

    A game drawn uniformly from the level's games of the ``split``; its opening names the range and the rules, and
    shows the answer format with a short example game on 1 to 10 (without it the embedded 135M model never
    guesses).

    ## Episode End

    - A turn ends on the chat template's end-of-turn token or after ``max_turn_tokens`` tokens. A turn that writes
      exactly one number (it may repeat it), a whole number from 1 to N, is a guess, in prose or bare (``"I guess
      3."``, ``"3"``); a turn with no number, two different numbers (``"2 or 3"``), a decimal or a number out of
      range is answered with a reminder of the range and is no guess (uniform tokens almost never guess).
    - Termination: the game ends by its rules, won or lost: a correct guess (``outcome`` ``"solved"``), or
      ``max_turns`` turns without one, invalid turns included (``"lost"``: out of guesses).
    - Truncation: the conversation reaching ``max_new_tokens`` tokens first, a time limit outside the game
      (``outcome`` ``None``): a turn cut by it, or a reply that does not fit with a token of the next turn.

    Each turn-ending step's info holds ``turn`` and ``reply``; the final info also holds ``transcript`` (chat
    messages), ``turns``, ``outcome`` (``"solved"``, ``"lost"`` or ``None``, as above), ``prompt`` and
    ``completion``.

    ## Arguments

    ```python
    env = gym.make("GuessNumber-v1", split="train", level=2, format_reward=0.1, turn_rewards=1.0)
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `level` | int or None | `None` | `1` to `4`: numbers up to 4, 16, 64 or 256 (`LEVELS`); `None`: 1 |
    | `max_turns` | int or None | `None` | guesses before the game is lost; `None`: `2·t*` |
    | `max_turn_tokens` | int or None | `None` | the longest turn, in tokens; `None`: 8 |
    | `format_reward` | float | `0.0` | shaping reward for each valid guess (not in the gold score) |
    | `turn_rewards` | float | `0.0` | weight of each guess's progress reward (Rewards; not in the gold score) |
    | `max_new_tokens` | int or None | `None` | the conversation's token budget (below); `None`: see below |
    | `max_prompt_tokens` | int or None | `None` | the opening's width; `None`: the longest opening of the level |

    - ``max_new_tokens`` counts every token after the opening, the agent's and the env's replies'; ``None`` is
      ``max_turns · (max_turn_tokens + 32)``.
    - ``max_prompt_tokens``: ``None`` measures the longest opening of both splits, so that a task's train and
      test envs have the same spaces.

    The other arguments are [TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s, with its defaults (``model``,
    ``split``, ``prompt_truncation``, ``reference_model``, ``kl_coef``, ``action_mask``, ...). The task sets
    ``prompts``, ``reward_model``, ``reward_model_kwargs``, ``gold_model``, ``gold_model_kwargs`` and
    ``info_models`` itself (its partner scores the turns), and ``chat_template`` and ``stop_token_ids`` are not
    taken (the chat template is always on, a turn ends on its end-of-turn token): passing one raises ``ValueError``.
    The other multi-turn tasks, [TwentyQuestionsEnv][textgym.envs.twenty_questions.TwentyQuestionsEnv] and
    [WordGuessEnv][textgym.envs.word_guess.WordGuessEnv], take and refuse the same shared arguments.

    ## Version History

    * v0: Initial version; before any trained result, the opening gained its example game, the partner came to
      read the one number of a turn written in prose and to ask for the next guess (the embedded model's
      zero-shot score was 0).
    * v1: A game out of guesses (``max_turns``) terminates with ``outcome`` ``"lost"``; in v0 it was truncated
      with ``outcome`` ``None``. Only ``max_new_tokens`` truncates now. Observations and rewards are unchanged.
    """

    env_id = "GuessNumber-v1"
    levels = tuple(LEVELS)

    @classmethod
    def setup(cls, level: int) -> tuple[GuessNumberGame, dict[str, int], int]:
        return GuessNumberGame(LEVELS[level]), instances(level), 2 * optimal_turns(LEVELS[level])


class GuessNumberVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("GuessNumber-v1", num_envs=N)``: see
    [GuessNumberEnv][textgym.envs.guess_number.GuessNumberEnv]."""

    env_class = GuessNumberEnv


def opening(game: int, n: int) -> str:
    return (
        f"Game {game}: I am thinking of a whole number from 1 to {n}. Guess it: reply with one number, and I will "
        "answer higher, lower or correct. For example, if my number were 7 of 1 to 10:\n"
        "You: 5\nMe: higher\nYou: 8\nMe: lower\nYou: 7\nMe: correct\nYour first guess?"
    )


@cache
def instances(level: int) -> dict[str, int]:
    """Every game of ``level``: ``{opening: hidden number}``, the same on every machine (a generator seeded by
    the level draws the numbers)."""
    n = LEVELS[level]
    secrets = np.random.default_rng(2000 + level).integers(1, n + 1, size=GAMES_PER_LEVEL)
    return {opening(k, n): int(secret) for k, secret in enumerate(secrets)}


def solve(messages: list[dict[str, str]], level: int) -> str:
    """The scripted solver, binary search: the middle of the range the replies so far leave."""
    low, high = 1, LEVELS[level]
    for guess, reply in zip(messages[1::2], messages[2::2]):
        number = int(guess["content"])
        if answer_of(reply["content"]) == "higher":
            low = number + 1
        elif answer_of(reply["content"]) == "lower":
            high = number - 1
    return str((low + high) // 2)


TASK = conversation_task(
    "guess-number",
    "GuessNumber-v1",
    "find a number from 1 to N by guesses answered higher / lower (multi-turn)",
    tuple(LEVELS),
    solve,
)
