"""Per-channel normalisation statistics, computed once from the training images."""
from __future__ import annotations

import numpy as np


def channel_mean_std(images: np.ndarray, max_images: int = 20000) -> tuple[list[float], list[float]]:
    """Mean and std of each RGB channel on the [0, 1] scale.

    Uses an evenly spaced subset of at most ``max_images`` images: the statistics
    are stable long before that, and the subset is deterministic.
    """
    step = max(1, len(images) // max_images)
    x = images[::step].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), 1e-3)
    return [float(v) for v in mean], [float(v) for v in std]
