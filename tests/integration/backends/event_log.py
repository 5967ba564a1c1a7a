"""Reading a training job's event log (``event_log`` in the spec) by attempt."""

from __future__ import annotations

import json
from pathlib import Path


def attempts(log: Path) -> list[tuple[int, list[int]]]:
    """``(start_step, steps it ran)`` of each process that trained, in order.

    Each process's events begin with its ``fit_start`` line, so the log splits there.
    """
    found: list[tuple[int, list[int]]] = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "fit_start":
            found.append((event["start_step"], []))
        elif event["event"] == "step":
            found[-1][1].append(event["step"])
    return found
