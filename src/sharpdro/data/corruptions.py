"""The five photon-limited corruptions of SharpDRO, as defined for CIFAR-10-C / ImageNet-C.

Each corruption maps a clean uint8 RGB image to a corrupted one at a severity 1..5
(0 is the clean image).  The definitions follow Hendrycks & Dietterich (ICLR 2019),
working in float on ``x = image / 255``:

=================  ==========================================================
gaussian_noise     ``clip(x + N(0, c))``
shot_noise         ``clip(Poisson(x * c) / c)``
impulse_noise      salt-and-pepper: each channel value independently becomes
                   1.0 (prob. ``c/2``) or 0.0 (prob. ``c/2``)
speckle_noise      ``clip(x + x * N(0, c))``
jpeg_compression   Pillow JPEG encode + decode at quality ``c`` (RGB, Pillow's
                   default chroma subsampling)
=================  ==========================================================

and back to uint8 by ``uint8(clip(.) * 255)``.  The constants ``c`` come from one of
two tables (:data:`TABLES`): ``cifar`` (CIFAR-10-C, for 32 px images) and ``imagenet``
(ImageNet-C, for larger ones); ``table="auto"`` picks by image size.

Reproducibility: all randomness comes from a :class:`numpy.random.SeedSequence`.
The batch is cut into fixed-size chunks (the size depends only on the image shape),
chunk ``i`` draws from child ``i`` of the seed, and the chunks run on a thread pool;
so the same seed gives the same bytes whatever the number of workers.  NumPy's
random generators release the GIL, so threads scale for the four noises; JPEG runs on
one thread (Pillow's round trip is mostly Python code under the GIL).

Arithmetic is float32 (noise drawn with ``dtype=float32``).  Against float64
arithmetic on the same noise, a value differs by at most 1, and rarely (measured:
about 4 values in 10^6, where ``clip(.) * 255`` is within float32 rounding of an
integer and the truncation falls the other way); the distribution is unchanged.  The
float32 normal generator is another stream than the float64 one, so the bytes are not
those of a float64 implementation with the same seed; only the law is the same.
Values the noise leaves alone (salt, pepper, untouched, clipped, severity 0) are exact,
and shot noise is exact with respect to the float64 definition (its output is a
function of the integer Poisson draw, read from a float64-computed table).

Throughput (50,000 random 32x32 images, severity 3, 2-core x86 CPU, images/s):

=================  ==========  ==========
corruption         workers=1   workers=2
=================  ==========  ==========
gaussian_noise        ~25,000     ~47,000
shot_noise             ~8,000     ~14,000
impulse_noise        ~110,000    ~210,000
speckle_noise         ~33,000     ~50,000
jpeg_compression      ~11,000    (1 thread)
=================  ==========  ==========
"""
from __future__ import annotations

import io
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from sharpdro.errors import SharpDROError

__all__ = [
    "CORRUPTIONS",
    "CorruptionError",
    "MAX_SEVERITY",
    "TABLES",
    "VERSION",
    "corrupt",
    "corrupt_by_severity",
    "resolve_table",
    "severity_parameter",
    "severity_seed",
]


class CorruptionError(SharpDROError, ValueError):
    """Bad corruption name, severity, table, seed or image array. The message says what is allowed."""


#: Version of the corruption algorithms: bumped whenever the bytes produced for a given seed change
#: (part of the cache key of corrupted datasets).
VERSION = 1

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "jpeg_compression")
MAX_SEVERITY = 5

# Severity 1..5 constants.  cifar: CIFAR-10-C (make_cifar_c.py); imagenet: ImageNet-C (make_imagenet_c.py).
TABLES: dict[str, dict[str, tuple]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
}

#: Images whose larger side is at most this many pixels use the ``cifar`` table under ``table="auto"``.
AUTO_CIFAR_MAX_SIDE = 32

# Elements (H*W*3 * images) per chunk: 2048 CIFAR images.  The chunk size in images depends on the image
# shape only, never on the number of workers, so results do not depend on the workers.
_CHUNK_ELEMENTS = 2048 * 32 * 32 * 3

