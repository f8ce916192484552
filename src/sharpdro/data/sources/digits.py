"""scikit-learn's bundled handwritten digits (no download), as 32x32 RGB with a fixed 70/30 split."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from sharpdro.data.sources.decode import _RESAMPLE
from sharpdro.data.types import ImageSet

_DIGITS_TEST_FRACTION = 0.3
_DIGITS_SPLIT_SALT = "sharpdro-digits-split-v1"


def digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified 70/30 split of the digits: (train indices, test indices), each sorted.

    Within each class, images are ordered by a SHA-256 of a fixed salt and their index (no RNG,
    so it never depends on the run seed or the NumPy version) and the first 30 % (rounded)
    go to the test split.
    """
    labels = np.asarray(labels)
    test: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c).tolist()
        idx.sort(key=lambda i: hashlib.sha256(f"{_DIGITS_SPLIT_SALT}:{i}".encode()).digest())
        test += idx[:int(round(_DIGITS_TEST_FRACTION * len(idx)))]
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_digits(image_size: int = 32) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's bundled 8x8 digits (1,797 images, grey 0..16) as ``image_size`` RGB uint8.

    Grey levels are scaled to 0..255, upscaled with Pillow BICUBIC and copied to 3 channels.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    grey = np.clip(np.round(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = np.asarray(d.target, dtype=np.int64)
    out = np.empty((len(grey), image_size, image_size, 3), dtype=np.uint8)
    for i, g in enumerate(grey):
        big = np.asarray(Image.fromarray(g, "L").resize((image_size, image_size), _RESAMPLE))
        out[i] = big[..., None]
    classes = [str(i) for i in range(10)]
    tr, te = digits_split(labels)
    return (ImageSet(out[tr], labels[tr], list(classes), "digits/train"),
            ImageSet(out[te], labels[te], list(classes), "digits/test"))
