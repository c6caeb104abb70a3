"""TwentyQuestions: find the object the env thinks of by yes/no questions about its attributes, then name it."""

from __future__ import annotations

import csv
import os
import re
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from textgym.envs.conversation import ConversationEnv, Reply, answer_of, ask_next, conversation_task, progress
from textgym.envs.vector import TextGenVectorEnv

LEVELS = {1: 8, 2: 16, 3: 32, 4: 64}
"""TwentyQuestions-v1's levels: how many candidate objects a game lists (drawn from the table's 64)."""
MAX_TURNS = {1: 8, 2: 9, 3: 11, 4: 12}
"""Each level's default ``max_turns``: two more than the scripted solver needs at worst on the shipped table."""
GAMES_PER_LEVEL = 500
"""Instances per level (before the train/test split)."""
TABLE_FILE = Path(__file__).resolve().parent.parent / "data" / "twenty_questions.csv"
ATTRIBUTES = {
    "alive": ("Is it alive?", r"\b(alive|living thing)"),
    "animal": ("Is it an animal?", r"\banimal"),
    "mammal": ("Is it a mammal?", r"\bmammal"),
    "bird": ("Is it a bird?", r"\bbird"),
    "flies": ("Can it fly?", r"\bfl(y|ies|ying)\b"),
    "water": ("Does it live in water?", r"\b(water|swim)"),
    "big": ("Is it bigger than a person?", r"\b(big|large|huge)"),
    "edible": ("Do people eat it?", r"\b(eat|edible|food)"),
    "metal": ("Is it made of metal?", r"\bmetal"),
    "electric": ("Does it use electricity?", r"\belectric"),
    "kitchen": ("Is it found in a kitchen?", r"\bkitchen"),
    "wheels": ("Does it have wheels?", r"\bwheel"),
}
"""Each attribute's question (the solver's wording) and the pattern that recognises a question about it."""


