"""CIFAR-10 / CIFAR-100 from the official python tarballs (found, MD5-checked, extracted, or downloaded)."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from sharpdro.data.types import ImageSet
from sharpdro.errors import DataError
from sharpdro.io import make_ordinary

# Tables at module level so that tests can monkeypatch them.
#: Where each official CIFAR tarball comes from, its MD5 and the folder it extracts to.
CIFAR_ARCHIVES: dict[str, dict[str, str]] = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "filename": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "filename": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
    },
}

# Files inside the extracted folder and the keys of the pickled dicts.
_CIFAR_LAYOUT: dict[str, dict[str, Any]] = {
    "cifar10": {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
    "cifar100": {
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
}


def default_data_root() -> Path:
    """``$SHARPDRO_DATA`` or ``~/.cache/sharpdro/data``."""
    env = os.environ.get("SHARPDRO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sharpdro" / "data"

def _cifar_spec(name: str) -> dict[str, str]:
    if name not in CIFAR_ARCHIVES:
        raise DataError(f"unknown CIFAR dataset {name!r}; known: {', '.join(CIFAR_ARCHIVES)}")
    return CIFAR_ARCHIVES[name]


def _cifar_help(name: str, root: Path) -> str:
    spec = _cifar_spec(name)
    return (f"download {spec['url']} by hand and put it at {root / spec['filename']} "
            f"(MD5 {spec['md5']}), or put its extracted folder at {root / spec['folder']}")


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:512]


def _download(url: str, dest: Path, md5: str, help_text: str, progress: bool) -> None:
    """Download ``url`` to ``dest`` through a temp file; verify the MD5 before the rename."""
    from tqdm.auto import tqdm

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        make_ordinary(tmp_name)  # not mkstemp's 0600: a shared data folder stays readable
    except OSError as exc:
        raise DataError(f"cannot write to {dest.parent} ({exc}); {help_text}") from None
    tmp = Path(tmp_name)
    h = hashlib.md5()
    head = b""
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                resp = urllib.request.urlopen(url, timeout=60)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DataError(f"could not download {dest.name} ({reason}); {help_text}") from None
            with resp:
                length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
                total = int(length) if length and length.isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"downloading {dest.name}",
                          disable=None if progress else True, dynamic_ncols=True) as bar:
                    while True:
                        try:
                            block = resp.read(1 << 20)
                        except OSError as exc:
                            raise DataError(f"the download of {dest.name} broke off ({exc}); {help_text}") from None
                        if not block:
                            break
                        if len(head) < 1024:
                            head += block[:1024 - len(head)]
                        f.write(block)
                        h.update(block)
                        bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        got = h.hexdigest()
        if got != md5:
            what = "an HTML page, not the tarball" if _looks_like_html(head) else f"a file with MD5 {got}"
            raise DataError(f"the download of {dest.name} from {url} gave {what} (expected MD5 {md5}); "
                            f"{help_text}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    members = []  # pragma: no cover - Python < 3.10.12 without extraction filters
    for m in tar.getmembers():  # pragma: no cover
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise DataError(f"refusing to extract {m.name!r} from {tar.name}: unsafe path or type")
        members.append(m)
    tar.extractall(dest, members=members)  # pragma: no cover


def _extract(tarball: Path, root: Path, folder: str) -> Path:
    """Extract ``tarball`` into a temp folder under ``root``, then rename ``folder`` into place."""
    target = root / folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".extract", dir=root))
    try:
        try:
            with tarfile.open(tarball) as tar:
                _safe_extractall(tar, tmp)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise DataError(f"cannot extract {tarball} ({exc}); delete it and run again") from None
        src = tmp / folder
        if not src.is_dir():
            raise DataError(f"{tarball} does not contain the folder {folder}/; delete it and run again")
        try:
            os.rename(src, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race: keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_cifar_folder(path: Path, name: str) -> bool:
    return (path / _CIFAR_LAYOUT[name]["meta"]).is_file() and (path / _CIFAR_LAYOUT[name]["test"][0]).is_file()


def ensure_cifar(name: str, root: str | os.PathLike | None = None, download: bool = True,
                 progress: bool = True) -> Path:
    """The extracted CIFAR folder under ``root``, extracting or downloading the tarball if needed.

    Order: an extracted folder (or ``root`` itself when it is one); else the tarball in ``root``
    (MD5-checked, extracted once, atomically); else, with ``download``, the official URL
    (MD5-checked). Every failure is one DataError naming the URL and the path to put it at.
    """
    spec = _cifar_spec(name)
    root = Path(root).expanduser() if root else default_data_root()
    if root.is_dir() and _is_cifar_folder(root, name):
        return root
    folder = root / spec["folder"]
    if folder.is_dir():
        return folder
    help_text = _cifar_help(name, root)
    tarball = root / spec["filename"]
    if tarball.is_file():
        got = _file_md5(tarball)
        if got != spec["md5"]:
            raise DataError(f"{tarball} has MD5 {got}, expected {spec['md5']}: it is incomplete or not the "
                            f"official file. Delete it, then run again with data.download=true or "
                            f"{help_text}")
    elif download:
        _download(spec["url"], tarball, spec["md5"], help_text, progress)
    else:
        raise DataError(f"{name} not found under {root} and data.download is false; {help_text} "
                        f"(or set data.download=true)")
    return _extract(tarball, root, spec["folder"])


_NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses anything else."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core.") or module.startswith("numpy._core."):
            module = _NUMPY_CORE + "." + module.split(".", 2)[2]
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read the CIFAR batch {path} ({exc}); delete its folder {path.parent} and run "
                        f"again to extract it afresh") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (a pickled dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _text(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _read_cifar_folder(folder: Path, name: str) -> tuple[ImageSet, ImageSet]:
    layout = _CIFAR_LAYOUT[name]
    needed = [layout["meta"], *layout["train"], *layout["test"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder} is incomplete (missing {', '.join(missing)}); delete it and run again, or "
                        f"{_cifar_help(name, folder.parent)}")
    meta = _unpickle(folder / layout["meta"])
    if layout["names"] not in meta:
        raise DataError(f"{folder / layout['meta']} has no {layout['names']!r} entry")
    classes = [_text(c) for c in meta[layout["names"]]]

    def read(files: list[str], split: str) -> ImageSet:
        xs, ys = [], []
        for fname in files:
            path = folder / fname
            batch = _unpickle(path)
            if "data" not in batch or layout["labels"] not in batch:
                raise DataError(f"{path} lacks 'data' or {layout['labels']!r}: not a {name} batch")
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[layout["labels"]], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
                raise DataError(f"{path}: expected 'data' of shape [N, 3072] and N labels, got "
                                f"{data.shape} and {len(labels)} labels")
            xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(labels)
        images = np.ascontiguousarray(np.concatenate(xs))
        labels = np.concatenate(ys)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{folder}: labels outside 0..{len(classes) - 1}")
        return ImageSet(images, labels, list(classes), f"{name}/{split}")

    return read(layout["train"], "train"), read(layout["test"], "test")


def load_cifar(name: str, root: str | os.PathLike | None = None, download: bool = True,
               progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 or CIFAR-100 (fine labels), 32x32, in the official order."""
    folder = ensure_cifar(name, root, download=download, progress=progress)
    return _read_cifar_folder(folder, name)
