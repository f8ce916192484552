"""Atomic file writes: a finished result or checkpoint is never half-written.

Everything that outlives a process goes through a temp file in the same folder,
fsync, then ``os.replace``; a full disk or a kill leaves the previous file intact.
The result has the mode an ordinary ``open()`` would give (0666 minus the umask), not
``mkstemp``'s 0600, so labmates on a shared server can read results and caches.
"""
from __future__ import annotations

import contextlib
import errno
import json
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
        if p.exists():
            return p
    return Path(".")


_UMASK_LOCK = threading.Lock()


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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full_error(path, need) from None
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        make_ordinary(tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError):
            raise disk_full_error(path, need) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, need=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None], need: int | None = None) -> None:
    """Call ``writer(tmp_path)`` (e.g. torch.save / np.save) and move the result into place.

    A writer should write through a Python file object (``torch.save(obj, f)``, not a path), so that a
    full disk surfaces as ENOSPC rather than as a library's own error."""
    with atomic_path(path, need) as tmp:
        writer(tmp)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (flushed and fsynced: a crash loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=_json_default) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # read_jsonl ignores the partial line a full disk may leave
            raise disk_full_error(path, len(line)) from None
        raise


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
