"""Serving the control plane with uvicorn, and the bind rule.

With no token in the store the API is open to local callers, so it may bind only a
loopback address; binding any other address requires a token (and then every request
must carry one). The socket is bound before uvicorn starts (port 0: a free port) and its
address announced (``kilowatt ui: listening on URL``), as ``kilowatt serve`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kilowatt.api.auth import is_loopback
from kilowatt.errors import SpecError
from kilowatt.ports import announce, bound_url, listen

__all__ = ["BindDecision", "check_bind", "run_server"]


@dataclass(frozen=True)
class BindDecision:
    """Whether the server demands tokens, and a line telling the user why."""

    auth_required: bool
    notice: str


def check_bind(host: str, has_tokens: bool) -> BindDecision:
    """Apply the bind rule; a ``SpecError`` says how to fix a refused address.

    >>> check_bind("127.0.0.1", has_tokens=False).auth_required
    False
    """
    if is_loopback(host):
        if has_tokens:
            return BindDecision(False, "tokens exist: every request must send one")
        return BindDecision(
            False,
            f"no API token configured: serving local callers on {host} only "
            "(create one with `kilowatt token create NAME --role admin` to share it)",
        )
    if not has_tokens:
        raise SpecError(
            f"refusing to bind {host!r} with no API token configured: anyone on the network "
            "could write to the store. Create one with `kilowatt token create NAME "
            "--role admin`, or bind 127.0.0.1"
        )
    return BindDecision(True, f"serving on {host}: every request must send a token")


def run_server(
    app: Any,
    host: str,
    port: int,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Run ``app`` with uvicorn until interrupted (HTTPS when a cert and key are given).

    ``port`` 0 binds a free port; the bound URL is announced on stderr and passed to
    ``on_listening``.

    Raises:
        SpecError: a TLS file is missing, or only one of the pair is given.
        ServeError: the address cannot be bound.
    """
    import uvicorn

    if (tls_cert is None) != (tls_key is None):
        raise SpecError("--tls-cert and --tls-key go together; give both or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise SpecError(f"TLS file {path} does not exist; check the path")
    listener = listen(host, port)
    url = bound_url(listener, host, "https" if tls_cert else "http")
    announce("ui", url)
    if on_listening is not None:
        on_listening(url)
    config = uvicorn.Config(
        app,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="warning",
    )
    uvicorn.Server(config).run(sockets=[listener])
