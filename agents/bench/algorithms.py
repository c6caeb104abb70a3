"""The benchmark's algorithms, each behind the same two calls: train up to a token budget, sample test episodes.

Budgets are counted in env tokens (env steps that generate a token), the one unit every algorithm shares:

* textgym's ``ppo``, ``grpo``, ``rloo`` train whole updates of ``batch_size`` episodes until the rollout
  engine has generated at least the target number of tokens (GRPO/RLOO's tokens include the episodes a
  wave drops); their learning-rate schedule spans the whole budget (:meth:`LMAgentAlgorithm.budget_episodes`);
* TRL's GRPOTrainer (``trl-grpo``, :class:`TRLGRPO`) counts the env tokens of the completions it scores, and
  trains whole updates (a generation batch and its gradient steps) until they reach the target;
* SB3's ``sb3-ppo``, ``sb3-a2c``, ``sb3-maskable-ppo`` count one timestep per token; they train until
  ``num_timesteps`` reaches the target, in whole rollouts of ``n_steps × num_envs`` timesteps;
* ``random``, ``zero-shot``, ``best-of-n`` and ``oracle`` train nothing (0 tokens). ``best-of-n`` spends its
  compute at test time instead: ``n`` samples per prompt, growing over the evaluation points; its KL is
  computed with ties from the ``n_max`` samples per prompt (:func:`~agents.bench.evaluation.best_of_n_kl`).

Each point records the tokens actually used, which may exceed the target by less than one update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agents.bench.evaluation import TestSet, best_of_n_kl, scripted_episodes
from agents.rollout import RolloutBatch
from textgym.lm.models import TINY_MODEL
from textgym.tasks import TaskSpec

TRAIN_ENV_KEYS = ("format_reward", "turn_rewards")
"""Settings of a trained algorithm that go to its training env, not to the algorithm (see :mod:`.hparams`)."""


@dataclass
class Cell:
    """One algorithm on one task at one level with one seed: the unit the runner computes and saves."""

    task: TaskSpec
    level: int
    algorithm: str
    seed: int
    model: str
    hparams: dict[str, Any]
    device: str | None = None
    budget_tokens: int | None = None
    """The whole training budget in env tokens; textgym's agents span their learning-rate schedule over it."""

    @property
    def env_kwargs(self) -> dict[str, Any]:
        """What every env of the cell, training and test, takes beside ``split``, ``level`` and ``model``."""
        return judge_kwargs(self.task, self.model)

    def test_set(self, episodes: int) -> TestSet:
        """The cell's test set of ``episodes`` prompts, its envs with the training env's judges."""
        from textgym.lm.models import resolve_device

        return TestSet(
            self.task.env_id, self.level, self.model, episodes, self.seed, resolve_device(self.device), self.env_kwargs
        )


def judge_kwargs(task: TaskSpec, model: str) -> dict[str, Any]:
    """The env arguments that choose ``task``'s judges for a run of ``model``: the task's ``tiny_judges`` when the
    model is ``"tiny"``, else none (the embedded judges).

    Keyed on the model, not on ``--quick``: a 135M judge scoring a random tiny model's text measures nothing and
    took most of a quick run's time, while a quick run of the embedded model keeps the real judges. The model is
    part of each cell's setting, so the cells of one setting always have the same judges.
    """
    return dict(task.tiny_judges) if str(model) == TINY_MODEL else {}


@dataclass
class TestEpisodes:
    """What an algorithm hands the evaluation: test episodes, and optionally their exact KL and sample count."""

    batch: RolloutBatch
    kl: float | None = None
    samples_per_prompt: int = 1


