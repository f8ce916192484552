"""Tiny-ImageNet: ``wnids.txt``, ``train/<wnid>/images/``, ``val/images`` + ``val_annotations.txt``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sharpdro.data.jpeg_quality import source_quality
from sharpdro.data.sources.decode import _check_same_size, decode_images
from sharpdro.data.sources.folders import _list_images, _subdirs
from sharpdro.data.types import ImageSet
from sharpdro.errors import DataError


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
    return (ImageSet(tr, np.asarray(tr_labels, np.int64), list(classes), "tinyimagenet/train",
                     source_quality(tr_paths)),
            ImageSet(va, np.asarray([l for _, l in val], np.int64), list(classes), "tinyimagenet/test",
                     source_quality([p for p, _ in val])))
