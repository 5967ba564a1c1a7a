"""Downsampling keeps each bucket's extremes, so a plotted spike never disappears."""

from __future__ import annotations

import numpy as np
import pytest

from kilowatt.api.downsample import minmax_indices


def test_short_series_is_returned_whole() -> None:
    assert minmax_indices([3.0, 1.0, 2.0], 10).tolist() == [0, 1, 2]


def test_each_bucket_keeps_its_minimum_and_maximum() -> None:
    # two buckets of three: [0, 5, 1] keeps 0 and 5, [2, 9, 3] keeps 2 and 9
    assert minmax_indices([0, 5, 1, 2, 9, 3], 4).tolist() == [0, 1, 3, 4]


def test_a_single_spike_in_a_million_points_survives() -> None:
    values = np.zeros(1_000_000)
    values[777_777] = 42.0
    chosen = minmax_indices(values, 1000)
    assert len(chosen) <= 1000
    assert 777_777 in chosen.tolist()
    assert values[chosen].max() == pytest.approx(42.0)


def test_nan_is_never_chosen_over_a_number() -> None:
    values = [np.nan, 1.0, np.nan, 2.0, np.nan, np.nan, 7.0, 3.0]
    chosen = minmax_indices(values, 4)
    assert chosen.tolist() == [1, 3, 6, 7]
