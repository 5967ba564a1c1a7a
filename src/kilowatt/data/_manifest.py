"""A data set version: immutable Arrow IPC shards plus a JSON manifest; fingerprint = its hash.

Arrow IPC (the Feather v2 file format) is read without decoding or decompressing, so a
loader turns a fetched shard into columns at memory speed; Parquet would spend CPU on
every epoch to save bytes that the cache keeps anyway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from kilowatt.errors import DataError

__all__ = ["FORMAT", "Manifest", "ShardInfo", "decode_shard", "encode_shard", "sha256_hex"]

FORMAT = "kilowatt-data/1"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its file name under ``shards/``, size, rows and content hash."""

    name: str
    bytes: int
    rows: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a data set version holds. The content part (schema and shards) is hashed into
    the fingerprint; creation info and statistics describe it and are left out, so the
    same content written twice has the same fingerprint."""

    name: str
    version: str
    schema: dict[str, str]
    shards: tuple[ShardInfo, ...]
    arrow_schema_hex: str
    created_at: float = 0.0
    created_by: str = ""
    source: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the schema and the shard list."""
        content = {
            "format": FORMAT,
            "arrow_schema": self.arrow_schema_hex,
            "shards": [asdict(s) for s in self.shards],
        }
        return sha256_hex(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(self.arrow_schema_hex)))

    def row_offsets(self) -> list[int]:
        """The global index of each shard's first row (a sample's id is its global index)."""
        offsets, total = [], 0
        for shard in self.shards:
            offsets.append(total)
            total += shard.rows
        return offsets

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "fingerprint": self.fingerprint, **asdict(self)}
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, url: str) -> Manifest:
        try:
            body = json.loads(data)
            if body.pop("format") != FORMAT:
                raise ValueError("unknown format")
            recorded = body.pop("fingerprint")
            body["shards"] = tuple(ShardInfo(**s) for s in body["shards"])
            manifest = cls(**body)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{url} is not a {FORMAT} manifest ({exc}); recreate the data set version"
            ) from None
        if manifest.fingerprint != recorded:
            raise DataError(
                f"{url}: the manifest's content does not match its fingerprint; it was edited "
                "after creation; recreate the version"
            )
        return manifest


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_shard(table: pa.Table) -> bytes:
    """One shard file: the table in the Arrow IPC file format, uncompressed."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_shard(data: bytes, url: str) -> pa.Table:
    """The table in a shard file (zero-copy over ``data``)."""
    try:
        return pa.ipc.open_file(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"shard {url} is not readable Arrow IPC ({exc}); run data verify") from None


def schema_summary(schema: pa.Schema) -> dict[str, str]:
    """``{column: type}`` as people read it, e.g. ``{"label": "int64"}``."""
    return {f.name: str(f.type) for f in schema}


def schema_hex(schema: pa.Schema) -> str:
    return schema.serialize().to_pybytes().hex()