@cache
def load_table(path: str | os.PathLike = TABLE_FILE) -> dict[str, dict[str, bool]]:
    """``{object: {attribute: yes?}}`` from a CSV with the header ``object,<every attribute of ATTRIBUTES>`` and one
    0/1 row per object (``#`` lines are comments). A file that does not load raises ``ValueError`` naming it."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    except OSError as err:
        raise ValueError(f"Cannot read the twenty-questions table {path}: {err}.") from err
    rows = list(csv.reader(lines))
    if not rows or rows[0] != ["object", *ATTRIBUTES]:
        raise ValueError(f"{path}: the header must be 'object,{','.join(ATTRIBUTES)}', got {rows[:1]}.")
    table: dict[str, dict[str, bool]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(ATTRIBUTES) + 1 or not set(row[1:]) <= {"0", "1"} or not row[0].strip():
            raise ValueError(f"{path}, row {number}: expected an object name and {len(ATTRIBUTES)} 0/1 values: {row}.")
        table[row[0].strip().lower()] = {a: v == "1" for a, v in zip(ATTRIBUTES, row[1:])}
    if len(table) < max(LEVELS.values()):
        raise ValueError(f"{path} lists {len(table)} distinct objects; the levels need {max(LEVELS.values())}.")
    return table


def parse(question: str, table: dict[str, dict[str, bool]]) -> tuple[str, str] | None:
    """``("object", name)`` if the question names exactly one object (a guess), else ``("attribute", name)`` if it
    asks about exactly one attribute, else ``None`` (the partner cannot answer it)."""
    text = question.lower()
    named = [name for name in table if re.search(rf"\b{re.escape(name)}\b", text)]
    if named:
        return ("object", named[0]) if len(named) == 1 else None
    asked = [a for a, (_, pattern) in ATTRIBUTES.items() if re.search(pattern, text)]
    return ("attribute", asked[0]) if len(asked) == 1 else None


def answer(table: dict[str, dict[str, bool]], target: str, parsed: tuple[str, str]) -> str:
    kind, name = parsed
    if kind == "object":
        return "correct" if name == target else "no"
    return "yes" if table[target][name] else "no"


def next_question(table: dict[str, dict[str, bool]], candidates: tuple[str, ...], history: list) -> str:
    """The solver's next turn: the question whose worse answer leaves the fewest candidates, or a guess when no
    question splits the candidates left. ``history`` holds ``(parsed question, answer)`` pairs."""
    left = [
        c
        for c in candidates
        if all(
            (c != name if kind == "object" else table[c][name] == (reply == "yes")) for (kind, name), reply in history
        )
    ]
    splits = {a: sum(table[c][a] for c in left) for a in ATTRIBUTES}
    useful = {a: max(n, len(left) - n) for a, n in splits.items() if 0 < n < len(left)}
    if len(left) == 1 or not useful:
        return f"Is it {'an' if left[0][0] in 'aeiou' else 'a'} {left[0]}?"
    return ATTRIBUTES[min(useful, key=useful.get)][0]


@cache
def solver_turns(target: str, candidates: tuple[str, ...], path: str | os.PathLike = TABLE_FILE) -> int:
    """The turns the scripted solver takes to find ``target`` among ``candidates``."""
    table, history = load_table(path), []
    while True:
        parsed = parse(next_question(table, candidates, history), table)
        history.append((parsed, answer(table, target, parsed)))
        if history[-1][1] == "correct":
            return len(history)


@lru_cache(maxsize=1 << 14)
def parse_turn(turn: str, path: str | os.PathLike = TABLE_FILE) -> tuple[str, str] | None:
    """`parse` with the table at ``path``, memoised: a turn is read once, and the questions models ask repeat."""
    return parse(turn, load_table(path))


@lru_cache(maxsize=1 << 14)
def objects_left(
    target: str, candidates: tuple[str, ...], turns: tuple[str, ...], path: str | os.PathLike = TABLE_FILE
) -> frozenset[str]:
    """The candidates the answers to ``turns`` leave possible: those that share each attribute asked about with
    ``target`` and are not a wrongly named object; ``{target}`` once it is named. Memoised on the turns so that
    each turn of a game costs one step from the set before it."""
    if not turns:
        return frozenset(candidates)
    left, table = objects_left(target, candidates, turns[:-1], path), load_table(path)
    parsed = parse_turn(turns[-1], path)
    if parsed is None:
        return left
    kind, name = parsed
    if kind == "object":
        return frozenset({target}) if name == target else left - {name}
    return frozenset(c for c in left if table[c][name] == table[target][name])


class TwentyQuestionsGame:
    """The partner: answers yes / no by the table, ``correct`` to a right guess, ``unknown`` to anything else."""

    def __init__(self, table_path: str | os.PathLike = TABLE_FILE) -> None:
        self.table_path, self.table = table_path, load_table(table_path)

    def candidates_left(self, secret: tuple[str, tuple[str, ...]], turns: list[str]) -> int:
        """How many of the game's candidates the answers to ``turns`` leave possible (see `objects_left`)."""
        return len(objects_left(*secret, tuple(turns), self.table_path))

    def respond(self, secret: tuple[str, tuple[str, ...]], turns: list[str]) -> Reply:
        target, candidates = secret
        parsed = parse_turn(turns[-1], self.table_path)
        if parsed is None:
            return Reply(ask_next("unknown", "question"), valid=False)
        reply = answer(self.table, target, parsed)
        before, after = self.candidates_left(secret, turns[:-1]), self.candidates_left(secret, turns)
        resolved = progress(before, after, len(candidates))
        if reply == "correct":
            score = min(1.0, solver_turns(target, candidates, self.table_path) / len(turns))
            return Reply(reply, score=score, outcome="solved", progress=resolved)
        return Reply(ask_next(reply, "question"), progress=resolved)