# Spawn-key tag of the per-severity child seeds of corrupt_by_severity (ASCII "SEVR"); keeps them apart
# from the chunk children (spawn key (..., i)) of the same seed.
_SEVERITY_TAG = 0x53455652

_UNIT_F32 = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float32)  # v/255, exact division


# --------------------------------------------------------------------------------------------------- checks


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    return name


def _check_severity(severity, allow_zero: bool = True) -> int:
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, numbers.Integral):
        raise CorruptionError(f"severity must be an integer 0..{MAX_SEVERITY}, got {severity!r}")
    severity = int(severity)
    low = 0 if allow_zero else 1
    if not low <= severity <= MAX_SEVERITY:
        raise CorruptionError(f"severity must be an integer {low}..{MAX_SEVERITY}, got {severity}")
    return severity


def _check_table_name(table) -> str:
    if table not in ("auto", *TABLES):
        raise CorruptionError(f"unknown severity table {table!r}; valid tables: auto, {', '.join(TABLES)}")
    return table


def _check_images(images) -> tuple[np.ndarray, bool]:
    """-> (contiguous uint8 [N,H,W,3] array, whether the input was a single [H,W,3] image)."""
    if not isinstance(images, np.ndarray):
        raise CorruptionError(f"images must be a numpy uint8 array [N,H,W,3] or [H,W,3], "
                              f"got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise CorruptionError(f"images must be uint8 (0..255), got dtype {images.dtype}; convert with "
                              f"np.clip(x * 255, 0, 255).astype(np.uint8) for images in [0, 1]")
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise CorruptionError(f"images must have shape [N,H,W,3] or [H,W,3] (RGB, channels last), "
                              f"got {images.shape}")
    single = images.ndim == 3
    arr = images[None] if single else images
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise CorruptionError(f"images must have a non-zero height and width, got {images.shape}")
    return np.ascontiguousarray(arr), single


def _as_seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)) and int(seed) >= 0:
        return np.random.SeedSequence(int(seed))
    raise CorruptionError(f"seed must be an integer >= 0 or a numpy.random.SeedSequence, got {seed!r}")


def _check_workers(workers) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise CorruptionError(f"workers must be an integer >= 1 or None (all cores), got {workers!r}")
    return int(workers)


def _children(ss: np.random.SeedSequence, n: int) -> list[np.random.SeedSequence]:
    """``ss.spawn(n)`` of a fresh copy of ``ss``: does not advance ``ss`` (same seed object -> same bytes)."""
    fresh = np.random.SeedSequence(ss.entropy, spawn_key=ss.spawn_key, pool_size=ss.pool_size)
    return fresh.spawn(n)


# ---------------------------------------------------------------------------------------------- tables


def resolve_table(table: str, image_size) -> str:
    """``'cifar'`` / ``'imagenet'`` as given; ``'auto'`` -> ``cifar`` if the image side is <= 32 px, else ``imagenet``.

    ``image_size``: the side (int) or ``(H, W)``; the larger side decides.
    """
    table = _check_table_name(table)
    if table != "auto":
        return table
    if isinstance(image_size, numbers.Integral):
        side = int(image_size)
    else:
        try:
            side = max(int(s) for s in image_size)
        except (TypeError, ValueError):
            raise CorruptionError(f"image_size must be an int or (H, W), got {image_size!r}") from None
    return "cifar" if side <= AUTO_CIFAR_MAX_SIDE else "imagenet"


def severity_parameter(name: str, severity: int, table: str):
    """The constant ``c`` of ``name`` at ``severity`` in ``table`` (``'cifar'`` or ``'imagenet'``).

    Severity 0 (clean) has no parameter and gives ``None``.
    """
    name = _check_name(name)
    severity = _check_severity(severity)
    if table not in TABLES:
        raise CorruptionError(f"table must be one of {', '.join(TABLES)} here (resolve 'auto' with "
                              f"resolve_table first), got {table!r}")
    if severity == 0:
        return None
    return TABLES[table][name][severity - 1]


