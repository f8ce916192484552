"""Image sources: every dataset the project reads, returned as uint8 NHWC RGB :class:`ImageSet` s.

``load_dataset(cfg["data"])`` dispatches on ``data.dataset``:

==================  ======================================================================
``digits``          scikit-learn's bundled 8x8 digits, upscaled to 32x32 RGB, fixed 70/30 split
``cifar10/100``     the official python tarballs (found, MD5-checked, extracted, or downloaded)
``folder``          ``<root>/train/<class>/<image>`` + ``<root>/test/...`` (or ``val/``)
``imagenet30``      the same class-folder reader (also accepts ``one_class_train/test``)
``labelfile``       ``<NAME>_train_img/`` + ``<NAME>_train_label.txt`` (the MindSpore release)
``tinyimagenet``    ``wnids.txt``, ``train/<wnid>/images/``, ``val/images`` + annotations
==================  ======================================================================

plus :func:`load_cifar_c` for Hendrycks' CIFAR-10-C / CIFAR-100-C ``.npy`` folders.

Resizing (``data.image_size``) always uses Pillow's BICUBIC filter to a square of that size,
without keeping the aspect ratio. Pillow widens the filter support by the scale factor when
it shrinks, so downscaling is antialiased (no aliasing from skipped pixels). JPEG files
that are at least twice the target size are first decoded at a reduced DCT scale
(``Image.draft``; 1/2, 1/4 or 1/8, never below the target size), which is what makes
ImageNet-sized folders fast to bring to 64x64.

NumPy, Pillow and tqdm only: no torch import here.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from sharpdro.data.types import ImageSet
from sharpdro.errors import DataError

__all__ = [
    "CIFAR_ARCHIVES",
    "IMAGE_EXTENSIONS",
    "default_data_root",
    "load_dataset",
    "load_cifar",
    "ensure_cifar",
    "load_image_folder",
    "load_labelfile",
    "load_tinyimagenet",
    "load_digits",
    "digits_split",
    "load_cifar_c",
    "decode_images",
    "resize_images",
]

# --------------------------------------------------------------------------------------------
# Tables (module level so that tests can monkeypatch them)
# --------------------------------------------------------------------------------------------

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

#: File endings read as images by the folder readers (case-insensitive); anything else is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm"})

_TRAIN_SPLITS = ("train", "one_class_train")
_TEST_SPLITS = ("test", "val", "one_class_test")

#: Decoding threads (None: automatic). Pillow releases the GIL while it decodes and resizes,
#: so threads pay off for images larger than ~48x48; for CIFAR-sized files the per-file Python
#: work dominates and one thread is fastest.
DECODE_THREADS: int | None = None
_SMALL_IMAGE_PIXELS = 48 * 48
_PROGRESS_MIN_IMAGES = 2000
_CHUNK = 256

_DIGITS_TEST_FRACTION = 0.3
_DIGITS_SPLIT_SALT = "sharpdro-digits-split-v1"

_RESAMPLE = Image.Resampling.BICUBIC


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def default_data_root() -> Path:
    """``$SHARPDRO_DATA`` or ``~/.cache/sharpdro/data``."""
    env = os.environ.get("SHARPDRO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sharpdro" / "data"


def load_dataset(data_cfg: Mapping[str, Any], *, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """(train, test) of the source named by ``data_cfg["dataset"]`` (the ``data`` config section).

    Uses the keys ``dataset``, ``root``, ``download``, ``name`` and ``image_size``; a missing key
    takes the schema's default. With ``image_size`` set, every image of both splits is resized
    to ``image_size x image_size`` (Pillow BICUBIC, antialiased when shrinking).
    """
    dataset = data_cfg.get("dataset", "digits")
    root = data_cfg.get("root")
    size = data_cfg.get("image_size")
    if size is not None:
        size = int(size)
        if size < 1:
            raise DataError(f"data.image_size must be a positive number of pixels, got {size}")

    if dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(dataset, root, download=bool(data_cfg.get("download", True)), progress=progress)
    elif dataset in ("folder", "imagenet30"):
        train, test = load_image_folder(_need_root(dataset, root), image_size=size, progress=progress,
                                        name=dataset)
    elif dataset == "labelfile":
        name = data_cfg.get("name")
        if not name:
            raise DataError("data.dataset='labelfile' needs data.name: the NAME in <NAME>_train_img/ and "
                            "<NAME>_train_label.txt")
        train, test = load_labelfile(_need_root(dataset, root), name, image_size=size, progress=progress)
    elif dataset == "tinyimagenet":
        train, test = load_tinyimagenet(_need_root(dataset, root), image_size=size, progress=progress)
    elif dataset == "digits":
        train, test = load_digits(image_size=size or 32)
    else:
        raise DataError(f"unknown data.dataset {dataset!r}; known: digits, cifar10, cifar100, folder, "
                        f"imagenet30, labelfile, tinyimagenet")

    if size is not None:
        train = _resized_set(train, size, progress)
        test = _resized_set(test, size, progress)
    return train, test


def _need_root(dataset: str, root) -> Path:
    if not root:
        raise DataError(f"data.dataset={dataset!r} needs data.root: the folder that holds it")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {str(path)!r} (data.dataset={dataset!r}) is not a folder")
    return path


def _resized_set(s: ImageSet, size: int, progress: bool) -> ImageSet:
    if s.images.shape[1:3] == (size, size):
        return s
    return ImageSet(resize_images(s.images, size, progress=progress), s.labels, list(s.classes), s.name)


# --------------------------------------------------------------------------------------------
# Decoding and resizing (thread pool, deterministic order)
# --------------------------------------------------------------------------------------------

def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey: keep the top 8 bits
        a = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(a[..., None], 3, axis=2), "RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _decode_one(path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
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


def _source_pixels(path) -> int:
    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


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
    workers = _workers(_source_pixels(paths[0]))
    first = _decode_one(paths[0], image_size)
    out = np.empty((n,) + first.shape, dtype=np.uint8)
    out[0] = first
    h, w = first.shape[:2]

    def work(lo: int, hi: int) -> None:
        for i in range(max(lo, 1), hi):
            a = _decode_one(paths[i], image_size)
            if a.shape != first.shape:
                raise DataError(f"images differ in size: {paths[0]} is {w}x{h} but {paths[i]} is "
                                f"{a.shape[1]}x{a.shape[0]}; set data.image_size (e.g. --set data.image_size=64) "
                                f"to resize every image to one square size")
            out[i] = a

    _run_chunks(n, work, workers, progress, desc)
    return out


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


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (official python tarballs)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Class-folder trees (folder, imagenet30)
# --------------------------------------------------------------------------------------------

def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), hidden files/folders and non-images skipped, sorted."""
    found: list[tuple[tuple[str, ...], Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        rel = Path(dirpath).relative_to(folder).parts
        for f in filenames:
            if _is_image_name(f):
                found.append((rel + (f,), Path(dirpath, f)))
    found.sort(key=lambda t: t[0])
    return [p for _, p in found]


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if not _hidden(e.name) and e.is_dir())


def _find_split(base: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (base / n).is_dir():
            return base / n
    return None


def _class_tree_splits(root: Path) -> tuple[Path, Path]:
    candidates = [root]
    subs = _subdirs(root)
    if len(subs) == 1:  # e.g. an archive with one top folder: <root>/imagenette64/{train,val}
        candidates.append(root / subs[0])
    for base in candidates:
        train, test = _find_split(base, _TRAIN_SPLITS), _find_split(base, _TEST_SPLITS)
        if train is not None and test is not None:
            return train, test
    found = ", ".join(subs[:10]) + (f" and {len(subs) - 10} more" if len(subs) > 10 else "") if subs else "no folders"
    raise DataError(f"{root} does not hold the class-folder layout <root>/train/<class>/<image> and "
                    f"<root>/test/<class>/<image> (or val/); it holds: {found}")


def load_image_folder(root: str | os.PathLike, image_size: int | None = None, *, progress: bool = True,
                      name: str = "folder") -> tuple[ImageSet, ImageSet]:
    """``<root>/train/<class>/...`` and ``<root>/test/<class>/...`` (``val/`` when there is no test/).

    Class ids follow the sorted train class folder names. Images may sit in nested folders
    inside a class folder; hidden entries (names starting with '.') and non-image files are
    ignored. The test split may lack classes but may not add new ones.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} is not a folder")
    train_dir, test_dir = _class_tree_splits(root)
    classes = _subdirs(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders (expected {train_dir}/<class>/<image>)")
    index = {c: i for i, c in enumerate(classes)}
    test_classes = _subdirs(test_dir)
    extra = [c for c in test_classes if c not in index]
    if extra:
        hint = ""
        if (test_dir / "val_annotations.txt").is_file():
            hint = " (this looks like Tiny-ImageNet: use data.dataset=tinyimagenet)"
        raise DataError(f"{test_dir} has class folders that {train_dir} lacks: {', '.join(extra[:10])}{hint}")

    def gather(split_dir: Path, names: list[str], required: bool) -> tuple[list[Path], list[int]]:
        paths, labels = [], []
        for c in names:
            files = _list_images(split_dir / c)
            if required and not files:
                raise DataError(f"class folder {split_dir / c} holds no images "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths += files
            labels += [index[c]] * len(files)
        return paths, labels

    tr_paths, tr_labels = gather(train_dir, classes, True)
    te_paths, te_labels = gather(test_dir, test_classes, False)
    if not te_paths:
        raise DataError(f"{test_dir} holds no images (expected {test_dir}/<class>/<image>)")
    tr = decode_images(tr_paths, image_size, progress=progress, desc=f"{name} {train_dir.name}")
    te = decode_images(te_paths, image_size, progress=progress, desc=f"{name} {test_dir.name}")
    _check_same_size(tr, te, train_dir, test_dir)
    return (ImageSet(tr, np.asarray(tr_labels, np.int64), list(classes), f"{name}/train"),
            ImageSet(te, np.asarray(te_labels, np.int64), list(classes), f"{name}/test"))


def _check_same_size(a: np.ndarray, b: np.ndarray, where_a, where_b) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise DataError(f"images in {where_a} are {a.shape[2]}x{a.shape[1]} but images in {where_b} are "
                        f"{b.shape[2]}x{b.shape[1]}; set data.image_size to resize both")


# --------------------------------------------------------------------------------------------
# The original release's label-file layout
# --------------------------------------------------------------------------------------------

def _read_label_list(list_file: Path, img_dir: Path) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    missing: list[str] = []
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {list_file} ({exc})") from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        label = -1
        if len(parts) == 2:
            try:
                label = int(parts[1])
            except ValueError:
                pass
        if label < 0:
            raise DataError(f"{list_file}:{lineno}: expected 'relative/path label' (an integer label >= 0), "
                            f"got {line!r}")
        rel = parts[0].strip()
        if not (img_dir / rel).is_file():
            missing.append(f"{list_file}:{lineno}: {img_dir / rel}")
        entries.append((rel, label))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError("image files listed but not found: " + "; ".join(missing[:3]) + more)
    if not entries:
        raise DataError(f"{list_file} lists no images (one 'relative/path label' per line)")
    return entries


def _labelfile_classes(all_entries: list[tuple[str, int]]) -> list[str]:
    n = max(label for _, label in all_entries) + 1
    fallback = [f"class_{i}" for i in range(n)]
    folders: dict[int, set[str]] = {}
    for rel, label in all_entries:
        parts = Path(rel.replace("\\", "/")).parts
        if len(parts) < 2:
            return fallback
        folders.setdefault(label, set()).add(parts[0])
    if any(len(v) != 1 for v in folders.values()):
        return fallback
    names = {label: next(iter(v)) for label, v in folders.items()}
    if len(set(names.values())) != len(names):
        return fallback
    return [names.get(i, f"class_{i}") for i in range(n)]


def load_labelfile(root: str | os.PathLike, name: str, image_size: int | None = None, *,
                   progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """``<NAME>_{train,val}_img/`` + ``<NAME>_train_label.txt`` / ``<NAME>_val_label.txt``.

    The val list may also be named ``<NAME>_train_val.txt`` (the name in the original README).
    Images keep the order of the list files. Class names are the first folder of the paths
    when every label has one consistent folder, else ``class_<id>``.
    """
    root = Path(root).expanduser()
    train_img, val_img = root / f"{name}_train_img", root / f"{name}_val_img"
    train_txt = root / f"{name}_train_label.txt"
    val_candidates = [root / f"{name}_val_label.txt", root / f"{name}_train_val.txt"]
    val_txt = next((p for p in val_candidates if p.is_file()), None)
    problems = [str(p) + "/" for p in (train_img, val_img) if not p.is_dir()]
    problems += [str(train_txt)] if not train_txt.is_file() else []
    problems += [f"{val_candidates[0]} (or {val_candidates[1].name})"] if val_txt is None else []
    if problems:
        raise DataError(f"the label-file layout of data.name={name!r} is incomplete under {root}; missing: "
                        f"{'; '.join(problems)}. Expected {name}_train_img/ + {name}_train_label.txt and "
                        f"{name}_val_img/ + {name}_val_label.txt, one 'relative/path label' per line")
    tr_entries = _read_label_list(train_txt, train_img)
    va_entries = _read_label_list(val_txt, val_img)
    classes = _labelfile_classes(tr_entries + va_entries)
    tr = decode_images([train_img / r for r, _ in tr_entries], image_size, progress=progress,
                       desc=f"{name} train")
    va = decode_images([val_img / r for r, _ in va_entries], image_size, progress=progress, desc=f"{name} val")
    _check_same_size(tr, va, train_img, val_img)
    return (ImageSet(tr, np.asarray([l for _, l in tr_entries], np.int64), list(classes), f"{name}/train"),
            ImageSet(va, np.asarray([l for _, l in va_entries], np.int64), list(classes), f"{name}/test"))


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet
# --------------------------------------------------------------------------------------------

def _tiny_root(root: Path) -> Path:
    if (root / "wnids.txt").is_file():
        return root
    subs = _subdirs(root) if root.is_dir() else []
    if len(subs) == 1 and (root / subs[0] / "wnids.txt").is_file():  # e.g. <root>/tiny-imagenet-200/
        return root / subs[0]
    raise DataError(f"{root} is not a Tiny-ImageNet folder: wnids.txt is missing (expected wnids.txt, "
                    f"words.txt, train/<wnid>/images/, val/images/ and val/val_annotations.txt)")


def load_tinyimagenet(root: str | os.PathLike, image_size: int | None = None, *,
                      progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """Tiny-ImageNet: train and the labelled ``val`` split (returned as the test split).

    Class ids follow the sorted wnids of ``wnids.txt``; names are the first synonym in
    ``words.txt`` (the wnid is appended when two classes share it), or the wnid.
    """
    root = _tiny_root(Path(root).expanduser())
    wnids = [w.strip() for w in (root / "wnids.txt").read_text(encoding="utf-8").splitlines() if w.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{root / 'wnids.txt'} must list distinct wnids, one per line")
    wnids = sorted(wnids)
    index = {w: i for i, w in enumerate(wnids)}

    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in index and text.strip():
                words[wnid] = text.split(",")[0].strip()
    names = [words.get(w, w) for w in wnids]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    classes = [f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(names, wnids)]

    tr_paths: list[Path] = []
    tr_labels: list[int] = []
    for w in wnids:
        folder = root / "train" / w / "images"
        if not folder.is_dir():
            folder = root / "train" / w
        if not folder.is_dir():
            raise DataError(f"{root / 'train' / w}/images/ is missing (class {w} of wnids.txt)")
        files = _list_images(folder)
        if not files:
            raise DataError(f"{folder} holds no images (class {w} of wnids.txt)")
        tr_paths += files
        tr_labels += [index[w]] * len(files)

    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{ann} is missing (tab-separated lines: file, wnid, bounding box)")
    val: list[tuple[str, int]] = []
    for lineno, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise DataError(f"{ann}:{lineno}: expected 'file<TAB>wnid<TAB>bbox...', got {line!r}")
        fname, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise DataError(f"{ann}:{lineno}: wnid {wnid!r} is not in wnids.txt")
        path = root / "val" / "images" / fname
        if not path.is_file():
            raise DataError(f"{ann}:{lineno}: {path} not found")
        val.append((str(path), index[wnid]))
    if not val:
        raise DataError(f"{ann} lists no images")
    val.sort()
    tr = decode_images(tr_paths, image_size, progress=progress, desc="tinyimagenet train")
    va = decode_images([p for p, _ in val], image_size, progress=progress, desc="tinyimagenet val")
    _check_same_size(tr, va, root / "train", root / "val")
    return (ImageSet(tr, np.asarray(tr_labels, np.int64), list(classes), "tinyimagenet/train"),
            ImageSet(va, np.asarray([l for _, l in val], np.int64), list(classes), "tinyimagenet/test"))


# --------------------------------------------------------------------------------------------
# Embedded digits (no download)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-100-C
# --------------------------------------------------------------------------------------------

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
