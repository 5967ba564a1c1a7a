"""Generative serving benchmark: naive per-request ``generate``, a static batcher, kilowatt.

In one run, each server alone on the machine, all serving the same GPT-2-style model
(~11M parameters, built from a config with a BPE tokenizer trained on kilowatt's corpus;
random weights, no end-of-text token, so every answer is exactly ``max_tokens`` long):

- naive: FastAPI + uvicorn, a plain ``def`` endpoint calling ``model.generate`` per request
  (FastAPI runs it in its thread pool, as its docs advise for blocking code);
- static: FastAPI with an asyncio batcher that takes up to ``batch`` requests (waiting up
  to ``wait_ms`` after the first), runs one left-padded ``model.generate`` for them all until
  the longest answer is done, then takes the next batch. The run first tunes it: every
  ``--static-batch`` x ``--static-wait-ms`` pair serves the main load once, and the one with
  the most output tokens/s is the static server of the comparison;
- kilowatt: ``kilowatt generate serve`` (continuous batching, streamed answers).

All get the same open-loop Poisson load with mixed prompt and output lengths
(``kilowatt.bench.genload``) at ``--qps``, a load the naive server saturates. kilowatt alone
then also serves ``--capacity-qps``, loads that approach its own capacity. Energy is each
server process's CPU seconds over the load times the catalog's watts per core
(``estimated-cpu-time``, the same for all three). Prints tables with ratios to the naive
server and the spread over repeats, and writes bench/results/generate.json.

    python bench/generate.py                     # 3 repeats, 96 requests at 8/s; 12 and 16/s
    python bench/generate.py --repeats 1 --requests 24 --static-batch 16 --static-wait-ms 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from kilowatt.bench.genload import GenerativeLoadSpec, run_generative_load
from kilowatt.meter import cpu_watts_per_core
from kilowatt.ports import reserve_port
from kilowatt.serve.generate.hfbuild import build_gpt2_folder
from kilowatt.serve.process import ServerProcess

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "bench-gpt2"

_COMMON = """
import sys, threading
import torch
from fastapi import FastAPI
from pydantic import BaseModel
import uvicorn
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
app = FastAPI()


class Completion(BaseModel):
    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0
    stream: bool = False


@app.get("/health")
def health():
    return {"ok": True}


def answer(text, prompt_tokens, completion_tokens):
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return {"object": "text_completion", "choices": [{"index": 0, "text": text,
            "finish_reason": "length"}], "usage": usage}
"""

NAIVE_SERVER = (
    _COMMON
    + """

@app.post("/v1/completions")
def completions(request: Completion):
    ids = torch.tensor([tokenizer.encode(request.prompt)])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=request.max_tokens)
    new = out[0, ids.shape[1]:].tolist()
    return answer(tokenizer.decode(new), ids.shape[1], len(new))


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""
)

