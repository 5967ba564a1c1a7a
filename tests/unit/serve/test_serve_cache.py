"""The response cache: LRU order, byte bound, keys by version and input."""

from __future__ import annotations

import numpy as np

from kilowatt.serve.cache import ResponseCache, cache_key


def _value(n_floats: int) -> np.ndarray:
    return np.zeros(n_floats, dtype=np.float32)


def test_least_recently_used_entry_goes_first_when_bytes_run_out() -> None:
    # Each entry is 400 bytes of floats + 112 of header + 1 of key = 513 bytes.
    cache = ResponseCache(capacity_bytes=1100)
    cache.put(b"a", _value(100))
    cache.put(b"b", _value(100))
    assert cache.get(b"a") is not None  # a is now more recent than b
    cache.put(b"c", _value(100))
    assert (cache.get(b"a") is not None, cache.get(b"b"), cache.get(b"c") is not None) == (
        True,
        None,
        True,
    )
    assert cache.size_bytes == 2 * 513 <= cache.capacity_bytes


def test_value_larger_than_the_cache_is_not_stored() -> None:
    cache = ResponseCache(capacity_bytes=100)
    cache.put(b"big", _value(1000))
    assert len(cache) == 0 and cache.size_bytes == 0


def test_keys_differ_by_version_and_input() -> None:
    rows = np.ones((1, 4), dtype=np.float32)
    base = cache_key("m", "1", rows)
    assert base == cache_key("m", "1", rows.copy())
    assert base != cache_key("m", "2", rows)
    assert base != cache_key("m", "1", rows * 2)
    assert base != cache_key("m", "1", rows.reshape(2, 2))
