"""Multi-turn conversations as token episodes: the agent writes its turns, the env appends its partner's replies.

Text-level multi-turn suites re-tokenise the whole conversation every turn, and the tokens a trainer scores
drift from the ones the policy sampled. Here they cannot: the observation holds token ids, the agent's action
is one token, and the env appends the partner's reply as the tokens the chat template gives it, so the
observation after every turn is, token for token, the chat template applied to the transcript (with the
agent's turns as the tokens it wrote).

[ConversationEpisodes][textgym.envs.conversation.ConversationEpisodes] extends
[textgym.envs.core.TokenEpisodes][textgym.envs.core.TokenEpisodes] (the single and the vector env run on it, as
TextGen's do). A task supplies a [Game][textgym.envs.conversation.Game] (the partner's rules) and its instances:
``{opening text: hidden state}``, the opening being the first user message; its env subclasses
[ConversationEnv][textgym.envs.conversation.ConversationEnv] (a [TextGenEnv][textgym.envs.text_gen.TextGenEnv] on
[ConversationEpisodes][textgym.envs.conversation.ConversationEpisodes]) and its vector env
[TextGenVectorEnv][textgym.envs.vector.TextGenVectorEnv], as the single-turn tasks do.

Row layout, with ``P = max_prompt_tokens`` and ``T = max_new_tokens`` (the budget of the whole conversation
after the opening, the agent's tokens and the partner's together)::

    columns [0, P)       the opening, in the chat template with the assistant's turn opened, left-padded
    columns [P, P + T)   the conversation: the agent's turns (agent_mask 1) and, after each, what the env
                         appends (agent_mask 0): the end-of-turn token if the turn hit its token limit, then
                         the partner's reply and the next assistant header; then padding (attention_mask 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
from gymnasium import spaces

from textgym.envs.core import TokenEpisodes
from textgym.envs.text_gen import TextGenEnv, refuse_task_arguments
from textgym.lm.models import is_encoder_decoder, load_tokenizer, resolve_model_dir
from textgym.lm.prompts import encode_prompt, end_of_turn_token_id
from textgym.tasks import TaskSpec

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """The partner's answer to one agent turn."""

    text: str
    """The partner's message (what the env appends, in the chat template, as a user turn)."""
    score: float = 0.0
    """This turn's part of the task score (the gold score is the episode's sum), also its reward."""
    outcome: str | None = None
    """``"solved"`` or ``"lost"`` ends the episode (terminated); ``None`` lets it go on (until ``max_turns``, after
    which the env scores the game lost)."""
    valid: bool = True
    """Whether the partner could read the turn (a well-formed guess or question); ``format_reward`` pays it."""
    progress: float = 0.0
    """The share of the game's uncertainty this answer resolved, in [0, 1] (see
    [progress][textgym.envs.conversation.progress]); ``turn_rewards`` pays it. Not part of the task score."""


class Game(Protocol):
    """A multi-turn task's partner: answers each agent turn, given the hidden state of the instance."""

    def respond(self, secret: Any, turns: list[str]) -> Reply:
        """The reply to the last of ``turns`` (the agent's turns so far, as texts)."""
        ...


