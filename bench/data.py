"""Streaming data loaders over S3 with a disk cache of half the data set, three epochs.

Measured in one run, against one S3-compatible endpoint (moto's server on 127.0.0.1,
behind a byte-counting proxy so every loader's remote bytes are counted the same way),
same samples, same shard size, a disk cache of half the data set, each loader alone:

- kilowatt: ``kilowatt.data.Loader`` (Belady eviction; and with the cache-aware order);
- mosaicml-streaming: ``StreamingDataset(cache_limit=...)`` with its defaults, and sized
  for the cache as its performance-tuning page says (a py1e shuffle block of 4 shards; or
  py1s with one canonical node);
- litdata: ``StreamingDataset(max_cache_size=...)`` with its defaults, and with
  ``max_pre_download=1`` (fewer chunks held ahead in a small cache);
- plain fsspec: every shard read from S3 each epoch, no cache, in a shuffled order, each
  shard whole in one GET (``cat_file``), in the consumer's process.

Epoch 1 runs from before each loader's setup (its S3 client, listing or index, workers);
each runner has imported its modules before that.

Per loader: remote bytes per epoch (and epochs 2-3 against the optimum for the cache,
(1 - cache/data set) x data set per epoch), samples/s to a consumer that does nothing,
and the stall fraction of a consumer that spends ``--compute-ms`` per batch.

The peers import torchvision, so they run from their own virtual environment, created on
first use under ``~/.cache/kilowatt-bench/data-peers``: PyPI's torchvision does not import
beside the project's torch 2.13.0 CPU build ("operator torchvision::nms does not exist"),
so that environment takes the torch 2.14.1 / torchvision 0.29.1 pair that does.

Usage: python bench/data.py [--size-mb 1024] [--shard-mb 32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kilowatt.ports import reserve_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "data.json"
PEER_VENV = Path.home() / ".cache" / "kilowatt-bench" / "data-peers"
PEER_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # a pair whose torchvision imports
PEER_PACKAGES = ["mosaicml-streaming", "litdata", "s3fs", "boto3", "numpy"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
BUCKET = "bench"
BYTES_PATH = "/__bench_bytes"
MIB = 1024 * 1024

# loader variant -> (runner, settings); kilowatt and fsspec run in this interpreter.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "kilowatt": ("kilowatt", {"cache_aware_order": False}),
    "kilowatt cache-aware": ("kilowatt", {"cache_aware_order": True}),
    "streaming": ("streaming", {}),
    # Its performance-tuning page: the cache must hold the shards of a shuffle block
    # (py1e: k=1 x ceil(block / samples per shard) x canonical nodes / nodes); its default
    # block (max(4M / canonical nodes, 2^18) samples) spans the whole data set here.
    "streaming block4": ("streaming", {"shuffle_algo": "py1e", "shuffle_block_shards": 4}),
    # ... or py1s/py2s with few canonical nodes: about 2 shards each (its default is 64).
    "streaming py1s nc1": ("streaming", {"shuffle_algo": "py1s", "num_canonical_nodes": 1}),
    "litdata": ("litdata", {}),
    "litdata pre1": ("litdata", {"max_pre_download": 1}),
    "fsspec": ("fsspec", {}),
}


# --- the S3 endpoint and the byte-counting proxy


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = reserve_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto server did not start")


class CountingProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to the endpoint and counts the response bytes of GETs."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.bytes_out = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingProxy

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _forward(self) -> None:
        if self.path == BYTES_PATH:
            body = str(self.server.bytes_out).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        upstream.close()
        if self.command == "GET":
            with self.server.lock:
                self.server.bytes_out += len(data)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


def remote_bytes(proxy_url: str) -> int:
    connection = http.client.HTTPConnection(proxy_url.removeprefix("http://"), timeout=30)
    connection.request("GET", BYTES_PATH)
    value = int(connection.getresponse().read())
    connection.close()
    return value


# --- data: the same samples in each loader's format


def sample_chunks(size_mb: float, sample_kb: int) -> Any:
    """(ids, payload rows) chunks; payloads are seeded random bytes (incompressible)."""
    import numpy as np

    sample_bytes = sample_kb * 1024
    count = int(size_mb * MIB) // sample_bytes
    for start in range(0, count, 1024):
        ids = np.arange(start, min(count, start + 1024))
        rng = np.random.default_rng([7, start])
        yield ids, rng.integers(0, 256, (len(ids), sample_bytes), dtype=np.uint8)


def write_kilowatt(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    import pyarrow as pa

    from kilowatt.data import Storage, create_dataset

    def tables() -> Any:
        for ids, payload in sample_chunks(args.size_mb, args.sample_kb):
            yield from pa.table(
                {"id": ids, "payload": pa.array([row.tobytes() for row in payload], pa.binary())}
            ).to_batches()

    storage = Storage(f"s3://{BUCKET}/kilowatt", endpoint_url=endpoint, options=_s3fs_options())
    version = create_dataset(
        pa.Table.from_batches(list(tables())),
        "bench",
        "v1",
        storage,
        shard_bytes=int(args.shard_mb * MIB),
    )
    return {
        "url": version.url,
        "bytes": version.manifest.bytes,
        "rows": version.manifest.rows,
        "shards": len(version.manifest.shards),
    }


def _s3fs_options() -> dict[str, str]:
    return {"key": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}


# --- the peers' virtual environment


def peer_python() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *PEER_TORCH], check=True)
        constraints = PEER_VENV / "constraints.txt"
        constraints.write_text("\n".join(PEER_TORCH) + "\n")
        subprocess.run([*pip, "-c", str(constraints), *PEER_PACKAGES], check=True)
    return python


# --- running one loader in its own process


def run_variant(
    name: str, args: argparse.Namespace, data: dict[str, Any], proxy_url: str, scratch: Path
) -> dict[str, Any]:
    from kilowatt.data import prefetch_batches  # not at the top: peers' venvs lack pyarrow

    runner, settings = VARIANTS[name]
    cache = scratch / f"cache-{name.replace(' ', '-')}"
    shutil.rmtree(cache, ignore_errors=True)
    config = {
        "runner": runner,
        "settings": settings,
        "data": data,
        "endpoint": proxy_url,
        "cache_dir": str(cache),
        "cache_bytes": data["kilowatt"]["bytes"] // 2,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "compute_s": args.compute_ms / 1000,
        "workers": args.workers,
        # kilowatt's Loader lets each worker run this many batches ahead; peers get as many.
        "prefetch_batches": prefetch_batches(
            data["kilowatt"]["bytes"] / data["kilowatt"]["rows"], args.batch_size
        ),
    }
    python = sys.executable if runner in ("kilowatt", "fsspec") else str(peer_python())
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(ROOT / "src")}
    if runner == "streaming":
        env["S3_ENDPOINT_URL"] = proxy_url
    before = remote_bytes(proxy_url)
    # Its own session, so a loader that overruns is stopped with its DataLoader workers.
    process = subprocess.Popen(
        [python, __file__, "--run", json.dumps(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=args.variant_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        return {
            "timed_out_s": args.variant_timeout_s,
            "remote_bytes": remote_bytes(proxy_url) - before,
        }
    if process.returncode != 0:  # reported in the table; the other loaders still run
        print(f"{name} failed:\n{stderr[-3000:]}", file=sys.stderr)
        return {"failed": stderr.strip().splitlines()[-1] if stderr.strip() else "no output"}
    return json.loads(stdout.strip().splitlines()[-1])


def _measure_epochs(setup: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Remote bytes, time and ids per epoch; then one more pass with compute per batch.

    ``setup()`` makes the loader (its S3 client, index, workers) and returns a function of
    the epoch giving its batches' ids. Every loader's process has imported its modules
    before the clock starts and nothing else: epoch 1's time runs from before ``setup()``,
    so it holds each loader's whole cold start (client, listing or index, workers).
    """
    epochs = []
    before, started = remote_bytes(config["endpoint"]), time.perf_counter()
    batches_of_epoch = setup()
    for epoch in range(config["epochs"]):
        if epoch > 0:
            before, started = remote_bytes(config["endpoint"]), time.perf_counter()
        ids = 0
        for batch_ids in batches_of_epoch(epoch):
            ids += len(batch_ids)
        epochs.append(
            {
                "seconds": time.perf_counter() - started,
                "samples": ids,
                "remote_bytes": remote_bytes(config["endpoint"]) - before,
            }
        )
    # A consumer with fixed compute per batch, over one more (warm-cache) epoch.
    started, computing = time.perf_counter(), 0.0
    for _batch_ids in batches_of_epoch(config["epochs"]):
        time.sleep(config["compute_s"])  # an accelerator step the host waits on
        computing += config["compute_s"]
    wall = time.perf_counter() - started
    return {"epochs": epochs, "stall_fraction": max(0.0, (wall - computing) / wall)}


