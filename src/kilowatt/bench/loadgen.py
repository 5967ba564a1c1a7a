"""A load generator in the MLPerf LoadGen scenarios, over HTTP/1.1 keep-alive (``http://``,
``https://``) or the Open Inference Protocol's gRPC service (``grpc://host:port/model``,
``grpcs://`` over TLS), whose body is a serialized ``ModelInferRequest``. gRPC runs use
unary ``ModelInfer`` calls, or with ``grpc_stream`` Triton's ``ModelStreamInfer``: each
connection is then one open stream with one request outstanding at a time.

Scenarios:
    single-stream  one request at a time; latency of each.
    server         Poisson arrivals at a target rate, open loop: a request is sent at its
                   scheduled time whether or not earlier ones have answered, and its latency
                   counts from that scheduled time, so queueing inside the client is not hidden.
    offline        every request available at once, sent at full concurrency; throughput.
    sweep          closed loop at each concurrency of a list.

Every run is bounded by a duration and a request count. gRPC status codes are counted as
their HTTP counterparts (OK 200, INVALID_ARGUMENT 400, NOT_FOUND 404, RESOURCE_EXHAUSTED
429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, others 500), so every protocol reads alike.

>>> spec = LoadSpec(url="http://127.0.0.1:8080/predict", body=b'{"inputs": [0.0]}')
>>> results = run_scenarios(spec)  # doctest: +SKIP
>>> print(render_table(results))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
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
_SCHEMES = ("http", "https", "grpc", "grpcs")
_MAX_OPEN_LOOP_CONNECTIONS = 1024
_DRAIN_GRACE_S = 10.0
_CLOSE_GRACE_S = 5.0  # for connections to finish closing (TLS close_notify) at the end


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
        headers: extra request headers (gRPC metadata for gRPC URLs).
        ca_file: PEM file of the authority that signed an https/grpcs server's certificate
            (default: the system's trusted authorities).
        grpc_channels: gRPC channels (TCP connections) the concurrent calls of a gRPC run
            share: HTTP/2 multiplexes calls over a channel, and gRPC's performance guide
            advises reusing a few channels rather than one per call. HTTP/1.1 cannot
            multiplex, so HTTP runs keep one connection per concurrent request.
        grpc_stream: send gRPC requests as messages on ``ModelStreamInfer`` streams, one
            stream per connection (per concurrent request), instead of unary calls.
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
    ca_file: str | None = None
    grpc_channels: int = 4
    grpc_stream: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise SpecError(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.duration_s <= 0 or self.max_requests < 1:
            raise SpecError("duration_s must be > 0 and max_requests >= 1 to bound the run")
        if self.qps <= 0 or any(c < 1 for c in self.concurrencies) or self.grpc_channels < 1:
            raise SpecError("qps must be > 0, and every concurrency and grpc_channels >= 1")
        parts = urlsplit(self.url)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise SpecError(
                f"url {self.url!r} must be http(s)://host:port/path or grpc(s)://host:port/model"
            )
        if parts.scheme.startswith("grpc") and not parts.path.strip("/"):
            raise SpecError(f"url {self.url!r} must name the model: grpc://host:port/MODEL")
        if self.grpc_stream and not parts.scheme.startswith("grpc"):
            raise SpecError(f"grpc_stream needs a grpc:// or grpcs:// url, got {self.url!r}")


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
    """One keep-alive HTTP/1.1 connection (TLS for https) that sends one prepared request."""

    def __init__(
        self, host: str, port: int, request: bytes, tls: ssl.SSLContext | None = None
    ) -> None:
        self._host, self._port, self._request, self._tls = host, port, request, tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self) -> int:
        """Send the request and read the answer; the HTTP status, or 0 on a transport error."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls
                )
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
            # A TLS close exchanges close_notify with the server: finish it inside this loop,
            # or the loop closes under a transport still shutting down.
            _track_closing(_wait_closed(self._writer))
        self._reader = self._writer = None


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):  # the server may have gone first
        await writer.wait_closed()


