"""``textgym label serve`` as a real process: 20 raters posting 200 labels each at once on loopback lose and
duplicate nothing, and a server killed with SIGKILL mid-load has every acknowledged label on disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

import httpx
from label_helpers import log_lines, write_batch

from reward_models.labelling.items import load_items
from reward_models.labelling.storage import read_log

RATERS, LABELS = 20, 200
ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve_process(batch: Path, out: Path, raters: int, overlap: int, extra: tuple[str, ...] = ()):
    """``textgym label serve`` in a subprocess on a free loopback port; yield (url, {name: token}, process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    names = ",".join(f"rater{r}" for r in range(raters))
    command = [sys.executable, "-m", "reward_models.labelling.cli", "serve", "--data", str(batch), "--out", str(out)]
    command += ["--port", str(port), "--raters", names, "--overlap", str(overlap), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        tokens = {name: token for name, token in json.loads((out / "raters.json").read_text()).items()}
        yield url, tokens, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        process.stdout.close()


def test_concurrent_raters_lose_and_duplicate_nothing(tmp_path):
    batch = write_batch(tmp_path / "batch.jsonl", n=LABELS, k=2)
    out = tmp_path / "labels"
    with serve_process(batch, out, RATERS, overlap=RATERS) as (url, tokens, _):

        def rater(token: str) -> tuple[int, int]:
            """Label every item in the order served; post one answer twice (a double click): refused."""
            acknowledged = refused = 0
            with httpx.Client(base_url=url, headers={"X-Token": token}, timeout=30) as client:
                task = client.get("/api/next").json()["task"]
                for n in range(LABELS):
                    answer = {"item": task["item"], "ranking": [n % 2, 1 - n % 2]}
                    reply = client.post("/api/label", json=answer)  # answers with the next task
                    acknowledged += reply.status_code == 200
                    task = reply.json()["task"]
                    if n == 7:
                        refused += client.post("/api/label", json=answer).status_code == 409
                assert task is None
            return acknowledged, refused

        start = time.perf_counter()
        with ThreadPoolExecutor(RATERS) as pool:
            results = list(pool.map(rater, tokens.values()))
        seconds = time.perf_counter() - start
    assert results == [(LABELS, 1)] * RATERS
    written = log_lines(out)
    keys = [(r["rater"], r["item"]) for r in written]
    assert len(written) == RATERS * LABELS and len(set(keys)) == len(keys)  # nothing duplicated
    assert set(keys) == {(name, item.id) for name in tokens for item in load_items(batch)}  # nothing lost
    print(f"{len(written)} labels in {seconds:.1f} s ({len(written) / seconds:.0f}/s, each fsynced)")


def test_sigkill_mid_load_keeps_every_acknowledged_label(tmp_path):
    batch = write_batch(tmp_path / "batch.jsonl", n=LABELS, k=2)
    out = tmp_path / "labels"
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()
    with serve_process(batch, out, 4, overlap=4) as (url, tokens, process):

        def rater(name: str) -> None:
            with httpx.Client(base_url=url, headers={"X-Token": tokens[name]}, timeout=10) as client:
                try:
                    for _ in range(LABELS):
                        item = client.get("/api/next").json()["task"]["item"]
                        if client.post("/api/label", json={"item": item, "ranking": [0, 1]}).status_code == 200:
                            with lock:
                                acknowledged.append((name, item))
                except httpx.TransportError:
                    return  # the server is gone

        threads = [threading.Thread(target=rater, args=(name,)) for name in tokens]
        for thread in threads:
            thread.start()
        while len(acknowledged) < 100:
            time.sleep(0.01)
        process.kill()  # SIGKILL: no chance to flush anything
        for thread in threads:
            thread.join(30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a line cut short by the kill (never acknowledged) is dropped with a warning
        on_disk = {(r["rater"], r["item"]) for r in read_log(out / "labels.jsonl")}
    assert set(acknowledged) <= on_disk, "an acknowledged label is missing after the kill"
    assert len(acknowledged) >= 100


def test_serve_orders_by_a_reward_models_uncertainty(tmp_path):
    """The CLI wiring of --strategy/--reward-model/--mode: VADER is surest where sentiment differs most."""
    batch = tmp_path / "batch.jsonl"
    rows = [
        ("sure", [" I love it, wonderful and great.", " I hate it, awful and terrible."]),
        ("unsure", [" It is a table.", " It is a chair.", " I hate it, awful."]),
    ]
    batch.write_text("".join(json.dumps({"id": i, "prompt": "Review:", "completions": c}) + "\n" for i, c in rows))
    extra = ("--strategy", "uncertainty", "--reward-model", "vader", "--mode", "pairs")
    with serve_process(batch, tmp_path / "labels", 1, overlap=1, extra=extra) as (url, tokens, _):
        task = httpx.get(url + "/api/next", headers={"X-Token": tokens["rater0"]}).json()["task"]
    assert task["item"] == "unsure" and [c["index"] for c in task["completions"]] == [0, 1]  # the two neutral ones
