"""Serving benchmark on the reference workload (../shared/bench/serving-workload.md).

In one run, each server alone on the machine: a naive FastAPI + uvicorn server (no
batching), LitServe (max_batch_size=64, batch_timeout=0.002) and ``kilowatt serve``, loaded
by ``wrk`` at 1, 16 and 64 connections; plus the model alone in-process at batch 64 (the
ceiling of this machine). Prints a table with ratios to the naive server and writes JSON
to bench/results/serve.json.

    python bench/serve.py                 # 5 s warm-up + 15 s per concurrency
    python bench/serve.py --duration 5 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from kilowatt.serve.process import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCIES = (1, 16, 64)
FEATURES = 256


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


NAIVE_SERVER = """
import sys
import torch
from fastapi import FastAPI
from pydantic import BaseModel
import uvicorn

model = torch.jit.load(sys.argv[1]).eval()
app = FastAPI()


class Request(BaseModel):
    inputs: list[float]


@app.get("/health")
def health():
    return {"ok": True}


@app.post("/predict")
def predict(request: Request):
    with torch.inference_mode():
        out = model(torch.tensor([request.inputs]))
    return {"outputs": out[0].tolist()}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""

LITSERVE_SERVER = """
import sys
import torch
import litserve as ls


class MLP(ls.LitAPI):
    def setup(self, device):
        self.model = torch.jit.load(sys.argv[1]).eval()

    def decode_request(self, request):
        return torch.tensor(request["inputs"], dtype=torch.float32)

    def batch(self, inputs):
        return torch.stack(inputs)

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"outputs": output.tolist()}


if __name__ == "__main__":
    api = MLP(max_batch_size=64, batch_timeout=0.002)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
               generate_client_file=False)
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""


def free_port() -> int:
    """A port for a baseline server: they bind the port they are given and cannot say
    which one they got, unlike ``kilowatt serve --port 0``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def baseline_server(command: list[str], health: str, work: Path) -> Iterator[str]:
    """Run a baseline server script; yield its base URL once ``health`` answers 200."""
    process = subprocess.Popen(
        command, cwd=work, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        start = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before it was ready")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - start > 180:
                raise RuntimeError(f"{health} not ready after 180 s")
            time.sleep(0.02)  # polling the health probe
        yield health.rsplit("/", 1)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and any workers it started
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@contextmanager
def kilowatt_server(model_file: Path, work: Path) -> Iterator[str]:
    """``kilowatt serve`` through the helper the quickstart and the tests use."""
    log_path = work / "kilowatt-serve.log"
    args = [str(model_file), "--name", "mlp"]
    with ServerProcess(args, log_path=log_path, ready_timeout_s=180) as server:
        yield server.endpoint


_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p90/p99 (seconds), non-2xx and socket errors from ``wrk --latency``."""
    result: dict[str, float] = {"non_2xx": 0.0, "socket_errors": 0.0}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE)
        result[f"p{pct}_s"] = _seconds(match.group(1)) if match else float("nan")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        result["non_2xx"] = float(non_2xx.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        result["socket_errors"] = float(sum(int(g) for g in errors.groups()))
    requests = re.search(r"(\d+) requests in", output)
    result["requests"] = float(requests.group(1)) if requests else 0.0
    return result


def run_wrk(url: str, script: Path, connections: int, duration_s: float) -> dict[str, float]:
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def check_outputs(url: str, body: bytes, expected: np.ndarray) -> float:
    reply = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    reply.raise_for_status()
    return float(np.max(np.abs(np.asarray(reply.json()["outputs"]) - expected)))


def measure_server(
    name: str, start: Callable[[], AbstractContextManager[str]], args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:  # fmt: skip
    body = json.dumps({"inputs": [float(v) for v in request_sample()]})
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body))
    with torch.inference_mode():
        expected = reference_model()(torch.from_numpy(request_sample()[None])).numpy()[0]
    started = time.monotonic()
    with start() as base:
        cold_start_s = time.monotonic() - started
        predict = f"{base}/predict"
        max_abs_error = check_outputs(predict, body.encode(), expected)
        run_wrk(predict, script, 16, args.warmup)
        runs = {c: run_wrk(predict, script, c, args.duration) for c in CONCURRENCIES}
    print(f"  {name}: cold start {cold_start_s:.2f} s, max |error| {max_abs_error:.2e}", flush=True)
    return {"cold_start_s": cold_start_s, "max_abs_error": max_abs_error, "runs": runs}


def in_process_ceiling(seconds: float = 5.0, batch: int = 64) -> dict[str, float]:
    """Samples/s of the model alone at ``batch`` (no HTTP), after a warm-up."""
    model = reference_model()
    x = torch.from_numpy(np.tile(request_sample(), (batch, 1)))
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            done += batch
    elapsed = time.perf_counter() - start
    return {"batch": batch, "samples_per_s": done / elapsed, "threads": torch.get_num_threads()}


def servers(work: Path, model_file: Path) -> dict[str, Callable[[], AbstractContextManager[str]]]:
    py = sys.executable
    (work / "naive_server.py").write_text(textwrap.dedent(NAIVE_SERVER))
    (work / "litserve_server.py").write_text(textwrap.dedent(LITSERVE_SERVER))
    chosen: dict[str, Callable[[], AbstractContextManager[str]]] = {}
    port = free_port()
    naive = [py, "naive_server.py", str(model_file), str(port)]
    chosen["naive"] = lambda: baseline_server(naive, f"http://127.0.0.1:{port}/health", work)
    try:
        import litserve  # noqa: F401

        lit_port = free_port()
        lit = [py, "litserve_server.py", str(model_file), str(lit_port)]
        lit_health = f"http://127.0.0.1:{lit_port}/health"
        chosen["litserve"] = lambda: baseline_server(lit, lit_health, work)
    except ImportError:
        print("LitServe is not installed: skipped", file=sys.stderr)
    chosen["kilowatt"] = lambda: kilowatt_server(model_file, work)
    return chosen


def table(results: dict[str, Any], ceiling: dict[str, float]) -> str:
    naive = results["naive"]["runs"]
    lines = [
        f"{'server':<10}{'conns':>6}{'req/s':>9}{'x naive':>9}{'p50 ms':>9}{'x naive':>9}"
        f"{'p90 ms':>9}{'p99 ms':>9}{'x naive':>9}{'non-2xx':>9}{'cold s':>8}",
    ]
    lines.append("-" * len(lines[0]))
    for name, result in results.items():
        for c in CONCURRENCIES:
            run, base = result["runs"][c], naive[c]
            lines.append(
                f"{name:<10}{c:>6}{run['rps']:>9.0f}{run['rps'] / base['rps']:>9.2f}"
                f"{run['p50_s'] * 1e3:>9.2f}{run['p50_s'] / base['p50_s']:>9.2f}"
                f"{run['p90_s'] * 1e3:>9.2f}{run['p99_s'] * 1e3:>9.2f}"
                f"{run['p99_s'] / base['p99_s']:>9.2f}{run['non_2xx'] + run['socket_errors']:>9.0f}"
                f"{result['cold_start_s']:>8.2f}"
            )
    kw = results["kilowatt"]["runs"][64]["rps"]
    lines.append(
        f"model alone in-process, batch {ceiling['batch']}: {ceiling['samples_per_s']:.0f} "
        f"samples/s ({ceiling['threads']} threads); kilowatt at 64 connections serves "
        f"{kw / ceiling['samples_per_s']:.2f} of it"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per server")
    parser.add_argument("--only", nargs="*", help="servers to measure (naive always runs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kilowatt-bench-") as tmp:
        work = Path(tmp)
        model_file = work / "mlp.pt"
        with warnings.catch_warnings():  # TorchScript is deprecated upstream; still served
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(reference_model()).save(str(model_file))
        results: dict[str, Any] = {}
        for name, start in servers(work, model_file).items():
            if args.only and name != "naive" and name not in args.only:
                continue
            print(f"measuring {name} ...", flush=True)
            results[name] = measure_server(name, start, args, work)
        print("measuring the model alone in-process ...", flush=True)
        ceiling = in_process_ceiling()
    print(table(results, ceiling))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "workload": "reference MLP 256-2048-2048-10 fp32, POST /predict, one sample",
        "command": "python bench/serve.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "servers": results,
        "in_process": ceiling,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
