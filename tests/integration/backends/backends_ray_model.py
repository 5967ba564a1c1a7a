"""A served model for the Ray Serve tests: doubles its input, slowly enough to queue."""

from __future__ import annotations

import time

import numpy as np


class SlowDouble:
    """``predict`` returns ``2 x batch`` after 50 ms (a model busy enough to need replicas)."""

    input_shape = (3,)

    def load(self) -> None:
        """Nothing to load."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return batch * 2.0
