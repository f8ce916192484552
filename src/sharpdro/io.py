"""Atomic file writes: a finished result or checkpoint is never half-written.

Everything that outlives a process goes through a temp file in the same folder,
fsync, ``os.replace``, then an fsync of the folder (so that the rename itself survives a
power cut); a full disk or a kill leaves the previous file intact.  A place that cannot be
written (read-only file system, no permission, a name too long) is one :class:`WriteError`
naming it.  JSON is written without bare ``NaN`` / ``Infinity`` (not JSON; strict readers
reject them): a non-finite number is written as ``null``.
The result has the mode an ordinary ``open()`` would give (0666 minus the umask), not
``mkstemp``'s 0600, so labmates on a shared server can read results and caches.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator


from sharpdro.errors import SharpDROError


class DiskFullError(SharpDROError, OSError):
    """No space left while writing: a user error (printed in one line) that names the path and the space needed."""

    def __str__(self) -> str:
        return str(self.strerror)


class WriteError(SharpDROError, OSError):
    """A path that cannot be written (read-only file system, no permission, a name too long): one line."""

    def __str__(self) -> str:
        return str(self.strerror)


# what each of these errors means for the user
_UNWRITABLE = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENAMETOOLONG: "a name in the path is too long"}


def write_error(path: str | os.PathLike, exc: OSError, what: str = "", need: int | None = None) -> OSError:
    """What to raise for ``exc`` while writing ``path`` (``what``: how to call it, default the path; ``need``:
    the bytes to write, when known): a DiskFullError or a WriteError that says what is wrong and what to do;
    ``exc`` itself when it is neither."""
    if isinstance(exc, SharpDROError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full_error(path, need, what=what)
    if exc.errno == errno.ENAMETOOLONG:
        return WriteError(exc.errno, f"cannot write {what or path}: {_UNWRITABLE[exc.errno]}; nothing was written "
                                     f"there. Choose a shorter name")
    if exc.errno in _UNWRITABLE:
        return WriteError(exc.errno, f"cannot write {what or path}: {_UNWRITABLE[exc.errno]} "
                                     f"({_existing_parent(Path(path))}); nothing was written there. Choose a place "
                                     f"you can write")
    return exc


def check_path_name(path: str | os.PathLike, what: str = "the path") -> None:
    """Refuse a path the file system cannot hold (a name longer than NAME_MAX, the whole longer than PATH_MAX)
    before anything is created: otherwise the first stat fails, deep inside, after folders were made."""
    path = Path(path)
    try:
        name_max = os.pathconf(_existing_parent(path), "PC_NAME_MAX")
        path_max = os.pathconf(_existing_parent(path), "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no pathconf (Windows)
        name_max, path_max = 255, 4096
    long = [p for p in path.parts if len(os.fsencode(p)) > name_max]
    size = len(os.fsencode(str(path.absolute())))
    if long or size >= path_max:
        why = (f"a name of {len(os.fsencode(long[0]))} bytes, at most {name_max}" if long else
               f"{size} bytes, at most {path_max - 1}")
        shown = str(path) if len(str(path)) <= 100 else str(path)[:60] + "..." + str(path)[-20:]
        raise WriteError(errno.ENAMETOOLONG, f"{what} {shown} is too long for the file system ({why}); nothing was "
                                             f"written. Choose a shorter name")


def disk_full_error(path: str | os.PathLike, need: int | None = None, what: str = "") -> DiskFullError:
    """The DiskFullError for writing ``path`` (``need`` bytes when known)."""
    path = Path(path)
    free = free_bytes(path)
    need_text = f"about {human_bytes(need)} needed, " if need else ""
    free_text = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on the device while writing {what or path} "
                         f"({need_text}{free_text} under {_existing_parent(path)}); what was finished before is "
                         f"intact. Free some space (or write elsewhere) and run the command again (training "
                         f"resumes with --resume).")


def free_bytes(path: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(_existing_parent(Path(path))).free
    except OSError:
        return None


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        try:
            if p.exists():
                return p
        except OSError:  # a name too long for the file system
            continue
    return Path(".")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in folder ``path`` durable (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that cannot fsync a folder
        pass
    finally:
        os.close(fd)


_UMASK_LOCK = threading.Lock()


@contextlib.contextmanager
def blocking_lock(path: str | os.PathLike | None) -> Iterator[None]:
    """An exclusive flock on the file ``path`` (created if needed) while the block runs, waiting for another
    holder; released when the block ends or the process dies.  Nothing when ``path`` is None or on Windows."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only way POSIX offers)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def make_ordinary(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by ``mkstemp`` (0600) or a folder made by ``mkdtemp`` (0700) the mode that
    ``open()`` / ``mkdir()`` would have given it: 0666 / 0777 minus the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, need: int | None = None) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``.

    ``need`` (bytes, when known) goes into the message of a full disk."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc, need=need) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        make_ordinary(tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename is in the folder's data: without this a power cut may undo it
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc, need=need) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


TMP_SUFFIX = ".tmp"  # atomic_path's temp files: .<name>.<random>.tmp beside <name>


def is_atomic_temp(path: str | os.PathLike) -> bool:
    """A temp file of :func:`atomic_path` (left behind only by a process killed while writing)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TMP_SUFFIX) and name.count(".") >= 3


class _RecordingFile:
    """A binary file that remembers the OSError of a failed write: torch.save swallows it and reports
    ``unexpected pos`` instead (a real full disk, 2 MiB tmpfs: docs/reliability.md)."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, need=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, **kwargs) -> str:
    """The project's JSON: NumPy scalars and arrays as numbers and lists, paths as strings, and a non-finite
    number (NaN, infinity) as ``null`` (bare ``NaN`` is not JSON); used by every JSON file it writes."""
    return json.dumps(_finite(obj), allow_nan=False, default=_json_default, **kwargs)


def jsonl_text(records) -> str:
    """JSON lines, one per record (``dumps_json``)."""
    return "".join(dumps_json(r) + "\n" for r in records)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None], need: int | None = None) -> None:
    """Call ``writer(tmp_path)`` (e.g. ``fig.savefig``) and move the result into place. A library that
    writes through a file object is better served by :func:`atomic_write_stream`."""
    with atomic_path(path, need) as tmp:
        writer(tmp)


def atomic_write_stream(path: str | os.PathLike, writer: Callable[[Any], None], need: int | None = None) -> None:
    """Call ``writer(f)`` with a binary file object (``torch.save(obj, f)``, ``np.savez(f, ...)``) and move the
    result into place. A write that fails (a full disk) is the error raised, whatever the library made of it."""
    with atomic_path(path, need) as tmp:
        with open(tmp, "wb") as raw:
            f = _RecordingFile(raw)
            try:
                writer(f)
            except Exception:
                if f.error is not None:
                    raise f.error from None
                raise
            if f.error is not None:  # swallowed and not reported at all
                raise f.error


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (flushed and fsynced: a crash loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dumps_json(record) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a full disk: read_jsonl ignores the partial line it may leave
        raise write_error(path, exc, need=len(line)) from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSON lines, ignoring a truncated last line left by a crash."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def _finite(o):
    """``o`` with every non-finite float (NumPy's too) replaced by None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if type(o).__module__ == "numpy":
        return _finite(_json_default(o))
    return o


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
