"""What a request costs the server over gRPC and over REST JSON, measured with C load
generators so that the client takes as little of the two cores as it can.

Two phases, each interleaved and repeated (min / median / max reported):

- transport floor: a gRPC server (``grpc.aio``, as ``kilowatt serve --grpc-port`` runs it)
  and an ASGI server (uvicorn with httptools and uvloop, as ``kilowatt serve`` runs HTTP)
  whose handlers return a prepared answer without looking at the request, so all that is
  measured is the transport;
- kilowatt: ``kilowatt serve`` on the reference MLP, REST JSON ``/predict`` against gRPC
  ``ModelInfer`` with raw contents, on one server.

REST runs under ``wrk``, gRPC under ``h2load`` (Debian: ``apt-get install -y wrk
nghttp2-client``), 64 connections, one request in flight on each. The server's CPU seconds
(every thread, from /proc) over the requests answered give its cost per request; for
kilowatt, its ``kilowatt_serve_batch_size`` histogram gives the rows per forward pass.

    python bench/grpc_transport.py                  # 5 s per run, 3 repeats
    python bench/grpc_transport.py --duration 8 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import torch
from prometheus_client import parser
from serve import FEATURES, json_body, reference_model  # bench/ is on sys.path

from kilowatt.ports import reserve_port
from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
from kilowatt.serve.process import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
CONNECTIONS = 64
METHOD = "/inference.GRPCInferenceService/ModelInfer"

# The floor servers answer every request with the bytes kilowatt would send back.
FLOOR_GRPC = """
import asyncio, sys, grpc, uvloop
answer = open(sys.argv[2], "rb").read()
async def infer(request, context):
    return answer
async def main():
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(infer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    await server.start()
    await server.wait_for_termination()
uvloop.install()
asyncio.run(main())
"""

FLOOR_REST = """
import sys, uvicorn
answer = open(sys.argv[2], "rb").read()
headers = [(b"content-type", b"application/json")]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            loop="uvloop", http="httptools")
"""


def grpc_request() -> bytes:
    """The reference request as one gRPC message (flag byte, length, ModelInferRequest)."""
    sample = np.random.default_rng(0).standard_normal(FEATURES).astype("<f4")
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input0", datatype="FP32", shape=[1, FEATURES])
    request.raw_input_contents.append(sample.tobytes())
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_answer() -> bytes:
    """A ModelInferResponse of the reference model's shape (10 FP32 values, raw)."""
    response = pb.ModelInferResponse(model_name="mlp", model_version="1")
    response.outputs.add(name="output0", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.zeros(10, "<f4").tobytes())
    return response.SerializeToString()


def check_grpc_answer(address: str) -> None:
    """h2load sees HTTP statuses, not gRPC's: one call through grpcio proves the calls
    it counts are answered with the model's outputs."""
    import grpc

    from kilowatt.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest.FromString(grpc_request()[5:])
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    with torch.inference_mode():
        sample = torch.from_numpy(np.frombuffer(request.raw_input_contents[0], "<f4").copy())
        expected = reference_model()(sample[None]).numpy()
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(expected.shape)
    if not np.allclose(got, expected, atol=1e-4):
        raise RuntimeError("kilowatt's gRPC answer differs from the model's")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process (all its threads) and its children, waited or not."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for process in [pid, *map(int, children)]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: bytes, work: Path, duration: int) -> int:
    """Requests answered with 2xx by ``wrk`` at 64 connections in ``duration``."""
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body.decode()}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("answered %d\\n", summary.requests - summary.errors.status))\n'
        "end\n"
    )
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "-s", str(script), url]
    return _count(command, "answered ")


def h2load(address: str, body_file: Path, duration: int) -> int:
    """Calls answered by ``h2load`` at 64 connections, one stream each, in ``duration``."""
    command = [
        "h2load", "-D", str(duration), "-c", str(CONNECTIONS), "-m", "1",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-d", str(body_file), f"http://{address}{METHOD}",
    ]  # fmt: skip
    return _count(command, "status codes: ", field=0)


def _count(command: list[str], marker: str, field: int | None = None) -> int:
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith(marker):
            words = line[len(marker) :].replace(",", " ").split()
            return int(words[field or 0])
    raise RuntimeError(f"{command[0]} printed no {marker.strip()!r} line:\n{out}")


@dataclass(frozen=True)
class Load:
    """A server's pid and a run of load against it (returns the requests answered)."""

    pid: int
    run: Callable[[], int]
    metrics_url: str | None = None  # kilowatt's /metrics, for the rows per forward pass

    def measure(self) -> dict[str, float]:
        rows, passes = self._batches()
        start_cpu, start = cpu_seconds(self.pid), time.monotonic()
        answered = self.run()
        cpu, wall = cpu_seconds(self.pid) - start_cpu, time.monotonic() - start
        if answered == 0:
            raise RuntimeError("no request was answered")
        figures = {"rps": answered / wall, "cpu_ms": 1000 * cpu / answered}
        if self.metrics_url is not None:
            end_rows, end_passes = self._batches()
            figures["rows_per_pass"] = (end_rows - rows) / max(1.0, end_passes - passes)
        return figures

    def _batches(self) -> tuple[float, float]:
        """Rows and forward passes so far, from kilowatt_serve_batch_size."""
        if self.metrics_url is None:
            return 0.0, 0.0
        text = httpx.get(self.metrics_url, timeout=10).text
        totals = {"_sum": 0.0, "_count": 0.0}
        for family in parser.text_string_to_metric_families(text):
            if family.name == "kilowatt_serve_batch_size":
                for sample in family.samples:
                    for suffix in totals:
                        if sample.name.endswith(suffix):
                            totals[suffix] += sample.value
        return totals["_sum"], totals["_count"]