# --------------------------------------------------------------------------------------------- kernels
#
# Each kernel corrupts one chunk: kernel(x, out, c, seed) with x, out uint8 [n,H,W,3] (out may not alias x).
#
# Float -> uint8 is by truncation, np.uint8(clip(.) * 255), because that is what the published
# CIFAR-10-C / ImageNet-C scripts do (np.uint8 of a float array truncates); rounding would shift every
# noisy value by +0.5 on average and no longer reproduce the benchmark's pixel statistics.


def _to_uint8(y: np.ndarray, out: np.ndarray) -> None:
    """out = uint8(clip(y, 0, 1) * 255), truncating, in place on y."""
    np.clip(y, 0.0, 1.0, out=y)
    y *= np.float32(255)
    np.copyto(out, y, casting="unsafe")  # C float->int conversion: truncation toward zero


def _gaussian(x, out, c, seed):
    rng = np.random.Generator(np.random.PCG64(seed))
    y = rng.standard_normal(size=x.shape, dtype=np.float32)
    y *= np.float32(c)
    y += np.take(_UNIT_F32, x)
    _to_uint8(y, out)


def _speckle(x, out, c, seed):
    rng = np.random.Generator(np.random.PCG64(seed))
    y = rng.standard_normal(size=x.shape, dtype=np.float32)
    y *= np.float32(c)
    u = np.take(_UNIT_F32, x)
    y *= u
    y += u
    _to_uint8(y, out)


def _shot(x, out, c, seed):
    # Poisson(lam) with an array lam holds the GIL in NumPy, with a scalar lam it does not; lam takes only
    # 256 values (one per pixel value v), so draw value by value (stable order) and scatter back.
    rng = np.random.Generator(np.random.PCG64(seed))
    lam = (np.arange(256) / 255.0) * c  # float64, the definition's x * c with x = v / 255
    # uint8(clip(k / c, 0, 1) * 255) for every possible draw k, in float64: exact for every draw.
    lut = (np.clip(np.arange(c + 1) / c, 0, 1) * 255).astype(np.uint8)
    flat = x.reshape(-1)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=256)
    k = np.zeros(flat.size, dtype=np.int64)
    pos = int(counts[0])  # lam = 0 for v = 0: always 0
    for v in range(1, 256):
        n = int(counts[v])
        if n:
            k[pos:pos + n] = rng.poisson(lam[v], size=n)
            pos += n
    np.minimum(k, c, out=k)
    out.reshape(-1)[order] = np.take(lut, k)


def _impulse(x, out, amount, seed):
    # One uniform per value: u < amount/2 -> salt, amount/2 <= u < amount -> pepper.  Same law as two
    # independent draws (flip with prob. amount, then salt vs pepper with prob. 1/2).  Values left alone stay
    # exact: uint8((v / 255) * 255) == v for every v in float64 and float32.
    rng = np.random.Generator(np.random.PCG64(seed))
    u = rng.random(size=x.shape, dtype=np.float32)
    np.copyto(out, x)
    half = np.float32(amount / 2)
    out[u < half] = 255
    out[(u >= half) & (u < np.float32(amount))] = 0


