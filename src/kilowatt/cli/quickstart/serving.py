"""Step 4 of the quickstart: serve the registered model with ``kilowatt serve`` in a child
process, check one answer, load-test it with kilowatt's load generator, and stop it.

The server runs in its own process group, so a Ctrl-C in the terminal reaches only the
quickstart, which then stops the whole group (SIGTERM: drain; SIGKILL after a grace
period) before it exits: no process outlives the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kilowatt.errors import ServeError

__all__ = [
    "LatencyBucket",
    "ServerProcess",
    "ServingOutcome",
    "kilowatt_command",
    "load_test",
    "scrape_server_metrics",
]

_READY_TIMEOUT_S = 120.0
_DRAIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LatencyBucket:
    """Requests whose server-side latency fell in ``(low_s, high_s]``."""

    low_s: float
    high_s: float
    count: int


@dataclass(frozen=True)
class ServingOutcome:
    """What serving showed.

    Attributes:
        endpoint: the server's base URL.
        pid: the server process's id (stopped when this is returned).
        exit_code: how the server exited (0 after a clean drain).
        check: the answer to one held-out image: ``(true digit, predicted digit)``.
        results: the load generator's results (``ScenarioResult``), one per load level.
        histogram: the server's own request-latency histogram.
        energy_j: energy of all forward passes, from the server's meter.
        requests: requests the server answered.
        energy_method: how the server's joules were obtained.
        deployment: ``(id, status)`` of the deployment the server recorded in the store.
    """

    endpoint: str
    pid: int
    exit_code: int | None
    check: tuple[int, int]
    results: list[Any]
    histogram: list[LatencyBucket]
    energy_j: float | None
    requests: int
    energy_method: str
    deployment: tuple[int, str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> Any:
        """The load level with the highest throughput."""
        return max(self.results, key=lambda r: r.throughput_rps)


def kilowatt_command() -> list[str]:
    """How to run the ``kilowatt`` CLI of this installation as a child process."""
    script = Path(sys.executable).with_name("kilowatt")
    if script.is_file():
        return [str(script)]
    entry = "import sys; from kilowatt.cli.main import main; sys.exit(main())"
    return [sys.executable, "-c", entry]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``kilowatt serve MODEL`` as a child process in its own process group.

    Use as a context manager: leaving the block (normally, by an exception or by Ctrl-C)
    stops the server and waits for it.

    Args:
        model_ref: a registry reference (``name:version``) to serve.
        log_path: where the server's output goes (shown when it fails to start).
        on_start: called with ``(pid, endpoint)`` once the child exists.
    """

    def __init__(
        self,
        model_ref: str,
        log_path: Path,
        on_start: Callable[[int, str], None] | None = None,
    ) -> None:
        self.model_ref = model_ref
        self.log_path = log_path
        self.on_start = on_start
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.forced = False

    @property
    def pid(self) -> int:
        """The server's process id (0 before it starts)."""
        return self.process.pid if self.process is not None else 0

    def __enter__(self) -> ServerProcess:
        command = [
            *kilowatt_command(), "serve", self.model_ref, "--host", "127.0.0.1",
            "--port", str(self.port), "--threads", "1", "--max-batch-size", "32",
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # A new session: Ctrl-C in the terminal does not reach the server directly;
            # the quickstart stops the whole group itself, in order.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            if self.on_start is not None:
                self.on_start(self.process.pid, self.endpoint)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        import httpx

        assert self.process is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise ServeError(
                    f"kilowatt serve {self.model_ref} exited with code {self.process.returncode} "
                    f"before it was ready; its output:\n{self._log_tail()}"
                )
            try:
                if httpx.get(f"{self.endpoint}/v2/health/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServeError(
                    f"kilowatt serve {self.model_ref} was not ready after "
                    f"{_READY_TIMEOUT_S:.0f} s; its output:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> int | None:
        """Stop the server's process group: SIGTERM (drain), then SIGKILL after a grace
        period. Ctrl-C is ignored meanwhile, so a second one cannot cut the cleanup short."""
        process = self.process
        if process is None or self.exit_code is not None:
            return self.exit_code
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                self.exit_code = process.wait(_DRAIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.forced = True
                _signal_group(process.pid, signal.SIGKILL)
                self.exit_code = process.wait()
            # Whatever the server started shares its group; none may outlive it.
            _signal_group(process.pid, signal.SIGKILL)
        finally:
            signal.signal(signal.SIGINT, previous)
        return self.exit_code

    def describe_exit(self) -> str:
        """How the server ended, in words."""
        if self.exit_code is None:
            return "still running"
        if self.forced:
            return f"killed after {_DRAIN_TIMEOUT_S:.0f} s without draining"
        if self.exit_code in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM once drained
            return "drained and exited on SIGTERM"
        return f"exited with code {self.exit_code}"

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, signum)


def predict_one(endpoint: str, pixels: list[float]) -> int:
    """The digit the server answers for one image (argmax of its logits)."""
    import httpx

    reply = httpx.post(f"{endpoint}/predict", json={"inputs": pixels}, timeout=30.0)
    if reply.status_code != 200:
        raise ServeError(f"POST {endpoint}/predict answered {reply.status_code}: {reply.text}")
    logits = reply.json()["outputs"]
    return int(max(range(len(logits)), key=lambda i: logits[i]))


def load_test(endpoint: str, pixels: list[float], duration_s: float) -> list[Any]:
    """One request at a time, then 8 concurrent clients, each for ``duration_s`` at most."""
    from kilowatt.bench.loadgen import LoadSpec, run_scenarios

    spec = LoadSpec(
        url=f"{endpoint}/predict",
        body=json.dumps({"inputs": pixels}).encode(),
        scenario="sweep",
        concurrencies=(1, 8),
        duration_s=duration_s,
        max_requests=20_000,
        slo_s=0.05,
    )
    return run_scenarios(spec)


def scrape_server_metrics(endpoint: str) -> tuple[list[LatencyBucket], float | None, int]:
    """The server's latency histogram, joules of forward passes and requests answered,
    read from its Prometheus ``/metrics``."""
    import httpx

    from kilowatt.api.serving_stats import parse_serving_metrics

    scraped = parse_serving_metrics(httpx.get(f"{endpoint}/metrics", timeout=10.0).text)
    return _buckets(dict(scraped.latency_buckets)), scraped.energy_j, int(scraped.requests)


def _buckets(cumulative: dict[float, float]) -> list[LatencyBucket]:
    buckets, low, below = [], 0.0, 0.0
    for high in sorted(cumulative):
        buckets.append(LatencyBucket(low, high, int(cumulative[high] - below)))
        low, below = high, cumulative[high]
    return buckets