class TwentyQuestionsEnv(ConversationEnv):
    """
    ## Description

    A multi-turn game of twenty questions. The env thinks of one object of a list it names in its opening
    (drawn from a shipped table of 64 everyday objects with 12 yes/no attributes,
    ``textgym/data/twenty_questions.csv``); the agent asks yes/no questions about the attributes (is it alive,
    an animal, a mammal, a bird; can it fly; does it live in water; is it bigger than a person; do people eat
    it; is it made of metal; does it use electricity; is it found in a kitchen; does it have wheels) and wins
    by naming the object (``Is it a cat?``). The env answers by rules: ``yes`` / ``no`` from the table for a
    question about exactly one attribute, ``correct`` or ``no`` to a question naming exactly one object,
    ``unknown`` otherwise, each but ``correct`` followed by ``Your next question?``. Fewer questions score more.

    ## Action Space

    ``Discrete(vocab_size)``: the next token of the agent's turn (as in ``TextGen-v0``).

    ## Observation Space

    As in ``GuessNumber-v1``: ``input_ids``, ``attention_mask`` and ``agent_mask`` (1 on the agent's tokens),
    int64 arrays of shape ``(max_prompt_tokens + max_new_tokens,)``; after every turn the real tokens are the
    chat template of the transcript ([textgym.envs.conversation][]).

    ## Rewards

    0 on every step but those that end a turn. Naming the object at turn ``t`` earns ``min(1, t*/t)``, ``t*``
    being the turns the scripted solver (the question that splits the candidates left most evenly, then the
    guess) takes on that game, so the solver scores 1 on every game; ``format_reward`` (default 0) is added to
    every turn the env could answer. ``gold_score`` (what benchmarks report, task ``twenty-questions``: 0 is the
    uniform-random policy, 100 the solver) is the ``min(1, t*/t)``, 0 if unsolved; ``score`` is the return.

    Rewards per turn (``turn_rewards``, a weight: ``True`` is 1, the default 0 pays none): each answered turn also
    earns ``turn_rewards`` times its progress, the share of the game's uncertainty its answer resolved:
    ``log(before / after) / log(n)`` for ``n`` candidates listed, where ``before`` and ``after`` count the
    candidates the answers allow before and after it (a yes or no keeps those that share the object's attribute,
    a wrong name rules that one out, the right one leaves one). A question that splits the candidates left in
    half earns about ``1 / log₂(n)``; one that rules nothing out, or an unanswerable turn, earns 0; a game's
    progress sums to 1 when solved, less when lost. It is paid on the step that ends the turn; ``gold_score``
    leaves it out.

    ## Starting State

    A game drawn uniformly from the level's games of the ``split``: an object and the candidates listed; the
    opening ends with a short example game showing the turn format.

    ## Episode End

    - A turn ends on the chat template's end-of-turn token or after ``max_turn_tokens`` tokens.
    - Termination: the game ends by its rules, won or lost: naming the object (``outcome`` ``"solved"``), or
      ``max_turns`` questions without it (8, 9, 11, 12 by level: two more than the solver needs at worst;
      ``"lost"``).
    - Truncation: the conversation reaching ``max_new_tokens`` first, a time limit outside the game
      (``outcome`` ``None``).

    The infos are those of ``GuessNumber-v1`` (``turn``, ``reply``; finally ``transcript``, ``turns``,
    ``outcome`` (``"solved"``, ``"lost"`` or ``None``), ``gold_score``, ``score``).

    ## Arguments

    ```python
    env = gym.make("TwentyQuestions-v1", split="train", level=2)
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `level` | int or None | `None` | `1` to `4`: 8, 16, 32 or 64 candidates (`LEVELS`); `None`: 1 |
    | `table` | str, path or None | `None` | another table of objects (below); `None`: the shipped one |
    | `max_turns` | int or None | `None` | questions before the game is lost; `None`: `MAX_TURNS[level]` |
    | `max_turn_tokens` | int or None | `None` | the longest turn, in tokens; `None`: 16 |
    | `format_reward` | float | `0.0` | shaping reward for each turn the env could answer (not in the gold) |
    | `turn_rewards` | float | `0.0` | weight of each turn's progress reward (Rewards; not in the gold score) |
    | `max_new_tokens` | int or None | `None` | the conversation's token budget (below); `None`: see below |
    | `max_prompt_tokens` | int or None | `None` | the opening's width; `None`: the longest opening of the level |

    - ``table``: a CSV of the same form as ``textgym/data/twenty_questions.csv`` (header
      ``object,alive,...,wheels``, at least 64 objects); a file that does not load raises ``ValueError`` naming
      the file and row.

    The other arguments, and those the task sets itself, are as for
    [GuessNumberEnv][textgym.envs.guess_number.GuessNumberEnv] ([TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s,
    with its defaults).

    ## Version History

    * v0: Initial version; before any trained result, the opening gained its example game and the partner came
      to ask for the next question (the embedded model's zero-shot score was 0).
    * v1: A game out of questions (``max_turns``) terminates with ``outcome`` ``"lost"``; in v0 it was truncated
      with ``outcome`` ``None``. Only ``max_new_tokens`` truncates now. Observations and rewards are unchanged.
    """

    env_id = "TwentyQuestions-v1"
    levels = tuple(LEVELS)
    turn_tokens = 16
    options = ("table",)

    @classmethod
    def setup(
        cls, level: int, table: str | os.PathLike | None = None
    ) -> tuple[TwentyQuestionsGame, dict[str, tuple[str, tuple[str, ...]]], int]:
        table = TABLE_FILE if table is None else table
        return TwentyQuestionsGame(table), instances(level, table), MAX_TURNS[level]


class TwentyQuestionsVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("TwentyQuestions-v1", num_envs=N)``: see
    [TwentyQuestionsEnv][textgym.envs.twenty_questions.TwentyQuestionsEnv]."""

    env_class = TwentyQuestionsEnv


def opening(game: int, candidates: tuple[str, ...]) -> str:
    return (
        f"Game {game}: I am thinking of one of these: {', '.join(candidates)}. Ask me one yes/no question a turn "
        "(is it alive, an animal, a mammal, a bird; can it fly; does it live in water; is it bigger than a person; "
        "do people eat it; is it made of metal; does it use electricity; is it found in a kitchen; does it have "
        "wheels?) and I answer yes, no or unknown. Win by naming it: Is it a ...? For example:\n"
        "You: Is it alive?\nMe: yes\nYou: Can it fly?\nMe: no\nYou: Is it a dog?\nMe: correct\nYour first question?"
    )


@cache
def instances(level: int, path: str | os.PathLike = TABLE_FILE) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every game of ``level``: ``{opening: (object, candidates)}``, the same on every machine."""
    names = sorted(load_table(path))
    rng = np.random.default_rng(3000 + level)
    games = {}
    for k in range(GAMES_PER_LEVEL):
        candidates = tuple(str(n) for n in rng.choice(names, size=LEVELS[level], replace=False))
        games[opening(k, candidates)] = (str(rng.choice(candidates)), candidates)
    return games


def solve(messages: list[dict[str, str]], level: int) -> str:
    """The scripted solver (`next_question`), reading the candidates from the opening."""
    table = load_table()
    candidates = tuple(re.search(r"one of these: (.*?)\. Ask", messages[0]["content"]).group(1).split(", "))
    history = [(parse(q["content"], table), answer_of(a["content"])) for q, a in zip(messages[1::2], messages[2::2])]
    return next_question(table, candidates, history)


TASK = conversation_task(
    "twenty-questions",
    "TwentyQuestions-v1",
    "find an object by yes/no questions about 12 attributes, then name it (multi-turn)",
    tuple(LEVELS),
    solve,
)
