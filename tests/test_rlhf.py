"""``textgym rlhf``: the simulated panel, the loop end to end on the tiny model, resuming after a kill at every
stage, the human mode waiting for labels, and the errors on bad input."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agents.rlhf import RLHFConfig, run_rlhf
from agents.rlhf.loop import RLHFLoop
from reward_models.labelling.items import Item
from reward_models.labelling.simulated import RaterNoise, SimulatedPanel, parse_raters
from reward_models.labelling.storage import LabelStore, Task, standing_labels


def length_gold(prompts, completions):
    """A gold that prefers longer completions: easy to read off a ranking."""
    return np.array([len(c) / 10 for c in completions], dtype=np.float64)


def make_items(path: Path, n: int = 6, k: int = 4) -> list[Item]:
    items = [Item(str(i), f"prompt {i}", tuple("x" * (3 * j + 1) for j in range(k))) for i in range(n)]
    path.write_text("".join(json.dumps(item.to_record()) + "\n" for item in items))
    return items


# --- the simulated panel --------------------------------------------------------------------------------------
def test_parse_raters():
    assert parse_raters("sim:3") == 3 and parse_raters("human") == 0
    for bad in ("sim:0", "sim:", "sim3", "people"):
        with pytest.raises(ValueError, match="sim:N"):
            parse_raters(bad)


def test_cold_raters_rank_by_the_gold_and_random_ones_do_not():
    item = Item("a", "p", (" short", " a longer one", " the longest of them all", " mid size"))
    task = Task(item, (0, 1, 2, 3))
    gold = length_gold(["p"] * 4, list(item.completions))
    cold = SimulatedPanel(length_gold, 1, RaterNoise(temperature=1e-4))
    assert cold.rank(0, task, gold) == [[2], [1], [3], [0]]
    noisy = SimulatedPanel(length_gold, 1, RaterNoise(random_answers=1.0))
    firsts = {noisy.rank(0, Task(Item(str(i), "p", item.completions), task.shown), gold)[0][0] for i in range(40)}
    assert firsts == {0, 1, 2, 3}  # a random order puts every completion first sometimes


def test_bradley_terry_marginals_follow_the_temperature():
    """P(better first) = σ(Δ / τ) for a pair: Δ = 0.1, τ = 0.1 gives 0.731."""
    item_texts = (" a", " b")
    gold = np.array([0.6, 0.5])
    panel = SimulatedPanel(length_gold, 1, RaterNoise(temperature=0.1), seed=3)
    wins = np.mean([panel.rank(0, Task(Item(str(i), "p", item_texts), (0, 1)), gold)[0] == [0] for i in range(4000)])
    assert abs(wins - 1 / (1 + np.exp(-1.0))) < 0.03


def test_label_fills_the_budget_with_overlap_and_resumes_identically(tmp_path):
    items = make_items(tmp_path / "batch.jsonl")
    tasks = [Task(item, tuple(range(len(item.completions)))) for item in items]
    panel = SimulatedPanel(length_gold, 3, RaterNoise(temperature=0.5, bias=0.2), seed=1)
    whole = LabelStore(tmp_path / "whole", tmp_path / "batch.jsonl", items)
    assert panel.label(whole, tasks, budget=8, overlap=2) == 8
    labels = whole.labels()
    assert [len({r["rater"] for r in labels if r["item"] == t.item.id}) for t in tasks[:4]] == [2, 2, 2, 2]
    whole.close()

    part = LabelStore(tmp_path / "part", tmp_path / "batch.jsonl", items)
    panel.label(part, tasks, budget=3, overlap=2)  # stopped after three labels
    part.close()
    part = LabelStore(tmp_path / "part", tmp_path / "batch.jsonl", items)
    assert panel.label(part, tasks, budget=8, overlap=2) == 5
    key = lambda r: (r["rater"], r["item"], r["ranking"])  # noqa: E731
    assert [key(r) for r in part.labels()] == [key(r) for r in labels]
    part.close()


# --- the loop ---------------------------------------------------------------------------------------------------
def tiny_config(out: Path, **overrides) -> RLHFConfig:
    settings = dict(
        out=str(out),
        model="tiny",
        task="positivity",
        gold="length",  # no language-model judge (fast), and it tells the tiny model's random texts apart
        gold_kwargs={"target": 40, "unit": "chars"},
        rounds=2,
        labels_per_round=6,
        completions_per_prompt=3,
        raters="sim:2",
        ensemble=2,
        reward={"epochs": 2, "hidden_size": 16},
        agent={"num_envs": 4, "batch_size": 8, "group_size": 4, "minibatch_size": 4, "learning_rate": 1e-3},
        tokens_per_round=60,  # two updates of 8 episodes of up to 6 tokens
        eval_prompts=8,
        max_new_tokens=6,
    )
    settings.update(overrides)
    return RLHFConfig(**settings)


def read_rounds(out: Path) -> list[dict[str, str]]:
    with open(out / "rounds.csv") as file:
        return list(csv.DictReader(file))


def run_outputs(out: Path) -> dict:
    """What a run computed, without its timings."""
    rounds = [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in read_rounds(out)]
    labels = {
        n: [
            (r["rater"], r["item"], r["ranking"])
            for r in standing_labels(out / f"round-{n}" / "labels" / "labels.jsonl")
        ]
        for n in (1, 2)
    }
    pairs = {n: (out / f"round-{n}" / "reward_model" / "pairs.jsonl").read_text() for n in (1, 2)}
    weights = (out / "round-2" / "policy" / "model.safetensors").read_bytes()
    return {"rounds": rounds, "labels": labels, "pairs": pairs, "weights": weights}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rlhf") / "run"
    rows = run_rlhf(tiny_config(out), progress=False)
    return out, rows


def test_loop_end_to_end_two_rounds(reference_run):
    out, rows = reference_run
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["labels"] for r in rows] == [0, 6, 12]  # every label so far trains each round's reward model
    assert rows[2]["pairs"] == 2 * rows[1]["pairs"] == 2 * 6 * 3  # a ranking of K = 3 holds 3 pairs
    assert rows[1]["rl_tokens"] >= 60 and rows[2]["rl_tokens"] >= rows[1]["rl_tokens"] + 60
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4) and rows[2]["kl"] > 1e-3  # RL moved the policy
    for n in (1, 2):
        report = json.loads((out / f"round-{n}" / "reward_model" / "report.json").read_text())
        assert report["gold_pairs"] > 0 and 0 <= report["gold_accuracy"] <= 1  # unlabelled items, judged by the gold
        assert (out / f"round-{n}" / "reward_model" / "member-1").is_dir()
        raters = {r["rater"] for r in standing_labels(out / f"round-{n}" / "labels" / "labels.jsonl")}
        assert raters == {"sim-0", "sim-1"}
    assert (out / "rounds.png").stat().st_size > 0
    samples = [json.loads(line) for line in (out / "round-2" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(isinstance(s["completion"], str) and s["gold"] is not None for s in samples)
    state = json.loads((out / "round-2" / "policy" / "trainer_state.json").read_text())
    assert (
        state["episodes_seen"]
        > json.loads((out / "round-1" / "policy" / "trainer_state.json").read_text())["episodes_seen"]
    )  # round 2 continued round 1's policy


def test_resume_after_a_kill_at_every_stage_gives_the_same_run(reference_run, tmp_path, monkeypatch):
    """Stop the run before, inside and after each stage of round 1 and at the start of round 2; each time resume.
    Labels, pairs, rows and the final weights equal the uninterrupted run's."""
    import agents
    import reward_models.training

    stops = {
        ("sample", 1, "after"), ("label", 1, "inside"), ("train_reward_model", 1, "inside"),
        ("reinforce", 1, "inside"), ("reinforce", 1, "after"), ("evaluate", 1, "before"), ("sample", 2, "before"),
    }  # fmt: skip
    state = {"stage": None, "round": None}

    def maybe_stop(stage: str, n: int, when: str) -> None:
        if (stage, n, when) in stops:
            stops.discard((stage, n, when))
            raise KeyboardInterrupt

    for stage in ("sample", "label", "train_reward_model", "reinforce", "evaluate"):
        original = getattr(RLHFLoop, stage)

        def wrapped(self, n, _original=original, _stage=stage):
            state.update(stage=_stage, round=n)
            maybe_stop(_stage, n, "before")
            _original(self, n)
            maybe_stop(_stage, n, "after")

        monkeypatch.setattr(RLHFLoop, stage, wrapped)

    def inside(stage, calls):
        count = {"n": 0}

        def hook():
            count["n"] += 1
            if count["n"] == calls:
                maybe_stop(stage, state["round"], "inside")

        return hook

    for target, attr, stage, calls in (
        (LabelStore, "submit", "label", 3),  # after two labels are on disk
        (agents.GRPO, "learn", "reinforce", 2),  # after one update
    ):
        hook, original = inside(stage, calls), getattr(target, attr)

        def patched(self, *args, _hook=hook, _original=original, **kwargs):
            _hook()
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(target, attr, patched)
    train, rm_hook = reward_models.training.train_reward_model, inside("train_reward_model", 2)

    def train_second_member_stops(*args, **kwargs):
        rm_hook()  # the first head is trained, the second is not
        return train(*args, **kwargs)

    monkeypatch.setattr(reward_models.training, "train_reward_model", train_second_member_stops)

    out = tmp_path / "run"
    config = tiny_config(out)
    interrupted = 0
    while True:
        try:
            run_rlhf(config, resume=(out / "config.json").exists(), progress=False)
            break
        except KeyboardInterrupt:
            interrupted += 1
    assert not stops and interrupted == 7
    assert run_outputs(out) == run_outputs(reference_run[0])
    assert not list(out.rglob("*.tmp"))  # no half-written stage is left behind


