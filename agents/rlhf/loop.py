"""The InstructGPT loop, iterated: sample from the current policy, label, retrain the reward model on every label so
far, continue RL against it, evaluate, and again.

A run folder holds::

    config.json           the settings; --resume refuses other ones
    round-0/metrics.json  the starting policy on the test split
    round-N/batch.jsonl   K completions of the current policy for the round's train-split prompts
    round-N/labels/       the round's labels (a textgym label store: people's, or the simulated panel's)
    round-N/reward_model/ pairs.jsonl (every label so far, as pairs), member-0/ ..., report.json
    round-N/policy/       the policy after the round's RL: an agent checkpoint, loadable as a model directory
    round-N/rl.csv        the round's RL updates
    round-N/metrics.json  the round's evaluation on the test split (samples.jsonl: its completions)
    rounds.csv, rounds.png  one row per round; gold and proxy against labels used

A stage is done when its last file is in place (each written whole, then renamed), so a run killed at any point
and started again with ``resume=True`` redoes at most the stage it was in, and never a label: the label store
keeps every acknowledged one, and labelling continues from them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.rlhf.config import FeedbackTask, RLHFConfig
from agents.run_log import write_json_atomic
from textgym.lm.jsonl import write_jsonl

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.json"
ROUNDS_CSV = "rounds.csv"
RESUMABLE_CHANGES = {"out", "host", "port", "device"}
"""Settings a resumed run may change: where the folder is, the page is served and tensors go; not what is computed."""


def run_rlhf(config: RLHFConfig, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or, with ``resume``, continue) the loop of ``config``; return the rows of ``rounds.csv``.

    Raises:
        FileExistsError: ``config.out`` holds a run and ``resume`` is not set.
        ValueError: ``resume`` on a run of other settings, or bad settings (see
            [RLHFConfig][agents.rlhf.config.RLHFConfig]).
    """
    from agents.rlhf.report import write_rounds

    out = Path(config.out)
    loop = RLHFLoop(config, progress)  # checks the model before anything is written
    _claim(out, config, resume)
    if not (out / "round-0" / METRICS_FILE).exists():
        loop.evaluate(0)
    rows = write_rounds(out, config.rounds)
    for n in range(1, config.rounds + 1):
        if (loop.round_dir(n) / METRICS_FILE).exists():
            continue
        loop.run_round(n)
        rows = write_rounds(out, config.rounds)
    return rows


def _claim(out: Path, config: RLHFConfig, resume: bool) -> None:
    """Write ``config.json``, or check that the folder's is this run's."""
    path = out / CONFIG_FILE
    ours = config.to_dict()
    if path.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds an RLHF run. Pass --resume to continue it, or another --out.")
        theirs = json.loads(path.read_text())
        differ = sorted(
            k for k in set(ours) | set(theirs) if k not in RESUMABLE_CHANGES and ours.get(k) != theirs.get(k)
        )
        if differ:
            raise ValueError(
                f"{out} holds a run with other settings ({', '.join(differ)}); resume it with its own settings "
                f"(see {path}), or start the new run in another --out."
            )
    elif resume:
        raise FileNotFoundError(f"--resume: {out} holds no RLHF run ({CONFIG_FILE} is missing).")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, ours)


