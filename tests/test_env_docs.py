"""The env class docstrings are the one reference for the envs' arguments: their Markdown sections are there, and
each Arguments table lists what ``gym.make`` really takes, with the defaults the code and the registry give."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import gymnasium as gym
import pytest

import textgym  # noqa: F401  (registers the envs)
from textgym.envs.conversation import ConversationEnv
from textgym.envs.core import TokenEpisodes
from textgym.envs.text_gen import TextGenEnv

SECTIONS = [
    "Description",
    "Action Space",
    "Observation Space",
    "Rewards",
    "Starting State",
    "Episode End",
    "Arguments",
    "Version History",
]
HEADER, RULE = "| argument | type | default | meaning |", "|---|---|---|---|"
SET_BY_THE_TASK = ("game", "instances")  # a multi-turn task's episode_kwargs passes them; gym.make cannot


def entry_class(env_id: str) -> type[TextGenEnv]:
    module, name = gym.spec(env_id).entry_point.split(":")
    return getattr(importlib.import_module(module), name)


ENVS = {env_id: entry_class(env_id) for env_id, spec in gym.registry.items() if "textgym." in str(spec.entry_point)}
TASK_ENVS = {env_id: cls for env_id, cls in ENVS.items() if cls is not TextGenEnv}


def parameters(function) -> dict[str, object]:
    """The named parameters of ``function`` with their defaults (``inspect.Parameter.empty`` if none)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.kind in named and name not in ("self", "cls", "num_rows", *SET_BY_THE_TASK)
    }


def own_parameters(cls: type[TextGenEnv]) -> dict[str, object]:
    """The arguments a task env adds or reads itself: its ``episode_kwargs``', its episodes class's and, for a
    multi-turn task, its base's and its ``setup`` options."""
    found: dict[str, object] = {}
    if cls.episodes_class is not TokenEpisodes:
        found |= parameters(cls.episodes_class.__init__)
    if issubclass(cls, ConversationEnv):
        found |= parameters(ConversationEnv.episode_kwargs.__func__)
        found |= {name: value for name, value in parameters(cls.setup).items() if name != "level"}
    return found | parameters(cls.episode_kwargs)


def make_parameters(cls: type[TextGenEnv]) -> dict[str, object]:
    """Every keyword ``gym.make`` passes on to ``cls``, with the code's default."""
    shared = parameters(TokenEpisodes.__init__) | parameters(TextGenEnv.episode_kwargs) | parameters(cls.__init__)
    return shared if cls is TextGenEnv else shared | own_parameters(cls)


def arguments_table(cls: type) -> tuple[str, dict[str, tuple[str, str, str]]]:
    """The text of the class docstring's Arguments section and its table, ``{argument: (type, default, meaning)}``."""
    doc = inspect.cleandoc(cls.__doc__)
    section = re.search(r"^## Arguments$(.*?)(?=^## |\Z)", doc, re.M | re.S).group(1)
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[:2] == [HEADER, RULE], f"{cls.__name__}: the Arguments table must start {HEADER} / {RULE}"
    table = {}
    for row in rows[2:]:
        cells = [cell.strip() for cell in row.strip().strip("|").split(" | ")]
        assert len(cells) == 4 and re.fullmatch(r"`\w+`", cells[0]), f"{cls.__name__}: malformed row {row!r}"
        name = cells[0].strip("`")
        assert name not in table, f"{cls.__name__}: {name} is in its table twice"
        table[name] = tuple(cells[1:])
    return section, table


def documented_default(cell: str) -> object:
    """The value in a default cell's first code span (``\\`None\\` (16)`` is ``None``)."""
    return ast.literal_eval(re.search(r"`([^`]+)`", cell).group(1))


@pytest.mark.parametrize("cls", sorted(set(ENVS.values()), key=lambda cls: cls.__name__), ids=lambda c: c.__name__)
def test_docstring_has_gymnasium_s_sections_in_order(cls):
    headings = re.findall(r"^## (.+)$", inspect.cleandoc(cls.__doc__), re.M)
    assert headings == SECTIONS


def test_text_gen_table_lists_every_make_argument_with_its_default():
    _, table = arguments_table(TextGenEnv)
    expected = make_parameters(TextGenEnv)
    assert sorted(table) == sorted(expected), "the Arguments table and gym.make's arguments differ"
    registered = gym.spec("TextGen-v0").kwargs
    for name, (_, default, _) in table.items():
        assert documented_default(default) == registered.get(name, expected[name]), name


@pytest.mark.parametrize("env_id", sorted(TASK_ENVS))
def test_task_table_lists_the_task_s_own_arguments_and_changed_defaults(env_id):
    cls, registered = TASK_ENVS[env_id], gym.spec(env_id).kwargs
    section, table = arguments_table(cls)
    own, shared = own_parameters(cls), make_parameters(TextGenEnv)
    assert not set(own) - set(table), "the task's own arguments missing from its table"
    assert not set(table) - set(make_parameters(cls)), "arguments in the table that gym.make does not take"
    changed = {name for name, value in registered.items() if name not in own and value != shared[name]}
    assert not changed - set(table), "registered defaults that differ from TextGen-v0's, missing from the table"
    set_by_task = cls.episode_kwargs(**registered)  # what the task itself passes on, e.g. its reward model
    for name, (_, default, _) in table.items():
        if name in registered:
            expected = registered[name]
        elif name in own:
            expected = own[name]
        else:
            expected = set_by_task.get(name, shared[name])
        assert documented_default(default) == expected, name
    assert "[TextGenEnv][textgym.envs.text_gen.TextGenEnv]" in section, "no link to TextGenEnv's shared arguments"
