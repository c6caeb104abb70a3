"""What an RLHF run does ([RLHFConfig][agents.rlhf.config.RLHFConfig]), and the tasks it knows a gold for."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from reward_models.labelling.selection import STRATEGIES
from reward_models.labelling.simulated import RaterNoise, parse_raters

ALGOS = ("ppo", "grpo", "rloo")


@dataclass(frozen=True)
class FeedbackTask:
    """Prompts to ask for feedback on, and the gold a simulated panel follows."""

    env_kwargs: dict[str, Any]
    """``TextGen-v0`` arguments that set the prompts and their formatting (``prompts``, ``level``,
    ``chat_template``, ``max_prompt_tokens``); the loop adds ``split``, ``model`` and the reward models."""
    gold: str | None
    """A registered reward model: the simulated raters' judgement and the reported gold score."""
    gold_kwargs: dict[str, Any] = field(default_factory=dict)
    tiny_gold_kwargs: dict[str, Any] = field(default_factory=dict)
    """The gold's arguments for runs of the tiny test model (its fluency judged by the tiny model as well)."""


def feedback_task(name: str) -> FeedbackTask:
    """A built-in task: ``"positivity"`` (continue an opening; gold: fluent positivity, the gold of
    ``ProxyPositivity-v0``) or ``"concepts"`` (one sentence using given words; gold: coverage × fluency)."""
    if name == "positivity":
        return FeedbackTask({"level": 2}, "fluent-positivity", tiny_gold_kwargs={"fluency_kwargs": {"model": "tiny"}})
    if name == "concepts":
        from textgym.envs.concepts import instances

        prompts = list(instances(3))
        return FeedbackTask(
            {"prompts": prompts, "chat_template": True, "max_prompt_tokens": 96},
            "concepts",
            tiny_gold_kwargs={"model": "tiny"},
        )
    raise ValueError(f"Unknown RLHF task {name!r}: use 'positivity' or 'concepts', or give prompts (and a gold).")


TASKS = ("positivity", "concepts")


