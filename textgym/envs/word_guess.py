"""WordGuess: find a secret word of a listed set, the env marking each guess's letters (Wordle's rules)."""

from __future__ import annotations

import re
from functools import cache, lru_cache

import numpy as np

from textgym.envs.concepts import load_concept_words
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

LEVELS = {1: (3, 8), 2: (4, 16), 3: (5, 32)}
"""WordGuess-v1's levels: ``(letters, listed)``, each game listing that many words of that length (drawn from the
32, 82 and 66 of ``textgym/data/concepts.txt``), the secret one of them."""
GAMES_PER_LEVEL = 500
"""Instances per level (before the train/test split)."""
WORD = re.compile(r"[a-z]+")


@cache
def words(level: int) -> tuple[str, ...]:
    """Every word of the level's length, sorted: a game lists ``LEVELS[level][1]`` of them."""
    return tuple(sorted(w for w in load_concept_words() if len(w) == LEVELS[level][0]))


def marks(guess: str, secret: str) -> str:
    """Wordle's marks, one per letter: ``G`` right place, ``Y`` elsewhere in the word (as often as it is there
    beyond the letters marked ``G``), ``-`` not in the word."""
    result = ["G" if g == s else "-" for g, s in zip(guess, secret)]
    spare = [s for g, s in zip(guess, secret) if g != s]  # the secret's letters not matched in place
    for i, g in enumerate(guess):
        if result[i] == "-" and g in spare:
            result[i] = "Y"
            spare.remove(g)
    return " ".join(result)


def next_guess(listed: tuple[str, ...], history: list[tuple[str, str]]) -> str:
    """The solver's next guess: the first listed word (alphabetically) that every ``(guess, marks)`` so far
    allows."""
    return next(w for w in listed if all(marks(g, w) == m for g, m in history))


@cache
def solver_turns(secret: str, listed: tuple[str, ...]) -> int:
    """The turns the scripted solver takes to find ``secret`` among the game's ``listed`` words."""
    history: list[tuple[str, str]] = []
    while not history or history[-1][0] != secret:
        guess = next_guess(listed, history)
        history.append((guess, marks(guess, secret)))
    return len(history)


def listed_words(turn: str, listed: tuple[str, ...]) -> list[str]:
    """The listed words a turn writes (letters a-z, any case): its guess if there is exactly one distinct."""
    return [w for w in WORD.findall(turn.lower()) if w in listed]


@lru_cache(maxsize=1 << 14)
def words_left(word: str, listed: tuple[str, ...], turns: tuple[str, ...]) -> tuple[str, ...]:
    """The listed words the marks of ``turns``' guesses leave possible: those every guess would have got the same
    marks from (only ``word`` once it is guessed: only it marks a guess all ``G``). Memoised on the turns so that
    each turn of a game costs one step from the words before it."""
    if not turns:
        return listed
    left, guess = words_left(word, listed, turns[:-1]), the_one(listed_words(turns[-1], listed))
    if guess is None:
        return left
    return tuple(w for w in left if marks(guess, w) == marks(guess, word))


class WordGuessGame:
    """The partner: the one word of the game's list a turn writes is its guess (``"My guess: cat"`` guesses cat),
    and gets its marks; a turn with no listed word is answered ``not in the list``, one with two different ones
    ``one word a turn`` (an invalid guess uses a turn and earns nothing). Small models answer in prose; reading
    the one listed word in it lets them play without ever choosing between two words for them. The secret state
    of a game is ``(secret word, listed words)``."""

    def candidates_left(self, secret: tuple[str, tuple[str, ...]], turns: list[str]) -> int:
        """How many listed words the marks of ``turns``' guesses leave possible (see `words_left`)."""
        return len(words_left(*secret, tuple(turns)))

    def respond(self, secret: tuple[str, tuple[str, ...]], turns: list[str]) -> Reply:
        word, listed = secret
        named = listed_words(turns[-1], listed)
        guess = the_one(named)
        if guess is None:
            return Reply(ask_next("one word a turn" if named else "not in the list", "guess"), valid=False)
        resolved = progress(self.candidates_left(secret, turns[:-1]), self.candidates_left(secret, turns), len(listed))
        if guess == word:
            score = min(1.0, solver_turns(word, listed) / len(turns))
            return Reply("correct", score=score, outcome="solved", progress=resolved)
        return Reply(ask_next(marks(guess, word), "guess"), progress=resolved)