class RLHFLoop:
    """The stages of one run; [run_rlhf][agents.rlhf.loop.run_rlhf] calls them in order."""

    def __init__(self, config: RLHFConfig, progress: bool = True) -> None:
        from textgym.lm.models import TINY_MODEL, resolve_device, resolve_model_dir

        self.config, self.progress = config, progress
        self.out = Path(config.out)
        self.task: FeedbackTask = config.feedback_task()
        self.device = resolve_device(config.device)
        self.model = str(config.model) if config.model is not None else None
        _check_causal_lm(resolve_model_dir(self.model))
        self.gold_kwargs = self.task.tiny_gold_kwargs if self.model == TINY_MODEL else self.task.gold_kwargs
        self._gold = None

    def round_dir(self, n: int) -> Path:
        return self.out / f"round-{n}"

    def policy_dir(self, n: int) -> str | None:
        """The policy after round ``n``: its checkpoint, or the starting model for ``n = 0``."""
        return str(self.round_dir(n) / "policy") if n > 0 else self.model

    @property
    def gold(self) -> Any:
        """The gold reward model (built once), or ``None`` when the run has none."""
        if self._gold is None and self.task.gold is not None:
            from reward_models.registry import make_reward_model

            self._gold = make_reward_model(self.task.gold, **self.gold_kwargs)
        return self._gold

    def run_round(self, n: int) -> None:
        """Each stage of round ``n`` that is not done yet."""
        rd = self.round_dir(n)
        rd.mkdir(parents=True, exist_ok=True)
        timings = _read_json(rd / "timings.json")
        stages = (
            ("sample", lambda: (rd / "batch.jsonl").exists(), self.sample),
            ("label", lambda: self.labels_done(n), self.label),
            ("reward_model", lambda: (rd / "reward_model" / REPORT_FILE).exists(), self.train_reward_model),
            ("rl", lambda: (rd / "policy" / "trainer_state.json").exists(), self.reinforce),
            ("evaluate", lambda: (rd / METRICS_FILE).exists(), self.evaluate),
        )
        for name, done, run in stages:
            if self.config.ceiling and name in ("sample", "label", "reward_model"):
                continue  # the gold is the reward: nothing to label
            if done():
                continue
            start = time.perf_counter()
            run(n)
            if name != "evaluate":  # evaluate reads the file into the round's metrics
                timings[f"{name}_seconds"] = timings.get(f"{name}_seconds", 0.0) + time.perf_counter() - start
                write_json_atomic(rd / "timings.json", timings)

    # --- 1. sample ---------------------------------------------------------------------------------------------
    def sample(self, n: int) -> None:
        """K completions of the current policy for prompts of the train split, as a labelling batch."""
        from reward_models.labelling.items import write_items

        c = self.config
        pool = self.prompt_pool("train")
        rng = np.random.default_rng([c.seed, n])
        chosen = rng.choice(len(pool), size=c.sampled_prompts, replace=len(pool) < c.sampled_prompts)
        prompts = [pool[i] for i in chosen]
        completions = self.sample_completions(self.policy_dir(n - 1), prompts, c.completions_per_prompt, seed=n)
        tmp = self.round_dir(n) / "batch.jsonl.tmp"
        written = write_items(tmp, prompts, completions)
        if written * c.overlap < c.labels_per_round:
            tmp.unlink()
            raise ValueError(
                f"round {n}: only {written} of {len(prompts)} sampled prompts have two distinct completions, too few "
                f"for {c.labels_per_round} labels at overlap {c.overlap}: sample more prompts (prompts_per_round) or "
                "completions per prompt, or ask for fewer labels."
            )
        os.replace(tmp, self.round_dir(n) / "batch.jsonl")

    def prompt_pool(self, split: str) -> list[str]:
        """The prompts of a split of the task's prompt set."""
        envs = self.envs(split, reward_model=_zero_reward, num_envs=1)
        pool = list(envs.prompts)
        envs.close()
        return pool

    def envs(self, split: str, reward_model: Any, num_envs: int, gold: bool = False) -> Any:
        """A ``TextGen-v0`` vector env over the task's prompts of ``split``."""
        import gymnasium as gym

        import textgym  # noqa: F401  (registers the envs)

        kwargs = dict(self.task.env_kwargs)
        if gold and self.gold is not None:
            kwargs["gold_model"] = self.gold
        return gym.make_vec(
            "TextGen-v0",
            num_envs=num_envs,
            split=split,
            model=self.model,
            reward_model=reward_model,
            max_new_tokens=self.config.max_new_tokens,
            **kwargs,
        )

    def sample_completions(self, policy: str | None, prompts: Sequence[str], k: int, seed: int) -> list[list[str]]:
        """``k`` completions of each prompt by ``policy``, sampled by the rollout engine through the task's env (its
        prompt formatting and stop tokens), at temperature 1."""
        from agents.rollout import RolloutCollector
        from textgym.lm.models import load_causal_lm

        repeated = [p for p in prompts for _ in range(k)]
        envs = self.envs("train", reward_model=_zero_reward, num_envs=math.gcd(len(repeated), 32))
        lm = load_causal_lm(policy, device=self.device)
        batch = RolloutCollector(lm, envs, seed=self.config.seed * 1_000 + seed).collect_prompts(repeated)
        envs.close()
        return [batch.completions[i : i + k] for i in range(0, len(repeated), k)]

    # --- 2-3. select and label -----------------------------------------------------------------------------------
    def labels_done(self, n: int) -> bool:
        from reward_models.labelling.storage import LABELS_FILE, standing_labels

        path = self.round_dir(n) / "labels" / LABELS_FILE
        return path.exists() and len(standing_labels(path)) >= self.config.labels_per_round

    def label(self, n: int) -> None:
        """Order the round's items (at random, or most informative to the current reward model first), then label
        them: by the simulated panel, or by people on the labelling page, until the round's budget is met."""
        from reward_models.labelling.items import load_items
        from reward_models.labelling.selection import order_tasks
        from reward_models.labelling.simulated import SimulatedPanel
        from reward_models.labelling.storage import LabelStore

        c, rd = self.config, self.round_dir(n)
        items = load_items(rd / "batch.jsonl")
        strategy = c.selection if n > 1 else "random"  # round 1 has no reward model to ask
        models = self.reward_models(n - 1) if strategy != "random" else []
        tasks = order_tasks(items, strategy, "rank", models, seed=c.seed * 1_000 + n)
        store = LabelStore(rd / "labels", rd / "batch.jsonl", items)
        try:
            if c.panel_size:
                panel = SimulatedPanel(self.gold, c.panel_size, c.noise(), seed=c.seed * 1_000 + n)
                panel.label(store, tasks[: c.items_per_round], c.labels_per_round, c.overlap)
            else:
                self.wait_for_people(n, store, tasks)
        finally:
            store.close()

    def wait_for_people(self, n: int, store: Any, tasks: Sequence[Any]) -> None:
        """Serve the round's batch on the labelling page until the round's labels are in."""
        from reward_models.labelling.server import LabelApp, serve_until

        c = self.config
        app = LabelApp(store, tasks[: c.items_per_round], "rank", c.overlap, shared_token=c.token)
        host = f"[{c.host}]" if ":" in c.host else c.host
        print(
            f"round {n}: {len(store.labels())} of {c.labels_per_round} labels; raters open "
            f"http://{host}:{c.port}/?rater=THEIR_NAME{' (and type the access token)' if c.token else ''} "
            "(Ctrl-C stops; --resume continues, no label is lost)",
            flush=True,
        )
        serve_until(app, c.labels_per_round, c.host, c.port, progress=self.progress)

    # --- 4. reward model ---------------------------------------------------------------------------------------
    def train_reward_model(self, n: int) -> None:
        """Train the reward model (each head of the ensemble) on the labels of rounds 1 to ``n``; measure it on the
        held-out labels and, with a gold, on the gold's preferences among the round's unlabelled items."""
        from reward_models.labelling.export import export_labels
        from reward_models.preferences import load_preferences
        from reward_models.training import TrainConfig, pairwise_accuracy
        from reward_models.training import train_reward_model as train

        c, rd = self.config, self.round_dir(n)
        tmp = rd / "reward_model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        records = [record for m in range(1, n + 1) for record in export_labels(self.round_dir(m) / "labels")[0]]
        write_jsonl(tmp / "pairs.jsonl", records)
        pairs = load_preferences(tmp / "pairs.jsonl")
        cache: dict[str, Any] = {}
        members = []
        for k in range(c.ensemble):
            settings = {"progress": self.progress, "device": self.device, **c.reward, "seed": c.seed * 1_000 + k}
            result = train(pairs, TrainConfig(**settings), out_dir=tmp / f"member-{k}", embedding_cache=cache)
            members.append(result.report)
        report: dict[str, Any] = {
            "labels": sum(len(_standing(self.round_dir(m))) for m in range(1, n + 1)),
            "pairs": len(pairs),
            "eval_accuracy": _mean([m["eval"]["accuracy"] for m in members if m.get("eval")]),
            "best_epochs": [m.get("best_epoch") for m in members],
            "gold_accuracy": math.nan,
            "gold_pairs": 0,
        }
        gold_pairs = self.gold_preferences(n)
        if gold_pairs:
            model = _combine([_load_reward_model(tmp / f"member-{k}") for k in range(c.ensemble)])
            report["gold_accuracy"] = pairwise_accuracy(model, gold_pairs).accuracy
            report["gold_pairs"] = len(gold_pairs)
        write_json_atomic(tmp / REPORT_FILE, report)
        shutil.rmtree(rd / "reward_model", ignore_errors=True)
        os.replace(tmp, rd / "reward_model")

    def gold_preferences(self, n: int) -> list[Any]:
        """The gold's preferences between the completions of the round's items nobody labelled (ties left out)."""
        from itertools import combinations

        from reward_models.labelling.items import load_items
        from reward_models.preferences import PreferencePair

        if self.gold is None:
            return []
        labelled = {label["item"] for label in _standing(self.round_dir(n))}
        items = [item for item in load_items(self.round_dir(n) / "batch.jsonl") if item.id not in labelled]
        if not items:
            return []
        prompts = [item.prompt for item in items for _ in item.completions]
        completions = [text for item in items for text in item.completions]
        scores = iter(np.asarray(self.gold(prompts, completions), dtype=np.float64))
        pairs = []
        for item in items:
            gold = [next(scores) for _ in item.completions]
            for i, j in combinations(range(len(gold)), 2):
                if gold[i] != gold[j]:
                    better, worse = (i, j) if gold[i] > gold[j] else (j, i)
                    pairs.append(PreferencePair(item.prompt, item.completions[better], item.completions[worse]))
        return pairs

    def round_reward(self, n: int) -> Any:
        """What round ``n`` trains on: its reward model (the heads' mean), or the gold itself in a ceiling run."""
        return self.gold if self.config.ceiling else _combine(self.reward_models(n))

    def reward_models(self, n: int) -> list[Any]:
        """The heads of round ``n``'s reward model."""
        folder = self.round_dir(n) / "reward_model"
        return [_load_reward_model(folder / f"member-{k}") for k in range(self.config.ensemble)]

    # --- 5. RL -------------------------------------------------------------------------------------------------
    def reinforce(self, n: int) -> None:
        """Continue the policy from the last round against round ``n``'s reward model for ``tokens_per_round`` env
        tokens, the KL always to the starting model; save it as the round's policy."""
        from tqdm.auto import tqdm

        import agents
        from agents.bench.hparams import hparams_for

        c, rd = self.config, self.round_dir(n)
        settings = hparams_for("rlhf", c.algo, extra=c.agent)
        envs = self.envs("train", reward_model=self.round_reward(n), num_envs=settings.pop("num_envs"))
        agent_class = getattr(agents, c.algo.upper())
        settings = {"seed": c.seed, "device": c.device, "tensorboard": False, **settings}
        agent = agent_class(self.model, envs, **settings)  # the starting model: the reference of the KL
        if n > 1:
            agent.load(self.policy_dir(n - 1))  # the last round's weights, optimizer and random streams
        bar = tqdm(total=c.tokens_per_round, desc=f"round {n} {c.algo}", unit="token", disable=not self.progress)
        while agent.collector.tokens_generated < c.tokens_per_round:
            agent.learn(agent.episodes_seen + agent.config.batch_size, progress_bar=False)
            bar.update(min(agent.collector.tokens_generated, c.tokens_per_round) - bar.n)
            bar.set_postfix(reward=f"{agent.history[-1]['rollout/reward_mean']:.3f}")
        bar.close()
        _write_csv(rd / "rl.csv", [{"round": n, **row} for row in agent.history])
        tmp = rd / "policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        agent.save(tmp)
        write_json_atomic(
            tmp / "round.json", {"tokens": agent.collector.tokens_generated, "updates": len(agent.history)}
        )
        shutil.rmtree(rd / "policy", ignore_errors=True)
        os.replace(tmp, rd / "policy")
        envs.close()

    # --- 6. evaluate -------------------------------------------------------------------------------------------
    def evaluate(self, n: int) -> None:
        """The policy after round ``n`` on the test split: gold, the round's reward model (the proxy), KL to the
        starting model, diversity; with the round's labels and reward-model accuracy, into ``metrics.json``."""
        from agents.bench.evaluation import TestSet, completion_metrics
        from textgym.lm.models import load_causal_lm

        c, rd = self.config, self.round_dir(n)
        reward = self.round_reward(n) if n > 0 else (self.gold or _zero_reward)
        env_kwargs = {**self.task.env_kwargs, "reward_model": reward, "max_new_tokens": c.max_new_tokens}
        if self.gold is not None:
            env_kwargs["gold_model"] = self.gold
        level = env_kwargs.pop("level", None)
        test = TestSet("TextGen-v0", level, self.model, c.eval_prompts, c.seed, self.device, env_kwargs)
        policy = load_causal_lm(self.policy_dir(n), device=self.device) if n > 0 else test.reference
        batch = test.sample(policy)
        metrics = completion_metrics(batch, test.reference)
        test.close()
        rd.mkdir(parents=True, exist_ok=True)
        gold = [info["gold_score"] if self.gold is not None else None for info in batch.infos]
        samples = [
            {"prompt": p, "completion": c, "reward": info["score"], "gold": g}
            for p, c, info, g in zip(batch.prompts, batch.completions, batch.infos, gold)
        ]
        write_jsonl(rd / "samples.jsonl", samples)  # the test completions, to read what the policy writes
        previous = _read_json(self.round_dir(n - 1) / METRICS_FILE) if n > 0 else {}
        report = _read_json(rd / "reward_model" / REPORT_FILE) if n > 0 else {}
        rl = _read_json(rd / "policy" / "round.json") if n > 0 else {}
        row = {
            "round": n,
            "labels": report.get("labels", 0),
            "pairs": report.get("pairs", 0),
            "rl_tokens": previous.get("rl_tokens", 0) + rl.get("tokens", 0),
            "gold_score": metrics["gold_score"] if self.gold is not None else math.nan,
            "proxy_reward": metrics["reward"] if n > 0 else math.nan,
            "kl": metrics["kl"],
            "distinct_2": metrics["distinct_2"],
            "ref_perplexity": metrics["ref_perplexity"],
            "rm_eval_accuracy": report.get("eval_accuracy", math.nan),
            "rm_gold_accuracy": report.get("gold_accuracy", math.nan),
            **_read_json(rd / "timings.json"),
        }
        write_json_atomic(rd / METRICS_FILE, row)