def start_human_round(out: Path) -> tuple[str, threading.Thread, dict]:
    """One round in human mode in a thread, its page on a free loopback port: the URL, the thread, its result."""
    from reward_models.labelling.server import bind

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    config = tiny_config(out, raters="human", rounds=1, labels_per_round=3, ensemble=1, port=port)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(rows=run_rlhf(config, progress=False)), daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}", thread, result


def test_human_round_waits_for_labels_then_continues(tmp_path):
    """The loop serves the round's batch and waits; labels posted through the page's API let it go on."""
    import httpx

    out = tmp_path / "run"
    url, thread, result = start_human_round(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            task = httpx.get(f"{url}/api/next", headers={"X-Rater": "alice"}, timeout=5).json()["task"]
            break
        except httpx.TransportError:
            time.sleep(0.2)  # the round is still sampling
    else:
        pytest.fail("the labelling page never came up")
    assert (out / "round-1" / "labels").is_dir() and not (out / "round-1" / "reward_model").exists()  # waiting
    for _ in range(3):
        ranking = [c["index"] for c in task["completions"]]
        answer = httpx.post(
            f"{url}/api/label", json={"item": task["item"], "ranking": ranking}, headers={"X-Rater": "alice"}, timeout=5
        ).json()
        task = answer["task"]
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert [r["labels"] for r in result["rows"]] == [0, 3]
    assert np.isfinite(result["rows"][1]["gold_score"])  # the task's gold still judges the test split


def test_ceiling_trains_on_the_gold_without_labels(tmp_path):
    rows = run_rlhf(tiny_config(tmp_path / "run", rounds=1, ceiling=True), progress=False)
    assert [r["labels"] for r in rows] == [0, 0] and rows[1]["rl_tokens"] >= 60
    assert rows[1]["proxy_reward"] == pytest.approx(rows[1]["gold_score"])  # the reward is the gold
    assert not (tmp_path / "run" / "round-1" / "labels").exists()
    with pytest.raises(ValueError, match="needs a gold"):
        RLHFConfig(task=None, prompts="openings", raters="human", ceiling=True)


# --- bad input -------------------------------------------------------------------------------------------------
def test_bad_settings_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="needs a gold"):
        RLHFConfig(task=None, prompts="openings", raters="sim:2")
    with pytest.raises(ValueError, match="more than the batch"):
        RLHFConfig(labels_per_round=50, prompts_per_round=10)
    with pytest.raises(ValueError, match="disagreement"):
        RLHFConfig(selection="disagreement", ensemble=1)
    with pytest.raises(ValueError, match="overlap"):
        RLHFConfig(raters="sim:2", overlap=3)
    with pytest.raises(ValueError, match="--token"):
        RLHFConfig(raters="human", host="0.0.0.0")
    RLHFConfig(task=None, prompts="openings", raters="human")  # people need no gold
    config = RLHFConfig(raters="human", host="0.0.0.0", token="s3cret")
    assert "token" not in config.to_dict()  # not written to config.json


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from textgym.lm.models import tiny_model_dir

    model = tmp_path / "classifier"
    model.mkdir()
    config = json.loads((tiny_model_dir() / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(ValueError, match="not a causal language model"):
        run_rlhf(tiny_config(tmp_path / "run", model=str(model)), progress=False)


def test_an_existing_run_needs_resume_and_the_same_settings(reference_run):
    out = reference_run[0]
    with pytest.raises(FileExistsError, match="--resume"):
        run_rlhf(tiny_config(out), progress=False)
    with pytest.raises(ValueError, match="labels_per_round"):
        run_rlhf(tiny_config(out, labels_per_round=4), resume=True, progress=False)
    rows = run_rlhf(tiny_config(out, port=9999), resume=True, progress=False)  # done: nothing to redo
    assert [r["round"] for r in rows] == [0, 1, 2]
