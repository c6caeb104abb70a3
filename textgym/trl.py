"""textgym's single-turn tasks in TRL: a task's prompts as a ``datasets.Dataset`` and its reward as a TRL reward
function, so that TRL's ``GRPOTrainer`` (or ``RLOOTrainer``) trains on the task in a few lines::

    from trl import GRPOConfig, GRPOTrainer

    from textgym.lm.models import load_causal_lm, load_tokenizer
    from textgym.trl import trl_task

    task = trl_task("instructions", split="train", model="embedded")
    trainer = GRPOTrainer(
        model=task.prepare_model(load_causal_lm("embedded")),  # the env's stop tokens end TRL's completions too
        reward_funcs=task.reward_func,
        train_dataset=task.dataset,
        processing_class=load_tokenizer("embedded"),
        args=GRPOConfig(output_dir="runs/trl", max_completion_length=task.max_new_tokens, beta=0.05),
    )
    trainer.train()

**The same reward as the env, by construction.** The reward function does not re-implement a task's scoring: it
plays each (prompt, completion) through the task's own env (its [TokenEpisodes][textgym.envs.core.TokenEpisodes]
core, one row per completion, the completion's token ids as the actions) and returns the last step's
``info["score"]``, the training reward the env pays (without any KL part). So a completion scores in TRL exactly
what the same tokens score in ``gym.make(...)``, a task's per-prompt data (the instruction's expected answer, the
constraints, the concepts: each reward model reads them from the prompt text) included; the dataset's
``task_prompt`` column carries that text to the reward function (TRL passes dataset columns as keyword arguments).

**The gold score.** ``task.gold_func`` is the same function returning ``info["gold_score"]``, what benchmarks
report (the training reward itself on most tasks; exact match on ``instructions`` with ``reward="partial"``,
fluent positivity on ``overoptimization``). The training reward function also logs the mean gold score of each
batch, and every other number of the env's last info (e.g. ``concepts``' ``coverage``), through TRL's
``log_metric`` as ``textgym/gold_score``, ``textgym/coverage``: they appear in ``trainer.state.log_history`` and
in whatever ``report_to`` writes.

**Multi-turn games** (``guess-number``, ``twenty-questions``, ``word-guess``) are not bridged. TRL 1.16's
``GRPOTrainer`` has a multi-turn interface, ``environment_factory`` (experimental): the environment's methods become
*tools*, and the model must call them in its chat template's tool-calling format, the trainer appending each tool's
result to the conversation. textgym's games are free-text conversations instead: the partner reads every turn the
agent writes and answers it, with no tool call to parse; the embedded SmolLM2-135M was not tuned for tool calls, and
its chat template renders none. Its other hook, ``rollout_func`` (experimental too), hands generation itself to the
caller. [trl_task][textgym.trl.trl_task] refuses a multi-turn task, saying so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from textgym.tasks import TaskSpec, get_task, task_names

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel

REFUSED_ENV_ARGUMENTS = {
    "reference_model": "the KL to the starting model is TRL's: GRPOConfig(beta=...)",
    "kl_coef": "the KL to the starting model is TRL's: GRPOConfig(beta=...)",
    "action_mask": "TRL samples from the whole vocabulary",
    "prompt_truncation": "TRL does not truncate prompts; the env checks that every prompt fits max_prompt_tokens",
}
"""Env arguments that have no meaning for a TRL run, and why."""


class TaskScorer:
    """Plays (prompt, completion) pairs through a task's env and returns each episode's last info.

    Args:
        envs: the task's vector env (``gym.make_vec(env_id, num_envs=N, ...)``); its episode core scores ``N``
            completions at a time, every completion that ends at the same token in one reward-model call.
    """

    def __init__(self, envs: Any) -> None:
        self.envs = envs
        self.core = envs.episodes
        self.prompt_ids = dict(zip(self.core.prompts, self.core.prompt_token_ids))
        self.completion_tokens = 0
        """Env tokens (steps, each stop token included) of every completion scored so far: what a textgym agent's
        budget counts."""

    def score(self, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        """The last-step info of each episode that writes ``completion_ids[i]`` after ``prompts[i]`` (the task's
        prompt text). An episode ends where the env ends it, at a stop token or ``max_new_tokens``; later tokens are
        not played."""
        if len(prompts) != len(completion_ids):
            raise ValueError(f"Got {len(prompts)} prompts for {len(completion_ids)} completions.")
        rows = self.core.input_ids.shape[0]
        infos: list[dict[str, Any]] = []
        for start in range(0, len(prompts), rows):
            infos += self._score_chunk(prompts[start : start + rows], completion_ids[start : start + rows])
        return infos

    def _score_chunk(self, prompts: Sequence[str], completion_ids: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
        core = self.core
        for row, text in enumerate(prompts):
            ids = self.prompt_ids.get(text) or core.encode_prompt(text, where=f"prompt {text[:40]!r}")
            core.start(row, ids, text)
        finals: list[dict[str, Any] | None] = [None] * len(prompts)
        step = 0
        while running := [row for row, info in enumerate(finals) if info is None]:
            short = [row for row in running if step >= len(completion_ids[row])]
            if short:
                raise ValueError(
                    f"A completion of {len(completion_ids[short[0]])} tokens ended before its episode did (no stop "
                    f"token {core.stop_token_ids.tolist()}, fewer than max_new_tokens={core.max_new_tokens}): generate "
                    "up to the env's max_new_tokens (GRPOConfig(max_completion_length=task.max_new_tokens)) and stop "
                    "at its stop tokens (task.prepare_model(model))."
                )
            actions = core.check_actions([completion_ids[row][step] for row in running], expected=len(running))
            _, terminated, truncated, step_infos = core.step(np.asarray(running), actions)
            for row, done, info in zip(running, terminated | truncated, step_infos):
                if done:
                    finals[row] = info
            step += 1
            self.completion_tokens += len(running)
        return finals  # type: ignore[return-value]  (every row ended: the loop ran until none was running)


class TaskReward:
    """A task's reward as a TRL reward function: ``reward_func(prompts, completions, **kwargs) -> list[float]``.

    TRL calls it with the prompts and completions of a generation batch, the completions' token ids
    (``completion_ids``), the dataset's other columns (``task_prompt``) and ``log_metric``. It also works by hand:
    ``reward(prompts, completions, task_prompt=[...])`` with text completions, which are then tokenised and closed by
    a stop token (re-tokenising text need not give back the sampled tokens: pass ``completion_ids`` where you have
    them).

    Args:
        scorer: plays the completions through the task's env.
        key: the info key returned: ``"score"`` (the training reward) or ``"gold_score"``.
        name: the function's name in TRL's logs (``rewards/{name}/mean``).
        log: log the mean of every other number of the env's last info through TRL's ``log_metric``.
    """

    def __init__(self, scorer: TaskScorer, key: str, name: str, log: bool = False) -> None:
        self.scorer, self.key, self.log = scorer, key, log
        self.__name__ = name

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        task_prompt: Sequence[str] | None = None,
        log_metric: Any = None,
        **kwargs: Any,
    ) -> list[float]:
        texts = list(task_prompt) if task_prompt is not None else [_message_text(p, "user") for p in prompts]
        if completion_ids is None:
            completion_ids = [self._encode(_message_text(c, "assistant")) for c in completions]
        infos = self.scorer.score(texts, completion_ids)
        if self.log and log_metric is not None:
            numbers = {k for info in infos for k, v in info.items() if isinstance(v, (int, float)) and k != self.key}
            for key in sorted(numbers):
                log_metric(f"textgym/{key}", float(np.mean([info[key] for info in infos])))
        return [float(info[self.key]) for info in infos]

    def _encode(self, text: str) -> list[int]:
        core = self.scorer.core
        ids = core.tokenizer(text, add_special_tokens=False)["input_ids"][: core.max_new_tokens]
        return [*ids, int(core.stop_token_ids[0])] if len(ids) < core.max_new_tokens else ids


@dataclass
class TRLTask:
    """A task's split in TRL's terms; made by [trl_task][textgym.trl.trl_task]."""

    spec: TaskSpec
    """The task (its normalisation: ``spec.normalized(gold_score, level)``)."""
    split: str
    level: int
    dataset: Dataset
    """One row per prompt of the split: ``prompt`` (a text, or one user message in a chat-template task, which TRL
    renders with the tokenizer's template exactly as the env does) and ``task_prompt`` (the task's prompt text)."""
    reward_func: TaskReward
    """The training reward (the env's ``info["score"]``); it logs ``textgym/gold_score`` and the info's other
    numbers."""
    gold_func: TaskReward
    """The gold score (``info["gold_score"]``), e.g. for ``reward_weights=[1, 0]`` or to score samples."""
    max_new_tokens: int
    """The env's episode length: TRL's ``max_completion_length``."""
    stop_token_ids: list[int]
    """The tokens that end the env's episodes (EOS, the generation config's, a chat template's end of turn)."""

    @property
    def completion_tokens(self) -> int:
        """Env tokens of every completion both functions scored so far (a textgym agent's budget unit)."""
        return self.reward_func.scorer.completion_tokens

    def prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        """Make ``model``'s generation stop where the env's episodes do (TRL stops at the generation config's EOS
        ids; a chat template's end-of-turn token may not be among them); returns ``model``."""
        model.generation_config.eos_token_id = list(self.stop_token_ids)
        return model

    def close(self) -> None:
        """Release the scoring env and its reward models."""
        self.reward_func.scorer.envs.close()


def trl_task(
    name: str,
    split: str = "train",
    level: int | None = None,
    model: str | os.PathLike | None = None,
    score_batch_size: int = 64,
    **env_kwargs: Any,
) -> TRLTask:
    """A single-turn task of the suite as a TRL dataset and reward functions.

    Args:
        name: the task (``textgym.tasks.task_names()``): ``positivity``, ``concepts``, ``instructions``,
            ``constraints``, ``overoptimization``.
        split: ``"train"`` or ``"test"``.
        level: the task's level; ``None``: its default.
        model: the policy's model, whose tokenizer the env uses (``None``: the embedded SmolLM2-135M). TRL's
            completion token ids are played as the env's actions, so they must be the same tokenizer's.
        score_batch_size: completions the env scores at a time.
        **env_kwargs: more arguments of the task env, e.g. ``reward="partial"`` (``instructions``) or a task's
            ``tiny_judges``. Not ``reference_model``, ``kl_coef``, ``action_mask``, ``prompt_truncation``.

    Raises:
        KeyError: an unknown task.
        ValueError: a multi-turn task, or an env argument a TRL run cannot honour.
        ImportError: ``datasets`` (installed with ``trl``) is missing.
    """
    spec = get_task(name)
    if spec.multi_turn:
        single = [n for n in task_names() if not get_task(n).multi_turn]
        raise ValueError(
            f"Task {name!r} is multi-turn: textgym.trl bridges single-turn tasks ({', '.join(single)}). TRL's "
            "multi-turn interface (GRPOTrainer's environment_factory) talks to environments through tool calls, "
            "not free-text turns; see the module's documentation."
        )
    for key, reason in REFUSED_ENV_ARGUMENTS.items():
        if key in env_kwargs:
            raise ValueError(f"trl_task does not take the env argument {key!r}: {reason}.")
    try:
        from datasets import Dataset
    except ImportError as error:
        raise ImportError("textgym.trl needs datasets, which comes with TRL: pip install trl") from error
    import gymnasium as gym

    import textgym  # noqa: F401  (registers the envs)

    level = spec.check_level(level)
    envs = gym.make_vec(
        spec.env_id, num_envs=score_batch_size, split=split, level=level, model=model, **env_kwargs
    ).unwrapped
    core = envs.episodes
    prompts = list(core.prompts)
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in prompts] if core.chat_template else prompts,
            "task_prompt": prompts,
        }
    )
    scorer = TaskScorer(envs)
    return TRLTask(
        spec=spec,
        split=split,
        level=level,
        dataset=dataset,
        reward_func=TaskReward(scorer, "score", name=spec.name.replace("-", "_"), log=True),
        gold_func=TaskReward(scorer, "gold_score", name=f"{spec.name.replace('-', '_')}_gold"),
        max_new_tokens=core.max_new_tokens,
        stop_token_ids=[int(i) for i in core.stop_token_ids],
    )


def _message_text(item: Any, role: str) -> str:
    """The text of a prompt or completion as TRL passes it: a string, or chat messages (the last ``role`` one's)."""
    if isinstance(item, str):
        return item
    return next(m["content"] for m in reversed(list(item)) if m["role"] == role)