def interleave(rest: Load, grpc: Load, repeats: int) -> dict[str, list[dict[str, float]]]:
    """REST then gRPC, ``repeats`` times, so both see the same drift of the machine."""
    runs: dict[str, list[dict[str, float]]] = {"rest": [], "grpc": []}
    for _ in range(repeats):
        runs["rest"].append(rest.measure())
        runs["grpc"].append(grpc.measure())
    return runs


@contextmanager
def floor_server(program: str, answer: bytes, work: Path) -> Iterator[tuple[int, int]]:
    """A floor server on a free port: (pid, port)."""
    answer_file = work / f"answer-{len(program)}.bin"
    answer_file.write_bytes(answer)
    port = reserve_port()
    server = subprocess.Popen([sys.executable, "-c", program, str(port), str(answer_file)])
    try:
        _wait_for_port(port, server)
        yield server.pid, port
    finally:
        server.terminate()
        server.wait(10)


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"floor server exited with {server.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"floor server did not listen on {port} in 30 s")


def spread(values: list[float], digits: int = 3) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"


def report(name: str, runs: dict[str, list[dict[str, float]]]) -> dict[str, object]:
    rest, grpc = runs["rest"], runs["grpc"]
    print(f"\n{name}: min / median / max over {len(rest)} rounds, {CONNECTIONS} connections")
    print(f"{'':6} {'requests/s':>28} {'server CPU ms/request':>28}")
    for label, rows in (("REST", rest), ("gRPC", grpc)):
        rps = [r["rps"] for r in rows]
        cpu = [r["cpu_ms"] for r in rows]
        print(f"{label:6} {spread(rps, 0):>28} {spread(cpu):>28}")
    if "rows_per_pass" in rest[0]:
        for label, rows in (("REST", rest), ("gRPC", grpc)):
            print(f"{label} rows per forward pass: {spread([r['rows_per_pass'] for r in rows], 1)}")
    throughput = [g["rps"] / r["rps"] for r, g in zip(rest, grpc, strict=True)]
    cost = [g["cpu_ms"] / r["cpu_ms"] for r, g in zip(rest, grpc, strict=True)]
    print(f"gRPC / REST: throughput {spread(throughput, 2)}, CPU per request {spread(cost, 2)}")
    return {"runs": runs, "throughput_ratio": throughput, "cpu_ratio": cost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--out", type=Path, default=RESULTS / "grpc_transport.json")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not found; apt-get install -y wrk nghttp2-client")
    rest_answer = json.dumps({"outputs": [0.0] * 10}).encode()
    results = {}
    with tempfile.TemporaryDirectory(prefix="kilowatt-bench-") as tmp:
        work = Path(tmp)
        body_file = work / "request.grpc"
        body_file.write_bytes(grpc_request())
        rest_load = partial(wrk, body=json_body(), work=work, duration=args.duration)
        grpc_load = partial(h2load, body_file=body_file, duration=args.duration)
        with (
            floor_server(FLOOR_REST, rest_answer, work) as (rest_pid, rest_port),
            floor_server(FLOOR_GRPC, grpc_answer(), work) as (grpc_pid, grpc_port),
        ):
            rest = Load(rest_pid, lambda: rest_load(f"http://127.0.0.1:{rest_port}/predict"))
            grpc = Load(grpc_pid, lambda: grpc_load(f"127.0.0.1:{grpc_port}"))
            floor = interleave(rest, grpc, args.repeats)
        results["floor"] = report("transport floor (handlers that do nothing)", floor)
        model_file = work / "mlp.pt"
        with warnings.catch_warnings():  # TorchScript is deprecated upstream; still served
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(reference_model()).save(str(model_file))
        command = [str(model_file), "--name", "mlp", "--slo-ms", "10000", "--grpc-port", "0"]
        with ServerProcess(command, program="serve", log_path=work / "serve.log") as kw:
            if not kw.grpc_endpoint:
                raise RuntimeError(f"kilowatt serve announced no gRPC address; see {kw.log_path}")
            address = kw.grpc_endpoint.removeprefix("grpc://")
            check_grpc_answer(address)
            metrics = f"{kw.endpoint}/metrics"
            rest = Load(kw.pid, lambda: rest_load(f"{kw.endpoint}/predict"), metrics)
            grpc = Load(kw.pid, lambda: grpc_load(address), metrics)
            served = interleave(rest, grpc, args.repeats)
        results["kilowatt"] = report("kilowatt serve, reference MLP", served)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