def _track_closing(closing: Any) -> None:
    task = asyncio.ensure_future(closing)
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class _GrpcConnection:
    """One stream of calls on a shared gRPC channel, sending one serialized ModelInfer
    request."""

    def __init__(self, call: Any, request: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
        self._call, self._request, self._metadata = call, request, metadata or None

    async def send(self) -> int:
        import grpc

        try:
            await self._call(self._request, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            return _GRPC_AS_HTTP.get(exc.code().name, 500)
        return 200

    def close(self) -> None:
        pass  # the channel outlives its streams; the pool closes it


class _GrpcStream:
    """One ModelStreamInfer stream on a shared gRPC channel with one request outstanding:
    ``send`` writes the serialized request and reads its answer. A stream that fails is
    opened again on the next send."""

    def __init__(self, channel: Any, request: bytes, metadata: tuple[tuple[str, str], ...]) -> None:
        self._open = channel.stream_stream(_MODEL_STREAM_INFER)
        self._request, self._metadata = request, metadata or None
        self._call: Any = None

    async def send(self) -> int:
        import grpc

        try:
            if self._call is None:
                self._call = self._open(metadata=self._metadata)
            await self._call.write(self._request)
            answer = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            self._call = None
            return _GRPC_AS_HTTP.get(exc.code().name, 500)
        if answer is grpc.aio.EOF:
            self._call = None
            return 0
        return _stream_status(answer)

    def close(self) -> None:
        if self._call is not None:
            _track_closing(_finish_stream(self._call))
            self._call = None


async def _finish_stream(call: Any) -> None:
    """Half-close the stream and wait for the server to end it."""
    import grpc

    with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
        await call.done_writing()
        await call.code()


def _stream_status(answer: bytes) -> int:
    """The HTTP counterpart of one ModelStreamInferResponse: 200 unless ``error_message``
    (field 1, the only field serialized with tag byte 0x0A) is set; then the status the
    server names in ``infer_response.parameters["status"]``."""
    if not answer.startswith(b"\x0a"):
        return 200  # a success is not parsed: the client spends no time on protobuf
    from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb

    reply = pb.ModelStreamInferResponse.FromString(answer)
    parameters = reply.infer_response.parameters
    status = parameters["status"].string_param if "status" in parameters else ""
    return _GRPC_AS_HTTP.get(status, 500)


class _ChannelPool:
    """Up to ``size`` gRPC channels, each its own TCP connection, handed out in turn."""

    def __init__(self, target: str, tls: Any, size: int) -> None:
        self._target, self._tls, self._size = target, tls, size
        self._channels: list[Any] = []
        self._turn = 0

    def call(self) -> Any:
        """The ModelInfer call on the next channel (bytes in, bytes out: the client spends
        no time on protobuf per request)."""
        return self.next_channel().unary_unary(_MODEL_INFER)

    def next_channel(self) -> Any:
        """A new channel until there are ``size``, then the existing ones in turn."""
        import grpc

        if len(self._channels) < self._size:
            options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
            if self._tls is None:
                channel = grpc.aio.insecure_channel(self._target, options=options)
            else:
                channel = grpc.aio.secure_channel(self._target, self._tls, options=options)
            self._channels.append(channel)
        channel = self._channels[self._turn % len(self._channels)]
        self._turn += 1
        return channel

    def close(self) -> None:
        # close() is a coroutine; it finishes inside the loop before the run ends.
        for channel in self._channels:
            _track_closing(channel.close())
        self._channels = []


_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
_GRPC_AS_HTTP = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_closing: set[asyncio.Task[None]] = set()


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


class _Connector:
    """Makes the connections of one run, each sending the spec's request; ``close`` ends
    what they share (the gRPC channels)."""

    def __init__(
        self,
        connect: Callable[[], _Connection | _GrpcConnection | _GrpcStream],
        pool: _ChannelPool | None,
    ) -> None:
        self._connect, self._pool = connect, pool

    def __call__(self) -> _Connection | _GrpcConnection | _GrpcStream:
        return self._connect()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def _prepare(spec: LoadSpec) -> _Connector:
    """The connections of one run."""
    parts = urlsplit(spec.url)
    if parts.scheme in ("grpc", "grpcs"):
        return _prepare_grpc(spec, parts.hostname or "127.0.0.1", parts.port or 8081)
    tls = _client_tls(spec.ca_file) if parts.scheme == "https" else None
    host, port, request = _http_request(spec)
    return _Connector(lambda: _Connection(host, port, request, tls), None)


def _http_request(spec: LoadSpec) -> tuple[str, int, bytes]:
    """Host, port and the bytes of the HTTP/1.1 request every connection sends."""
    parts = urlsplit(spec.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Host": f"{host}:{port}", "Content-Type": "application/json", **spec.headers}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(spec.body)}\r\n\r\n"
    return host, port, head.encode() + spec.body


def _prepare_grpc(spec: LoadSpec, host: str, port: int) -> _Connector:
    tls = None
    if urlsplit(spec.url).scheme == "grpcs":
        import grpc

        roots = Path(spec.ca_file).read_bytes() if spec.ca_file else None
        tls = grpc.ssl_channel_credentials(root_certificates=roots)
    metadata = tuple((k.lower(), v) for k, v in spec.headers.items())
    pool = _ChannelPool(f"{host}:{port}", tls, spec.grpc_channels)
    if spec.grpc_stream:
        return _Connector(lambda: _GrpcStream(pool.next_channel(), spec.body, metadata), pool)
    return _Connector(lambda: _GrpcConnection(pool.call(), spec.body, metadata), pool)


def _client_tls(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SpecError(f"ca_file {ca_file!r} is not a readable PEM file ({exc})") from None


async def _closed_loop(
    spec: LoadSpec, concurrency: int, limit: int, scenario: str
) -> ScenarioResult:
    connect = _prepare(spec)
    latencies: list[float] = []
    statuses: list[int] = []
    start = time.perf_counter()
    stop_at = start + spec.duration_s
    issued = 0

    async def worker() -> None:
        nonlocal issued
        connection = connect()
        try:
            while issued < limit and time.perf_counter() < stop_at:
                issued += 1
                sent = time.perf_counter()
                status = await connection.send()
                latencies.append(time.perf_counter() - sent)
                statuses.append(status)
        finally:
            connection.close()

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        connect.close()
    elapsed = time.perf_counter() - start
    return summarize(scenario, latencies, statuses, elapsed, spec.slo_s, concurrency=concurrency)


async def _open_loop(spec: LoadSpec) -> ScenarioResult:
    connect = _prepare(spec)
    rng = np.random.default_rng(spec.seed)
    gaps = rng.exponential(
        1.0 / spec.qps, size=min(spec.max_requests, int(spec.qps * spec.duration_s * 2) + 16)
    )
    schedule = np.cumsum(gaps)
    schedule = schedule[schedule < spec.duration_s][: spec.max_requests]
    idle: list[_Connection | _GrpcConnection | _GrpcStream] = []
    opened = 0
    latencies: list[float] = []
    statuses: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(
        scheduled: float, connection: _Connection | _GrpcConnection | _GrpcStream
    ) -> None:
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
            connection, opened = connect(), opened + 1
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
    connect.close()
    return summarize("server", latencies, statuses, elapsed, spec.slo_s, target_qps=spec.qps)


async def _run_all(spec: LoadSpec) -> list[ScenarioResult]:
    try:
        return await _run_wanted(spec)
    finally:
        if _closing:  # let connections and gRPC channels finish closing inside this loop
            await asyncio.wait(set(_closing), timeout=_CLOSE_GRACE_S)


async def _run_wanted(spec: LoadSpec) -> list[ScenarioResult]:
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
    # uvloop, when installed, spends less CPU per request and TLS record than asyncio's own
    # loop: the client shares the machine with the server it measures.
    import importlib.util

    factory = None
    if importlib.util.find_spec("uvloop"):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_run_all(spec))


def default_body(url: str, features: int = 256, seed: int = 0) -> bytes:
    """The reference workload's request: one sample of seeded float32 values, in the
    Open Inference Protocol form for ``.../infer`` URLs, a ``ModelInferRequest`` with raw
    contents for gRPC URLs, and ``{"inputs": [...]}`` otherwise."""
    import json

    sample = np.random.default_rng(seed).standard_normal(features).astype(np.float32)
    parts = urlsplit(url)
    if parts.scheme in ("grpc", "grpcs"):
        from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb

        request = pb.ModelInferRequest(model_name=parts.path.strip("/"))
        request.inputs.add(name="input0", datatype="FP32", shape=[1, features])
        request.raw_input_contents.append(sample.astype("<f4").tobytes())
        return request.SerializeToString()
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
