"""A response cache: LRU, keyed by model version and input bytes, bounded in bytes."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["ResponseCache", "cache_key"]


def cache_key(model: str, version: str, rows: np.ndarray | dict[str, np.ndarray]) -> bytes:
    """A digest of the model version and each input's name, dtype, shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{model}\0{version}\0".encode())
    tensors = rows.items() if isinstance(rows, dict) else [("", rows)]
    for name, array in tensors:
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.digest()


def _size_bytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes + 112  # array header overhead, roughly
    if isinstance(value, tuple | list):
        return sum(_size_bytes(v) for v in value) + 64
    if isinstance(value, dict):
        return sum(_size_bytes(v) + len(str(k)) for k, v in value.items()) + 64
    return 64


class ResponseCache:
    """Least-recently-used outputs, evicted when their total size passes ``capacity_bytes``.

    >>> cache = ResponseCache(capacity_bytes=1024)
    >>> cache.put(b"k", np.zeros(4, dtype=np.float32))
    >>> cache.get(b"k").tolist()
    [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Any | None:
        """The cached value, now most recently used; ``None`` on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: bytes, value: Any) -> None:
        """Store a value, evicting least recently used ones to stay within capacity."""
        size = _size_bytes(value) + len(key)
        if size > self.capacity_bytes:
            return  # larger than the whole cache: caching it would evict everything
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.size_bytes -= old[1]
            self._entries[key] = (value, size)
            self.size_bytes += size
            while self.size_bytes > self.capacity_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.size_bytes -= evicted
