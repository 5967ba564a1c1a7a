"""A load generator in the MLPerf LoadGen scenarios, over plain HTTP/1.1 keep-alive.

Scenarios:
    single-stream  one request at a time; latency of each.
    server         Poisson arrivals at a target rate, open loop: a request is sent at its
                   scheduled time whether or not earlier ones have answered, and its latency
                   counts from that scheduled time, so queueing inside the client is not hidden.
    offline        every request available at once, sent at full concurrency; throughput.
    sweep          closed loop at each concurrency of a list.

Every run is bounded by a duration and a request count.

>>> spec = LoadSpec(url="http://127.0.0.1:8080/predict", body=b'{"inputs": [0.0]}')
>>> results = run_scenarios(spec)  # doctest: +SKIP
>>> print(render_table(results))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from kilowatt.errors import SpecError

__all__ = [
    "SCENARIOS",
    "LoadSpec",
    "ScenarioResult",
    "default_body",
    "render_table",
    "run_scenarios",
    "summarize",
]

SCENARIOS = ("single-stream", "server", "offline", "sweep", "all")
_MAX_OPEN_LOOP_CONNECTIONS = 1024
_DRAIN_GRACE_S = 10.0


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and how hard.

    Attributes:
        url: the inference URL (``http://host:port/path``).
        body: the request body, the same for every request.
        scenario: one of ``SCENARIOS``.
        qps: arrival rate of the server scenario.
        concurrencies: closed-loop concurrencies of the sweep.
        offline_concurrency: connections used by the offline scenario.
        duration_s: longest a run issues requests.
        max_requests: most requests a run issues.
        slo_s: latency objective for SLO attainment.
        seed: seed of the Poisson arrivals.
        headers: extra request headers.
    """

    url: str
    body: bytes
    scenario: str = "sweep"
    qps: float = 100.0
    concurrencies: tuple[int, ...] = (1, 16, 64)
    offline_concurrency: int = 64
    duration_s: float = 10.0
    max_requests: int = 100_000
    slo_s: float = 0.1
    seed: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise SpecError(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.duration_s <= 0 or self.max_requests < 1:
            raise SpecError("duration_s must be > 0 and max_requests >= 1 to bound the run")
        if self.qps <= 0 or any(c < 1 for c in self.concurrencies):
            raise SpecError("qps must be > 0 and every concurrency >= 1")
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise SpecError(f"url {self.url!r} must be http://host:port/path")


@dataclass(frozen=True)
class ScenarioResult:
    """Figures of one run; latencies in seconds."""

    scenario: str
    concurrency: int | None
    target_qps: float | None
    requests: int
    ok: int
    errors: int
    duration_s: float
    throughput_rps: float
    p50_s: float
    p90_s: float
    p99_s: float
    p999_s: float
    slo_s: float
    slo_attainment: float
    statuses: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return asdict(self)


def summarize(
    scenario: str,
    latencies_s: list[float],
    statuses: list[int],
    duration_s: float,
    slo_s: float,
    concurrency: int | None = None,
    target_qps: float | None = None,
) -> ScenarioResult:
    """Throughput, percentiles of successful requests, errors and SLO attainment.

    A request meets the SLO when it succeeded (2xx) within ``slo_s``; attainment is over
    every request issued, so errors count against it.

    >>> r = summarize("x", [0.01, 0.02, 0.03, 0.5], [200, 200, 200, 429], 1.0, 0.1)
    >>> r.ok, r.errors, r.slo_attainment
    (3, 1, 0.75)
    """
    ok_mask = [200 <= s < 300 for s in statuses]
    ok_lat = np.array([lat for lat, ok in zip(latencies_s, ok_mask, strict=True) if ok])
    pct = np.percentile(ok_lat, [50, 90, 99, 99.9]) if ok_lat.size else [float("nan")] * 4
    met = int(np.sum(ok_lat <= slo_s)) if ok_lat.size else 0
    counts: dict[str, int] = {}
    for status in statuses:
        counts[str(status)] = counts.get(str(status), 0) + 1
    total = len(statuses)
    return ScenarioResult(
        scenario=scenario,
        concurrency=concurrency,
        target_qps=target_qps,
        requests=total,
        ok=int(sum(ok_mask)),
        errors=total - int(sum(ok_mask)),
        duration_s=duration_s,
        throughput_rps=int(sum(ok_mask)) / duration_s if duration_s > 0 else 0.0,
        p50_s=float(pct[0]),
        p90_s=float(pct[1]),
        p99_s=float(pct[2]),
        p999_s=float(pct[3]),
        slo_s=slo_s,
        slo_attainment=met / total if total else 0.0,
        statuses=counts,
    )


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends the same prepared request."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self._host, self._port, self._request = host, port, request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self) -> int:
        """Send the request and read the answer; the HTTP status, or 0 on a transport error."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.write(self._request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status, length, close = _parse_head(head)
            await self._reader.readexactly(length)
            if close:
                self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
        elif key == b"transfer-encoding":
            raise ValueError("chunked responses are not supported by this load generator")
    return status, length, close


def _prepare(spec: LoadSpec) -> tuple[str, int, bytes]:
    parts = urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Host": f"{host}:{port}", "Content-Type": "application/json", **spec.headers}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(spec.body)}\r\n\r\n"
    return host, port, head.encode() + spec.body


async def _closed_loop(
    spec: LoadSpec, concurrency: int, limit: int, scenario: str
) -> ScenarioResult:
    host, port, request = _prepare(spec)
    latencies: list[float] = []
    statuses: list[int] = []
    start = time.perf_counter()
    stop_at = start + spec.duration_s
    issued = 0

    async def worker() -> None:
        nonlocal issued
        connection = _Connection(host, port, request)
        try:
            while issued < limit and time.perf_counter() < stop_at:
                issued += 1
                sent = time.perf_counter()
                status = await connection.send()
                latencies.append(time.perf_counter() - sent)
                statuses.append(status)
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return summarize(scenario, latencies, statuses, elapsed, spec.slo_s, concurrency=concurrency)


async def _open_loop(spec: LoadSpec) -> ScenarioResult:
    host, port, request = _prepare(spec)
    rng = np.random.default_rng(spec.seed)
    gaps = rng.exponential(
        1.0 / spec.qps, size=min(spec.max_requests, int(spec.qps * spec.duration_s * 2) + 16)
    )
    schedule = np.cumsum(gaps)
    schedule = schedule[schedule < spec.duration_s][: spec.max_requests]
    idle: list[_Connection] = []
    opened = 0
    latencies: list[float] = []
    statuses: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float, connection: _Connection) -> None:
        status = await connection.send()
        latencies.append(time.perf_counter() - scheduled)  # from the scheduled send time
        statuses.append(status)
        idle.append(connection)

    start = time.perf_counter()
    for offset in schedule:
        scheduled = start + float(offset)
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            connection = idle.pop()
        elif opened < _MAX_OPEN_LOOP_CONNECTIONS:
            connection, opened = _Connection(host, port, request), opened + 1
        else:  # every connection is busy: the server is far behind; count it as refused
            latencies.append(0.0)
            statuses.append(0)
            continue
        tasks.append(asyncio.ensure_future(one(scheduled, connection)))
    pending = set()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=_DRAIN_GRACE_S)
    for task in pending:
        task.cancel()
        latencies.append(float("inf"))
        statuses.append(0)
    elapsed = max(time.perf_counter() - start, spec.duration_s if len(schedule) else 0.0)
    for connection in idle:
        connection.close()
    return summarize("server", latencies, statuses, elapsed, spec.slo_s, target_qps=spec.qps)


async def _run_all(spec: LoadSpec) -> list[ScenarioResult]:
    results = []
    wanted = {spec.scenario} if spec.scenario != "all" else set(SCENARIOS)
    if "single-stream" in wanted:
        results.append(await _closed_loop(spec, 1, spec.max_requests, "single-stream"))
    if "server" in wanted:
        results.append(await _open_loop(spec))
    if "offline" in wanted:
        results.append(
            await _closed_loop(spec, spec.offline_concurrency, spec.max_requests, "offline")
        )
    if "sweep" in wanted:
        for concurrency in spec.concurrencies:
            results.append(await _closed_loop(spec, concurrency, spec.max_requests, "closed-loop"))
    return results


def run_scenarios(spec: LoadSpec) -> list[ScenarioResult]:
    """Run the spec's scenario(s) against the server and return one result per run."""
    return asyncio.run(_run_all(spec))


def default_body(url: str, features: int = 256, seed: int = 0) -> bytes:
    """The reference workload's request: one sample of seeded float32 values, in the
    Open Inference Protocol form for ``.../infer`` URLs and ``{"inputs": [...]}`` otherwise."""
    import json

    sample = np.random.default_rng(seed).standard_normal(features).astype(np.float32)
    values = [float(v) for v in sample]
    if urlsplit(url).path.endswith("/infer"):
        tensor = {"name": "input0", "shape": [1, features], "datatype": "FP32", "data": values}
        return json.dumps({"inputs": [tensor]}).encode()
    return json.dumps({"inputs": values}).encode()


def render_table(results: list[ScenarioResult]) -> str:
    """A plain-text table of results (milliseconds for latencies)."""
    header = (
        f"{'scenario':<14}{'load':>10}{'requests':>10}{'req/s':>10}{'p50 ms':>9}"
        f"{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'errors':>8}{'SLO met':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        load = f"c={r.concurrency}" if r.concurrency is not None else f"{r.target_qps:g} qps"
        lines.append(
            f"{r.scenario:<14}{load:>10}{r.requests:>10}{r.throughput_rps:>10.0f}"
            f"{r.p50_s * 1e3:>9.2f}{r.p90_s * 1e3:>9.2f}{r.p99_s * 1e3:>9.2f}"
            f"{r.p999_s * 1e3:>10.2f}{r.errors:>8}{r.slo_attainment:>9.1%}"
        )
    return "\n".join(lines)
