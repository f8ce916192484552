"""On-disk cache of corrupted arrays: keyed, checksummed, written atomically.

An entry is a folder ``<root>/<prefix><hash16>/`` holding one ``.npy`` per array and a
``manifest.json`` with each file's SHA-256, size, shape and dtype plus the full key
dict and its SHA-256 (``key_hash``).  The key covers everything that changes the arrays,
so an entry built from other parameters is never reused.

Root: ``data.cache_dir``, else ``$SHARPDRO_CACHE``, else ``~/.cache/sharpdro``.

Writes are atomic: an entry is built in a temp folder inside the root
(``.tmp-*``) and ``os.rename``d into place, so a reader never sees a partial entry; a
builder that raises leaves nothing behind; of two concurrent builders the loser
discards its copy and uses the winner's.

Every load re-hashes every file (SHA-256 of ~0.5 GB takes ~0.3 s with the SHA
extensions of current CPUs; files are hashed in parallel threads).  Loaded arrays are
copy-on-write memory maps of the files: every process of a node (the ranks of a data-parallel
run) shares one copy in the page cache instead of reading the cache into its own memory.  A file that
fails verification raises :class:`CacheError` telling the user to delete the folder
or run ``sharpdro prepare --rebuild``: a damaged cache is reported, never silently
rebuilt, so a flipped bit on disk cannot go unnoticed.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from sharpdro.errors import CacheError
from sharpdro.io import disk_full_error, fsync_dir, make_ordinary

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_STALE_TMP_SECONDS = 24 * 3600
_CHUNK = 16 << 20


def cache_root(data_cfg: Mapping | None = None) -> Path:
    """``data.cache_dir`` or ``$SHARPDRO_CACHE`` or ``~/.cache/sharpdro``."""
    path = (data_cfg or {}).get("cache_dir") or os.environ.get("SHARPDRO_CACHE") or "~/.cache/sharpdro"
    return Path(path).expanduser()


def key_hash(key: Mapping) -> str:
    """SHA-256 of the canonical JSON of a key dict (key order does not matter)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_path(root: str | os.PathLike, key: Mapping, prefix: str = "") -> Path:
    return Path(root) / f"{_safe(prefix)}{key_hash(key)[:16]}"


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


@dataclass
class CacheEntry:
    path: Path
    arrays: dict[str, np.ndarray]
    manifest: dict
    built: bool  # True when this call built it, False when it was loaded
    verify_seconds: float = 0.0


# ----------------------------------------------------------------- hashing
def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_verified(path: Path, info: Mapping) -> np.ndarray:
    """Memory-map a .npy, check its SHA-256 through the map, return an array backed by the map.

    The pages live in the OS page cache, shared by every process that maps the file: the
    data-parallel ranks of a node hold one copy of an (ImageNet-C-sized) cache, not one each.
    The map is copy-on-write: the array is writable, a page written is copied for that process
    alone, and the file never changes.
    """
    import mmap

    size = path.stat().st_size
    if size != info["bytes"]:
        raise _tampered(path, f"has {size} bytes, the manifest says {info['bytes']}")
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    view = memoryview(mm) if mm is not None else memoryview(b"")
    h = hashlib.sha256()
    for start in range(0, size, _CHUNK):
        h.update(view[start:start + _CHUNK])  # hashlib releases the GIL: threads hash in parallel
    digest = h.hexdigest()
    if digest != info["sha256"]:
        raise _tampered(path, f"has SHA-256 {digest[:16]}..., the manifest says {info['sha256'][:16]}...")
    header = io.BytesIO(bytes(view[:min(size, 65536)]))
    with _HEADER_LOCK:
        version = np.lib.format.read_magic(header)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(mm if count else b"", dtype=dtype, count=count, offset=header.tell() if count else 0)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if list(arr.shape) != list(info["shape"]) or str(arr.dtype) != info["dtype"]:
        raise _tampered(path, f"holds {arr.dtype} {arr.shape}, the manifest says {info['dtype']} {info['shape']}")
    return arr


# numpy parses a .npy header with ast.literal_eval. On CPython 3.11, AST objects built in several threads at once
# can fail with "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905; seen here loading a
# cache entry), so the headers are parsed one at a time; the hashing, the costly part, stays parallel.
_HEADER_LOCK = threading.Lock()


def _tampered(path: Path, what: str) -> CacheError:
    folder = path.parent
    return CacheError(f"cache file {path} failed verification: it {what}. The cache entry is damaged or was "
                      f"modified: delete the folder {folder} or run `sharpdro prepare -c CONFIG --rebuild`")


