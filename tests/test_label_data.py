"""``textgym label``: active selection, stats and agreement, export into the reward-model loader, the CLI."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

pytest.importorskip("starlette")

from label_helpers import write_batch

from reward_models.labelling.cli import main
from reward_models.labelling.export import export_labels, write_export
from reward_models.labelling.items import Item, load_items
from reward_models.labelling.selection import order_tasks, pair_disagreement, pair_uncertainty
from reward_models.labelling.stats import label_stats
from reward_models.labelling.storage import LabelStore, Task
from reward_models.preferences import load_preferences
from textgym.cli import main as textgym_main


def scorer(table):
    """A reward model from ``{completion: score}``."""
    return lambda prompts, completions: np.array([table[c] for c in completions], dtype=float)


ITEMS = [
    Item("far", "p1", ("a", "b", "c")),  # scores far apart: the model is sure
    Item("close", "p2", ("d", "e", "f")),  # two completions nearly tied
    Item("mid", "p3", ("g", "h", "i")),
]
SCORES = {"a": 0, "b": 5, "c": 10, "d": 0, "e": 0.05, "f": 8, "g": 0, "h": 1.5, "i": 6}


def test_uncertainty_puts_the_closest_comparisons_first_and_picks_that_pair():
    tasks = order_tasks(ITEMS, "uncertainty", "pairs", [scorer(SCORES)])
    assert [t.item.id for t in tasks] == ["close", "mid", "far"]
    assert tasks[0].shown == (0, 1)  # d vs e, 0.05 apart
    assert [t.item.id for t in order_tasks(ITEMS, "uncertainty", "rank", [scorer(SCORES)])][-1] == "far"


def test_disagreement_puts_what_the_members_dispute_first():
    other = {**SCORES, "a": 12, "d": 9}  # member 2 reverses a vs b and c on "far"; is merely surer on "close"
    tasks = order_tasks(ITEMS, "disagreement", "pairs", [scorer(SCORES), scorer(other)])
    assert tasks[0].item.id == "far" and tasks[0].shown in {(0, 1), (0, 2)}
    with pytest.raises(ValueError, match="at least 2"):
        order_tasks(ITEMS, "disagreement", "pairs", [scorer(SCORES)])
    with pytest.raises(ValueError, match="needs at least one reward model"):
        order_tasks(ITEMS, "uncertainty")


def test_pair_measures():
    gaps = np.array([[0.0, 5.0, 5.0], [0.0, 5.0, -5.0]])  # (M=2, P=3)
    np.testing.assert_allclose(pair_uncertainty(gaps)[:2], [1.0, 2 * (1 - 1 / (1 + np.exp(-5)))])
    assert pair_uncertainty(gaps)[2] == pytest.approx(1.0)  # members cancel out: the mean is 50/50
    assert np.argmax(pair_disagreement(gaps)) == 2 and pair_disagreement(gaps)[0] == 0


def test_random_order_is_seeded_and_covers_every_item():
    a = [t.item.id for t in order_tasks(ITEMS, "random", seed=1)]
    assert a == [t.item.id for t in order_tasks(ITEMS, "random", seed=1)] and sorted(a) == ["close", "far", "mid"]


@pytest.fixture
def labelled(tmp_path):
    """alice and bob rank item 1 and 2 (agreeing on 1, not on 2); alice ties on 3 and flags item 4."""
    batch = write_batch(tmp_path / "batch.jsonl", n=4)
    items = {item.id: item for item in load_items(batch)}
    store = LabelStore(tmp_path / "labels", batch, list(items.values()))
    everything = (0, 1, 2)
    store.submit("alice", Task(items["1"], everything), [0, 1, 2])
    store.submit("bob", Task(items["1"], everything), [0, 1, 2])
    store.submit("alice", Task(items["2"], everything), [0, 1, 2])
    store.submit("bob", Task(items["2"], everything), [2, 1, 0])
    store.submit("alice", Task(items["3"], everything), [[1, 2], [0]])
    store.submit("alice", Task(items["4"], everything), [2, 0, 1], {"1": "unsafe"}, "mean")
    store.close()
    return tmp_path / "labels", items


def test_stats_count_and_measure_agreement(labelled):
    stats = label_stats(labelled[0])
    assert (stats["labels"], stats["items_labelled"], stats["items_with_several_raters"]) == (6, 4, 2)
    assert (stats["flagged_labels"], stats["labels_with_ties"]) == (1, 1)
    assert {r: v["labels"] for r, v in stats["raters"].items()} == {"alice": 4, "bob": 2}
    agreement = stats["agreement"]
    assert agreement["units"] == 6 and agreement["pairwise_agreement"] == pytest.approx(0.5)  # 3 of 6 agree
    assert agreement["krippendorff_alpha"] < 0.5


def test_export_pairs_and_rankings_load_into_reward_training(labelled, tmp_path):
    folder, items = labelled
    records, stats = export_labels(folder, "pairs")
    assert stats.tied_pairs_skipped == 1 and len(records) == 3 + 3 + 3 + 3 + 2 + 3
    assert {"prompt", "chosen", "rejected", "rater", "item"} == set(records[0])
    out = tmp_path / "pairs.jsonl"
    write_export(folder, out, "pairs")
    pairs = load_preferences(out)
    assert len(pairs) == len(records)
    assert (pairs[0].chosen, pairs[0].rejected) == (items["1"].completions[0], items["1"].completions[1])
    assert sum(p.prompt == items["3"].prompt for p in pairs) == 2  # the tie gave no pair

    write_export(folder, out, "rankings")
    records, stats = export_labels(folder, "rankings")
    assert stats.tied_labels_skipped == 1 and len(records) == 5
    assert records[-1]["ranking"] == [2, 0, 1] and records[-1]["completions"] == list(items["4"].completions)
    assert len(load_preferences(out)) == 5 * 3

    _, stats = export_labels(folder, "pairs", flagged="drop")
    assert stats.flagged_skipped == 1


def test_cli_stats_export_and_errors(labelled, tmp_path, capsys):
    folder, _ = labelled
    assert main(["stats", str(folder)]) == 0
    assert "6 labels on 4 of 4 items" in capsys.readouterr().out
    assert main(["stats", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == 6
    assert main(["export", str(folder), "--format", "rankings", "--out", str(tmp_path / "r.jsonl")]) == 0
    assert "wrote 5 rankings records" in capsys.readouterr().out
    assert main(["stats", str(tmp_path)]) == 2 and "not a labels folder" in capsys.readouterr().err
    assert textgym_main(["label", "stats", str(folder)]) == 0  # reachable as `textgym label`
    assert "6 labels" in capsys.readouterr().out


def test_serve_refuses_a_port_in_use_and_an_open_interface_without_a_token(tmp_path, capsys):
    batch = write_batch(tmp_path / "batch.jsonl")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", "--data", str(batch), "--out", str(tmp_path / "l"), "--port", str(port)])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--data", str(batch), "--out", str(tmp_path / "l"), "--host", "0.0.0.0"]) == 2
    assert "give --token" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["serve", "--data", str(bad), "--out", str(tmp_path / "l"), "--port", "0"]) == 2
    assert "bad.jsonl:1:" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()  # nothing written for bad input


def test_sample_writes_a_batch_with_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\nThe movie was\n")
    out = tmp_path / "batch.jsonl"
    args = ["sample", "--model", tiny_model_dir, "--prompts", str(prompts), "--num-completions", "3"]
    assert main([*args, "--max-new-tokens", "6", "--out", str(out)]) == 0
    items = load_items(out)
    assert [item.prompt for item in items] == ["Hello there", "The movie was"]
    assert all(2 <= len(item.completions) <= 3 for item in items)


def test_labelling_imports_nothing_from_agents_and_the_web_stack_lazily():
    """Reward models know nothing of agents; starlette/uvicorn/torch load only in the functions that need them."""
    import ast
    from pathlib import Path

    import reward_models.labelling as package

    for path in Path(package.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        every = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in every if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in every if isinstance(n, ast.ImportFrom) and n.module]
        assert not [n for n in names if n.split(".")[0] == "agents"], path
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        top_names = {(n.module or "") if isinstance(n, ast.ImportFrom) else n.names[0].name for n in top}
        assert not {m.split(".")[0] for m in top_names} & {"starlette", "uvicorn", "torch", "krippendorff"}, path