class Algorithm:
    """Base class: an algorithm that trains nothing, and whose evaluation does not depend on the budget."""

    description: ClassVar[str] = ""
    trains: ClassVar[bool] = False
    varies_over_points: ClassVar[bool] = False  # False: evaluated once, the result repeats at every point

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.train_tokens = 0
        self.train_seconds = 0.0

    @classmethod
    def tokens_per_update(cls, hparams: dict[str, Any], max_steps: int | None) -> int:
        """The most env tokens one update can take (0: trains nothing); the budget must cover one.

        Also checks ``hparams`` before anything is built, so bad settings fail before a run starts.
        """
        return 0

    def train_until(self, tokens: int) -> None:
        """Train until at least ``tokens`` env tokens have been used in all (nothing, here)."""

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        raise NotImplementedError

    def close(self) -> None:
        """Release envs and models."""

    def train_env_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The training env's arguments, taking the env's own keys (:data:`TRAIN_ENV_KEYS`) out of ``settings``."""
        kwargs = {"split": "train", "level": self.cell.level, "model": self.cell.model, **self.cell.env_kwargs}
        kwargs.update({key: settings.pop(key) for key in TRAIN_ENV_KEYS if key in settings})
        return kwargs


class Random(Algorithm):
    description = "uniformly random tokens (normalised score 0 by definition)"

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        import copy

        uniform = copy.deepcopy(test.reference)
        uniform.get_output_embeddings().weight.data.zero_()  # all logits 0: every token equally likely
        return TestEpisodes(test.sample(uniform))


class ZeroShot(Algorithm):
    description = "the starting model as it is"

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        return TestEpisodes(test.sample(test.reference))


class Oracle(Algorithm):
    description = "the task's scripted solver (normalised score 100 by definition)"

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        return TestEpisodes(scripted_episodes(test, self.cell.task))


class BestOfN(Algorithm):
    description = "n samples of the starting model per prompt, the best by the training reward; n grows with the budget"
    varies_over_points = True

    def __init__(self, cell: Cell) -> None:
        super().__init__(cell)
        self.n_max = int(cell.hparams["n_max"])
        if self.n_max < 1:
            raise ValueError(f"best-of-n: n_max must be at least 1, got {self.n_max}.")
        self._samples: RolloutBatch | None = None

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        n = max(1, round(self.n_max**fraction))
        if self._samples is None:  # n_max samples per prompt once; each point takes the first n (nested sets)
            self._samples = test.sample(test.reference, repeat=self.n_max)
        pool = np.array([info["score"] for info in self._samples.infos]).reshape(-1, self.n_max)  # (prompts, n_max)
        rows = [p * self.n_max + int(best) for p, best in enumerate(pool[:, :n].argmax(axis=1))]
        # The KL of best-of-n with ties, over the whole pool: n_max samples describe π_ref better than n.
        return TestEpisodes(self._samples.rows(rows), kl=best_of_n_kl(pool, n), samples_per_prompt=n)


class LMAgentAlgorithm(Algorithm):
    """textgym's ``PPO``, ``GRPO`` or ``RLOO`` (:mod:`agents`), evaluated through the rollout engine."""

    trains = True
    varies_over_points = True
    agent_name: ClassVar[str]

    def __init__(self, cell: Cell) -> None:
        super().__init__(cell)
        import gymnasium as gym

        import agents

        settings = dict(cell.hparams)
        num_envs = settings.pop("num_envs")
        agent_class = getattr(agents, self.agent_name)
        envs = gym.make_vec(cell.task.env_id, num_envs=num_envs, **self.train_env_kwargs(settings))
        settings = {"seed": cell.seed, "device": cell.device, "tensorboard": False, **settings}
        self.agent = agent_class(cell.model, envs, **settings)

    @classmethod
    def tokens_per_update(cls, hparams: dict[str, Any], max_steps: int | None) -> int:
        import agents

        settings = {k: v for k, v in hparams.items() if k not in ("num_envs", *TRAIN_ENV_KEYS)}
        config = getattr(agents, cls.agent_name).config_class(**settings)  # validates the settings
        return config.batch_size * (max_steps or 1)

    def train_until(self, tokens: int) -> None:
        agent, start = self.agent, time.perf_counter()
        while agent.collector.tokens_generated < tokens:
            episodes = agent.episodes_seen + agent.config.batch_size  # one more update
            agent.learn(episodes, progress_bar=False, schedule_episodes=self.budget_episodes())
        self.train_seconds += time.perf_counter() - start
        self.train_tokens = agent.collector.tokens_generated

    def budget_episodes(self) -> int | None:
        """The episodes the whole token budget is expected to take, the span of the learning-rate schedule.

        An estimate, made again before each update: the budget over the env tokens per episode so far (before
        the first update, the most an episode can take). Every update starts inside it (the loop stops at the
        budget), and the last one ends about where it does. ``None`` without a budget: each ``learn`` call
        extends the schedule to its own end."""
        agent, budget = self.agent, self.cell.budget_tokens
        if budget is None:
            return None
        seen = agent.episodes_seen
        per_episode = agent.collector.tokens_generated / seen if seen else agent.envs.episodes.max_steps
        return math.ceil(budget / per_episode)

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        return TestEpisodes(test.sample(self.agent.policy.generator_model))

    def close(self) -> None:
        self.agent.envs.close()


