"""``textgym label``: the batch file, the durable label log, and the JSON API (through Starlette's TestClient)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from label_helpers import log_lines, write_batch
from starlette.testclient import TestClient

from reward_models.labelling.items import load_items
from reward_models.labelling.selection import order_tasks
from reward_models.labelling.server import LabelApp, make_app
from reward_models.labelling.storage import LabelStore

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def make(tmp_path, overlap=1, mode="rank", raters=TOKENS, shared_token=None, n=4, batch=None):
    batch = batch or write_batch(tmp_path / "batch.jsonl", n=n)
    items = load_items(batch)
    store = LabelStore(tmp_path / "labels", batch, items)
    app = LabelApp(store, order_tasks(items, "random", mode, seed=0), mode, overlap, raters, shared_token)
    return app, TestClient(make_app(app))


def as_(token):
    return {"X-Token": token}


def test_malformed_batch_line_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completions": ["x", "y"]}\n{"prompt": "b", "completions": ["only one"]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*at least 2"):
        load_items(path)
    path.write_text('{"prompt": "a", "completions": ["x", "y"]}\n{"prompt": "b", "completions": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_items(path)
    path.write_text(
        '{"id": 1, "prompt": "a", "completions": ["x", "y"]}\n{"id": "1", "prompt": "b", "completions": ["z", "y"]}\n'
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: id '1' is already used on line 1"):
        load_items(path)


def test_label_is_on_disk_when_acknowledged_and_progress_counts(tmp_path):
    _, client = make(tmp_path)
    first = client.get("/api/next", headers=as_("tok-alice")).json()
    assert (first["rater"], first["done"], first["total"]) == ("alice", 0, 4)
    for n in range(1, 5):
        task = client.get("/api/next", headers=as_("tok-alice")).json()["task"]
        order = [c["index"] for c in task["completions"]][::-1]
        reply = client.post("/api/label", headers=as_("tok-alice"), json={"item": task["item"], "ranking": order})
        assert reply.status_code == 200, reply.text
        assert (reply.json()["done"], reply.json()["total"]) == (n, 4)
        written = log_lines(tmp_path / "labels")
        assert len(written) == n and written[-1]["item"] == task["item"]  # on disk before the reply
        assert written[-1]["ranking"] == [[i] for i in order] and written[-1]["rater"] == "alice"
    assert client.get("/api/next", headers=as_("tok-alice")).json()["task"] is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"item": "nope", "ranking": [0, 1, 2]}, 404, "unknown item"),
        ({"item": "1", "ranking": [0, 1]}, 400, "permutation"),
        ({"item": "1", "ranking": [0, 1, 1]}, 400, "permutation"),
        ({"item": "1", "ranking": [0, 1, 3]}, 400, "permutation"),
        ({"item": "1", "ranking": [[0, 1], [1, 2]]}, 400, "permutation"),
        ({"item": "1", "ranking": [0, True, 2]}, 400, "integers"),
        ({"item": "1", "ranking": []}, 400, "non-empty"),
        ({"item": "1", "ranking": [0, 1, 2], "flags": {"7": "unsafe"}}, 400, "flags"),
        ({"item": "1", "ranking": [0, 1, 2], "flags": {"0": "boring"}}, 400, "flags"),
        ({"item": "1", "ranking": [0, 1, 2], "comment": 5}, 400, "comment"),
        (["item", "1"], 400, "JSON object"),
    ],
)
def test_malformed_answers_are_refused_and_nothing_is_written(tmp_path, body, status, message):
    _, client = make(tmp_path)
    reply = client.post("/api/label", headers=as_("tok-alice"), json=body)
    assert reply.status_code == status and message in reply.json()["error"]
    assert log_lines(tmp_path / "labels") == []


def test_invalid_json_unknown_token_and_repeated_answer(tmp_path):
    _, client = make(tmp_path)
    reply = client.post("/api/label", headers={**as_("tok-alice"), "Content-Type": "application/json"}, content=b"{")
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]
    reply = client.get("/api/next", headers=as_("tok-mallory"))
    assert reply.status_code == 401 and "unknown rater token" in reply.json()["error"]
    assert client.get("/api/next").status_code == 401
    answer = {"item": "2", "ranking": [[0, 1], [2]]}  # a tie is allowed
    assert client.post("/api/label", headers=as_("tok-alice"), json=answer).status_code == 200
    reply = client.post("/api/label", headers=as_("tok-alice"), json=answer)
    assert reply.status_code == 409 and "already answered" in reply.json()["error"]
    assert client.post("/api/label", headers=as_("tok-bob"), json=answer).status_code == 200  # another rater may
    assert len(log_lines(tmp_path / "labels")) == 2


def test_self_named_raters_and_shared_token(tmp_path):
    _, client = make(tmp_path, raters=None, shared_token="s3cret")
    assert client.get("/api/next", headers={"X-Rater": "carol"}).status_code == 403
    assert client.get("/api/next", headers={"X-Rater": "carol", "X-Token": "wrong"}).status_code == 403
    reply = client.get("/api/next", headers={"X-Rater": "carol", "X-Token": "s3cret"})
    assert reply.status_code == 200 and reply.json()["rater"] == "carol"
    assert client.get("/api/next", headers={"X-Rater": "<b>", "X-Token": "s3cret"}).status_code == 400


def test_undo_withdraws_the_last_answer_and_serves_it_again(tmp_path):
    app, client = make(tmp_path)
    assert client.post("/api/undo", headers=as_("tok-alice")).status_code == 409
    task = client.get("/api/next", headers=as_("tok-alice")).json()["task"]
    answer = {"item": task["item"], "ranking": [2, 0, 1], "flags": {"2": "nonsense"}, "comment": "odd"}
    client.post("/api/label", headers=as_("tok-alice"), json=answer)
    undone = client.post("/api/undo", headers=as_("tok-alice")).json()
    assert undone["undone"]["item"] == task["item"] and undone["undone"]["flags"] == {"2": "nonsense"}
    assert undone["task"]["item"] == task["item"]
    assert [e["event"] for e in log_lines(tmp_path / "labels")] == ["label", "undo"]
    nxt = client.get("/api/next", headers=as_("tok-alice")).json()
    assert nxt["task"]["item"] == task["item"] and nxt["done"] == 0
    assert client.post("/api/label", headers=as_("tok-alice"), json=answer).status_code == 200  # answer again
    assert app.store.labels()[0]["ranking"] == [[2], [0], [1]]


def test_restart_resumes_each_rater_where_they_stopped(tmp_path):
    app, client = make(tmp_path, overlap=2)
    for token, count in (("tok-alice", 3), ("tok-bob", 1)):
        for _ in range(count):
            task = client.get("/api/next", headers=as_(token)).json()["task"]
            client.post("/api/label", headers=as_(token), json={"item": task["item"], "ranking": [0, 1, 2]})
    client.post("/api/undo", headers=as_("tok-alice"))
    app.store.close()
    _, client = make(tmp_path, overlap=2)  # a restart on the same folder
    assert client.get("/api/next", headers=as_("tok-alice")).json()["done"] == 2
    assert client.get("/api/next", headers=as_("tok-bob")).json()["done"] == 1


def test_killed_mid_write_drops_only_the_unacknowledged_line(tmp_path):
    app, client = make(tmp_path)
    client.post("/api/label", headers=as_("tok-alice"), json={"item": "1", "ranking": [0, 1, 2]})
    app.store.close()
    path = tmp_path / "labels" / "labels.jsonl"
    with open(path, "a") as file:
        file.write('{"event": "label", "rater": "alice", "ite')  # the kill came before the fsync and the reply
    with pytest.warns(UserWarning, match="unfinished last line"):
        app, client = make(tmp_path)
    assert [r["item"] for r in app.store.labels()] == ["1"]
    assert client.post("/api/label", headers=as_("tok-alice"), json={"item": "2", "ranking": [0, 1, 2]}).is_success
    assert [r["item"] for r in log_lines(tmp_path / "labels")] == ["1", "2"]  # the file is clean JSONL again


def test_labels_folder_of_another_batch_is_refused(tmp_path):
    app, _ = make(tmp_path)
    app.store.close()
    other = write_batch(tmp_path / "other.jsonl", n=5)
    with pytest.raises(ValueError, match="labels of another batch file"):
        make(tmp_path, batch=other)
    assert not (tmp_path / "labels" / "labels.jsonl").read_text()  # untouched


def test_overlap_sends_an_item_to_that_many_raters(tmp_path):
    _, client = make(tmp_path, overlap=1, n=2)
    alice = client.get("/api/next", headers=as_("tok-alice")).json()["task"]["item"]
    client.post("/api/label", headers=as_("tok-alice"), json={"item": alice, "ranking": [0, 1, 2]})
    bob = client.get("/api/next", headers=as_("tok-bob")).json()
    assert bob["task"]["item"] != alice and bob["total"] == 1


def test_pairs_mode_shows_two_completions_and_accepts_a_tie(tmp_path):
    _, client = make(tmp_path, mode="pairs")
    task = client.get("/api/next", headers=as_("tok-alice")).json()["task"]
    shown = [c["index"] for c in task["completions"]]
    assert len(shown) == 2
    reply = client.post("/api/label", headers=as_("tok-alice"), json={"item": task["item"], "ranking": [[0, 1, 2]]})
    assert reply.status_code == 400
    reply = client.post("/api/label", headers=as_("tok-alice"), json={"item": task["item"], "ranking": [shown]})
    assert reply.status_code == 200 and json.loads(reply.text)["saved"]["shown"] == shown


def test_page_and_static_files_are_served_with_a_content_security_policy(tmp_path):
    _, client = make(tmp_path)
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "/static/app.js" in page.text and "http" not in page.text.split("<body>")[0]  # no CDN
    assert "textContent" in client.get("/static/app.js").text
    assert "innerHTML" not in client.get("/static/app.js").text