class WordGuessEnv(ConversationEnv):
    """
    ## Description

    A multi-turn word game with Wordle's rules. The env picks a secret word from a list it gives in its opening
    (8, 16 or 32 words of 3, 4 or 5 letters by level, drawn from the shipped ``textgym/data/concepts.txt``); the
    agent guesses a word of the list each turn, and the env marks each letter of the guess: ``G`` right letter in
    the right place, ``Y`` in the word elsewhere, ``-`` not in it (e.g. ``G - Y -. Your next guess?``), or says
    ``correct``. A guess that is not a word of the list is answered ``not in the list``, and a turn naming two
    different listed words ``one word a turn``: either uses a turn and never earns partial credit.

    ## Action Space

    ``Discrete(vocab_size)``: the next token of the agent's turn (as in ``TextGen-v0``).

    ## Observation Space

    As in ``GuessNumber-v1``: ``input_ids``, ``attention_mask`` and ``agent_mask`` (1 on the agent's tokens),
    int64 arrays of shape ``(max_prompt_tokens + max_new_tokens,)``; after every turn the real tokens are the
    chat template of the transcript ([textgym.envs.conversation][]).

    ## Rewards

    0 on every step but those that end a turn. Finding the word at turn ``t`` earns ``min(1, t*/t)``, ``t*``
    being the turns the scripted solver (the first word of the list every mark so far allows) takes for that
    word, so the solver scores 1 on every game; ``format_reward`` (default 0) is added to every valid guess.
    ``gold_score`` (what benchmarks report, task ``word-guess``: 0 is the uniform-random policy, 100 the solver)
    is the ``min(1, t*/t)``, 0 if unsolved; ``score`` is the return.

    Rewards per turn (``turn_rewards``, a weight: ``True`` is 1, the default 0 pays none): each valid guess also
    earns ``turn_rewards`` times its progress, the share of the game's uncertainty its marks resolved:
    ``log(before / after) / log(n)`` for ``n`` words listed, where ``before`` and ``after`` count the listed words
    the marks so far allow before and after it (those that would have given every guess the same marks; the
    right word leaves one). Marks that confirm letters in place (``G``), in the word (``Y``) or out of it (``-``)
    all count, as far as they rule listed words out; a guess the earlier marks already ruled out still earns what
    its own marks rule out, an invalid guess 0; a game's progress sums to 1 when solved, less when lost. It is
    paid on the step that ends the turn; ``gold_score`` leaves it out.

    ## Starting State

    A game drawn uniformly from the level's games of the ``split``: its listed words and the secret among them;
    the opening ends with a short example game (a listed word guessed, its marks, then the example's secret, the
    last listed word).

    ## Episode End

    - A turn ends on the chat template's end-of-turn token or after ``max_turn_tokens`` tokens; the one listed
      word it writes (letters a-z, any case, in prose or alone) is the guess.
    - Termination: the game ends by its rules, won or lost: the right word (``outcome`` ``"solved"``), or
      ``max_turns`` (8) guesses without it, invalid ones included (``"lost"``).
    - Truncation: the conversation reaching ``max_new_tokens`` first, a time limit outside the game
      (``outcome`` ``None``).

    The infos are those of ``GuessNumber-v1`` (``outcome``: ``"solved"``, ``"lost"`` or ``None``).

    ## Arguments

    ```python
    env = gym.make("WordGuess-v1", split="train", level=2)
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `level` | int or None | `None` | `1` to `3`: 8 words of 3 letters, 16 of 4, 32 of 5 (`LEVELS`); `None`: 1 |
    | `max_turns` | int or None | `None` | guesses before the game is lost; `None`: 8 |
    | `max_turn_tokens` | int or None | `None` | the longest turn, in tokens; `None`: 8 |
    | `format_reward` | float | `0.0` | shaping reward for each valid guess (not in the gold score) |
    | `turn_rewards` | float | `0.0` | weight of each guess's progress reward (Rewards; not in the gold score) |
    | `max_new_tokens` | int or None | `None` | the conversation's token budget (below); `None`: see below |
    | `max_prompt_tokens` | int or None | `None` | the opening's width; `None`: the longest opening of the level |

    The other arguments, and those the task sets itself, are as for
    [GuessNumberEnv][textgym.envs.guess_number.GuessNumberEnv] ([TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s,
    with its defaults).

    ## Version History

    * v0: Initial version; before any trained result, the opening gained its example game and the partner came
      to read the one listed word of a turn written in prose, not only a turn's first word, and to ask for the
      next guess (the embedded model's zero-shot score was 0); then a game came to list 8, 16 or 32 words drawn
      from those of its length (it had listed all 32, 82 or 66), the zero-shot score being 0 still.
    * v1: A game out of guesses (``max_turns``) terminates with ``outcome`` ``"lost"``; in v0 it was truncated
      with ``outcome`` ``None``. Only ``max_new_tokens`` truncates now. Observations and rewards are unchanged.
    """

    env_id = "WordGuess-v1"
    levels = tuple(LEVELS)

    @classmethod
    def setup(cls, level: int) -> tuple[WordGuessGame, dict[str, tuple[str, tuple[str, ...]]], int]:
        return WordGuessGame(), instances(level), 8


class WordGuessVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("WordGuess-v1", num_envs=N)``: see [WordGuessEnv][textgym.envs.word_guess.WordGuessEnv]."""

    env_class = WordGuessEnv


def opening(game: int, listed: tuple[str, ...]) -> str:
    secret = listed[-1]  # the example's: a listed word, so copying the example is a valid move
    guess = max(listed[:-1], key=lambda w: marks(w, secret).count("G"))  # a first guess showing a G if one can
    return (
        f"Game {game}: guess my secret {len(secret)}-letter word, one of: {', '.join(listed)}. Reply with one "
        "word a turn. I mark each letter: G right place, Y in the word elsewhere, - not in the word. For example, "
        f"if my word were {secret}:\nYou: {guess}\nMe: {marks(guess, secret)}\nYou: {secret}\nMe: correct\n"
        "Your first guess?"
    )


@cache
def instances(level: int) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every game of ``level``: ``{opening: (secret word, listed words)}``, the same on every machine."""
    rng, games = np.random.default_rng(4000 + level), {}
    for k in range(GAMES_PER_LEVEL):
        listed = tuple(sorted(str(w) for w in rng.choice(words(level), size=LEVELS[level][1], replace=False)))
        games[opening(k, listed)] = (str(rng.choice(listed)), listed)
    return games


def solve(messages: list[dict[str, str]], level: int) -> str:
    """The scripted solver (`next_guess`), reading the listed words from the opening."""
    listed = tuple(re.search(r"one of: (.*?)\. Reply", messages[0]["content"]).group(1).split(", "))
    history = [(g["content"], answer_of(m["content"])) for g, m in zip(messages[1::2], messages[2::2])]
    return next_guess(listed, history)


TASK = conversation_task(
    "word-guess",
    "WordGuess-v1",
    "find a secret word of a list from Wordle-style letter marks (multi-turn)",
    tuple(LEVELS),
    solve,
)
