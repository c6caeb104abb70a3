"""Shared pieces of the ``textgym label`` tests: a small batch file and a server on a real loopback port."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SCRIPT = '<script>document.title="pwned"</script><b>bold?</b>'


def write_batch(path: Path, n: int = 4, k: int = 3) -> Path:
    """``n`` items of ``k`` completions; item "1"'s first completion is an HTML/JS injection attempt."""
    lines = []
    for i in range(1, n + 1):
        completions = [f" completion {j} of prompt {i}." for j in range(k)]
        if i == 1:
            completions[0] = SCRIPT
        lines.append(json.dumps({"id": str(i), "prompt": f"Prompt number {i}:", "completions": completions}))
    path.write_text("\n".join(lines) + "\n")
    return path


def log_lines(out_dir: Path) -> list[dict]:
    path = out_dir / "labels.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def running_server(label_app):
    """Serve ``label_app`` with uvicorn on 127.0.0.1 and a free port, in a thread; yield the base URL."""
    import uvicorn

    from reward_models.labelling.server import bind, make_app

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(label_app), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
