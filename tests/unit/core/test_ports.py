"""Ports: a server binds port 0 itself and announces the port it got; the exception helper."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kilowatt.errors import ServeError
from kilowatt.ports import announce, bound_url, listen, listening_prefix, reserve_port, url_for
from kilowatt.serve.process import ServerProcess


def test_port_zero_becomes_the_port_the_socket_holds() -> None:
    with listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        assert port != 0
        assert bound_url(listener, "127.0.0.1", "https") == f"https://127.0.0.1:{port}"
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # the port is held, not merely looked at


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "grpc://127.0.0.1:50051"),
        ("::1", "grpc://[::1]:50051"),  # brackets keep the address's colons apart from the port
        ("localhost", "grpc://localhost:50051"),
    ],
)
def test_urls_bracket_ipv6_hosts(host: str, url: str) -> None:
    assert url_for(host, 50051, "grpc") == url


def test_a_taken_port_is_a_clear_error() -> None:
    with listen("127.0.0.1", 0) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}.*or 0 for a"):
            listen("127.0.0.1", port)


def test_the_announcement_is_one_line_a_parent_reads_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    announce("ui", "http://127.0.0.1:43210")
    line = capsys.readouterr().err
    assert line == "kilowatt ui: listening on http://127.0.0.1:43210\n"
    assert line.startswith(listening_prefix("ui"))


def test_a_reserved_port_is_free_to_bind() -> None:
    port = reserve_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        assert server.getsockname()[1] == port


def test_server_process_names_the_programs_it_runs(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"program must be one of \['generate', 'serve', 'ui'\], got 'api'"
    ):
        ServerProcess([], program="api", log_path=tmp_path / "api.log")


def test_the_training_rendezvous_is_served_on_the_port_the_parent_bound() -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from kilowatt.train.distributed import RENDEZVOUS_HOST, rendezvous_store

    store = rendezvous_store()
    assert store.port != 0
    worker = dist.TCPStore(RENDEZVOUS_HOST, store.port, timeout=timedelta(seconds=30))
    worker.set("joined", "1")
    assert store.get("joined") == b"1"