STATIC_SERVER = (
    _COMMON
    + """
import asyncio

MAX_BATCH = int(sys.argv[3])
WAIT_S = float(sys.argv[4]) / 1000
queue = None


def generate_batch(items):
    prompts = [tokenizer.encode(r.prompt) for r, _ in items]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    longest = max(r.max_tokens for r, _ in items)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=longest,
                             pad_token_id=0)
    return [(out[i, width:width + r.max_tokens].tolist(), len(p))
            for i, ((r, _), p) in enumerate(zip(items, prompts))]


async def batcher():
    loop = asyncio.get_running_loop()
    while True:
        items = [await queue.get()]
        deadline = loop.time() + WAIT_S
        while len(items) < MAX_BATCH:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        results = await asyncio.to_thread(generate_batch, items)
        for (_, future), (new, prompt_tokens) in zip(items, results):
            future.set_result(answer(tokenizer.decode(new), prompt_tokens, len(new)))


@app.on_event("startup")
async def start():
    global queue
    queue = asyncio.Queue()
    asyncio.get_running_loop().create_task(batcher())


@app.post("/v1/completions")
async def completions(request: Completion):
    future = asyncio.get_running_loop().create_future()
    await queue.put((request, future))
    return await future


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""
)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling the health probe
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def peer_command(
    name: str, work: Path, model_dir: Path, port: int, static: tuple[int, float]
) -> list[str]:
    """A peer server's command: the benchmark's own scripts cannot announce a port, so they
    get one reserved for them."""
    for peer, source in (("naive", NAIVE_SERVER), ("static", STATIC_SERVER)):
        (work / f"{peer}.py").write_text(textwrap.dedent(source))
    batch, wait_ms = static
    extra = [str(batch), str(wait_ms)] if name == "static" else []
    return [sys.executable, str(work / f"{name}.py"), str(model_dir), str(port), *extra]


@contextlib.contextmanager
def running(
    name: str, work: Path, model_dir: Path, static: tuple[int, float], env: dict[str, str]
) -> Iterator[tuple[str, int]]:
    """Start one server; yield (base URL, pid) once it answers. kilowatt binds its own port."""
    if name == "kilowatt":
        args = ["serve", str(model_dir), "--name", MODEL, "--kv-blocks", "2048", "--no-calibrate"]
        with ServerProcess(
            args, program="generate", log_path=work / "kilowatt.log", env=env, ready_timeout_s=300
        ) as server:
            yield server.endpoint, server.pid
        return
    port = reserve_port()
    command = peer_command(name, work, model_dir, port, static)
    process = subprocess.Popen(
        command, start_new_session=True, stderr=subprocess.DEVNULL, env={**os.environ, **env}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", process)
        yield url, process.pid
    finally:
        stop(process)


def measure(
    name: str, qps: float, static: tuple[int, float], work: Path, model_dir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    env = {"OMP_NUM_THREADS": str(args.threads)}
    with running(name, work, model_dir, static, env) as (url, pid):
        warm = {"model": MODEL, "prompt": "warm up", "max_tokens": 8, "temperature": 0}
        httpx.post(f"{url}/v1/completions", json=warm, timeout=120).raise_for_status()
        spec = GenerativeLoadSpec(url=url, model=MODEL, qps=qps, requests=args.requests,
                                  output_tokens=tuple(args.output_tokens),
                                  stream=name == "kilowatt", seed=args.seed)  # fmt: skip
        before = cpu_s(pid)
        result = run_generative_load(spec).as_dict()
        result["cpu_s"] = cpu_s(pid) - before
    watts = cpu_watts_per_core(None, "local-cpu")
    result["energy_j"] = result["cpu_s"] * watts
    result["energy_per_token_j"] = result["energy_j"] / max(result["output_tokens"], 1)
    result["energy_method"] = "estimated-cpu-time"
    result["qps"] = qps
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def _spread(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"±{(max(values) - min(values)) / 2:.3g}" if len(values) > 1 else ""


def table(runs: dict[str, list[dict[str, Any]]], naive_tps: float | None) -> str:
    """One row per server: medians over repeats, ± half the range."""
    columns = ["server", "offered tokens/s", "output tokens/s", "vs naive", "TTFT p50 (s)",
               "TTFT p99 (s)", "inter-token p50 / p99 (ms)", "J per token", "failed"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for name, found in runs.items():
        tps = _median(found, "output_tokens_per_s")
        itl = [r["inter_token_p50_s"] for r in found]
        itl99 = [r["inter_token_p99_s"] for r in found]
        itl_cell = (
            f"{np.median(itl) * 1000:.1f} / {np.median(itl99) * 1000:.1f}"
            if None not in itl else "whole answer at once"
        )  # fmt: skip
        ratio = f"{tps / naive_tps:.2f}x" if naive_tps else "-"
        lines.append(
            f"| {name} | {found[0]['offered_tokens_per_s']:.0f} "
            f"| {tps:.1f} {_spread(found, 'output_tokens_per_s')} | {ratio} "
            f"| {_median(found, 'ttft_p50_s'):.2f} | {_median(found, 'ttft_p99_s'):.2f} "
            f"{_spread(found, 'ttft_p99_s')} | {itl_cell} "
            f"| {_median(found, 'energy_per_token_j'):.4f} {_spread(found, 'energy_per_token_j')} "
            f"| {sum(r['failed'] for r in found)} |"
        )
    return "\n".join(lines)


def run_one(
    name: str, qps: float, static: tuple[int, float], work: Path, model_dir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    result = measure(name, qps, static, work, model_dir, args)
    result["offered_tokens_per_s"] = qps * sum(args.output_tokens) / 2
    print(f"{name} at {qps:g} req/s: {result['output_tokens_per_s']:.1f} tok/s, TTFT p99 "
          f"{result['ttft_p99_s']:.2f} s, {result['energy_per_token_j']:.4f} J/token",
          flush=True)  # fmt: skip
    return result


def tune_static(work: Path, model_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every batch x wait pair once at the main load, best (most tokens/s) first."""
    tried = []
    for batch in args.static_batch:
        for wait_ms in args.static_wait_ms:
            result = run_one("static", args.qps, (batch, wait_ms), work, model_dir, args)
            tried.append({"batch": batch, "wait_ms": wait_ms, **result})
    return sorted(tried, key=lambda r: -r["output_tokens_per_s"])


def tuning_table(tried: list[dict[str, Any]]) -> str:
    lines = ["| batch | wait (ms) | output tokens/s | TTFT p99 (s) | J per token |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in tried:
        lines.append(f"| {r['batch']} | {r['wait_ms']:g} | {r['output_tokens_per_s']:.1f} "
                     f"| {r['ttft_p99_s']:.2f} | {r['energy_per_token_j']:.4f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qps", type=float, default=8.0, help="the load all servers get")
    parser.add_argument("--capacity-qps", type=float, nargs="*", default=[12.0, 16.0],
                        help="loads kilowatt alone gets, near its capacity")  # fmt: skip
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--output-tokens", type=int, nargs=2, default=(16, 128))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--static-batch", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--static-wait-ms", type=float, nargs="+", default=[20.0, 100.0, 500.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--servers", nargs="+", default=["naive", "static", "kilowatt"])
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.servers}
    capacity: dict[str, list[dict[str, Any]]] = {f"kilowatt at {q:g} req/s": []
                                                 for q in args.capacity_qps}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_gpt2_folder(work / MODEL, n_layer=6, n_embd=384, n_head=6,
                                      n_positions=512, vocab_size=512)  # fmt: skip
        tried = tune_static(work, model_dir, args) if "static" in args.servers else []
        static = (tried[0]["batch"], tried[0]["wait_ms"]) if tried else (16, 50.0)
        for _ in range(args.repeats):
            for name in args.servers:
                runs[name].append(run_one(name, args.qps, static, work, model_dir, args))
            for qps in args.capacity_qps:
                found = run_one("kilowatt", qps, static, work, model_dir, args)
                capacity[f"kilowatt at {qps:g} req/s"].append(found)
    mean_tokens = sum(args.output_tokens) / 2
    print(f"\noffered load: {args.qps:g} req/s x {mean_tokens:g} tokens = "
          f"{args.qps * mean_tokens:.0f} output tokens/s; {args.requests} requests\n")  # fmt: skip
    if tried:
        print(f"static batcher tuning (one run each; kept batch {static[0]}, "
              f"{static[1]:g} ms):\n{tuning_table(tried)}\n")  # fmt: skip
    naive = _median(runs["naive"], "output_tokens_per_s") if runs.get("naive") else None
    print(table({f"{n} (batch {static[0]}, {static[1]:g} ms)" if n == "static" else n: r
                 for n, r in runs.items()}, naive))  # fmt: skip
    if args.capacity_qps:
        print(f"\nkilowatt near its capacity (vs the naive server's tokens/s at "
              f"{args.qps:g} req/s, a load it saturates):\n{table(capacity, naive)}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "generate.json"
    doc = {"args": vars(args), "machine": platform.platform(), "cpus": os.cpu_count(),
           "static_tuning": tried, "servers": runs, "capacity": capacity}  # fmt: skip
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