class PPO(LMAgentAlgorithm):
    description = "textgym PPO (value head, GAE, KL penalty to the starting model)"
    agent_name = "PPO"


class GRPO(LMAgentAlgorithm):
    description = "textgym GRPO (group-normalised advantages, KL in the loss)"
    agent_name = "GRPO"


class RLOO(LMAgentAlgorithm):
    description = "textgym RLOO (leave-one-out baseline, KL in the reward)"
    agent_name = "RLOO"


class TRLGRPO(Algorithm):
    """TRL's ``GRPOTrainer`` on the task's train split through [textgym.trl][textgym.trl] (``pip install trl``).

    Settings under textgym GRPO's names, mapped onto ``GRPOConfig``: ``batch_size`` completions per update
    (``generation_batch_size``), ``group_size`` per prompt (``num_generations``), ``minibatch_size`` per gradient step
    (``per_device_train_batch_size``), ``epochs`` (``num_iterations``), ``kl_coef`` (``beta``), ``clip_range``
    (``epsilon``), ``learning_rate``, ``precision`` (``bf16``); any other key is a ``GRPOConfig`` field. textgym's
    GRPO defaults are fixed where TRL's differ: ``loss_type="grpo"`` (each completion's token mean, then the mean:
    textgym's ``loss_type="sequence"``), a constant learning rate, no gradient checkpointing. Both use group-std
    scaled advantages, the k3 KL estimator in the loss and temperature 1 over the whole vocabulary.

    The budget counts the env tokens of the completions the reward function scored (each stop token included), as
    textgym's rollout engine counts them. ``GRPOTrainer.train()`` runs once, in a thread of its own, and pauses after
    every update (a generation batch and its gradient steps) until :meth:`train_until` asks for more; the test
    episodes are sampled from the trained model, paused, by the rollout engine like every other algorithm's.
    """

    description = "TRL's GRPOTrainer through textgym.trl (pip install trl), textgym grpo's batch, groups and β"
    trains = True
    varies_over_points = True
    NAMES: ClassVar[dict[str, str]] = {
        "batch_size": "generation_batch_size",
        "group_size": "num_generations",
        "minibatch_size": "per_device_train_batch_size",
        "epochs": "num_iterations",
        "kl_coef": "beta",
        "clip_range": "epsilon",
    }
    """textgym's setting names and the ``GRPOConfig`` fields they become."""

    def __init__(self, cell: Cell) -> None:
        super().__init__(cell)
        import tempfile
        import threading

        import torch
        from trl import GRPOConfig, GRPOTrainer

        from agents.precision import resolve_precision
        from textgym.lm.models import load_causal_lm, load_tokenizer, resolve_device
        from textgym.trl import trl_task

        settings = {self.NAMES.get(k, k): v for k, v in cell.hparams.items() if k != "num_envs"}
        device = resolve_device(cell.device)
        bf16 = resolve_precision(settings.pop("precision", "auto"), torch.device(device)) == "bf16"
        batch = settings["generation_batch_size"]
        self.task = trl_task(cell.task.name, "train", cell.level, cell.model, score_batch_size=batch, **cell.env_kwargs)
        self.steps_per_update = batch // settings["per_device_train_batch_size"] * settings.get("num_iterations", 1)
        # Enough updates for the budget, every completion taking at least one token (the rate is constant, so this
        # bound sets nothing else); without a budget, no bound.
        updates = math.ceil(cell.budget_tokens / batch) if cell.budget_tokens else 10**9
        self.output_dir = tempfile.TemporaryDirectory(prefix="textgym-trl-grpo-")
        config = GRPOConfig(
            **{
                "output_dir": self.output_dir.name,
                "max_steps": self.steps_per_update * updates,
                "max_completion_length": self.task.max_new_tokens,
                "loss_type": "grpo",
                "scale_rewards": "group",
                "lr_scheduler_type": "constant",
                "gradient_checkpointing": False,
                "bf16": bf16,
                "seed": cell.seed,
                "use_cpu": device == "cpu",
                "report_to": [],
                "save_strategy": "no",
                "logging_steps": self.steps_per_update,
                "disable_tqdm": True,
                **settings,
            }
        )
        self.model = self.task.prepare_model(load_causal_lm(cell.model))
        self.pause = _pause_after_updates(self.steps_per_update, lambda: self.task.completion_tokens)
        self.trainer = GRPOTrainer(
            model=self.model,
            reward_funcs=self.task.reward_func,
            args=config,
            train_dataset=self.task.dataset,
            processing_class=load_tokenizer(cell.model),
            callbacks=[self.pause],
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._train, name="trl-grpo", daemon=True)

    @classmethod
    def tokens_per_update(cls, hparams: dict[str, Any], max_steps: int | None) -> int:
        try:
            import trl  # noqa: F401
        except ImportError as error:
            raise ImportError("trl-grpo needs TRL: pip install trl (or textgym[bench]).") from error
        batch, group, minibatch = (int(hparams[k]) for k in ("batch_size", "group_size", "minibatch_size"))
        if group < 2 or batch % group or batch % minibatch:
            raise ValueError(
                f"trl-grpo: batch_size ({batch}) must be a multiple of group_size ({group}, at least 2: a generation "
                f"batch holds whole groups) and of minibatch_size ({minibatch}, the completions of a gradient step)."
            )
        return batch * (max_steps or 1)

    def train_until(self, tokens: int) -> None:
        if tokens <= self.train_tokens:
            return
        start = time.perf_counter()
        self.pause.target = tokens
        self.pause.paused.clear()
        if self.thread.ident is None:
            self.thread.start()
        else:
            self.pause.resume.set()
        while not self.pause.paused.wait(0.05) and self.thread.is_alive():
            pass
        if self.error is not None:
            raise RuntimeError("TRL's GRPOTrainer failed; see the error above.") from self.error
        self.train_seconds += time.perf_counter() - start
        self.train_tokens = self.task.completion_tokens
        if self.train_tokens < tokens:
            raise RuntimeError(f"TRL's GRPOTrainer stopped at max_steps with {self.train_tokens} of {tokens} tokens.")

    def _train(self) -> None:
        try:
            self.trainer.train()
        except BaseException as error:  # handed to the caller of train_until
            self.error = error
        finally:
            self.pause.paused.set()

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        return TestEpisodes(test.sample(self.model.eval()))  # the trainer sets train mode again at its next step

    def close(self) -> None:
        if self.thread.is_alive():
            self.pause.stop = True
            self.pause.resume.set()
            self.thread.join()
        self.task.close()
        self.output_dir.cleanup()