def _zero_reward(prompts: list[str], completions: list[str]) -> np.ndarray:
    """The reward of envs that only sample (nothing is trained on it)."""
    return np.zeros(len(completions))


def _standing(round_dir: Path) -> list[dict[str, Any]]:
    from reward_models.labelling.storage import LABELS_FILE, standing_labels

    return standing_labels(round_dir / "labels" / LABELS_FILE)


def _load_reward_model(path: Path) -> Any:
    from reward_models.registry import make_reward_model

    return make_reward_model(str(path))


def _combine(members: Sequence[Any]) -> Any:
    """One reward model from the heads: itself, or the mean of their standardised scores."""
    if len(members) == 1:
        return members[0]
    from reward_models.learned import EncoderHeadReward
    from reward_models.proxy import ProxyEnsemble

    if all(isinstance(m, EncoderHeadReward) for m in members):
        return ProxyEnsemble(members, "mean")  # embeds each text once for all heads

    def mean(prompts: list[str], completions: list[str]) -> np.ndarray:
        return np.mean([np.asarray(m(prompts, completions), dtype=np.float64) for m in members], axis=0)

    return mean


def _check_causal_lm(model_dir: Path) -> None:
    """Refuse a model directory whose ``config.json`` names no causal LM, before anything runs."""
    config = json.loads((model_dir / "config.json").read_text())
    architectures = config.get("architectures") or []
    if architectures and not any(name.endswith("ForCausalLM") for name in architectures):
        raise ValueError(
            f"{model_dir} holds a {', '.join(architectures)}, not a causal language model (…ForCausalLM): the policy "
            "must be one (an SFT model, or a base or instruct model)."
        )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
