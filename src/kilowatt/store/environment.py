"""What a run ran on: git state, host, Python, torch, CUDA and accelerators.

torch is described only if the program already imported it: the store never imports torch.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["capture_environment", "git_state"]

_GIT_TIMEOUT_S = 5.0


def _git(args: list[str], cwd: Path) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(cwd: Path | None = None) -> tuple[str | None, str | None]:
    """``(commit, sha256 of uncommitted changes)`` of the repository around ``cwd``.

    The hash is None for a clean tree; both are None outside a git repository.
    """
    cwd = cwd or Path.cwd()
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return None, None
    diff = _git(["diff", "HEAD", "--binary"], cwd) or b""
    return commit.decode().strip(), (hashlib.sha256(diff).hexdigest() if diff else None)


def _torch_facts() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch_version": None, "cuda_version": None, "accelerators": []}
    accelerators: list[str] = []
    try:
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            accelerators = [torch.cuda.get_device_name(i) for i in range(count)]
    except Exception:  # a broken driver must not stop a run from being tracked
        accelerators = []
    return {
        "torch_version": str(torch.__version__),
        "cuda_version": getattr(torch.version, "cuda", None),
        "accelerators": accelerators,
    }


def capture_environment(cwd: Path | None = None) -> dict[str, Any]:
    """The environment fields a run records (see ``kilowatt.store.runs.ENVIRONMENT_FIELDS``)."""
    commit, diff_sha256 = git_state(cwd)
    return {
        "git_commit": commit,
        "git_diff_sha256": diff_sha256,
        "host": socket.gethostname(),
        "python_version": platform.python_version(),
        **_torch_facts(),
    }
