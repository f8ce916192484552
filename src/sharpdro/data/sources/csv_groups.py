"""``data.dataset: csv``: your own images, labels and groups from one CSV file (``data.corruption: none``).

The CSV (``data.root``) has a header and the columns ``path,label,group`` plus an optional
``split`` (``train`` / ``val`` / ``test``); other columns are ignored.  ``path`` is relative to the
CSV's folder (or absolute).  ``label`` and ``group`` are names (any text; numbers are ordered
numerically, other names alphabetically); the names are kept (``classes`` and
``group_names``) and the ids follow that order.

Without a ``split`` column the rows are split reproducibly: within each group, a seeded
permutation (``data`` seed, stream :data:`SPLIT_TAG`) sends :data:`FRACTIONS` (70% / 10% / 20%)
to train / val / test, each set getting at least one image of a group of three or more.  With
a ``split`` column that has no ``val`` rows, validation takes 10% of each group's training rows
the same way.  The rule applied is returned (``split_rule``) and logged by the engine.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharpdro.data.sources.decode import decode_images
from sharpdro.errors import DataError

REQUIRED = ("path", "label", "group")
SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
VAL_FROM_TRAIN = 0.1
SPLIT_TAG = 11  # the seed stream of the split (distinct from sharpdro.data.splits.STREAM_TAGS)


@dataclass
class GroupedSet:
    """One split of a CSV dataset: uint8 NHWC images, int64 labels and group ids."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class CSVDataset:
    train: GroupedSet
    val: GroupedSet
    test: GroupedSet
    classes: list[str]
    group_names: list[str]
    split_rule: str
    fingerprint: str


def _ordered_names(values: list[str]) -> list[str]:
    unique = sorted(set(values))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def read_rows(path: Path) -> tuple[list[dict], bool]:
    """The CSV's rows (stripped strings) and whether it has a ``split`` column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DataError(f"{path}: the CSV needs a header with the columns path,label,group (and optionally "
                                f"split); it lacks {', '.join(missing)} (header: {','.join(header) or 'none'})")
            rows = []
            for n, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                empty = [c for c in REQUIRED if not row.get(c)]
                if empty:
                    raise DataError(f"{path} line {n}: empty {', '.join(empty)}")
                rows.append({**row, "_line": n})
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a UTF-8 text file ({exc})") from None
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    has_split = "split" in header
    if has_split:
        bad = [r for r in rows if r.get("split") not in SPLITS]
        if bad:
            raise DataError(f"{path} line {bad[0]['_line']}: split {bad[0].get('split')!r} is not one of "
                            f"{', '.join(SPLITS)} ({len(bad)} such rows)")
    return rows, has_split


def _assign(groups: np.ndarray, seed: int, fractions: dict[str, float]) -> np.ndarray:
    """A split name per row: within each group, a seeded permutation cut by ``fractions`` (in their order)."""
    out = np.empty(len(groups), dtype=object)
    names = list(fractions)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_TAG, int(g)]))
        members = members[rng.permutation(len(members))]
        n = len(members)
        counts = [math.floor(fractions[k] * n) for k in names[1:]]
        if n >= len(names):
            counts = [max(1, c) for c in counts]
        first = n - sum(counts)
        bounds = np.cumsum([0, first, *counts])
        for k, name in enumerate(names):
            out[members[bounds[k]:bounds[k + 1]]] = name
    return out


def load_csv_dataset(csv_path: str | Path, image_size: int | None = None, *, seed: int = 0,
                     progress: bool = True) -> CSVDataset:
    """Read the CSV, split it (its ``split`` column or the seeded rule) and decode the images."""
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DataError(f"data.root {str(path)!r} (data.dataset='csv') is not a file: point it at a CSV of "
                        f"path,label,group[,split]")
    rows, has_split = read_rows(path)
    classes = _ordered_names([r["label"] for r in rows])
    group_names = _ordered_names([r["group"] for r in rows])
    cid, gid = {c: i for i, c in enumerate(classes)}, {g: i for i, g in enumerate(group_names)}
    labels = np.array([cid[r["label"]] for r in rows], dtype=np.int64)
    groups = np.array([gid[r["group"]] for r in rows], dtype=np.int64)
    files = [Path(r["path"]) if Path(r["path"]).is_absolute() else path.parent / r["path"] for r in rows]
    missing = [(r["_line"], f) for r, f in zip(rows, files) if not f.is_file()]
    if missing:
        raise DataError(f"{path} line {missing[0][0]}: image {str(missing[0][1])!r} not found ({len(missing)} missing "
                        f"files; paths are relative to the CSV's folder)")
    if has_split:
        split = np.array([r["split"] for r in rows], dtype=object)
        if not (split == "train").any() or not (split == "test").any():
            raise DataError(f"{path}: the split column needs train and test rows")
        if (split == "val").any():
            rule = "the CSV's split column"
        else:
            train_rows = np.flatnonzero(split == "train")
            sub = _assign(groups[train_rows], seed, {"train": 1 - VAL_FROM_TRAIN, "val": VAL_FROM_TRAIN})
            split[train_rows] = sub
            rule = (f"the CSV's split column; validation: {VAL_FROM_TRAIN:.0%} of each group's train rows "
                    f"(seeded by seed={seed})")
    else:
        split = _assign(groups, seed, FRACTIONS)
        rule = ("no split column: each group's rows split 70% train / 10% val / 20% test by a permutation "
                f"seeded by seed={seed}")
    images = decode_images(files, image_size, progress=progress, desc="decoding (csv)")
    sets = {}
    h = hashlib.sha256()
    for name in SPLITS:
        idx = np.flatnonzero(split == name)
        sets[name] = GroupedSet(np.ascontiguousarray(images[idx]), labels[idx], groups[idx])
        for a in (sets[name].images, sets[name].labels, sets[name].groups):
            h.update(repr(a.shape).encode())
            h.update(np.ascontiguousarray(a).data)
    h.update(("\n".join(classes) + "\0" + "\n".join(group_names)).encode())
    for name in ("train", "test"):
        if len(sets[name]) == 0:
            raise DataError(f"{path}: the {name} split is empty")
    return CSVDataset(sets["train"], sets["val"], sets["test"], classes, group_names, rule, h.hexdigest())
