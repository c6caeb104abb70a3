"""The benchmark's hyper-parameters: every algorithm's defaults and every per-task change, in this one file.

Each entry is a flat dict. Keys the runner reads itself:

* ``num_envs``: sub-envs of the training vector env (every trained algorithm);
* ``kl_coef`` (SB3 algorithms only): β of the env's per-step KL reward ``β · log π_ref(a_t | s_t)`` toward the
  starting model, completed by :class:`agents.sb3.KLPenaltyCallback`'s ``−β · log π(a_t | s_t)``: the return is
  the task reward minus ``β · KL(π ‖ π_ref)``, gradient included (see the README);
* ``top_p`` (``sb3-maskable-ppo``): the mass of the reference model's top-p action mask;
* ``format_reward`` (trained algorithms on multi-turn tasks): the training env's reward per turn its partner can
  read (the env's ``format_reward``; the gold score and the test env leave it out);
* ``turn_rewards`` (likewise): the weight of the training env's reward per turn for the progress its partner's
  answer makes (the env's ``turn_rewards``; ``true`` is 1; the gold score and the test env leave it out);
* ``n_max`` (``best-of-n``): the largest ``n``; evaluation point ``k`` at budget fraction ``f`` uses
  ``n = round(n_max ** f)`` samples per prompt (1, 2, 4, 8, 16 at 0, 25, 50, 75, 100 %).

Every other key goes to the algorithm: the config fields of :class:`agents.PPOConfig`, :class:`agents.GRPOConfig`
and :class:`agents.RLOOConfig`, ``trl-grpo``'s textgym-named settings or ``trl.GRPOConfig`` fields
(:class:`agents.bench.algorithms.TRLGRPO`), or the constructor arguments of SB3's ``PPO``, ``A2C`` and sb3-contrib's
``MaskablePPO``. ``--quick`` lays :data:`QUICK` over :data:`DEFAULTS`; :data:`TASK_OVERRIDES` comes last.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    # textgym's LM agents: batch_size episodes per update, all rolled out at once (num_envs = batch_size): a wide
    # decode step costs little more than a narrow one (GRPO 33 vs 21 tokens/s with 32 vs 8 sub-envs on one core).
    "ppo": {"num_envs": 16, "batch_size": 16, "minibatch_size": 8, "epochs": 4, "learning_rate": 1e-5, "kl_coef": 0.05},
    "grpo": {"num_envs": 32, "batch_size": 32, "group_size": 8, "minibatch_size": 8, "learning_rate": 1e-5},
    "rloo": {"num_envs": 32, "batch_size": 32, "group_size": 4, "minibatch_size": 8, "learning_rate": 1e-5},
    # TRL's GRPOTrainer under textgym grpo's settings and names (agents.bench.algorithms.TRLGRPO maps them onto
    # GRPOConfig); kl_coef is the one grpo takes from AgentConfig's defaults.
    "trl-grpo": {"batch_size": 32, "group_size": 8, "minibatch_size": 8, "learning_rate": 1e-5, "kl_coef": 0.05},
    # SB3 with the LM policy: n_steps × num_envs tokens (timesteps) per update.
    "sb3-ppo": {
        "num_envs": 8,
        "n_steps": 64,
        "batch_size": 64,
        "n_epochs": 4,
        "learning_rate": 1e-5,
        "kl_coef": 0.05,
    },
    "sb3-a2c": {"num_envs": 8, "n_steps": 8, "learning_rate": 1e-5, "kl_coef": 0.05},
    "sb3-maskable-ppo": {
        "num_envs": 8,
        "n_steps": 64,
        "batch_size": 64,
        "n_epochs": 4,
        "learning_rate": 1e-5,
        "kl_coef": 0.05,
        "top_p": 0.9,
    },
    "best-of-n": {"n_max": 16},
}
"""Defaults of every algorithm that has settings (``random``, ``zero-shot`` and ``oracle`` have none)."""

QUICK: dict[str, dict[str, Any]] = {
    # Tiny model, tiny budgets (--quick: one update): small updates and a large step size, so that few move the policy.
    "ppo": {"num_envs": 4, "batch_size": 8, "minibatch_size": 4, "epochs": 1, "learning_rate": 1e-3},
    "grpo": {"num_envs": 4, "batch_size": 8, "group_size": 4, "minibatch_size": 4, "learning_rate": 1e-3},
    "rloo": {"num_envs": 4, "batch_size": 8, "group_size": 4, "minibatch_size": 4, "learning_rate": 1e-3},
    "trl-grpo": {"batch_size": 8, "group_size": 4, "minibatch_size": 4, "learning_rate": 1e-3},
    "sb3-ppo": {"num_envs": 4, "n_steps": 16, "batch_size": 32, "n_epochs": 1, "learning_rate": 1e-3},
    "sb3-a2c": {"num_envs": 4, "n_steps": 8, "learning_rate": 1e-3},
    "sb3-maskable-ppo": {"num_envs": 4, "n_steps": 16, "batch_size": 32, "n_epochs": 1, "learning_rate": 1e-3},
    "best-of-n": {"n_max": 4},
}
"""What ``--quick`` changes (on ``model="tiny"``)."""

TASK_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {}
"""Per task, per algorithm: what differs from the defaults, e.g. ``{"positivity": {"ppo": {"kl_coef": 0.1}}}``."""


def hparams_for(task: str, algorithm: str, quick: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings of ``algorithm`` on ``task``: defaults, then ``--quick``'s, the task's and ``extra``."""
    settings = dict(DEFAULTS.get(algorithm, {}))
    if quick:
        settings.update(QUICK.get(algorithm, {}))
    settings.update(TASK_OVERRIDES.get(task, {}).get(algorithm, {}))
    settings.update(extra or {})
    return settings
