"""Serving benchmark on the reference workload (../shared/bench/serving-workload.md).

Each server runs alone on the machine, in turn, and the whole round is repeated (median
and spread reported): the naive FastAPI + uvicorn server in two careful configurations
(an async endpoint; a threadpool endpoint with one torch thread per call) of which the
better is kept as "naive", LitServe with batching, TorchServe with its batching, and
``kilowatt serve`` over REST JSON, binary REST (OIP binary tensor extension), gRPC with raw
contents (unary ModelInfer calls, and ModelStreamInfer streams with one request
outstanding per connection) and REST JSON over HTTPS. Closed loop at 1, 16 and 64
connections, then open loop (Poisson arrivals) at 50% and 90% of the best peer's
capacity. One load generator (kilowatt.bench.loadgen, in its own process) drives every
protocol, so the ratios compare servers, not clients. Prints the table, the issue's
targets, and writes bench/results/serve.json.

    python bench/serve.py                      # 3 s per run, 2 repeats
    python bench/serve.py --duration 5 --repeats 3
    python bench/serve.py --only kilowatt torchserve
    python bench/serve.py --only kilowatt-json kilowatt-grpc   # REST JSON vs both gRPC modes

TorchServe is installed on first use into a venv outside the repository
(--torchserve-venv, default ~/.cache/kilowatt-bench/torchserve-venv) that reuses this
environment's torch; it needs Java 17 (``apt-get install -y openjdk-17-jre-headless``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import serve_peers  # bench/ is on sys.path when this script runs
import torch

from kilowatt.ports import reserve_port
from kilowatt.serve.process import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCIES = (1, 16, 64)
OPEN_LOOP_SHARES = (0.5, 0.9)
FEATURES = 256

LOAD_RUNNER = """
import json, resource, sys
from kilowatt.bench.loadgen import LoadSpec, run_scenarios
spec = json.loads(open(sys.argv[1]).read())
spec["body"] = open(spec.pop("body_file"), "rb").read()
spec["concurrencies"] = tuple(spec.get("concurrencies", (1,)))
runs = [r.to_dict() for r in run_scenarios(LoadSpec(**spec))]
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"runs": runs, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def reference_model() -> torch.nn.Module:
    """The reference MLP: 256 -> 2048 -> 2048 -> 10, seed 0, eval mode."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    ).eval()


def request_sample() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(FEATURES).astype(np.float32)


@dataclass
class Target:
    """One way of asking one server: URL, body, headers, and how to read the answer."""

    name: str
    server: str
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: str | None = None
    open_loop: bool = True
    load_options: dict[str, Any] = field(default_factory=dict)


def json_body() -> bytes:
    return json.dumps({"inputs": [float(v) for v in request_sample()]}).encode()


def binary_body() -> tuple[bytes, dict[str, str]]:
    blob = request_sample().tobytes()
    header = orjson.dumps({
        "inputs": [{"name": "input0", "shape": [1, FEATURES], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)}}],
        "parameters": {"binary_data_output": True},
    })  # fmt: skip
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + blob, headers


def answer_of(target: Target, verify: Any) -> np.ndarray:
    """The target's answer to the reference request, as an array of 10 values."""
    if target.url.startswith("grpc"):
        import grpc

        from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
        from kilowatt.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        request = pb.ModelInferRequest.FromString(target.body)
        with grpc.insecure_channel(target.url.split("/")[2]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            if target.load_options.get("grpc_stream"):
                [answer] = stub.ModelStreamInfer(iter([request]), timeout=60)
                if answer.error_message:
                    raise RuntimeError(answer.error_message)
                reply = answer.infer_response
            else:
                reply = stub.ModelInfer(request, timeout=60)
        return np.frombuffer(reply.raw_output_contents[0], dtype="<f4")
    reply = httpx.post(
        target.url, content=target.body, headers=target.headers or
        {"content-type": "application/json"}, timeout=60, verify=verify,
    )  # fmt: skip
    reply.raise_for_status()
    length = reply.headers.get("inference-header-content-length")
    if length is not None:
        return np.frombuffer(reply.content[int(length) :], dtype=np.float32)
    return np.asarray(reply.json()["outputs"], dtype=np.float32).reshape(-1)


def start(server: serve_peers.Server, work: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        server.command, cwd=work, start_new_session=True, env={**os.environ, **server.env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_answering(target: Target, process: subprocess.Popen[bytes], verify: Any) -> None:
    """Return once the target answers the reference request (models loaded, workers up)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{target.server} exited with {process.returncode}")
        try:
            answer_of(target, verify)
            return
        except Exception:
            time.sleep(0.1)  # polling until the server answers
    raise RuntimeError(f"{target.server} did not answer within 240 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the server and any workers it started
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def load(target: Target, work: Path, **options: Any) -> list[dict[str, Any]]:
    """Run the load generator in its own process against ``target``."""
    body_file = work / f"{target.name}.body"
    body_file.write_bytes(target.body)
    spec = {
        "url": target.url, "body_file": str(body_file), "headers": target.headers,
        "ca_file": target.ca_file, "slo_s": 1.0, "max_requests": 1_000_000,
        **target.load_options, **options,
    }  # fmt: skip
    spec_file = work / "load.json"
    spec_file.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, str(work / "load_runner.py"), str(spec_file)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed on {target.name}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds of every live process of a process group (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


def closed_loop(
    target: Target, work: Path, duration_s: float, group: int
) -> dict[int, dict[str, Any]]:
    """The sweep, with the server's and the client's CPU time per request over all of it."""
    before = cpu_seconds(group)
    done = load(target, work, scenario="sweep", concurrencies=CONCURRENCIES, duration_s=duration_s)
    requests = sum(run["requests"] for run in done["runs"]) or 1
    server_cpu = (cpu_seconds(group) - before) / requests
    for run in done["runs"]:
        run["server_cpu_ms_per_request"] = server_cpu * 1e3
        run["client_cpu_ms_per_request"] = done["cpu_s"] / requests * 1e3
    return {run["concurrency"]: run for run in done["runs"]}


def open_loop(target: Target, work: Path, qps: float, duration_s: float) -> dict[str, Any]:
    [run] = load(target, work, scenario="server", qps=qps, duration_s=duration_s)["runs"]
    return run


def tls_files(work: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate chain, key) for 127.0.0.1 from a throwaway authority."""
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    ca, cert, key = work / "ca.pem", work / "cert.pem", work / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return ca, cert, key


def plan(
    work: Path, model_file: Path, args: argparse.Namespace
) -> tuple[dict[str, serve_peers.Server], list[Target]]:
    """Every server to start and every target to load, in the order they run."""
    serve_peers.write_scripts(work)
    (work / "load_runner.py").write_text(LOAD_RUNNER)
    servers: dict[str, serve_peers.Server] = {}
    targets: list[Target] = []
    body = json_body()
    for kind in ("async", "threadpool"):
        server = serve_peers.naive(kind, model_file, reserve_port())
        servers[server.name] = server
        targets.append(Target(server.name, server.name, server.predict, body))
    server = serve_peers.litserve(model_file, reserve_port())
    servers[server.name] = server
    targets.append(Target(server.name, server.name, server.predict, body))
    venv = serve_peers.torchserve_venv(args.torchserve_venv) if shutil.which("java") else None
    if venv is not None:
        ports = (reserve_port(), reserve_port(), reserve_port())
        server = serve_peers.torchserve(venv, work, model_file, ports)
        servers[server.name] = server
        targets.append(Target(server.name, server.name, server.predict, body))
    else:
        print("TorchServe skipped (needs java and its venv)", file=sys.stderr)
    # kilowatt binds its own ports (ServerProcess: --port 0, --grpc-port 0); its targets name
    # the announced endpoints as {http} and {grpc}, filled in once it has started.
    # A 10 s latency objective: no server here sheds load, so neither does kilowatt.
    kw = [str(model_file), "--name", "mlp", "--slo-ms", "10000"]
    servers["kilowatt"] = serve_peers.Server("kilowatt", [*kw, "--grpc-port", "0"], "", "")
    binary, binary_headers = binary_body()
    from kilowatt.bench.loadgen import default_body

    grpc_body = default_body("grpc://127.0.0.1/mlp", FEATURES, 0)
    targets += [
        Target("kilowatt-json", "kilowatt", "{http}/predict", body),
        Target("kilowatt-binary", "kilowatt", "{http}/v2/models/mlp/infer", binary,
               binary_headers),
        Target("kilowatt-grpc", "kilowatt", "{grpc}/mlp", grpc_body),
        Target("kilowatt-grpc-stream", "kilowatt", "{grpc}/mlp", grpc_body,
               load_options={"grpc_stream": True}),
    ]  # fmt: skip
    ca, cert, key = tls_files(work)
    servers["kilowatt-tls"] = serve_peers.Server(
        "kilowatt-tls", [*kw, "--tls-cert", str(cert), "--tls-key", str(key)], "", ""
    )
    targets.append(
        Target("kilowatt-https", "kilowatt-tls", "{http}/predict", body, ca_file=str(ca),
               open_loop=False)
    )  # fmt: skip
    if args.only:
        wanted = set(args.only)
        targets = [
            t for t in targets if any(n.startswith(w) for w in wanted for n in (t.server, t.name))
        ]
        servers = {k: v for k, v in servers.items() if any(t.server == k for t in targets)}
    return servers, targets


def verifier(target: Target) -> Any:
    import ssl

    return ssl.create_default_context(cafile=target.ca_file) if target.ca_file else True


def one_round(
    servers: dict[str, serve_peers.Server],
    targets: list[Target],
    work: Path,
    measure: Any,
    expected: np.ndarray,
    errors: dict[str, float],
) -> dict[str, Any]:
    """Start each server alone, measure its targets with ``measure``, stop it."""
    results: dict[str, Any] = {}
    for name, server in servers.items():
        mine = [t for t in targets if t.server == name]
        if not mine:
            continue
        with running(server, mine, work) as (group, mine):
            for target in mine:
                verify = verifier(target)
                error = float(np.max(np.abs(answer_of(target, verify) - expected)))
                errors[target.name] = max(errors.get(target.name, 0.0), error)
                print(f"  {target.name} ...", flush=True)
                results[target.name] = measure(target, group)
    return results


@contextlib.contextmanager
def running(
    server: serve_peers.Server, targets: list[Target], work: Path
) -> Iterator[tuple[int, list[Target]]]:
    """Start ``server``; yield its process group and its targets once each answers.

    kilowatt picks its own ports and announces them; its targets' URLs are filled in then.
    """
    if server.name.startswith("kilowatt"):
        verify = verifier(targets[0])
        log = work / f"{server.name}.log"
        with ServerProcess(server.command, log_path=log, ready_timeout_s=240, verify=verify) as kw:
            endpoints = {"http": kw.endpoint, "grpc": kw.grpc_endpoint}
            yield kw.pid, [replace(t, url=t.url.format(**endpoints)) for t in targets]
        return
    process = start(server, work)
    try:
        for target in targets:
            wait_answering(target, process, verifier(target))
        yield process.pid, targets
    finally:
        stop(process)


def median_spread(values: list[float]) -> tuple[float, float]:
    """The median, and the spread (max - min) as a share of it."""
    middle = statistics.median(values)
    return middle, (max(values) - min(values)) / middle if middle else 0.0


def summarize_closed(rounds: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for name in rounds[0]:
        summary[name] = {}
        for c in CONCURRENCIES:
            runs = [r[name][c] for r in rounds]
            rps, rps_spread = median_spread([run["throughput_rps"] for run in runs])
            p99, p99_spread = median_spread([run["p99_s"] for run in runs])
            summary[name][c] = {
                "rps": rps, "rps_spread": rps_spread, "p99_s": p99, "p99_spread": p99_spread,
                "p50_s": statistics.median(run["p50_s"] for run in runs),
                "errors": sum(run["errors"] for run in runs),
                "server_cpu_ms": statistics.median(r["server_cpu_ms_per_request"] for r in runs),
                "client_cpu_ms": statistics.median(r["client_cpu_ms_per_request"] for r in runs),
            }  # fmt: skip
    return summary


def summarize_open(rounds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in rounds[0]:
        summary[name] = {}
        for share in rounds[0][name]:
            runs = [r[name][share] for r in rounds]
            p99, p99_spread = median_spread([run["p99_s"] for run in runs])
            summary[name][share] = {
                "qps": runs[0]["target_qps"], "p99_s": p99, "p99_spread": p99_spread,
                "p50_s": statistics.median(run["p50_s"] for run in runs),
                "rps": statistics.median(run["throughput_rps"] for run in runs),
                "errors": sum(run["errors"] for run in runs),
            }  # fmt: skip
    return summary


CEILING_RUNNER = """
import json, sys, time
import numpy as np, torch
from kilowatt.serve.handler import load_handler
from kilowatt.serve.runner import threads_per_worker
from kilowatt.spec import ModelSpec, ServeSpec
model_file, seconds, windows, features = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:5])
batch = 64
spec = ModelSpec(name="mlp", source=model_file)
threads = threads_per_worker(ServeSpec(models=[spec]))
torch.set_num_threads(threads)  # as kilowatt serve sets them in its worker
torch.set_num_interop_threads(1)
handler = load_handler(spec)
handler.load()
x = np.tile(np.random.default_rng(0).standard_normal(features).astype(np.float32), (batch, 1))
for _ in range(20):
    handler.predict(x)
rates = []
for _ in range(windows):
    done, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        handler.predict(x)
        done += batch
    rates.append(done / (time.perf_counter() - begin))
print(json.dumps({"batch": batch, "threads": threads, "rates": rates}))
"""


def in_process_ceiling(
    work: Path, model_file: Path, seconds: float, windows: int
) -> dict[str, Any]:
    """Samples/s of the served model alone at batch 64 (kilowatt's handler, no server, no
    client), with the torch threads ``kilowatt serve`` gives its worker; ``windows`` timed
    windows in a process of its own, while nothing else of this benchmark runs."""
    runner = work / "ceiling_runner.py"
    runner.write_text(CEILING_RUNNER)
    load_before = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, str(runner), str(model_file), str(seconds), str(windows), str(FEATURES)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout)
    rate, spread = median_spread(result["rates"])
    return {**result, "samples_per_s": rate, "spread": spread, "load_average": load_before}


def best_naive(closed: dict[str, Any]) -> str | None:
    """The naive configuration with the higher throughput at 64 connections."""
    variants = [n for n in ("naive-async", "naive-threadpool") if n in closed]
    return max(variants, key=lambda n: closed[n][64]["rps"]) if variants else None


def peer_names(closed: dict[str, Any]) -> list[str]:
    naive = best_naive(closed)
    return [n for n in (naive, "litserve", "torchserve") if n is not None and n in closed]


def _pct(spread: float) -> str:
    return f"±{spread * 50:.0f}%"  # half the range: the usual "value ± x" reading


def closed_table(closed: dict[str, Any]) -> str:
    ref = closed.get("torchserve")
    header = (
        f"{'target':<22}{'conns':>6}{'req/s':>9}{'':>6}{'p50 ms':>9}{'p99 ms':>9}{'':>6}"
        f"{'x TS req/s':>11}{'x TS p99':>10}{'errors':>8}{'srv ms':>8}{'cli ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, runs in closed.items():
        for c in CONCURRENCIES:
            run = runs[c]
            ratio = f"{run['rps'] / ref[c]['rps']:.2f}" if ref else "-"
            p99_ratio = f"{run['p99_s'] / ref[c]['p99_s']:.2f}" if ref else "-"
            lines.append(
                f"{name:<22}{c:>6}{run['rps']:>9.0f}{_pct(run['rps_spread']):>6}"
                f"{run['p50_s'] * 1e3:>9.2f}{run['p99_s'] * 1e3:>9.2f}{_pct(run['p99_spread']):>6}"
                f"{ratio:>11}{p99_ratio:>10}{run['errors']:>8.0f}"
                f"{run['server_cpu_ms']:>8.2f}{run['client_cpu_ms']:>8.2f}"
            )
    return "\n".join(lines)


def open_table(opened: dict[str, Any]) -> str:
    ref = opened.get("torchserve")
    header = (
        f"{'target':<22}{'share':>6}{'qps':>7}{'served':>8}{'p50 ms':>9}{'p99 ms':>9}{'':>6}"
        f"{'x TS p99':>10}{'errors':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, runs in opened.items():
        for share, run in runs.items():
            p99_ratio = f"{run['p99_s'] / ref[share]['p99_s']:.2f}" if ref else "-"
            lines.append(
                f"{name:<22}{share:>6}{run['qps']:>7.0f}{run['rps']:>8.0f}"
                f"{run['p50_s'] * 1e3:>9.2f}{run['p99_s'] * 1e3:>9.2f}{_pct(run['p99_spread']):>6}"
                f"{p99_ratio:>10}{run['errors']:>8.0f}"
            )
    return "\n".join(lines)


def verdicts(
    closed: dict[str, Any], opened: dict[str, Any], ceiling: dict[str, float]
) -> list[str]:
    """The issue's targets, each with the figure reached and met / not met."""
    out: list[str] = []

    def line(text: str, ok: bool) -> None:
        out.append(f"{text} — {'met' if ok else 'NOT met'}")

    kw, ts = closed.get("kilowatt-json"), closed.get("torchserve")
    if kw and ts:
        ratio = kw[64]["rps"] / ts[64]["rps"]
        line(f"64 conns: kilowatt (JSON) {ratio:.2f}x TorchServe's throughput (target >= 2)",
             ratio >= 2)  # fmt: skip
        p99 = kw[64]["p99_s"] / ts[64]["p99_s"]
        line(f"64 conns: kilowatt p99 {p99:.2f}x TorchServe's (target <= 0.5)", p99 <= 0.5)
    naive = [closed[n][1]["p50_s"] for n in ("naive-async", "naive-threadpool") if n in closed]
    if kw and naive:
        ratio = kw[1]["p50_s"] / min(naive)
        line(f"1 conn: kilowatt p50 {ratio:.2f}x the best naive p50 (target <= 1.1)", ratio <= 1.1)
    for name, mode in (("kilowatt-grpc", "unary"), ("kilowatt-grpc-stream", "stream")):
        grpc = closed.get(name)
        if kw and grpc:
            ratio = grpc[64]["rps"] / kw[64]["rps"]
            line(f"64 conns: gRPC raw ({mode}) {ratio:.2f}x REST JSON throughput "
                 "(target >= 1.2)", ratio >= 1.2)  # fmt: skip
    served = {n: closed[n][64]["rps"] for n in closed if n.startswith("kilowatt")}
    if served:
        best = max(served, key=served.__getitem__)
        share = served[best] / ceiling["samples_per_s"]
        line(f"64 conns: {best} serves {served[best]:.0f} samples/s, {share:.2f} of the "
             f"in-process ceiling of {ceiling['samples_per_s']:.0f} (target >= 0.4)",
             share >= 0.4)  # fmt: skip
    kw_open, ts_open = opened.get("kilowatt-json"), opened.get("torchserve")
    if kw_open and ts_open and "0.9" in kw_open:
        p99 = kw_open["0.9"]["p99_s"] / ts_open["0.9"]["p99_s"]
        line(f"open loop at 0.9 of the best peer: kilowatt p99 {p99:.2f}x TorchServe's "
             "(target <= 0.5)", p99 <= 0.5)  # fmt: skip
    tls = closed.get("kilowatt-https")
    if kw and tls:
        rps = tls[64]["rps"] / kw[64]["rps"]
        p99 = tls[64]["p99_s"] / kw[64]["p99_s"]
        line(f"TLS: HTTPS at 64 conns {rps:.2f}x HTTP throughput, p99 {p99:.2f}x "
             "(target: within 15%)", rps >= 0.85 and p99 <= 1.15)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every server")
    parser.add_argument("--only", nargs="*", help="prefixes of the servers or targets to measure")
    parser.add_argument(
        "--torchserve-venv",
        type=Path,
        default=Path.home() / ".cache/kilowatt-bench/torchserve-venv",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args(argv)  # fmt: skip
    # The servers run in a scratch folder: a relative PYTHONPATH (PYTHONPATH=src) must follow.
    if os.environ.get("PYTHONPATH"):
        paths = os.environ["PYTHONPATH"].split(os.pathsep)
        os.environ["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    with torch.inference_mode():
        expected = reference_model()(torch.from_numpy(request_sample()[None])).numpy()[0]
    errors: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kilowatt-bench-") as tmp:
        work = Path(tmp)
        model_file = work / "mlp.pt"
        with warnings.catch_warnings():  # TorchScript is deprecated upstream; still served
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(reference_model()).save(str(model_file))
        servers, targets = plan(work, model_file, args)
        # The ceiling first, in a phase of its own: no server or load generator running.
        print("in-process ceiling (the model alone, batch 64)", flush=True)
        ceiling = in_process_ceiling(work, model_file, args.duration, max(3, args.repeats))
        closed_rounds = []
        for index in range(args.repeats):
            print(f"closed loop, round {index + 1} of {args.repeats}", flush=True)
            closed_rounds.append(one_round(
                servers, targets, work,
                lambda t, group: closed_loop(t, work, args.duration, group), expected, errors,
            ))  # fmt: skip
        closed = summarize_closed(closed_rounds)
        peers = peer_names(closed)
        capacity = max((closed[p][64]["rps"] for p in peers), default=0.0)
        open_rounds = []
        if capacity > 0:
            for index in range(args.repeats):
                print(f"open loop, round {index + 1} of {args.repeats}", flush=True)
                open_rounds.append(one_round(
                    servers, [t for t in targets if t.open_loop], work,
                    lambda t, _group: {
                        str(share): open_loop(t, work, share * capacity, args.duration)
                        for share in OPEN_LOOP_SHARES
                    },
                    expected, errors,
                ))  # fmt: skip
        opened = summarize_open(open_rounds) if open_rounds else {}
    print(closed_table(closed))
    if opened:
        best = max(peers, key=lambda p: closed[p][64]["rps"])
        print(f"\nopen loop (Poisson) at shares of the best peer's capacity ({best}: "
              f"{capacity:.0f} req/s at 64 connections)")  # fmt: skip
        print(open_table(opened))
    print(f"\nnaive kept: {best_naive(closed)} (the better at 64 connections)")
    print(
        f"model alone in-process, batch 64: {ceiling['samples_per_s']:.0f} samples/s "
        f"{_pct(ceiling['spread'])} over {len(ceiling['rates'])} windows ({ceiling['threads']} "
        f"torch threads, as the server's worker; load average {ceiling['load_average']:.1f} "
        f"before); largest |output - model| {max(errors.values()):.1e}"
    )
    for verdict in verdicts(closed, opened, ceiling):
        print(verdict)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "workload": "reference MLP 256-2048-2048-10 fp32, one sample per request",
        "command": "python bench/serve.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "duration_s": args.duration, "repeats": args.repeats,
        "closed_loop": {k: {str(c): v for c, v in runs.items()} for k, runs in closed.items()},
        "open_loop": opened, "best_peer_capacity_rps": capacity,
        "naive_kept": best_naive(closed), "max_abs_error": errors,
        "in_process": ceiling, "verdicts": verdicts(closed, opened, ceiling),
        "rounds": {"closed": closed_rounds, "open": open_rounds},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
