"""Downsampling long metric series for plots: min/max per bucket keeps every spike.

A chart a thousand pixels wide cannot show a million points; sending them costs seconds
and megabytes. Keeping the lowest and the highest point of each bucket (in step order)
draws the same envelope as the full series.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["minmax_indices"]


def minmax_indices(values: npt.ArrayLike, max_points: int) -> npt.NDArray[np.intp]:
    """Sorted indices of at most ``max_points`` points that keep each bucket's extremes.

    Args:
        values: the series, in step order (NaN is allowed and never chosen over a number).
        max_points: the budget; at least 2.

    >>> minmax_indices([0, 5, 1, 2, 9, 3], 4).tolist()
    [0, 1, 3, 4]
    """
    series = np.asarray(values, dtype=np.float64)
    count = series.shape[0]
    if count <= max_points:
        return np.arange(count, dtype=np.intp)
    buckets = max(1, max_points // 2)
    size = -(-count // buckets)  # ceil: the last bucket is the only short one
    padded_low = np.full(buckets * size, np.inf)
    padded_high = np.full(buckets * size, -np.inf)
    padded_low[:count] = np.where(np.isnan(series), np.inf, series)
    padded_high[:count] = np.where(np.isnan(series), -np.inf, series)
    offsets = np.arange(buckets, dtype=np.intp) * size
    low = offsets + np.argmin(padded_low.reshape(buckets, size), axis=1)
    high = offsets + np.argmax(padded_high.reshape(buckets, size), axis=1)
    chosen = np.unique(np.concatenate([low, high]))
    return chosen[chosen < count]
