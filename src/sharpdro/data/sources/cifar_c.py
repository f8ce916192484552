"""Hendrycks' CIFAR-10-C / CIFAR-100-C ``.npy`` folders."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sharpdro.errors import DataError


def load_cifar_c(folder: str | os.PathLike, corruption: str,
                 max_severity: int = 5) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Hendrycks' ``<folder>/<corruption>.npy`` (5 x N images, severity 1 first) and ``labels.npy``.

    Returns ``{severity: (images uint8 [N, H, W, 3], labels int64 [N])}`` for severities
    1..max_severity. Images are read-only memory-mapped views; ``labels.npy`` may hold 5 x N
    labels (as distributed) or N.
    """
    folder = Path(folder).expanduser()
    if not 1 <= int(max_severity) <= 5:
        raise DataError(f"max_severity must be in 1..5, got {max_severity}")
    img_path, lab_path = folder / f"{corruption}.npy", folder / "labels.npy"
    missing = [str(p) for p in (img_path, lab_path) if not p.is_file()]
    if missing:
        have = sorted(p.stem for p in folder.glob("*.npy")) if folder.is_dir() else []
        raise DataError(f"CIFAR-C files missing: {', '.join(missing)} (the folder holds: "
                        f"{', '.join(have) or 'no .npy files'}); expected Hendrycks' CIFAR-10-C / CIFAR-100-C "
                        f"layout <folder>/<corruption>.npy + <folder>/labels.npy")
    try:
        images = np.load(img_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(lab_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {img_path} or {lab_path} ({exc})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) % 5 or not len(images):
        raise DataError(f"{img_path}: expected uint8 [5*N, H, W, 3] (5 severities, severity 1 first), got "
                        f"{images.dtype} {tuple(images.shape)}")
    n = len(images) // 5
    if labels.ndim != 1 or len(labels) not in (n, 5 * n):
        raise DataError(f"{lab_path}: expected {5 * n} (or {n}) labels to match {img_path} "
                        f"({tuple(images.shape)}), got shape {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{lab_path}: labels must be integers, got {labels.dtype}")
    out = {}
    for s in range(1, int(max_severity) + 1):
        lo, hi = (s - 1) * n, s * n
        lab = labels[lo:hi] if len(labels) == 5 * n else labels
        out[s] = (images[lo:hi], np.asarray(lab, dtype=np.int64))
    return out
