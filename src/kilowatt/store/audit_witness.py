"""An external witness of the audit chain: its head exported every N events.

Whoever can write to the database can cut events off the end of the log and rewrite the
head row to match; whoever also holds the HMAC key can recompute the whole chain. A copy
of the head kept somewhere else (a folder on another machine, an object store with
versioning or object lock) catches both: ``verify_audit`` checks every exported head
against the chain. Each export is its own file, ``head-<seq>.json``, so object stores
that cannot append work too.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import fsspec

__all__ = ["AuditWitness", "WitnessedHead"]

_log = logging.getLogger("kilowatt.store")


@dataclass(frozen=True)
class WitnessedHead:
    """The chain's newest event, as exported: its sequence number and HMAC."""

    seq: int
    hash: str


class AuditWitness:
    """Exports the chain's head to ``url`` (any fsspec URL) at every ``every``-th event.

    >>> witness = AuditWitness("s3://audit-witness/kilowatt", every=100)  # doctest: +SKIP
    """

    def __init__(self, url: str, every: int = 100) -> None:
        if every < 1:
            raise ValueError(f"every={every}: export the head at least every 1 event")
        self.url = url.rstrip("/")
        self.every = every
        self._fs, self._root = fsspec.core.url_to_fs(self.url)

    def due(self, seq: int) -> bool:
        """Whether event ``seq`` is one whose head is exported."""
        return seq % self.every == 0

    def export(self, head: WitnessedHead) -> None:
        """Write ``head`` as ``head-<seq>.json`` (a retry of the same head rewrites it)."""
        record = {"seq": head.seq, "hash": head.hash, "exported_at": time.time()}
        self._fs.makedirs(self._root, exist_ok=True)
        with self._fs.open(f"{self._root}/head-{head.seq:012d}.json", "w") as file:
            file.write(json.dumps(record))

    def export_committed(self, heads: list[WitnessedHead]) -> None:
        """Export the due heads of a committed transaction; a failure is logged, not raised,
        because the operation itself already committed (the next due head is exported)."""
        for head in heads:
            if self.due(head.seq):
                try:
                    self.export(head)
                except OSError:
                    _log.exception("could not export audit head %s to %s", head.seq, self.url)

    def heads(self) -> list[WitnessedHead]:
        """Every exported head, oldest first (empty where nothing was exported yet)."""
        found = []
        for path in sorted(self._fs.glob(f"{self._root}/head-*.json")):
            with self._fs.open(path, "r") as file:
                record = json.loads(file.read())
            found.append(WitnessedHead(int(record["seq"]), str(record["hash"])))
        return sorted(found, key=lambda head: head.seq)
