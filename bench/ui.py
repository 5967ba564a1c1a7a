"""Dashboard API benchmark: a run page whose metric has 1,000,000 points.

A run with a 1M-point ``loss`` and a 1M-point ``power_w`` is served by the control plane
(uvicorn on 127.0.0.1, port 0) and fetched over HTTP, measured in the same run:

- baseline: the run page fetching every point (``?full=true``), what a dashboard without
  server-side downsampling has to do;
- kilowatt: the run page as the dashboard loads it: the run, then each metric downsampled
  to 1,000 points (min/max per bucket, so spikes survive).

Each figure is the median of ``--repeats`` fetches: wall time and response bytes.
Target: the kilowatt run page under 1 s.

Usage: python bench/ui.py [--points 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results" / "ui.json"
TARGET_S = 1.0
KEYS = ("loss", "power_w")


def fill_store(folder: Path, points: int) -> tuple[Any, str]:
    """A store with one run holding ``points`` points of each key in ``KEYS``."""
    from kilowatt.store import open_store

    store = open_store(url=f"sqlite:///{folder / 'kw.db'}", artifacts_url=str(folder / "art"))
    run = store.create_run("bench-ui", name="million", params={"lr": 0.1})
    batch = 100_000
    for key in KEYS:
        for first in range(0, points, batch):
            steps = range(first, min(first + batch, points))
            rows = [(key, s, 1.7e9 + s * 0.01, 1.0 / (s + 1) + (s % 7) * 1e-3) for s in steps]
            store.log_metric_points(run.id, "rank0", rows)
    return store, run.id


def start_server(store: Any, folder: Path) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    from kilowatt.api import create_app
    from kilowatt.spec import Settings

    app = create_app(Settings.from_env({"KILOWATT_HOME": str(folder)}), store)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ready = threading.Event()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API server failed to start")
        ready.wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}/api/v1"


def fetch_run_page(client: httpx.Client, run_id: str, full: bool) -> tuple[float, int, int]:
    """Seconds, bytes and points for the run plus every metric history."""
    start = time.perf_counter()
    response = client.get(f"/runs/{run_id}")
    response.raise_for_status()
    size, points = len(response.content), 0
    for key in response.json()["metric_keys"]:
        query = {"full": "true"} if full else {"max_points": 1000}
        history = client.get(f"/runs/{run_id}/metrics/{key}", params=query)
        history.raise_for_status()
        size += len(history.content)
        points += len(history.json()["steps"])
    return time.perf_counter() - start, size, points


def measure(client: httpx.Client, run_id: str, full: bool, repeats: int) -> dict[str, float]:
    samples = [fetch_run_page(client, run_id, full) for _ in range(repeats)]
    return {
        "time_s": statistics.median(s[0] for s in samples),
        "best_s": min(s[0] for s in samples),
        "bytes": samples[0][1],
        "points_sent": samples[0][2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="points per metric")
    parser.add_argument("--repeats", type=int, default=5, help="fetches per scenario")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kw-bench-ui-") as name:
        store, run_id = fill_store(Path(name), args.points)
        server, thread, base = start_server(store, Path(name))
        try:
            with httpx.Client(base_url=base, timeout=300) as client:
                baseline = measure(client, run_id, full=True, repeats=args.repeats)
                kilowatt = measure(client, run_id, full=False, repeats=args.repeats)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            store.close()
    report(args, baseline, kilowatt)


def report(
    args: argparse.Namespace, baseline: dict[str, float], kilowatt: dict[str, float]
) -> None:
    speedup = baseline["time_s"] / kilowatt["time_s"]
    shrink = baseline["bytes"] / kilowatt["bytes"]
    print(f"run page, {len(KEYS)} metrics x {args.points:,} points, median of {args.repeats}")
    print(f"{'scenario':<34}{'time (s)':>10}{'bytes':>14}{'points':>12}")
    for label, row in (("baseline: every point (full=true)", baseline),
                       ("kilowatt: downsampled to 1,000", kilowatt)):  # fmt: skip
        print(f"{label:<34}{row['time_s']:>10.3f}{row['bytes']:>14,}{row['points_sent']:>12,}")
    verdict = "met" if kilowatt["time_s"] < TARGET_S else "MISSED"
    print(
        f"ratio: {speedup:.1f}x faster, {shrink:.0f}x fewer bytes; target < {TARGET_S} s {verdict}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "ui",
                "points_per_metric": args.points,
                "metrics": list(KEYS),
                "repeats": args.repeats,
                "baseline_full": baseline,
                "kilowatt_downsampled": kilowatt,
                "speedup": speedup,
                "bytes_ratio": shrink,
                "target_s": TARGET_S,
                "machine": platform.platform(),
                "python": platform.python_version(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
