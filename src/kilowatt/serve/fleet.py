"""Model repository changes (hot reload, unload, traffic weights) applied by every worker
process of one server, whichever worker the admin call reached.

The workers share a folder (made by ``kilowatt serve --workers N``) holding a journal of
changes, one numbered JSON file each, written once and never changed (created with
``O_EXCL``, so two workers never take the same number). Each worker replays the journal in
order from a poller in its event loop and records the last change it applied, with the
error if the change failed, in ``acks/<pid>.json``. The worker that took the admin call
waits until every live worker has applied the change, so the call returns when the whole
fleet has switched; a worker started later replays the journal and catches up.

>>> fleet = Fleet(folder, server)  # doctest: +SKIP
>>> await fleet.start()  # doctest: +SKIP
>>> await fleet.submit({"op": "weights", "name": "mlp", "weights": {"2": 1.0}})  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from kilowatt.errors import ServeError
from kilowatt.serve.errors import InvalidInput, UnknownModel
from kilowatt.serve.server import InferenceServer
from kilowatt.spec.serve import ModelSpec

__all__ = ["FLEET_ENV", "Fleet", "apply_change"]

#: The shared folder of the workers of one server.
FLEET_ENV = "KILOWATT_SERVE_FLEET_DIR"

_POLL_S = 0.02  # how often a worker looks for new changes
_ERRORS = {"InvalidInput": InvalidInput, "UnknownModel": UnknownModel}


def apply_change(server: InferenceServer, change: dict[str, Any]) -> None:
    """Apply one repository change to this process's server (blocking: call from a thread)."""
    op = change["op"]
    if op == "load":
        server.deploy(ModelSpec.model_validate(change["spec"]), change.get("weights"))
    elif op == "unload":
        server.undeploy(change["name"], change["version"])
    elif op == "weights":
        server.set_weights(change["name"], change["weights"])
    else:
        raise InvalidInput(f"unknown repository change {op!r}")


class Fleet:
    """One worker's side of the shared journal.

    Args:
        folder: the folder every worker of the server shares.
        server: this worker's engines.
        pid: this worker's id in the acknowledgements (default: the process id).
    """

    def __init__(self, folder: str | Path, server: InferenceServer, pid: int | None = None) -> None:
        self.folder = Path(folder)
        self.server = server
        self.pid = pid if pid is not None else os.getpid()
        self._changes = self.folder / "changes"
        self._acks = self.folder / "acks"
        self._applied = 0
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one replay at a time in this process

    async def start(self) -> None:
        """Register this worker, catch up with the journal, then follow it."""
        self._changes.mkdir(parents=True, exist_ok=True)
        self._acks.mkdir(parents=True, exist_ok=True)
        await self._catch_up()
        self._poller = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """Stop following and leave the fleet (the others stop waiting for this worker)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        with contextlib.suppress(FileNotFoundError):
            (self._acks / f"{self.pid}.json").unlink()

    async def submit(self, change: dict[str, Any], timeout_s: float = 300.0) -> None:
        """Journal a change and return once every live worker has applied it.

        Raises:
            ServeError: the change failed (the first worker's error), or some worker had
                not applied it within ``timeout_s``.
        """
        number = self._append(change)
        await self._catch_up()
        deadline = time.monotonic() + timeout_s
        while True:
            acks = self._read_acks()
            errors = [a for a in acks.values() if a.get("failed") == number]
            if errors:
                kind = _ERRORS.get(errors[0]["error_type"], ServeError)
                raise kind(errors[0]["error"])
            behind = [pid for pid, a in acks.items() if a["applied"] < number and _alive(pid)]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ServeError(
                    f"workers {behind} had not applied change {number} after {timeout_s:.0f} s"
                )
            await asyncio.sleep(_POLL_S)

    def _append(self, change: dict[str, Any]) -> int:
        number = self._last_number() + 1
        payload = json.dumps(change).encode()
        while True:
            path = self._changes / f"{number:08d}.json"
            try:
                fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                number += 1
                continue
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
            try:
                # link() fails if the number is taken: the journal is never overwritten.
                os.link(path.with_suffix(".tmp"), path)
            except FileExistsError:
                number += 1
                continue
            finally:
                os.unlink(path.with_suffix(".tmp"))
            return number

    def _last_number(self) -> int:
        names = [p.stem for p in self._changes.glob("*.json")]
        return max((int(n) for n in names), default=0)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(_POLL_S)
            try:
                await self._catch_up()
            except Exception:  # keep following: one unreadable change must not stop it
                logging.getLogger(__name__).exception("applying repository changes failed")

    async def _catch_up(self) -> None:
        async with self._lock:
            last = self._last_number()
            failed: dict[str, Any] = {}
            while self._applied < last:
                number = self._applied + 1
                change = json.loads((self._changes / f"{number:08d}.json").read_bytes())
                try:
                    await asyncio.to_thread(apply_change, self.server, change)
                except Exception as exc:  # recorded for the worker that took the call
                    failed = {"failed": number, "error": str(exc)}
                    failed["error_type"] = type(exc).__name__
                self._applied = number
                self._write_ack(failed)
            if not (self._acks / f"{self.pid}.json").exists():
                self._write_ack({})

    def _write_ack(self, failed: dict[str, Any]) -> None:
        path = self._acks / f"{self.pid}.json"
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps({"applied": self._applied, **failed}))
        os.replace(temp, path)  # readers see the old or the new ack, never half of one

    def _read_acks(self) -> dict[int, dict[str, Any]]:
        acks = {}
        for path in self._acks.glob("*.json"):
            with contextlib.suppress(FileNotFoundError, ValueError):
                acks[int(path.stem)] = json.loads(path.read_text())
        return acks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
