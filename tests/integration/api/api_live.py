"""Running the control plane for tests: uvicorn on 127.0.0.1, port 0, in a thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from kilowatt.store import Store


@dataclass
class LiveApi:
    """A running server: its base URL, store and app; ``client(token)`` talks to it."""

    base_url: str
    store: Store
    app: Any

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)


def serve_in_thread(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Start uvicorn on 127.0.0.1:0 in a thread; return once it accepts connections."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(3000):  # up to 30 s; each wait returns early once startup is done
        if server.started:
            started.set()
            break
        started.wait(0.01)
    if not server.started:
        server.should_exit = True
        raise RuntimeError("the API server did not start within 30 s")
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port
