"""One attempt of a queued job as an operating-system process group.

The job runs in a session of its own, so stopping it reaches every process it started
(``killpg``), and it is reaped with ``wait4``, whose resource usage gives the CPU seconds
of the job and its reaped children even when it crashed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kilowatt.errors import BackendError

__all__ = ["Exit", "JobProcess"]


@dataclass(frozen=True)
class Exit:
    """How an attempt ended.

    Attributes:
        code: the exit code, or minus the signal number that killed it.
        wall_s: wall seconds from start to exit.
        cpu_s: user + system CPU seconds of the process and its reaped children.
    """

    code: int
    wall_s: float
    cpu_s: float


class JobProcess:
    """Starts ``argv`` in a new session with stdout and stderr appended to ``log_path``.

    Args:
        argv: the program and its arguments.
        env: the complete environment of the job.
        cwd: its working directory.
        log_path: the file that receives everything it prints.

    Raises:
        BackendError: the program cannot be started (missing, not executable).
    """

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str, log_path: Path
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.started_s = time.monotonic()
        with log_path.open("ab") as log:
            try:
                self._popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,  # its own process group: stop reaches children
                )
            except OSError as exc:
                raise BackendError(
                    f"cannot start job command {list(argv)!r}: {exc}; check the program "
                    "exists and is executable"
                ) from None
        self.pid = self._popen.pid
        self.exit: Exit | None = None

    def poll(self) -> Exit | None:
        """The exit, once the process has ended (reaping it); None while it runs."""
        if self.exit is not None:
            return self.exit
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = code  # reaped here, so Popen must not wait for it again
        self.exit = Exit(code, time.monotonic() - self.started_s, usage.ru_utime + usage.ru_stime)
        # Whatever it left behind in its group goes too: a finished job holds nothing.
        self.signal_group(signal.SIGKILL)
        return self.exit

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the job's group (gone is fine)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout_s: float, poll_interval_s: float = 0.05) -> Exit | None:
        """Poll until the process ends or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while (ended := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(poll_interval_s)
        return ended