def _run_kilowatt(config: dict[str, Any]) -> dict[str, Any]:
    import s3fs  # noqa: F401  (imported before the clock, as the fsspec runner's)

    from kilowatt.data import Loader, Storage, open_dataset

    def setup() -> Any:
        storage = Storage("s3://unused", endpoint_url=config["endpoint"], options=_s3fs_options())
        loader = Loader(
            open_dataset(config["data"]["kilowatt"]["url"], storage),
            batch_size=config["batch_size"],
            num_workers=config["workers"],
            cache_dir=Path(config["cache_dir"]),
            disk_cache_bytes=config["cache_bytes"],
            memory_cache_bytes=0,  # only the disk tier, as the peers' cache limits
            **config["settings"],
        )

        def epoch(number: int) -> Any:
            loader.set_epoch(number)
            return (batch["id"] for batch in loader)

        return epoch

    return _measure_epochs(setup, config)


def _run_fsspec(config: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import s3fs

    def setup() -> Any:
        fs = s3fs.S3FileSystem(endpoint_url=config["endpoint"], **_s3fs_options())
        url = config["data"]["kilowatt"]["url"].removeprefix("s3://")
        shards = sorted(fs.ls(f"{url}/shards", detail=False))
        size = config["batch_size"]

        def epoch(number: int) -> Any:
            # Each shard whole in one GET (no block-sized range reads), in a shuffled order.
            order = np.random.default_rng(number).permutation(len(shards))
            for index in order:
                table = pa.ipc.open_file(pa.py_buffer(fs.cat_file(shards[index]))).read_all()
                ids = table.column("id").to_numpy()
                payload = table.column("payload")
                for start in range(0, len(ids), size):
                    payload.slice(start, size).to_pylist()
                    yield ids[start : start + size]

        return epoch

    return _measure_epochs(setup, config)


def _run_streaming(config: dict[str, Any]) -> dict[str, Any]:
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    settings = dict(config["settings"])
    if "shuffle_block_shards" in settings:  # a shuffle block of that many shards' samples
        data = config["data"]["kilowatt"]
        settings["shuffle_block_size"] = settings.pop("shuffle_block_shards") * (
            data["rows"] // data["shards"]
        )

    def setup() -> Any:
        dataset = StreamingDataset(
            remote=config["data"]["streaming"]["url"],
            local=config["cache_dir"],
            batch_size=config["batch_size"],
            shuffle=True,
            cache_limit=config["cache_bytes"],
            **settings,
        )
        return _ids_per_epoch(DataLoader(dataset, **_dataloader_options(config)))

    return _measure_epochs(setup, config)


def _run_litdata(config: dict[str, Any]) -> dict[str, Any]:
    import litdata
    from litdata.streaming import downloader

    def setup() -> Any:
        # Its fast path (obstore) refuses plain-http endpoints unless allowed; this release
        # takes no allow_http through storage_options (they go to boto3), so set it here.
        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = "true"
        dataset = litdata.StreamingDataset(
            config["data"]["litdata"]["url"],
            cache_dir=config["cache_dir"],
            shuffle=True,
            max_cache_size=config["cache_bytes"],
            storage_options={
                "endpoint_url": config["endpoint"],
                "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            },
            **config["settings"],
        )
        loader = litdata.StreamingDataLoader(dataset, **_dataloader_options(config))
        return _ids_per_epoch(loader)

    return _measure_epochs(setup, config)


def _dataloader_options(config: dict[str, Any]) -> dict[str, Any]:
    """A peer's DataLoader as kilowatt's Loader runs its own: workers kept across epochs,
    each with as many batches ready (DataLoader's default is 2)."""
    options = {"batch_size": config["batch_size"], "num_workers": config["workers"]}
    if config["workers"] > 0:
        options.update(persistent_workers=True, prefetch_factor=config["prefetch_batches"])
    return options


def _ids_per_epoch(loader: Any) -> Any:
    """The epoch function ``_measure_epochs`` takes: each batch's ids."""
    return lambda number: (batch["id"] for batch in loader)


RUNNERS = {
    "kilowatt": _run_kilowatt,
    "fsspec": _run_fsspec,
    "streaming": _run_streaming,
    "litdata": _run_litdata,
}


# --- writing the peers' formats (in the peer environment)


def _write_peer(config: dict[str, Any]) -> dict[str, Any]:
    import s3fs

    kind, scratch = config["kind"], Path(config["scratch"])
    local = scratch / f"out-{kind}"
    shutil.rmtree(local, ignore_errors=True)
    shard_bytes = int(config["shard_mb"] * MIB)
    if kind == "streaming":
        from streaming import MDSWriter

        with MDSWriter(
            out=str(local), columns={"id": "int64", "payload": "bytes"}, size_limit=shard_bytes
        ) as writer:
            for ids, payload in sample_chunks(config["size_mb"], config["sample_kb"]):
                for i, row in zip(ids, payload, strict=True):
                    writer.write({"id": int(i), "payload": row.tobytes()})
    else:
        import litdata

        litdata.optimize(
            fn=_litdata_samples,
            inputs=[
                (config["size_mb"], config["sample_kb"], c) for c in range(_chunk_count(config))
            ],
            output_dir=str(local),
            chunk_bytes=shard_bytes,
            num_workers=1,
        )
    fs = s3fs.S3FileSystem(endpoint_url=config["endpoint"], **_s3fs_options())
    fs.put(str(local) + "/", f"{BUCKET}/{kind}/", recursive=True)
    files = [p for p in local.rglob("*") if p.is_file()]
    return {"url": f"s3://{BUCKET}/{kind}", "files": len(files)}


def _chunk_count(config: dict[str, Any]) -> int:
    count = int(config["size_mb"] * MIB) // (config["sample_kb"] * 1024)
    return (count + 1023) // 1024


def _litdata_samples(item: tuple[float, int, int]) -> Any:
    import numpy as np

    size_mb, sample_kb, chunk = item
    count = int(size_mb * MIB) // (sample_kb * 1024)
    start = chunk * 1024
    ids = np.arange(start, min(count, start + 1024))
    rng = np.random.default_rng([7, start])
    payload = rng.integers(0, 256, (len(ids), sample_kb * 1024), dtype=np.uint8)
    for i, row in zip(ids, payload, strict=True):
        yield {"id": int(i), "payload": row.tobytes()}


# --- the report


def summarise(name: str, runs: list[dict[str, Any]], data_bytes: int) -> dict[str, Any]:
    optimum = data_bytes - data_bytes // 2
    failed = [r for r in runs if "failed" in r]
    if failed:
        return {"loader": name, "failed": failed[0]["failed"]}
    overran = [r for r in runs if "timed_out_s" in r]
    if overran:
        return {
            "loader": name,
            "timed_out_s": overran[0]["timed_out_s"],
            "remote_mb_before_timeout": max(r["remote_bytes"] for r in overran) / MIB,
        }
    later = [r["epochs"][e]["remote_bytes"] for r in runs for e in (1, 2)]
    ceiling = [r["epochs"][e]["samples"] / r["epochs"][e]["seconds"] for r in runs for e in (1, 2)]
    cold = [r["epochs"][0]["samples"] / r["epochs"][0]["seconds"] for r in runs]
    stalls = [r["stall_fraction"] for r in runs]
    return {
        "loader": name,
        "remote_mb_epoch_1": statistics.mean(r["epochs"][0]["remote_bytes"] for r in runs) / MIB,
        "remote_mb_per_later_epoch": statistics.mean(later) / MIB,
        "later_vs_optimum": statistics.mean(later) / optimum,
        "samples_per_s": statistics.mean(ceiling),
        "samples_per_s_spread": (min(ceiling), max(ceiling)),
        "cold_samples_per_s": statistics.mean(cold),
        "stall_fraction": statistics.mean(stalls),
        "stall_spread": (min(stalls), max(stalls)),
    }


def print_table(rows: list[dict[str, Any]], data: dict[str, Any], args: argparse.Namespace) -> None:
    peers = [
        r
        for r in rows
        if r["loader"].split()[0] in ("streaming", "litdata")
        and "timed_out_s" not in r
        and "failed" not in r
    ]
    best_bytes = min((r["remote_mb_per_later_epoch"] for r in peers), default=float("nan"))
    best_rate = max((r["samples_per_s"] for r in peers), default=float("nan"))
    fsspec_cold = next((r["cold_samples_per_s"] for r in rows if r["loader"] == "fsspec"), None)
    size_mb = data["kilowatt"]["bytes"] / MIB
    print(
        f"\n{size_mb:.0f} MiB data set, {data['kilowatt']['shards']} shards of "
        f"~{args.shard_mb} MiB, "
        f"disk cache {size_mb / 2:.0f} MiB, {args.epochs} epochs, batch {args.batch_size}, "
        f"workers {args.workers}, compute {args.compute_ms} ms/batch, repeats {args.repeats}"
    )
    header = (
        f"{'loader':<22}{'ep1 MiB':>9}{'ep2-3 MiB/ep':>14}{'x optimum':>11}{'x best peer':>13}"
        f"{'samples/s':>11}{'x best peer':>13}{'cold x fsspec':>15}{'stall':>8}"
    )
    print(header)
    for r in rows:
        if "failed" in r:
            print(f"{r['loader']:<22} failed: {r['failed'][:100]}")
            continue
        if "timed_out_s" in r:
            print(
                f"{r['loader']:<22} did not finish {args.epochs} epochs + 1 in "
                f"{r['timed_out_s']} s; {r['remote_mb_before_timeout']:.0f} MiB fetched by then"
            )
            continue
        cold = r["cold_samples_per_s"] / fsspec_cold if fsspec_cold else float("nan")
        print(
            f"{r['loader']:<22}{r['remote_mb_epoch_1']:>9.0f}{r['remote_mb_per_later_epoch']:>14.0f}"
            f"{r['later_vs_optimum']:>11.2f}{r['remote_mb_per_later_epoch'] / best_bytes:>13.2f}"
            f"{r['samples_per_s']:>11.0f}{r['samples_per_s'] / best_rate:>13.2f}{cold:>15.2f}"
            f"{r['stall_fraction']:>8.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024)
    parser.add_argument("--shard-mb", type=float, default=32)
    parser.add_argument("--sample-kb", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compute-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--loaders", default=",".join(VARIANTS))
    parser.add_argument("--timeout-s", type=int, default=1800, help="writing each format")
    parser.add_argument("--variant-timeout-s", type=int, default=600, help="each loader's run")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--write-peer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        config = json.loads(args.run)
        print(json.dumps(RUNNERS[config["runner"]](config)))
        return
    if args.write_peer:
        print(json.dumps(_write_peer(json.loads(args.write_peer))))
        return
    names = [n.strip() for n in args.loaders.split(",")]
    moto, endpoint = start_moto()
    proxy = CountingProxy(endpoint)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    scratch = Path(tempfile.mkdtemp(prefix="kilowatt-bench-data-"))
    try:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint, **_s3fs_options()).mkdir(BUCKET)
        data = {"kilowatt": write_kilowatt(args, endpoint)}
        for kind in ("streaming", "litdata"):
            if any(VARIANTS[n][0] == kind for n in names):
                data[kind] = _write_peer_in_venv(kind, args, endpoint, scratch)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for index in range(args.repeats):
            # Each round starts at the next loader, so that none always runs first; the
            # writes of whatever ran before (data creation, a loader's disk cache) reach the
            # disk before the next loader's clock starts.
            for name in names[index % len(names) :] + names[: index % len(names)]:
                os.sync()
                runs[name].append(run_variant(name, args, data, proxy.url, scratch))
                print(f"{name}: done", file=sys.stderr)
        rows = [summarise(n, runs[n], data["kilowatt"]["bytes"]) for n in names]
        print_table(rows, data, args)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            json.dumps({"args": vars(args), "data": data, "rows": rows, "runs": runs}, indent=1)
        )
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    finally:
        proxy.shutdown()
        moto.terminate()
        moto.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def _write_peer_in_venv(
    kind: str, args: argparse.Namespace, endpoint: str, scratch: Path
) -> dict[str, Any]:
    config = {
        "kind": kind,
        "scratch": str(scratch),
        "shard_mb": args.shard_mb,
        "size_mb": args.size_mb,
        "sample_kb": args.sample_kb,
        "endpoint": endpoint,
    }
    completed = subprocess.run(
        [str(peer_python()), __file__, "--write-peer", json.dumps(config)],
        env={**os.environ, **CREDENTIALS},
        capture_output=True,
        text=True,
        timeout=args.timeout_s,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"writing {kind} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