def _pause_after_updates(steps_per_update: int, tokens_used: Callable[[], int]) -> Any:
    """A ``TrainerCallback`` that, after every update (``steps_per_update`` steps), waits while the tokens used are at
    least its ``target``: it sets ``paused`` and waits for ``resume``; with ``stop`` set, it ends the training."""
    import threading

    from transformers import TrainerCallback  # here: importing transformers' trainer takes about a second

    class PauseAfterUpdates(TrainerCallback):
        def __init__(self) -> None:
            self.target, self.stop = 0, False
            self.paused, self.resume = threading.Event(), threading.Event()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step % steps_per_update:
                return control
            while tokens_used() >= self.target and not self.stop:
                self.paused.set()
                self.resume.wait()
                self.resume.clear()
            control.should_training_stop = self.stop
            return control

    return PauseAfterUpdates()


class SB3Algorithm(Algorithm):
    """Stable-Baselines3 / sb3-contrib with the LM policy (:mod:`agents.sb3`) on the batched SB3 vec env."""

    trains = True
    varies_over_points = True
    masked: ClassVar[bool] = False

    def __init__(self, cell: Cell) -> None:
        super().__init__(cell)
        from agents.sb3 import make_sb3_vec_env

        settings = dict(cell.hparams)
        num_envs, kl_coef, top_p = settings.pop("num_envs"), settings.pop("kl_coef", 0.0), settings.pop("top_p", None)
        env_kwargs = self.train_env_kwargs(settings)
        self.kl_coef = kl_coef
        if kl_coef or self.masked:
            env_kwargs.update(reference_model=cell.model, kl_coef=kl_coef)
        if self.masked:
            env_kwargs.update(action_mask="top_p", top_p=top_p)
        # Masked policies are evaluated under the same mask, on a test env with the reference model.
        self.eval_env_kwargs = {"reference_model": cell.model, "action_mask": "top_p", "top_p": top_p}
        venv = make_sb3_vec_env(cell.task.env_id, n_envs=num_envs, seed=cell.seed, **env_kwargs)
        algorithm_class, policy_class = self._classes()
        self.model = algorithm_class(
            policy_class,
            venv,
            policy_kwargs={"model": cell.model},
            seed=cell.seed,
            device=cell.device or "auto",
            verbose=0,
            **settings,
        )

    @staticmethod
    def _classes() -> tuple[type, type]:
        """The SB3 algorithm and policy classes."""
        raise NotImplementedError

    @classmethod
    def tokens_per_update(cls, hparams: dict[str, Any], max_steps: int | None) -> int:
        import inspect

        algorithm_class = cls._classes()[0]
        n_steps = hparams.get("n_steps", inspect.signature(algorithm_class).parameters["n_steps"].default)
        return int(n_steps) * int(hparams["num_envs"])

    def train_until(self, tokens: int) -> None:
        start = time.perf_counter()
        if tokens > self.model.num_timesteps:
            from agents.sb3 import KLPenaltyCallback

            callback = KLPenaltyCallback(self.kl_coef) if self.kl_coef else None  # with the env's β·log π_ref: β·KL
            self.model.learn(
                tokens - self.model.num_timesteps, callback=callback, reset_num_timesteps=False, progress_bar=False
            )
        self.train_seconds += time.perf_counter() - start
        self.train_tokens = self.model.num_timesteps

    def test_episodes(self, test: TestSet, fraction: float) -> TestEpisodes:
        lm = self.model.policy.features_extractor.lm  # its output layer is the policy's action_net
        if self.masked:
            return TestEpisodes(test.sample(lm, masked=True, **self.eval_env_kwargs))
        return TestEpisodes(test.sample(lm))

    def close(self) -> None:
        self.model.get_env().close()


