"""``available_cores``: the cores this process may run on, not the machine's count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kilowatt.host import available_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_process_pinned_to_one_core_counts_one() -> None:
    # As under taskset or a container's cpuset: os.cpu_count() would still say all of them.
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from kilowatt.host import available_cores; print(available_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(("cpu_count", "cores"), [(6, 6), (None, 1)])
def test_without_affinity_every_core_counts_and_at_least_one(
    monkeypatch: pytest.MonkeyPatch, cpu_count: int | None, cores: int
) -> None:
    # macOS and Windows have no sched_getaffinity; os.cpu_count() may not know (None).
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cpu_count)
    assert available_cores() == cores
