"""A real control-plane server on 127.0.0.1 (port 0) over a fresh store, per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_live import LiveApi, serve_in_thread
from prometheus_client import CollectorRegistry

from kilowatt.api import create_app
from kilowatt.spec import Settings
from kilowatt.store import Store, open_store


@pytest.fixture
def store() -> Iterator[Store]:
    with open_store(Settings.from_env()) as opened:
        yield opened


@pytest.fixture
def live_api(store: Store) -> Iterator[LiveApi]:
    app = create_app(Settings.from_env(), store, registry=CollectorRegistry())
    server, thread, port = serve_in_thread(app)
    try:
        yield LiveApi(f"http://127.0.0.1:{port}", store, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
