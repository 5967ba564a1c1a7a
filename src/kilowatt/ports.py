"""Ports: a server binds its own (port 0: any free one) and announces the one it got.

``listen`` binds the socket before the server starts, so ``--port 0`` becomes a free port
with no window in which another process could take it; ``announce`` prints the bound
address as one line, which whoever started the server reads back
(``kilowatt.serve.process.ServerProcess``):

    >>> listening_prefix("serve")
    'kilowatt serve: listening on'

Worker processes that share one port (``kilowatt serve --workers N --grpc-port 0``: each
worker's gRPC server binds the port with ``SO_REUSEPORT``) get it from ``hold_shared_port``:
the parent binds port 0 with ``SO_REUSEPORT`` and holds it, never listening, so connections
go to the workers only and no process that does not share the port can take it meanwhile.

``reserve_port`` is the exception, for programs that cannot bind port 0 and report the port
back (Ray Serve's proxy, Prometheus, other tools' servers in the benchmarks): it returns a
port that was free when asked, which another process may still take before the program
binds it.
"""

from __future__ import annotations

import socket
import sys

from kilowatt.errors import ServeError

__all__ = [
    "announce",
    "bound_url",
    "hold_shared_port",
    "listen",
    "listening_prefix",
    "reserve_port",
    "url_for",
]


def _family(host: str) -> socket.AddressFamily:
    """IPv6 for an address with a colon, else IPv4."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port), inheritable by worker processes.

    Raises:
        ServeError: the address cannot be bound (in use, or not this machine's).
    """
    listener = socket.socket(_family(host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port, "
            "or 0 for a free one"
        ) from None
    listener.set_inheritable(True)  # worker processes serve on the same socket
    return listener


def hold_shared_port(host: str) -> socket.socket:
    """A free port on ``host``, held for worker processes that bind it with ``SO_REUSEPORT``.

    The socket is bound to port 0 and never listens: keep it open until the workers exit.

    Raises:
        ServeError: this system has no ``SO_REUSEPORT``.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ServeError("workers cannot share a port here (no SO_REUSEPORT); give a port number")
    held = socket.socket(_family(host))
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((host, 0))
    return held


def bound_url(listener: socket.socket, host: str, scheme: str = "http") -> str:
    """The URL clients reach ``listener`` at (its bound port)."""
    return url_for(host, listener.getsockname()[1], scheme)


def url_for(host: str, port: int, scheme: str = "http") -> str:
    """``scheme://host:port``, an IPv6 host in brackets (its colons are not the port's)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def listening_prefix(program: str) -> str:
    """How the line announcing ``kilowatt PROGRAM``'s address starts."""
    return f"kilowatt {program}: listening on"


def announce(program: str, url: str) -> None:
    """Print the bound address on stderr, as one line that a parent process reads back."""
    print(f"{listening_prefix(program)} {url}", file=sys.stderr, flush=True)


def reserve_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now, for a program that cannot bind port 0 itself and
    report it back; another process may take it before that program binds it."""
    with socket.socket(_family(host)) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
