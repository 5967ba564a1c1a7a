"""``kilowatt serve``, ``ui`` or ``generate serve`` as a child process: started, ready,
always stopped.

The one way the quickstart, the benchmarks and the tests run a kilowatt server process. The
server picks its own port (``--port 0``: it binds port 0 and announces the address it got,
see ``kilowatt.ports``), so no free port is guessed before the server binds it:

    >>> with ServerProcess(["mlp.pt", "--name", "mlp"], log_path=Path("serve.log")) as server:
    ...     httpx.post(f"{server.endpoint}/predict", json={"inputs": [0.0] * 16})
    ... # doctest: +SKIP
    >>> with ServerProcess([], program="ui", log_path=Path("ui.log")) as dashboard:
    ...     httpx.get(f"{dashboard.endpoint}/api/v1/runs")
    ... # doctest: +SKIP

The server runs in its own process group, so a Ctrl-C in the terminal reaches only the
parent, which then stops the whole group (SIGTERM: drain; SIGKILL after a grace period):
no process outlives the block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kilowatt.errors import ServeError
from kilowatt.ports import listening_prefix
from kilowatt.signals import handling_signals

__all__ = ["READY_PATHS", "ServerProcess", "kilowatt_command"]

#: The kilowatt servers a ``ServerProcess`` can run, and the path that answers 200 once ready.
READY_PATHS = {"serve": "/v2/health/ready", "ui": "/api/v1/health", "generate": "/v1/models"}


def kilowatt_command() -> list[str]:
    """How to run the ``kilowatt`` CLI of this installation as a child process."""
    script = Path(sys.executable).with_name("kilowatt")
    if script.is_file():
        return [str(script)]
    entry = "import sys; from kilowatt.cli.main import main; sys.exit(main())"
    return [sys.executable, "-c", entry]


class ServerProcess:
    """``kilowatt PROGRAM ARGS --port 0`` as a child process in its own process group.

    Use as a context manager: entering starts the server and waits until its readiness
    probe answers 200; leaving the block (normally, by an exception or by Ctrl-C) stops it
    and waits for it.

    Args:
        args: the program's arguments (models and options; not ``--port``).
        log_path: where the server's output goes (shown when it fails to start).
        program: ``serve`` (the inference server), ``ui`` (the control plane) or
            ``generate`` (with ``args`` starting ``serve``: the OpenAI-compatible server).
        env: extra environment variables for the server.
        on_start: called with ``(pid, endpoint)`` once the server has bound its port.
        ready_timeout_s: how long the models may take to load.
        drain_timeout_s: how long a SIGTERM drain may take before SIGKILL.
        verify: how the readiness probe checks an https server's certificate (an SSL
            context trusting its CA, or ``True`` for the system's trust store).
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: Path,
        program: str = "serve",
        env: Mapping[str, str] | None = None,
        on_start: Callable[[int, str], None] | None = None,
        ready_timeout_s: float = 120.0,
        drain_timeout_s: float = 30.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if program not in READY_PATHS:
            raise ValueError(f"program must be one of {sorted(READY_PATHS)}, got {program!r}")
        self.args = list(args)
        self.program = program
        self.log_path = log_path
        self.env = dict(env or {})
        self.on_start = on_start
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.verify = verify
        self.endpoint = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.forced = False

    @property
    def pid(self) -> int:
        """The server's process id (0 before it starts)."""
        return self.process.pid if self.process is not None else 0

    def __enter__(self) -> ServerProcess:
        command = [*kilowatt_command(), self.program, *self.args, "--port", "0"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # A new session: Ctrl-C in the terminal does not reach the server directly;
            # the parent stops the whole group itself, in order.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def output(self) -> str:
        """Everything the server has printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            self._check_running()
            if not self.endpoint and self._read_endpoint() and self.on_start is not None:
                self.on_start(self.pid, self.endpoint)
            if self.endpoint:
                try:
                    probe = httpx.get(
                        f"{self.endpoint}{READY_PATHS[self.program]}",
                        timeout=2.0,
                        verify=self.verify,
                    )
                    if probe.status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not accepting yet
            if time.monotonic() > deadline:
                raise ServeError(
                    f"{self._name()} was not ready after "
                    f"{self.ready_timeout_s:.0f} s; its output:\n{self._tail()}"
                )
            time.sleep(0.05)  # polling the server's own announcement and readiness probe

    @property
    def grpc_endpoint(self) -> str:
        """``grpc(s)://host:port``, as the server announced it (``--grpc-port 0``), or ""."""
        return next((url for url in self._announced() if url.startswith("grpc")), "")

    def _read_endpoint(self) -> bool:
        self.endpoint = next((url for url in self._announced() if url.startswith("http")), "")
        return bool(self.endpoint)

    def _announced(self) -> list[str]:
        prefix = listening_prefix(self.program)
        lines = self.output().splitlines()
        return [line.removeprefix(prefix).strip() for line in lines if line.startswith(prefix)]

    def _name(self) -> str:
        return " ".join(["kilowatt", self.program, *self.args])

    def _check_running(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServeError(
                f"{self._name()} exited with code "
                f"{self.process.returncode} before it was ready; its output:\n{self._tail()}"
            )

    def stop(self) -> int | None:
        """Stop the server's process group: SIGTERM (drain), then SIGKILL after the grace
        period. Ctrl-C is ignored meanwhile, so a second one cannot cut the cleanup short."""
        process = self.process
        if process is None or self.exit_code is not None:
            return self.exit_code
        with handling_signals(signal.SIG_IGN, [signal.SIGINT]):
            _signal_group(process.pid, signal.SIGTERM)
            try:
                self.exit_code = process.wait(self.drain_timeout_s)
            except subprocess.TimeoutExpired:
                self.forced = True
                _signal_group(process.pid, signal.SIGKILL)
                self.exit_code = process.wait()
            # Whatever the server started shares its group; none may outlive it.
            _signal_group(process.pid, signal.SIGKILL)
        return self.exit_code

    def describe_exit(self) -> str:
        """How the server ended, in words."""
        if self.exit_code is None:
            return "still running"
        if self.forced:
            return f"killed after {self.drain_timeout_s:.0f} s without draining"
        if self.exit_code in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM once drained
            return "drained and exited on SIGTERM"
        return f"exited with code {self.exit_code}"

    def _tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:]) or "(no output)"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, signum)