class SB3PPO(SB3Algorithm):
    description = "Stable-Baselines3 PPO with the LM actor-critic policy"

    @staticmethod
    def _classes() -> tuple[type, type]:
        from stable_baselines3 import PPO

        from agents.sb3 import LMActorCriticPolicy

        return PPO, LMActorCriticPolicy


class SB3A2C(SB3Algorithm):
    description = "Stable-Baselines3 A2C with the LM actor-critic policy"

    @staticmethod
    def _classes() -> tuple[type, type]:
        from stable_baselines3 import A2C

        from agents.sb3 import LMActorCriticPolicy

        return A2C, LMActorCriticPolicy


class SB3MaskablePPO(SB3Algorithm):
    description = "sb3-contrib MaskablePPO, actions masked to the starting model's top-p tokens"
    masked = True

    @staticmethod
    def _classes() -> tuple[type, type]:
        from sb3_contrib import MaskablePPO

        from agents.sb3 import MaskableLMActorCriticPolicy

        return MaskablePPO, MaskableLMActorCriticPolicy


ALGORITHMS: dict[str, type[Algorithm]] = {
    "random": Random,
    "zero-shot": ZeroShot,
    "best-of-n": BestOfN,
    "ppo": PPO,
    "grpo": GRPO,
    "trl-grpo": TRLGRPO,
    "rloo": RLOO,
    "sb3-ppo": SB3PPO,
    "sb3-a2c": SB3A2C,
    "sb3-maskable-ppo": SB3MaskablePPO,
    "oracle": Oracle,
}
"""Every algorithm the runner knows, by the name ``--algos`` takes."""

DEFAULT_ALGORITHMS = tuple(name for name in ALGORITHMS if name not in ("oracle", "trl-grpo"))
"""What a run compares unless told otherwise; ``oracle`` (the scripted solver) and ``trl-grpo`` (an optional
dependency) are allowed in any run."""