class ConversationEpisodes(TokenEpisodes):
    """``num_rows`` conversations with a scripted partner, side by side (see the module docstring).

    Args:
        num_rows: how many episodes run side by side.
        game: the partner ([Game][textgym.envs.conversation.Game]).
        instances: ``{opening text: hidden state}``; the openings are the prompt set (``split`` selects them by a
            stable hash, as for prompts), and ``reset(options={"prompt": opening})`` starts that instance.
        max_turns: the game's limit: the episode terminates with outcome ``"lost"`` after this many agent turns
            without an outcome (the token budget ``max_new_tokens`` is what truncates).
        max_turn_tokens: a turn ends on the chat template's end-of-turn token or after this many tokens; then the
            env writes the end-of-turn token itself.
        format_reward: added to the reward of every turn the partner could read (a shaping reward for training:
            the gold score leaves it out).
        turn_rewards: the weight of each turn's ``progress`` (the share of the game's uncertainty its answer
            resolved), added to the turn's reward: a reward per turn from the partner's feedback (``True`` is 1;
            0, the default, pays none). A shaping reward for training: the gold score leaves it out.
        max_prompt_tokens: ``P``; ``None``: the longest opening (of every instance, so that a task's train and test
            envs have the same spaces).
        **kwargs: [TokenEpisodes][textgym.envs.core.TokenEpisodes]'s other arguments (``model``, ``split``,
            ``max_new_tokens``, ``prompt_truncation``, ``reference_model``, ``kl_coef``, ``action_mask``, ...); the
            chat template is always on, and the stop tokens are the template's end-of-turn token.
    """

    def __init__(
        self,
        num_rows: int,
        game: Game,
        instances: Mapping[str, Any],
        max_turns: int = 8,
        max_turn_tokens: int = 16,
        format_reward: float = 0.0,
        turn_rewards: float = 0.0,
        max_prompt_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        if max_turns < 1 or max_turn_tokens < 1:
            raise ValueError(
                f"max_turns and max_turn_tokens must be at least 1, got {max_turns} and {max_turn_tokens}."
            )
        unsupported = sorted(k for k in ("stop_token_ids", "chat_template") if k in kwargs)
        if unsupported:
            raise ValueError(
                f"Multi-turn envs do not take {unsupported}: they use the chat template, and a turn ends on its "
                "end-of-turn token."
            )
        if is_encoder_decoder(resolve_model_dir(kwargs.get("model"))):
            raise ValueError(
                "Multi-turn envs need a causal LM: the partner's replies go into the context between the agent's "
                "turns, and an encoder–decoder's source is fixed once its episode starts. Pass a causal LM's model."
            )
        self.game, self.instances = game, dict(instances)  # encode_prompt, called by the core, checks openings
        if max_prompt_tokens is None:  # the longest opening of both splits: a task's envs share their spaces
            tokenizer = load_tokenizer(kwargs.get("model"))
            max_prompt_tokens = max(len(encode_prompt(tokenizer, text, chat_template=True)) for text in instances)
        super().__init__(
            num_rows,
            prompts=list(instances),
            max_prompt_tokens=max_prompt_tokens,
            reward_model=_scored_by_the_game,
            chat_template=True,
            **kwargs,
        )
        self.end_of_turn = end_of_turn_token_id(self.tokenizer)
        if self.end_of_turn is None:
            raise ValueError(f"The chat template of {self.model_dir} closes no turn with a special token.")
        self.stop_token_ids = np.array([self.end_of_turn], dtype=np.int64)
        self.max_turns, self.max_turn_tokens, self.format_reward = max_turns, max_turn_tokens, float(format_reward)
        self.turn_rewards = float(turn_rewards)
        width = self.input_ids.shape[1]
        self.observation_space = spaces.Dict(
            {**self.observation_space.spaces, "agent_mask": spaces.Box(0, 1, shape=(width,), dtype=np.int64)}
        )
        self.agent_mask = np.zeros((num_rows, width), dtype=np.int64)
        self.turn_start = np.zeros(num_rows, dtype=np.int64)  # column where the current agent turn began
        self.turns: list[list[str]] = [[] for _ in range(num_rows)]
        self.replies: list[list[str]] = [[] for _ in range(num_rows)]
        self.scores = np.zeros(num_rows)
        self.returns = np.zeros(num_rows)
        self._reply_tokens: dict[str, list[int]] = {}  # partners repeat themselves ("higher", "no")

    @property
    def max_steps(self) -> int:
        """The most tokens the agent can write in an episode (the env's replies take the rest of the budget)."""
        return min(self.max_new_tokens, self.max_turns * self.max_turn_tokens)

    def encode_prompt(self, text: str, where: str = "the prompt") -> list[int]:
        """An opening's tokens; only an instance's opening starts a conversation (its partner knows the secret)."""
        if isinstance(text, str) and text not in self.instances:
            raise ValueError(f"{where} is not the opening of one of this task's instances: {text[:80]!r}.")
        return super().encode_prompt(text, where)

    def start(self, row: int, prompt_ids: list[int], prompt_text: str) -> None:
        super().start(row, prompt_ids, prompt_text)
        self.agent_mask[row] = 0
        self.turn_start[row] = 0
        self.turns[row], self.replies[row] = [], []
        self.scores[row] = self.returns[row] = 0.0

    def observation(self, row: int | slice = slice(None)) -> dict[str, np.ndarray]:
        return {**super().observation(row), "agent_mask": self.agent_mask[row].copy()}

    def turn_room(self, row: int) -> int:
        """The most tokens the agent's current turn can still take: to ``max_turn_tokens`` or the budget's end."""
        written = self.num_generated[row] - self.turn_start[row]
        return int(min(self.max_turn_tokens - written, self.max_new_tokens - self.num_generated[row]))

    def extend(self, row: int, tokens: np.ndarray) -> None:
        super().extend(row, tokens)
        end = self.max_prompt_tokens + self.num_generated[row]
        self.agent_mask[row, end - len(tokens) : end] = 1

    def retract(self, row: int, num_generated: int) -> None:
        super().retract(row, num_generated)
        self.agent_mask[row, self.max_prompt_tokens + num_generated :] = 0

    def transcript(self, row: int) -> list[dict[str, str]]:
        """The conversation as chat messages: the opening, then each agent turn and partner reply."""
        messages = [{"role": "user", "content": self.prompt_texts[row]}]
        for turn, reply in zip(self.turns[row], [*self.replies[row], None]):
            messages.append({"role": "assistant", "content": turn})
            if reply is not None:
                messages.append({"role": "user", "content": reply})
        return messages

    def step(self, rows: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Append one agent token to each of ``rows``; where a turn ends, the partner replies.

        The game's rules end an episode, which terminates: the partner's outcome (``"solved"``), or the
        ``max_turns``-th turn answered without one (``"lost"``). Only the token budget truncates it (outcome
        ``None``): a turn cut by ``max_new_tokens`` (unless it won), or a reply that does not fit in the rest of it
        with a token of the next turn (the reply is in the final info's ``transcript`` but not in the observation).
        Nothing changes if an error is raised.

        Returns:
            ``rewards``, ``terminated``, ``truncated`` and infos as
            [TokenEpisodes.step][textgym.envs.core.TokenEpisodes.step] does; a step that ends a turn has ``turn`` (its
            index) and ``reply`` in its info, and the final info also holds ``transcript`` (chat messages), ``turns``,
            ``outcome`` (``"solved"``, ``"lost"`` or ``None``), ``prompt``, ``completion`` (the agent's turns, one per
            line), ``score`` (the return without the KL part) and ``gold_score`` (the task score, without
            ``format_reward`` and ``turn_rewards``). With a reference model every step's info holds ``ref_logprob``
            and ``kl_reward``, as in TextGen-v0.
        """
        if not self.running[rows].all():
            raise RuntimeError("step() called on an episode that is over or was never started: call reset() first.")
        start, budget = self.max_prompt_tokens, self.max_new_tokens
        ref_logprobs = self.reference_logprobs(rows, actions)
        position = start + self.num_generated[rows]
        rewards = np.zeros(len(rows))  # the task's part; the KL part is added at the end
        terminated = np.zeros(len(rows), dtype=bool)
        truncated = self.num_generated[rows] + 1 >= budget  # no room left for another token
        infos: list[dict] = [{} for _ in rows]  # (the reference model's per-step part is added below)
        # Decide every turn's outcome before writing anything, so that an error leaves the episodes as they were.
        appended: dict[int, list[int]] = {}
        updates = []
        for k, row in enumerate(rows):
            turn_length = position[k] + 1 - (start + self.turn_start[row])
            if actions[k] != self.end_of_turn and turn_length < self.max_turn_tokens and not truncated[k]:
                continue
            tokens = [*self.input_ids[row, start + self.turn_start[row] : position[k]], actions[k]]
            closed = actions[k] == self.end_of_turn
            text = self.tokenizer.decode(tokens[:-1] if closed else tokens, skip_special_tokens=False)
            turns = [*self.turns[row], text]
            reply = self.game.respond(self.instances[self.prompt_texts[row]], turns)
            rewards[k] += reply.score + self.format_reward * reply.valid + self.turn_rewards * reply.progress
            infos[k].update(turn=len(turns) - 1, reply=reply.text)
            outcome = reply.outcome
            cut = not closed and turn_length < self.max_turn_tokens  # the budget ended it mid-way
            if outcome is None and len(turns) >= self.max_turns and not cut:
                outcome = "lost"  # out of turns: the game's own rule ends it, as a loss
            terminated[k] = outcome is not None
            if outcome is None and not truncated[k]:
                inserted = ([] if closed else [self.end_of_turn]) + self._partner_tokens(reply.text)
                if self.num_generated[row] + 1 + len(inserted) >= budget:
                    truncated[k] = True  # no room for the reply and a token of the next turn
                else:
                    appended[k] = inserted
            updates.append((k, row, turns, reply, outcome))
        truncated &= ~terminated

        self.input_ids[rows, position] = actions
        self.attention_mask[rows, position] = 1
        self.agent_mask[rows, position] = 1
        self.num_generated[rows] += 1
        for k in np.flatnonzero(terminated | truncated):
            self.running[rows[k]] = False
        for k, info in enumerate(self.advance_reference(rows, actions, ref_logprobs)):
            infos[k].update(info)
        for k, row, turns, reply, outcome in updates:
            self.turns[row] = turns
            self.replies[row].append(reply.text)
            self.scores[row] += reply.score
            if k in appended:
                end = start + self.num_generated[row]
                self.input_ids[row, end : end + len(appended[k])] = appended[k]
                self.attention_mask[row, end : end + len(appended[k])] = 1
                self.num_generated[row] += len(appended[k])
                self.turn_start[row] = self.num_generated[row]
                if self.reference is not None:
                    self.reference.restart(row)  # the reference re-reads the row, reply included, when next asked
            if terminated[k] or truncated[k]:
                infos[k]["outcome"] = outcome
        self.returns[rows] += rewards
        rewards = rewards + self.kl_coef * ref_logprobs
        for k in np.flatnonzero(terminated | truncated):
            row = rows[k]
            infos[k].update(
                prompt=self.prompt_texts[row],
                completion="\n".join(self.turns[row]),
                transcript=self.transcript(row),
                turns=len(self.turns[row]),
                score=float(self.returns[row]),
                gold_score=float(self.scores[row]),
            )
        return rewards, terminated, truncated, infos

    def _partner_tokens(self, reply: str) -> list[int]:
        """The tokens after an agent's end-of-turn token that the chat template puts before the next agent turn:
        the rest of the turn's closing, the partner's message, and the assistant header."""
        if reply not in self._reply_tokens:
            self._reply_tokens[reply] = _partner_tokens(self.tokenizer, reply)
        return self._reply_tokens[reply]


class ConversationEnv(TextGenEnv):
    """Base class of the multi-turn task envs: a [TextGenEnv][textgym.envs.text_gen.TextGenEnv] on
    [ConversationEpisodes][textgym.envs.conversation.ConversationEpisodes], whose ``level`` picks the game and its
    instances (see a task's docstring, e.g.
    [textgym.envs.guess_number.GuessNumberEnv][textgym.envs.guess_number.GuessNumberEnv])."""

    episodes_class: ClassVar[type[ConversationEpisodes]] = ConversationEpisodes
    env_id: ClassVar[str]
    levels: ClassVar[tuple[int, ...]]
    """The valid ``level`` values, easiest (and default) first."""
    turn_tokens: ClassVar[int] = 8
    """The default ``max_turn_tokens``."""
    reply_tokens: ClassVar[int] = 32
    """Tokens to budget per partner reply (with its chat-template framing) for the default ``max_new_tokens``."""
    options: ClassVar[tuple[str, ...]] = ()
    """The task's own arguments, passed to [setup][textgym.envs.conversation.ConversationEnv.setup]."""

    @classmethod
    def setup(cls, level: int, **options: Any) -> tuple[Game, dict[str, Any], int]:
        """The level's partner, its instances (``{opening: secret}``, both splits) and its default ``max_turns``."""
        raise NotImplementedError

    @classmethod
    def episode_kwargs(
        cls,
        level: int | None = None,
        max_turns: int | None = None,
        max_turn_tokens: int | None = None,
        max_new_tokens: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        max_turn_tokens = cls.turn_tokens if max_turn_tokens is None else max_turn_tokens
        level = cls.levels[0] if level is None else level
        if level not in cls.levels:
            raise ValueError(f"{cls.env_id} has levels {list(cls.levels)}, got {level!r}.")
        owned = ("prompts", "reward_model", "reward_model_kwargs", "gold_model", "gold_model_kwargs", "info_models")
        refuse_task_arguments(cls.env_id, kwargs, owned, ": its partner scores the turns.")
        game, instances, default_turns = cls.setup(level, **{k: kwargs.pop(k) for k in cls.options if k in kwargs})
        max_turns = default_turns if max_turns is None else max_turns
        budget = max_new_tokens or max_turns * (max_turn_tokens + cls.reply_tokens)
        return {
            **kwargs,
            "game": game,
            "instances": instances,
            "max_turns": max_turns,
            "max_turn_tokens": max_turn_tokens,
            "max_new_tokens": budget,
        }


def conversation_task(
    name: str, env_id: str, description: str, levels: tuple[int, ...], solver: Callable[[Any, int], str]
) -> TaskSpec:
    """The suite entry of a multi-turn task that scores a game won in turn ``t`` ``min(1, t*/t)``, ``t*`` being its
    solver's turns on that game: the optimum is 1 at every level by construction, and uniform tokens, which
    almost never write a turn the partner can read, score 0 (measured: at most 0.004 a level, docs/tasks.md).
    The default level is the first."""
    return TaskSpec(
        name=name,
        env_id=env_id,
        description=description,
        levels=levels,
        default_level=levels[0],
        random_score={level: 0.0 for level in levels},
        optimum_score={level: 1.0 for level in levels},
        solver=solver,
        multi_turn=True,
    )


def ask_next(answer: str, move: str) -> str:
    """A reply that lets the game go on: the answer, then a request for the next move (``"higher. Your next
    guess?"``). Asked, small models go on playing; after a bare answer they mostly wander off into prose."""
    return f"{answer}. Your next {move}?"


def answer_of(reply: str) -> str:
    """The answer in a partner's reply, without `ask_next`'s request (what the scripted solvers read)."""
    return reply.split(". Your next ")[0]


def progress(before: int, after: int, total: int) -> float:
    """The share of a game's uncertainty one answer resolved: ``log(before / after) / log(total)``, the
    candidates (numbers, objects, words) consistent with every answer having gone from ``before`` to ``after``,
    of ``total`` at the start. In [0, 1] per turn, and over a game it sums to ``log(total / left) / log(total)``:
    1 once one candidate is left (every solved game), less in a lost one. A turn that rules nothing out (no valid
    move, a candidate already ruled out, a question already answered) earns 0."""
    if total < 2 or after < 1:
        return 0.0
    return math.log(before / after) / math.log(total)


def the_one(found: Iterable[T]) -> T | None:
    """The one distinct item of ``found``, or ``None`` when there are none or several: how a partner reads a move
    out of prose (the one number, object or listed word a turn names) without ever choosing between two."""
    distinct = set(found)
    return distinct.pop() if len(distinct) == 1 else None


def _partner_tokens(tokenizer: Any, reply: str) -> list[int]:
    """See `ConversationEpisodes._partner_tokens`: the difference between the template of a conversation
    with one more user message (and the assistant header) and the template up to the agent's end-of-turn token,
    tokenised. Special tokens split the text, so tokenising the difference gives the full rendering's tokens."""
    opening = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]
    eot = tokenizer.decode([end_of_turn_token_id(tokenizer)])
    prefix = tokenizer.apply_chat_template(opening[:1], add_generation_prompt=True, tokenize=False) + "!" + eot
    full = tokenizer.apply_chat_template(
        [*opening, {"role": "user", "content": reply}], add_generation_prompt=True, tokenize=False
    )
    if not full.startswith(prefix):
        raise ValueError(
            "This chat template renders an assistant turn other than as its content and end-of-turn token."
        )
    return list(tokenizer(full[len(prefix) :], add_special_tokens=False)["input_ids"])


def _scored_by_the_game(prompts: list[str], completions: list[str]) -> np.ndarray:
    """The reward model slot of a conversation's core: unused, the game scores each turn."""
    raise RuntimeError("A conversation is scored by its game, turn by turn, not by a reward model.")
