"""The labelling server: a Starlette app (JSON API and the static page) run by uvicorn.

API (every call names its rater with ``X-Token``, a rater's token, or with ``X-Rater: name`` when the server
was started without ``--raters``; then ``X-Token`` carries the shared ``--token``, if one was set):

    GET  /api/next    -> {"rater", "mode", "done", "total", "task": {"item", "prompt", "completions": [{"index",
                          "text"}]} or null when nothing is left}
    POST /api/label   {"item", "ranking": [[best...], ..., [worst...]], "flags": {"2": "unsafe"}, "comment": ""}
                      -> {"saved": record, and what /api/next answers}; sent only once the label is fsynced
    POST /api/undo    -> {"undone": record, "task": that item's task}: withdraws the rater's latest label

Errors come back as ``{"error": message}`` with a 4xx status: 400 malformed request or ranking, 401 unknown
rater token, 403 wrong shared token, 404 unknown item, 409 already answered / nothing to undo, 413 too large.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward_models.labelling.storage import LabelError, LabelStore, Task

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024
RATER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,40}$")
SECURITY_HEADERS = {
    # Model text is untrusted: the page renders it with textContent, and this policy forbids any script,
    # style or connection not served by this server, so even a rendering bug could not run injected code.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LabelApp:
    """The server's state: the store, the tasks in priority order, who may label.

    Args:
        store: where labels go.
        tasks: one per item, most informative first (see `reward_models.labelling.selection`).
        mode: ``"rank"`` or ``"pairs"``, shown to the page.
        overlap: how many raters each item goes to.
        raters: rater tokens ``{token: name}``; ``None`` lets raters name themselves.
        shared_token: with ``raters=None``, the token every request must carry (``None``: none needed).
    """

    def __init__(
        self,
        store: LabelStore,
        tasks: Sequence[Task],
        mode: str = "rank",
        overlap: int = 1,
        raters: dict[str, str] | None = None,
        shared_token: str | None = None,
    ) -> None:
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}.")
        self.store, self.tasks, self.mode, self.overlap = store, list(tasks), mode, overlap
        self.task_of = {task.item.id: task for task in self.tasks}
        self.raters, self.shared_token = raters, shared_token

    def identify(self, headers: Any) -> str:
        """The rater a request comes from, or `LabelError` (400/401/403)."""
        token = headers.get("x-token", "")
        if self.raters is not None:
            for known, name in self.raters.items():
                if hmac.compare_digest(known.encode(), token.encode()):
                    return name
            raise LabelError("unknown rater token: open the link with your token that the server printed", 401)
        if self.shared_token is not None and not hmac.compare_digest(self.shared_token.encode(), token.encode()):
            raise LabelError("wrong or missing access token (X-Token): ask whoever started the server", 403)
        name = headers.get("x-rater", "")
        if not RATER_NAME.match(name):
            raise LabelError("give a rater name (X-Rater) of 1-40 letters, digits or . _ - @", 400)
        return name

    def progress(self, rater: str) -> tuple[int, int]:
        """``(done, total)`` for ``rater``: labels given, and those plus the items still open to them."""
        answered = self.store.answered(rater)
        open_ = sum(
            1
            for task in self.tasks
            if task.item.id not in answered and len(self.store.raters_of.get(task.item.id, ())) < self.overlap
        )
        return len(answered), len(answered) + open_

    def next_task(self, rater: str) -> Task | None:
        """The first task in priority order that ``rater`` has not answered and fewer than ``overlap`` raters have."""
        answered = self.store.answered(rater)
        for task in self.tasks:
            if task.item.id not in answered and len(self.store.raters_of.get(task.item.id, ())) < self.overlap:
                return task
        return None

    def task_json(self, task: Task | None) -> dict[str, Any] | None:
        if task is None:
            return None
        completions = [{"index": i, "text": task.item.completions[i]} for i in task.shown]
        return {"item": task.item.id, "prompt": task.item.prompt, "completions": completions}

    def next_json(self, rater: str) -> dict[str, Any]:
        done, total = self.progress(rater)
        task = self.task_json(self.next_task(rater))
        return {"rater": rater, "mode": self.mode, "done": done, "total": total, "task": task}

    def label(self, rater: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise LabelError('expected a JSON object {"item", "ranking", "flags", "comment"}')
        item = body.get("item")
        if not isinstance(item, str) or item not in self.task_of:
            raise LabelError(f"unknown item {item!r}: it is not in this batch", 404)
        task = self.task_of[item]
        record = self.store.submit(rater, task, body.get("ranking"), body.get("flags"), body.get("comment"))
        return {"saved": record, **self.next_json(rater)}

    def undo(self, rater: str) -> dict[str, Any]:
        record = self.store.undo(rater)
        return {"undone": record, "task": self.task_json(self.task_of.get(record["item"]))}


def make_app(label_app: LabelApp):  # -> starlette.applications.Starlette
    """The ASGI app serving ``label_app``'s API and the static page."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def respond(payload: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(payload, status, headers=SECURITY_HEADERS)

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise LabelError(f"request body over {MAX_BODY} bytes", 413)
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LabelError(f"request body is not valid JSON ({err})") from err

    def endpoint(handler, with_body: bool = False):
        async def run(request: Request) -> JSONResponse:
            try:
                rater = label_app.identify(request.headers)
                args = (rater, await body_of(request)) if with_body else (rater,)
                return respond(await run_in_threadpool(handler, *args))  # fsync must not block the event loop
            except LabelError as err:
                return respond({"error": str(err)}, err.status)

        return run

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)

    routes = [
        Route("/", index),
        Route("/api/next", endpoint(label_app.next_json)),
        Route("/api/label", endpoint(label_app.label, with_body=True), methods=["POST"]),
        Route("/api/undo", endpoint(label_app.undo), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or ``OSError`` saying the port is taken and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart right after a stop
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({err.strerror}): another program (maybe another `textgym label "
            f"serve`) uses that port. Stop it, or pass another --port."
        ) from err
    sock.listen(128)
    return sock


def serve(label_app: LabelApp, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Serve until interrupted (Ctrl-C); labels are already on disk, so stopping loses nothing."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(make_app(label_app), log_level=log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        label_app.store.close()


def serve_until(
    label_app: LabelApp,
    labels: int,
    host: str = "127.0.0.1",
    port: int = 8765,
    poll_seconds: float = 1.0,
    progress: bool = True,
    log_level: str = "warning",
) -> None:
    """Serve in a background thread until the store holds ``labels`` labels, then stop (a program that waits for
    people, such as ``textgym rlhf``). Ctrl-C stops the server and raises ``KeyboardInterrupt``; every acknowledged
    label is on disk. The store stays open: its owner closes it."""
    import threading
    import time

    import uvicorn
    from tqdm.auto import tqdm

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(make_app(label_app), log_level=log_level))
    # uvicorn handles signals only on the main thread, so Ctrl-C reaches the waiting loop below
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    bar = tqdm(total=labels, initial=min(len(label_app.store.labels()), labels), desc="labels", disable=not progress)
    try:
        while (count := len(label_app.store.labels())) < labels:
            bar.update(min(count, labels) - bar.n)
            if not thread.is_alive():
                raise RuntimeError(f"the labelling server on {host}:{port} stopped before {labels} labels came in.")
            time.sleep(poll_seconds)
        bar.update(labels - bar.n)
    finally:
        bar.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
