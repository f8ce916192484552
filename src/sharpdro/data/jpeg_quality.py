"""The JPEG quality of a dataset's source files, read from their quantisation tables (headers only, no decoding).

Why: the ``jpeg_compression`` corruption on a source that is already JPEG re-encodes a compressed image, which is
not what it does to a lossless one. Severities at or above the source's quality barely change it, and on images
whose 8x8 blocks stay aligned (not resized) re-quantisation can even add high-frequency energy (measured on the
JPEG-q75 CIFAR-10 copy: docs/results/cifar10_cpu, "The JPEG arm on a JPEG source"). build_splits records what
this module finds and warns when the corruption is JPEG.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

SAMPLE = 32  # files read per source: evenly spaced, so the same files every time


@lru_cache(maxsize=1)
def _reference_tables() -> dict[int, np.ndarray]:
    """Pillow's (libjpeg's) luminance table at every quality 1..100, read back the way a source file's is."""
    img = Image.fromarray(np.full((16, 16, 3), 128, np.uint8))
    out = {}
    for q in range(1, 101):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out[q] = np.asarray(im.quantization[0], np.float64)
    return out


def file_quality(path: str | os.PathLike) -> int | None:
    """The libjpeg quality whose luminance table is closest to the file's (exact for files libjpeg or Pillow
    wrote); None for a file that is not a JPEG or has no luminance table."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or not getattr(im, "quantization", None) or 0 not in im.quantization:
                return None
            table = np.asarray(im.quantization[0], np.float64)
    except OSError:
        return None
    refs = _reference_tables()
    if table.shape != next(iter(refs.values())).shape:
        return None
    # the smallest distance; among equals (the flat tables near quality 100) the highest quality
    return min(refs, key=lambda q: (float(np.abs(np.log(refs[q]) - np.log(table)).sum()), -q))


def source_quality(paths: Sequence[str | os.PathLike], sample: int = SAMPLE) -> dict | None:
    """What an evenly spaced sample of ``paths`` says of the source: None when none of them is a JPEG, else
    ``{"sampled", "jpeg", "quality", "quality_range"}`` (quality: the median over the JPEG files)."""
    if not paths:
        return None
    picks = sorted(set(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int).tolist()))
    found = [q for q in (file_quality(paths[i]) for i in picks) if q is not None]
    if not found:
        return None
    return {"sampled": len(picks), "jpeg": len(found), "quality": int(np.median(found)),
            "quality_range": [min(found), max(found)]}


def recompression_warning(info: dict, qualities: Sequence[int], resized: bool) -> str:
    """The warning build_splits gives when the corruption is JPEG and the source already is."""
    at_or_above = [q for q in qualities if q >= info["quality"]]
    text = (f"the source images are JPEG already (quality about {info['quality']} in {info['jpeg']} of "
            f"{info['sampled']} sampled files), so jpeg_compression re-encodes compressed images at qualities "
            f"{', '.join(map(str, qualities))}: not the same corruption as on a lossless source")
    if at_or_above:
        text += f"; quality {', '.join(map(str, at_or_above))} at or above the source's changes little"
    if not resized:
        text += ("; the 8x8 blocks stay aligned, where re-quantisation can add high-frequency energy at some "
                 "severities")
    return text + " (docs/results/cifar10_cpu/README.md, 'The JPEG arm on a JPEG source', measures it)"
