"""Class-folder trees (``folder``, ``imagenet30``) and the original release's label-file layout."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from sharpdro.data.jpeg_quality import source_quality
from sharpdro.data.sources.decode import _check_same_size, decode_images
from sharpdro.data.types import ImageSet
from sharpdro.errors import DataError

#: File endings read as images by the folder readers (case-insensitive); anything else is ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm"})

_TRAIN_SPLITS = ("train", "one_class_train")
_TEST_SPLITS = ("test", "val", "one_class_test")

_TRAIN_SPLITS = ("train", "one_class_train")
_TEST_SPLITS = ("test", "val", "one_class_test")


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, into linked folders too, each folder once), hidden
    files/folders and non-images skipped, sorted."""
    found: list[tuple[tuple[str, ...], Path]] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree (or to a folder already read): read once, never loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        rel = Path(dirpath).relative_to(folder).parts
        for f in filenames:
            if _is_image_name(f):
                found.append((rel + (f,), Path(dirpath, f)))
    found.sort(key=lambda t: t[0])
    return [p for _, p in found]


def _subdirs(folder: Path) -> list[str]:
    names = sorted(e.name for e in os.scandir(folder) if not _hidden(e.name) and e.is_dir())
    for name in names:
        _check_utf8_name(folder, name)
    return names


def _check_utf8_name(folder: Path, name: str) -> None:
    """A folder name that is not valid UTF-8 cannot be a class name (it is stored and printed as text)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        guess = raw.decode("latin-1")
        raise DataError(f"the folder name {raw!r} in {folder} is not valid UTF-8, so it cannot name a class; "
                        f"rename it to UTF-8 (for example: convmv -f latin1 -t utf8 --notest -r {folder}, which "
                        f"would call it {guess!r})") from None


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
    return (ImageSet(tr, np.asarray(tr_labels, np.int64), list(classes), f"{name}/train", source_quality(tr_paths)),
            ImageSet(te, np.asarray(te_labels, np.int64), list(classes), f"{name}/test", source_quality(te_paths)))


# --------------------------------------------------------------------------------------------
# The original release's label-file layout
# --------------------------------------------------------------------------------------------

class _Entry(NamedTuple):
    """One line of a label file: the image path relative to the ``_img`` folder, its label, and ``file:line``."""

    rel: str
    label: int
    where: str


def _read_label_list(list_file: Path, img_dir: Path) -> list[_Entry]:
    entries: list[_Entry] = []
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
        entries.append(_Entry(rel, label, f"{list_file}:{lineno}"))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError("image files listed but not found: " + "; ".join(missing[:3]) + more)
    if not entries:
        raise DataError(f"{list_file} lists no images (one 'relative/path label' per line)")
    _check_listed_once(entries)
    return entries


def _check_listed_once(entries: list[_Entry]) -> None:
    """A path listed twice would put one image in two splits (training and validation): refuse it."""
    seen: dict[str, _Entry] = {}
    for e in entries:
        key = os.path.normpath(e.rel.replace("\\", "/"))
        first = seen.setdefault(key, e)
        if first is e:
            continue
        if first.label != e.label:
            raise DataError(f"{e.where}: {e.rel} has label {e.label}, but {first.where} gives it label "
                            f"{first.label}; keep the line with the right label and delete the other")
        raise DataError(f"{e.where}: {e.rel} is listed a second time (first at {first.where}); an image listed "
                        f"twice can land in both training and validation. Delete the repeated line")


def _folder_classes(entries: list[_Entry]) -> dict[str, int] | None:
    """{class folder: label} when the paths' first folders name the classes, else None.

    They do when every path has a folder, there are at least two, and in every folder one label
    is the label of more than half of its images (a stray wrong label is then an error, not a new class).
    """
    by_folder: dict[str, dict[int, int]] = {}
    for e in entries:
        parts = Path(e.rel.replace("\\", "/")).parts
        if len(parts) < 2:
            return None
        counts = by_folder.setdefault(parts[0], {})
        counts[e.label] = counts.get(e.label, 0) + 1
    if len(by_folder) < 2:
        return None
    out = {}
    for folder, counts in by_folder.items():
        label, n = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
        if 2 * n <= sum(counts.values()):
            return None
        out[folder] = label
    return out


def _labelfile_classes(all_entries: list[_Entry]) -> list[str]:
    """Class names: the class folders (labels must then be 0..C-1 and agree with the folders), else ``class_<id>``."""
    folders = _folder_classes(all_entries)
    if folders is None:
        n = max(e.label for e in all_entries) + 1
        unused = sorted(set(range(n)) - {e.label for e in all_entries})
        if unused:
            import warnings

            shown = ", ".join(map(str, unused[:10])) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
            warnings.warn(f"the label files give {n} classes (largest label {n - 1}) but no image has label "
                          f"{shown}; check the labels", stacklevel=3)
        return [f"class_{i}" for i in range(n)]
    n = len(folders)
    for e in all_entries:
        folder = Path(e.rel.replace("\\", "/")).parts[0]
        if e.label >= n:
            raise DataError(f"{e.where}: label {e.label} is outside 0..{n - 1}: the label files name {n} class "
                            f"folders. Fix the label (the other images in {folder}/ have label {folders[folder]})")
        if e.label != folders[folder]:
            raise DataError(f"{e.where}: {e.rel} has label {e.label}, but the other images in {folder}/ have "
                            f"label {folders[folder]}; fix the label or move the image to its class folder")
    names: dict[int, str] = {}
    for folder, label in sorted(folders.items()):
        if label in names:
            raise DataError(f"class folders {names[label]}/ and {folder}/ both have label {label} in the label "
                            f"files; give each class folder its own label 0..{n - 1}")
        names[label] = folder
    return [names[i] for i in range(n)]


def load_labelfile(root: str | os.PathLike, name: str, image_size: int | None = None, *,
                   progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """``<NAME>_{train,val}_img/`` + ``<NAME>_train_label.txt`` / ``<NAME>_val_label.txt``.

    The val list may also be named ``<NAME>_train_val.txt`` (the name in the original README).
    Images keep the order of the list files. Class names are the first folder of the paths
    when the folders name the classes (then labels must be 0..C-1 for C folders, one per folder),
    else ``class_<id>`` for 0..largest label. A path listed twice is an error.
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
    tr = decode_images([train_img / e.rel for e in tr_entries], image_size, progress=progress,
                       desc=f"{name} train")
    va = decode_images([val_img / e.rel for e in va_entries], image_size, progress=progress, desc=f"{name} val")
    _check_same_size(tr, va, train_img, val_img)
    return (ImageSet(tr, np.asarray([e.label for e in tr_entries], np.int64), list(classes), f"{name}/train",
                     source_quality([train_img / e.rel for e in tr_entries])),
            ImageSet(va, np.asarray([e.label for e in va_entries], np.int64), list(classes), f"{name}/test",
                     source_quality([val_img / e.rel for e in va_entries])))
