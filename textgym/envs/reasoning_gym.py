"""ReasoningGym: any reasoning-gym dataset as a single-turn task, scored by the dataset's own ``score_answer``."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym

from reward_models.reasoning_gym import DEFAULT_SIZE, Level, check_dataset, has_answers, level_count, load_level, solve
from textgym.envs.core import TokenEpisodes
from textgym.envs.text_gen import TextGenEnv, refuse_task_arguments
from textgym.envs.vector import TextGenVectorEnv
from textgym.lm.models import load_tokenizer
from textgym.lm.prompts import encode_prompt
from textgym.tasks import TaskSpec

MIN_NEW_TOKENS = 16
ANSWER_MARGIN = 8
"""``max_new_tokens=None`` gives an episode the level's longest answer plus this many tokens, at least
``MIN_NEW_TOKENS``: room for the answer as the examples write it, a newline or a stop token."""


class ReasoningGymEpisodes(TokenEpisodes):
    """[TokenEpisodes][textgym.envs.core.TokenEpisodes] whose widths default to what the level needs.

    Args:
        num_rows: how many episodes run side by side.
        instances: the level's instances ([load_level][reward_models.reasoning_gym.load_level]).
        max_prompt_tokens: ``None``: the longest prompt of the level, both splits (so the train and test envs
            have the same observation space).
        max_new_tokens: ``None``: the level's longest answer plus ``ANSWER_MARGIN`` tokens, at least
            ``MIN_NEW_TOKENS``.
        **kwargs: the other [TokenEpisodes][textgym.envs.core.TokenEpisodes] arguments.
    """

    def __init__(
        self,
        num_rows: int,
        instances: Level,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int | None = None,
        **kwargs: Any,
    ) -> None:
        if max_prompt_tokens is None or max_new_tokens is None:
            tokenizer = load_tokenizer(kwargs.get("model"))
            if max_prompt_tokens is None:
                chat = kwargs.get("chat_template", False)
                max_prompt_tokens = max(len(encode_prompt(tokenizer, p, chat)) for p in instances.prompts())
            if max_new_tokens is None:
                answers = [f" {e['answer']}" for e in instances.entries.values() if e["answer"] is not None]
                ids = tokenizer(answers, add_special_tokens=False)["input_ids"] if answers else []
                max_new_tokens = max(MIN_NEW_TOKENS, max((len(a) for a in ids), default=0) + ANSWER_MARGIN)
        super().__init__(num_rows, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, **kwargs)


class ReasoningGymEnv(TextGenEnv):
    """
    ## Description

    Any dataset of [reasoning-gym](https://github.com/open-thought/reasoning-gym) (about a hundred procedural
    generators with verifiers: arithmetic, counting, sorting, ciphers, puzzles, logic, ...) as a single-turn
    task: each episode is one of the dataset's questions, and the dataset's own ``score_answer`` scores the reply.
    reasoning-gym is an optional extra (``pip install 'textgym[reasoning]'``), imported when the env is made. The
    prompt is plain text, as VerifiableInstructions-v0's: ``shots`` worked examples of the same dataset and level
    (question, ``Answer: `` and the answer, a blank line), then the question and ``Answer:``. The agent continues
    it token by token; its first line is its answer (the first ``k`` lines when the dataset's answer has ``k``).
    See [reward_models.reasoning_gym][] for the instances, levels and splits.

    ## Action Space

    ``Discrete(vocab_size)``: the next token (as in ``TextGen-v0``).

    ## Observation Space

    As in ``TextGen-v0``: ``input_ids`` and ``attention_mask``, int64 arrays of shape
    ``(max_prompt_tokens + max_new_tokens,)``, the prompt left-padded, then the reply so far. By default both
    widths are the level's own (see *Arguments*).

    ## Rewards

    Sparse: 0 on every step but the last; on the last step, the reward model ``reasoning-gym``
    ([ReasoningGymScore][reward_models.reasoning_gym.ReasoningGymScore]): the dataset's
    ``score_answer(answer, entry)``, with the partial credit the dataset defines (most give
    ``len(expected) / len(answer)`` to an answer that contains the expected one; some count the right words or
    characters). The score is also the gold: ``info["score"] == info["gold_score"]``. Benchmarks run the env as task
    ``rg:DATASET`` ([textgym.tasks.get_task][textgym.tasks.get_task]): 0 is the floor of ``score_answer``, 100
    the generator's own answers (1.0).

    ## Starting State

    A question drawn uniformly from the level's instances of the ``split``.

    ## Episode End

    Termination: a stop token (EOS). Truncation: ``max_new_tokens``. Only the answer's lines are read, so a reply
    may go on after them without harm or gain.

    ## Arguments

    ```python
    env = gym.make("ReasoningGym-v0", dataset="leg_counting", split="train", level=1)
    ```

    | argument | type | default | meaning |
    |---|---|---|---|
    | `dataset` | str | `"leg_counting"` | a reasoning-gym dataset's name (below) |
    | `level` | int or None | `None` | `1` to the dataset's number of levels (below); `None`: 1 |
    | `split` | str or None | `None` | `"train"` or `"test"`: disjoint seed ranges (below); `None`: both |
    | `shots` | int | `1` | worked examples before the question (`0`: the bare question, then `Answer:`) |
    | `size` | int | `1000` | seeds drawn for the level, both splits (lower it for a slow generator) |
    | `max_prompt_tokens` | int or None | `None` | as TextGen-v0's; `None`: the level's longest prompt |
    | `max_new_tokens` | int or None | `None` | as TextGen-v0's; `None`: the longest answer + 8 tokens, at least 16 |

    - ``dataset``: one of [dataset_names][reward_models.reasoning_gym.dataset_names] (every registered one but
      ``composite``); another name raises ``ValueError`` listing them.
    - ``level``: level ``L`` is the configuration the dataset's curriculum generates at its global level
      ``L − 1``; a dataset without a curriculum has one level, its default configuration
      ([level_count][reward_models.reasoning_gym.level_count]).
    - ``split``: train questions from seeds ``[0, 0.8·size)``, test ones from ``[10⁶, 10⁶ + 0.2·size)``; a question
      both draw goes to one split by the stable hash of its text, so the splits' prompts are disjoint.

    The other arguments are [TextGenEnv][textgym.envs.text_gen.TextGenEnv]'s, with its defaults (``model``,
    ``chat_template``, ``reference_model``, ``kl_coef``, ``action_mask``, ...). The task sets ``prompts``,
    ``reward_model``, ``reward_model_kwargs``, ``gold_model`` and ``gold_model_kwargs`` itself: passing one raises
    ``ValueError``.

    ## Version History

    * v0: Initial version (reasoning-gym 0.1.25).
    """

    episodes_class = ReasoningGymEpisodes

    @classmethod
    def episode_kwargs(
        cls,
        dataset: str = "leg_counting",
        level: int | None = None,
        split: str | None = None,
        shots: int = 1,
        size: int = DEFAULT_SIZE,
        **kwargs: Any,
    ) -> dict[str, Any]:
        owned = ("prompts", "reward_model", "reward_model_kwargs", "gold_model", "gold_model_kwargs")
        refuse_task_arguments("ReasoningGym-v0", kwargs, owned, ".")
        level = 1 if level is None else level
        instances = load_level(check_dataset(dataset), level, shots, size)
        return {
            **kwargs,
            "prompts": instances.prompts(split),
            "split": None,  # the prompts are the split's already: the seed ranges split them, not the prompts' hash
            "instances": instances,
            "reward_model": "reasoning-gym",
            "reward_model_kwargs": {"dataset": dataset, "level": level, "shots": shots, "size": size},
        }


class ReasoningGymVectorEnv(TextGenVectorEnv):
    """``gym.make_vec("ReasoningGym-v0", num_envs=N, dataset=...)``: see
    [ReasoningGymEnv][textgym.envs.reasoning_gym.ReasoningGymEnv]."""

    env_class = ReasoningGymEnv


def resolve_task(dataset: str) -> TaskSpec:
    """The benchmark task ``rg:DATASET`` ([textgym.tasks.get_task][textgym.tasks.get_task] calls this): its env
    ``ReasoningGym/DATASET-v0`` is ``ReasoningGym-v0`` with ``dataset=DATASET``, registered here on first use.

    Its levels are the dataset's, default 1; random 0 and optimum 1 at every level: 1 is the score the generator's
    own answers get (the solver, [solve][reward_models.reasoning_gym.solve]), 0 the floor of ``score_answer``,
    which uniform tokens reach or almost reach (measured in docs/tasks.md). A dataset whose items carry no
    answer (its ``score_answer`` judges free answers, e.g. graph_color) has no solver, so no ``oracle``.

    Raises:
        KeyError: an unknown dataset, listing the valid ones.
    """
    try:
        check_dataset(dataset)
    except ValueError as err:
        raise KeyError(str(err)) from None
    env_id = f"ReasoningGym/{dataset}-v0"
    if env_id not in gym.registry:  # gym.make passes only split, level and model: the dataset must be in the id
        base = gym.spec("ReasoningGym-v0")
        gym.register(
            id=env_id,
            entry_point=base.entry_point,
            vector_entry_point=base.vector_entry_point,
            kwargs={**base.kwargs, "dataset": dataset},
        )
    return _task(dataset, env_id)


@functools.cache
def _task(dataset: str, env_id: str) -> TaskSpec:
    levels = tuple(range(1, level_count(dataset) + 1))
    return TaskSpec(
        name=f"rg:{dataset}",
        env_id=env_id,
        description=f"reasoning-gym's {dataset}, scored by its own score_answer",
        levels=levels,
        default_level=1,
        random_score={level: 0.0 for level in levels},
        optimum_score={level: 1.0 for level in levels},
        solver=functools.partial(solve, dataset) if has_answers(dataset) else None,
    )