# -------------------------------------------------------------------- load
def load_entry(path: str | os.PathLike, key: Mapping | None = None, verify: bool = True) -> CacheEntry:
    """Load (and by default verify) every array of an entry. Raises CacheError on any mismatch."""
    path = Path(path)
    t0 = time.perf_counter()
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(f"cache entry {path} has no readable {MANIFEST} ({exc}); delete the folder or run "
                         f"`sharpdro prepare -c CONFIG --rebuild`") from None
    if key is not None and manifest.get("key_hash") != key_hash(key):
        raise CacheError(f"cache entry {path} belongs to other parameters (key mismatch); delete the folder or "
                         f"run `sharpdro prepare -c CONFIG --rebuild`")
    for name in files:
        if not (path / f"{name}.npy").is_file():
            raise CacheError(f"cache entry {path} lacks {name}.npy; delete the folder or run "
                             f"`sharpdro prepare -c CONFIG --rebuild`")
    if verify:
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
            futures = {name: pool.submit(_read_verified, path / f"{name}.npy", info) for name, info in files.items()}
            arrays = {name: fut.result() for name, fut in futures.items()}
    else:
        arrays = {name: np.load(path / f"{name}.npy") for name in files}
    return CacheEntry(path, arrays, manifest, built=False, verify_seconds=time.perf_counter() - t0)


# -------------------------------------------------------------------- write
def _write_entry(tmp: Path, key: Mapping, arrays: Mapping[str, np.ndarray], info: Mapping | None) -> dict:
    files = {}
    for name, arr in arrays.items():
        if _safe(name) != name:
            raise ValueError(f"array name {name!r} is not a safe file name")
        arr = np.ascontiguousarray(arr)
        p = tmp / f"{name}.npy"
        with open(p, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        files[name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size, "shape": list(arr.shape),
                       "dtype": str(arr.dtype)}
    manifest = {"version": MANIFEST_VERSION, "key_hash": key_hash(key), "key": dict(key), "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "info": dict(info or {})}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest


def clean_stale_tmp(root: Path, max_age_s: float = _STALE_TMP_SECONDS) -> int:
    """Remove temp folders left by killed builders (older than ``max_age_s``). Returns how many."""
    n = 0
    if not root.is_dir():
        return 0
    now = time.time()
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".trash-")) and p.is_dir():
            try:
                if now - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
            except OSError:
                pass
    return n


def _raise_if_disk_full(exc: OSError, path: Path, need: int) -> None:
    if exc.errno == errno.ENOSPC:
        raise disk_full_error(path, need, what=f"the cache entry {path} (set data.cache_dir or $SHARPDRO_CACHE "
                                               f"to a disk with room)") from None


def _raise_unwritable(exc: OSError, root: Path) -> None:
    raise CacheError(f"cannot write the cache folder {root} ({exc.strerror or exc}); set data.cache_dir or "
                     f"$SHARPDRO_CACHE to a folder you can write (a cache shared with labmates needs group write "
                     f"permission: chmod g+ws)") from None


def remove_entry(path: Path) -> None:
    """Move an entry out of the way atomically, then delete it (readers never see half a folder)."""
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=path.parent))
    os.rename(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def get_or_build(root: str | os.PathLike, key: Mapping, build: Callable[[], Mapping[str, np.ndarray]], *,
                 rebuild: bool = False, prefix: str = "", info: Mapping | None = None,
                 progress: bool = False) -> CacheEntry:
    """Load the entry of ``key`` (verified), or call ``build()`` and store its arrays atomically.

    ``rebuild=True`` removes an existing entry first.  ``info`` is stored in the manifest.
    """
    root = Path(root)
    path = entry_path(root, key, prefix)
    if rebuild:
        remove_entry(path)
    elif path.exists():
        return load_entry(path, key)  # raises CacheError when the entry is damaged
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_if_disk_full(exc, path, 0)
        _raise_unwritable(exc, root)
    clean_stale_tmp(root)
    arrays = dict(build())
    need = sum(np.asarray(a).nbytes for a in arrays.values())
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=root))
    except OSError as exc:
        _raise_if_disk_full(exc, path, need)
        _raise_unwritable(exc, root)
    try:
        make_ordinary(tmp, directory=True)  # mkdtemp's 0700 would hide a shared cache from labmates
        try:
            manifest = _write_entry(tmp, key, arrays, info)
        except OSError as exc:
            _raise_if_disk_full(exc, path, need)
            raise
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / MANIFEST).is_file():
                raise
            # Another builder won the race: use its entry (same key, same bytes), discard ours.
            shutil.rmtree(tmp, ignore_errors=True)
            if progress:
                warnings.warn(f"cache entry {path} was written by another process meanwhile; using it",
                              stacklevel=2)
            return load_entry(path, key)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CacheEntry(path, arrays, manifest, built=True)
