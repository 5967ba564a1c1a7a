"""What this machine gives the process: the CPU cores it may run on.

>>> available_cores() >= 1
True
"""

from __future__ import annotations

import os

__all__ = ["available_cores"]


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one (a container's
    or ``taskset``'s limit, not the machine's count), else every core, at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
