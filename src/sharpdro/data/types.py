"""Array containers shared by every data module and backend (NumPy only)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageSet:
    """One split of a dataset as loaded from its source: uint8 NHWC RGB images, int64 labels."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    name: str = ""
    # what the source files' headers say of their JPEG quality (sharpdro.data.jpeg_quality.source_quality);
    # None for a lossless or in-memory source. Not part of the fingerprint: it describes, it does not change, pixels
    source_jpeg: dict | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def fingerprint(self) -> str:
        """SHA-256 of the pixels, labels and class names: the cache key of a source."""
        h = hashlib.sha256()
        h.update(repr(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)
        h.update(np.ascontiguousarray(self.labels).data)
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()


@dataclass
class LabeledArrays:
    """Images with labels and a per-image severity (0 = clean .. S)."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    severity: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    """What a run trains and evaluates on.

    ``train`` mixes severities (per-image ``severity``); ``val`` and ``test`` map each
    severity 0..S to a full copy of the held-out / test images at that severity.
    ``extra_test`` holds optional extra sets (e.g. CIFAR-10-C) keyed the same way.
    """

    train: LabeledArrays
    val: dict[int, LabeledArrays]
    test: dict[int, LabeledArrays]
    classes: list[str]
    max_severity: int
    meta: dict = field(default_factory=dict)
    extra_test: dict[int, LabeledArrays] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_groups(self) -> int:
        return self.max_severity + 1

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # (H, W, 3)