@dataclass
class RLHFConfig:
    """One iterated RLHF run: every field is also a ``textgym rlhf`` option."""

    out: str = "runs/rlhf"
    """The run folder: ``config.json``, ``round-N/`` for each round, ``rounds.csv``, ``rounds.png``."""
    model: str | None = None
    """The starting (SFT) policy and the reference of the KL: a local model directory, ``"tiny"``, or the
    embedded SmolLM2-135M-Instruct."""
    task: str | None = "positivity"
    """A built-in task (``TASKS``), or ``None`` with ``prompts``."""
    prompts: str | None = None
    """A prompt file or shipped set (as ``TextGen-v0``'s ``prompts``), instead of the task's prompts."""
    gold: str | None = None
    """A registered reward model as the gold, instead of the task's (needed by ``sim:`` raters without a task)."""
    gold_kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of ``gold``."""
    rounds: int = 2
    """Rounds of sample, select, label, train the reward model, RL, evaluate."""
    labels_per_round: int = 64
    """Labels collected each round (a label is one rater's ranking of one prompt's completions)."""
    completions_per_prompt: int = 4
    """``K``: completions sampled per prompt, which a rater ranks."""
    prompts_per_round: int | None = None
    """Prompts sampled each round; ``None``: twice the items the labels need. The items not labelled measure the
    reward model against the gold on the current policy's text."""
    selection: str = "random"
    """Which sampled items are labelled: ``"random"``, or ``"uncertainty"`` / ``"disagreement"`` of the current
    reward model (ensemble), as ``textgym label serve --strategy``; round 1, with no reward model yet, is random."""
    raters: str = "sim:1"
    """``"sim:N"``: N simulated raters following the gold; ``"human"``: people, on the labelling page."""
    overlap: int = 1
    """Raters per labelled item."""
    rater_temperature: float = 0.05
    """Simulated raters' Bradley–Terry temperature, in gold units
    ([RaterNoise][reward_models.labelling.simulated.RaterNoise])."""
    random_answers: float = 0.0
    """Share of simulated answers that are a random order."""
    rater_bias: float = 0.0
    """Standard deviation of the simulated raters' length biases."""
    ensemble: int = 1
    """Reward-model heads trained per round (seeds differ); the RL reward is their mean. ``disagreement`` needs 2+."""
    reward: dict[str, Any] = field(default_factory=dict)
    """[TrainConfig][reward_models.training.TrainConfig] fields for the reward model, e.g. ``{"epochs": 10}``."""
    ceiling: bool = False
    """Train on the gold itself, with no labels and no reward model: the ceiling that the loop's gold is compared
    with at equal RL tokens (needs a gold)."""
    algo: str = "grpo"
    """``"ppo"``, ``"grpo"`` or ``"rloo"``."""
    agent: dict[str, Any] = field(default_factory=dict)
    """The algorithm's settings over the benchmark's defaults ([agents.bench.hparams][agents.bench.hparams]), e.g.
    ``{"kl_coef": 0.1}``; ``num_envs`` sets the training env's width."""
    tokens_per_round: int = 8192
    """Env tokens of RL per round (whole updates: a round may pass it by less than one update)."""
    eval_prompts: int = 64
    """Test prompts at each evaluation (the same prompts every round)."""
    max_new_tokens: int = 32
    """Tokens per completion, when sampling for labels and in RL."""
    host: str = "127.0.0.1"
    """``human`` raters: the labelling page's interface."""
    port: int = 8765
    """``human`` raters: the labelling page's port."""
    token: str | None = None
    """``human`` raters: a shared access token raters type in with their name; needed on any interface but
    loopback. Not written to ``config.json``."""
    seed: int = 0
    """Seeds sampling, selection, simulated raters, reward models and RL."""
    device: str | None = None
    """Torch device; default ``cuda`` when available, else ``cpu``."""

    def __post_init__(self) -> None:
        if self.task is None and self.prompts is None:
            raise ValueError("give a task (positivity, concepts) or prompts.")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} (or None with prompts), got {self.task!r}.")
        if (self.panel_size or self.ceiling) and self.gold_name is None:
            raise ValueError(
                f"raters={self.raters!r} (or ceiling) needs a gold score, and no gold is known for these prompts: "
                "give gold=<a registered reward model> (--gold), use a built-in task, or raters='human'."
            )
        for name in ("rounds", "labels_per_round", "tokens_per_round", "eval_prompts", "max_new_tokens", "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.completions_per_prompt < 2:
            raise ValueError(
                f"completions_per_prompt must be at least 2 to compare, got {self.completions_per_prompt}."
            )
        if self.selection not in STRATEGIES:
            raise ValueError(f"selection must be one of {STRATEGIES}, got {self.selection!r}.")
        if self.selection == "disagreement" and self.ensemble < 2:
            raise ValueError("selection='disagreement' compares the heads of an ensemble: set ensemble to 2 or more.")
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}.")
        if self.overlap < 1 or (self.panel_size and self.overlap > self.panel_size):
            raise ValueError(f"overlap must be between 1 and the number of raters, got {self.overlap}.")
        if self.prompts_per_round is not None and self.prompts_per_round * self.overlap < self.labels_per_round:
            raise ValueError(
                f"labels_per_round={self.labels_per_round} is more than the batch can give: {self.prompts_per_round} "
                f"prompts x overlap {self.overlap}. Sample more prompts per round, or ask for fewer labels."
            )
        RaterNoise(self.rater_temperature, self.random_answers, self.rater_bias)  # checks the noise
        from reward_models.labelling.server import is_loopback

        if not self.panel_size and not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"host={self.host!r} serves the labelling page beyond this machine: give a shared token (--token) "
                "that raters type in with their name, or keep the default host 127.0.0.1."
            )

    @property
    def panel_size(self) -> int:
        """Simulated raters; 0 for people."""
        return parse_raters(self.raters)

    @property
    def items_per_round(self) -> int:
        """Items labelled each round: the labels over the overlap."""
        return math.ceil(self.labels_per_round / self.overlap)

    @property
    def sampled_prompts(self) -> int:
        """Prompts sampled each round."""
        return self.prompts_per_round or 2 * self.items_per_round

    @property
    def gold_name(self) -> str | None:
        """The gold: ``gold``, else the task's."""
        return self.gold or (feedback_task(self.task).gold if self.task else None)

    def feedback_task(self) -> FeedbackTask:
        """The task, with ``prompts`` and ``gold`` laid over it."""
        base = feedback_task(self.task) if self.task else FeedbackTask({}, None)
        env_kwargs = dict(base.env_kwargs)
        if self.prompts is not None:
            env_kwargs = {k: v for k, v in env_kwargs.items() if k not in ("prompts", "level")}
            env_kwargs["prompts"] = self.prompts
        if self.gold is not None:
            return FeedbackTask(env_kwargs, self.gold, dict(self.gold_kwargs), dict(self.gold_kwargs))
        return dataclasses.replace(base, env_kwargs=env_kwargs)

    def noise(self) -> RaterNoise:
        return RaterNoise(self.rater_temperature, self.random_answers, self.rater_bias)

    def to_dict(self) -> dict[str, Any]:
        """The settings (JSON), as ``config.json`` records them (the token left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "token"}
