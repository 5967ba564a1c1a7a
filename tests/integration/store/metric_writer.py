"""A child process for the concurrency and crash tests: logs N points to an existing run.

Usage: python metric_writer.py URL RUN_ID WRITER N [REPORT_EVERY]

With REPORT_EVERY, it flushes every REPORT_EVERY points and prints ``flushed <count>``
after each flush, so a parent can kill it at a known point.
"""

from __future__ import annotations

import sys

from kilowatt.store import open_store, start_run


def main(argv: list[str]) -> None:
    url, run_id, writer, count = argv[0], argv[1], argv[2], int(argv[3])
    report_every = int(argv[4]) if len(argv) > 4 else 0
    store = open_store(url=url, artifacts_url="memory://kw-artifacts", actor="writer")
    with start_run(run_id=run_id, store=store, writer=writer, flush_interval_s=0.05) as run:
        for step in range(count):
            run.log_metrics({"loss": step * 0.5, "acc": float(step)}, step=step)
            if report_every and (step + 1) % report_every == 0:
                run.flush()
                print(f"flushed {step + 1}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