def jpeg_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
    """One uint8 HWC RGB image through Pillow's JPEG encode and decode at ``quality`` (the corruption's kernel;
    public so that a measurement can use it at qualities outside the tables)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg(x, out, quality, seed):
    for i in range(len(x)):
        out[i] = jpeg_round_trip(x[i], quality)


_KERNELS: dict[str, Callable] = {
    "gaussian_noise": _gaussian,
    "shot_noise": _shot,
    "impulse_noise": _impulse,
    "speckle_noise": _speckle,
    "jpeg_compression": _jpeg,
}


# ------------------------------------------------------------------------------------------------ public


def corrupt(images: np.ndarray, name: str, severity: int, seed, table: str = "auto",
            workers: int | None = None) -> np.ndarray:
    """Corrupt ``images`` with corruption ``name`` at ``severity`` (0 = clean copy .. 5).

    images:  uint8 ``[N,H,W,3]`` or one ``[H,W,3]`` image (RGB); not modified.
    seed:    int >= 0 or ``numpy.random.SeedSequence`` (not advanced); same seed -> same bytes.
    table:   ``'auto'`` (by image size), ``'cifar'`` or ``'imagenet'``.
    workers: threads (``None``: all cores); the result does not depend on it.  JPEG always runs on one
             thread (measured: Pillow's round trip does not scale with threads).

    Returns a new uint8 array of the same shape.  Raises :class:`CorruptionError` on a bad argument.
    """
    name = _check_name(name)
    severity = _check_severity(severity)
    _check_table_name(table)
    arr, single = _check_images(images)
    ss = _as_seed_sequence(seed)
    workers = _check_workers(workers)
    if severity == 0 or arr.shape[0] == 0:
        out = arr.copy()
        return out[0] if single else out

    c = severity_parameter(name, severity, resolve_table(table, arr.shape[1:3]))
    n = arr.shape[0]
    out = np.empty_like(arr)
    chunk = max(1, _CHUNK_ELEMENTS // (arr.shape[1] * arr.shape[2] * 3))
    if name == "jpeg_compression":
        # Pillow's JPEG save/open is mostly Python code under the GIL (and its in-memory encoder keeps the
        # GIL): measured, two threads are no faster than one (often slower), so JPEG runs on one thread.
        workers = 1
    starts = list(range(0, n, chunk))
    seeds = _children(ss, len(starts))
    kernel = _KERNELS[name]

    def job(i: int) -> None:
        lo, hi = starts[i], min(starts[i] + chunk, n)
        kernel(arr[lo:hi], out[lo:hi], c, seeds[i])

    if workers == 1 or len(starts) == 1:
        for i in range(len(starts)):
            job(i)
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts)), thread_name_prefix="corrupt") as ex:
            for _ in ex.map(job, range(len(starts))):
                pass
    return out[0] if single else out


def severity_seed(seed, severity: int) -> np.random.SeedSequence:
    """The child seed that :func:`corrupt_by_severity` uses for the images at ``severity``."""
    ss = _as_seed_sequence(seed)
    severity = _check_severity(severity)
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, _SEVERITY_TAG, severity),
                                  pool_size=ss.pool_size)


def corrupt_by_severity(images: np.ndarray, severities: Sequence[int] | np.ndarray, name: str, seed,
                        table: str = "auto", workers: int | None = None) -> np.ndarray:
    """Corrupt each image at its own severity (``severities[i]`` in 0..5; 0 stays clean).

    The images of one severity ``s`` are corrupted together, in their original order, by
    ``corrupt(group, name, s, severity_seed(seed, s), table)``; so the result depends on the seed and the
    set of images at each severity, not on the workers.  Returns a new uint8 ``[N,H,W,3]`` array.
    """
    name = _check_name(name)
    _check_table_name(table)
    arr, single = _check_images(images)
    if single:
        raise CorruptionError(f"corrupt_by_severity needs a batch [N,H,W,3], got {images.shape}")
    ss = _as_seed_sequence(seed)
    sev = np.asarray(severities)
    if sev.shape != (arr.shape[0],):
        raise CorruptionError(f"severities must be one integer per image: shape ({arr.shape[0]},), "
                              f"got {sev.shape}")
    if sev.size and (not np.issubdtype(sev.dtype, np.integer) or sev.min() < 0 or sev.max() > MAX_SEVERITY):
        raise CorruptionError(f"severities must be integers 0..{MAX_SEVERITY}, got dtype {sev.dtype} "
                              f"with values {np.unique(sev)[:10].tolist()}")
    tbl = resolve_table(table, arr.shape[1:3])
    out = arr.copy()
    for s in range(1, MAX_SEVERITY + 1):
        idx = np.flatnonzero(sev == s)
        if idx.size:
            out[idx] = corrupt(arr[idx], name, s, severity_seed(ss, s), table=tbl, workers=workers)
    return out
