"""The one image decoder (files to uint8 RGB arrays) and resizer, run in a thread pool in a fixed order.

Resizing always uses Pillow's BICUBIC filter to a square of the given size, without keeping the
aspect ratio (antialiased when shrinking). JPEG files at least twice the target size are first
decoded at a reduced DCT scale (``Image.draft``). The number of threads is
:data:`DECODE_THREADS` (None: automatic).
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Sequence

import numpy as np
from PIL import Image

from sharpdro.data.types import ImageSet
from sharpdro.errors import DataError

_SMALL_IMAGE_PIXELS = 48 * 48
_PROGRESS_MIN_IMAGES = 2000
_CHUNK = 256

_RESAMPLE = Image.Resampling.BICUBIC


def resized_set(s: ImageSet, size: int, progress: bool) -> ImageSet:
    """``s`` with every image resized to ``size x size`` (``s`` itself when already that size)."""
    if s.images.shape[1:3] == (size, size):
        return s
    return ImageSet(resize_images(s.images, size, progress=progress), s.labels, list(s.classes), s.name,
                    s.source_jpeg)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: keep the top 8 bits
        a = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(a[..., None], 3, axis=2), "RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


#: The smallest image side read: a smaller image (a 1x1 tracking pixel, a 3x3 placeholder: at most 9 pixels)
#: resized to the training size would be a blur of a few colours, trained on as a picture of its class.
MIN_SIDE = 4


def _decode_one(path, size: int | None) -> np.ndarray:
    try:
        if os.path.getsize(path) == 0:
            raise DataError(f"cannot read image {path}: the file is empty (0 bytes)")
        with Image.open(path) as im:
            if min(im.size) < MIN_SIDE:
                raise DataError(f"cannot use image {path}: it is {im.size[0]}x{im.size[1]} pixels, smaller than "
                                f"{MIN_SIDE}x{MIN_SIDE}, too small to show anything once resized")
            if size is not None and im.format == "JPEG":
                im.draft("RGB", (size, size))  # DCT-domain downscale, never below the target
            rgb = _to_rgb(im)
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), _RESAMPLE)
            return np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def decode_image(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as uint8 [H, W, 3] RGB, decoded exactly as training decodes it (16-bit, palette,
    grey and alpha images included), resized to ``size`` = (height, width) when given."""
    if size is None or size[0] == size[1]:
        return _decode_one(path, None if size is None else int(size[0]))
    rgb = _decode_one(path, None)
    if rgb.shape[:2] == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb, "RGB").resize((int(size[1]), int(size[0])), _RESAMPLE))


def _source_pixels(path) -> int:
    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


#: Decoding threads (None: automatic). Pillow releases the GIL while it decodes and resizes,
#: so threads pay off for images larger than ~48x48; for CIFAR-sized files the per-file Python
#: work dominates and one thread is fastest.
DECODE_THREADS: int | None = None


def _workers(source_pixels: int) -> int:
    if DECODE_THREADS is not None:
        return max(1, int(DECODE_THREADS))
    if source_pixels <= _SMALL_IMAGE_PIXELS:
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def _run_chunks(n: int, work, workers: int, progress: bool, desc: str) -> None:
    """Call ``work(lo, hi)`` over [0, n) in chunks, in a thread pool, with a tqdm bar for large n."""
    from tqdm.auto import tqdm

    chunks = [(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]
    # disable=None: tqdm shows the bar only on a terminal (no carriage-return noise in log files).
    disable = None if progress and n >= _PROGRESS_MIN_IMAGES else True
    with tqdm(total=n, desc=desc, unit="img", disable=disable, leave=False, dynamic_ncols=True) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for lo, hi in chunks:
                work(lo, hi)
                bar.update(hi - lo)
            return
        ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sharpdro-decode")
        try:
            pending = {ex.submit(work, lo, hi): hi - lo for lo, hi in chunks}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    fut.result()  # re-raises the first error
                    bar.update(pending.pop(fut))
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def decode_images(paths: Sequence[str | os.PathLike], image_size: int | None = None, *,
                  progress: bool = True, desc: str = "decoding") -> np.ndarray:
    """Decode image files (in the given order) into one uint8 [N, H, W, 3] RGB array.

    Without ``image_size`` every image must have the size of the first one (a DataError names
    two files that differ); with it, each is resized to a square (BICUBIC, see the module doc).
    """
    paths = list(paths)
    n = len(paths)
    if n == 0:
        s = image_size or 0
        return np.zeros((0, s, s, 3), dtype=np.uint8)
    bad: list[tuple[int, str]] = []  # (index, why): every unusable file, reported together at the end
    k, first = 0, None
    while first is None and k < n:  # the first usable image sets the shape
        try:
            first = _decode_one(paths[k], image_size)
        except DataError as exc:
            bad.append((k, str(exc)))
            k += 1
    if first is None:
        raise _unusable(bad, n)
    workers = _workers(_source_pixels(paths[k]))
    out = np.empty((n,) + first.shape, dtype=np.uint8)
    out[k] = first
    h, w = first.shape[:2]

    def work(lo: int, hi: int) -> None:
        for i in range(max(lo, k + 1), hi):
            try:
                a = _decode_one(paths[i], image_size)
            except DataError as exc:
                bad.append((i, str(exc)))
                continue
            if a.shape != first.shape:
                raise DataError(f"images differ in size: {paths[k]} is {w}x{h} but {paths[i]} is "
                                f"{a.shape[1]}x{a.shape[0]}; set data.image_size (e.g. --set data.image_size=64) "
                                f"to resize every image to one square size")
            out[i] = a

    _run_chunks(n, work, workers, progress, desc)
    if bad:
        raise _unusable(bad, n)
    return out


def _unusable(bad: list[tuple[int, str]], n: int) -> DataError:
    """One error naming every unusable file (the first few in full): nothing is trained on silently, and one
    run shows them all instead of one per attempt."""
    bad = sorted(bad)
    shown = "; ".join(why for _, why in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    return DataError(f"{len(bad)} of {n} image files cannot be used: {shown}. Delete or replace them (or move "
                     f"them out of the data folder), then run again")


def resize_images(images: np.ndarray, size: int, *, progress: bool = True) -> np.ndarray:
    """Resize uint8 [N, H, W, 3] images to [N, size, size, 3] with Pillow BICUBIC."""
    images = np.asarray(images)
    n = len(images)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    if n == 0:
        return out

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            im = Image.fromarray(np.ascontiguousarray(images[i]), "RGB")
            out[i] = np.asarray(im.resize((size, size), _RESAMPLE))

    _run_chunks(n, work, _workers(images.shape[1] * images.shape[2]), progress, f"resizing to {size}x{size}")
    return out


def _check_same_size(a: np.ndarray, b: np.ndarray, where_a, where_b) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise DataError(f"images in {where_a} are {a.shape[2]}x{a.shape[1]} but images in {where_b} are "
                        f"{b.shape[2]}x{b.shape[1]}; set data.image_size to resize both")
