"""The Poisson severity mixture: which images train at which severity, and the held-out sets.

SharpDRO trains on a mixture of corruption severities 0..S whose proportions follow
Poisson(lambda) (lambda = 1 in the paper): clean and mildly corrupted images are
common, severe ones rare.  Two protocols decide the per-image severities:

``per_class_floor`` (the official code, the default)
    For each class, ``train_per_class`` images of the train split are picked at random;
    severity group s receives ``floor(n * pmf(s))`` of them (CIFAR-10 at 4000:
    1471/1471/735/245/61/12).  The pmf is *not* renormalised over 0..S, so the floors
    sum to less than n (3995 of 4000): the leftover picked images are dropped from
    training and from validation alike, as the official code does.
``iid``
    Every picked image draws its own severity from Poisson(lambda) truncated to 0..S
    (pmf renormalised), so group sizes vary from seed to seed.

The train-split images of a class that are not picked form its validation pool
(``val_per_class`` of them when set).  Validation and test sets hold *the same images*
at every severity 0..S, each severity corrupted with its own seed stream.

Seeds: every random stream is ``np.random.SeedSequence([seed, TAG, ...])`` with a fixed
integer TAG per purpose (``STREAM_TAGS``), so adding a stream never changes another.
Corrupted arrays are cached on disk (``sharpdro.data.cache``), keyed by everything that
changes them.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from sharpdro.data.types import ImageSet, LabeledArrays, Splits
from sharpdro.errors import CacheError, DataError

# Bump when the split or the cached layout changes: old cache entries are then never reused.
FORMAT_VERSION = 1

# Stable integer tag of each random stream. Never renumber; add new purposes with new numbers.
STREAM_TAGS = {
    "split": 1,          # which images of a class are picked for training (and the val order)
    "iid-severity": 2,   # per-image severities of the iid protocol
    "train-corrupt": 3,  # corruption noise of the training images
    "val-corrupt": 4,    # corruption noise of the validation images (+ severity)
    "test-corrupt": 5,   # corruption noise of the test images (+ severity)
    "test-subset": 6,    # which test images are kept when test_per_class is set
}
assert len(set(STREAM_TAGS.values())) == len(STREAM_TAGS)

# Share of a short class kept for validation when it has too few images for train_per_class.
MIN_VAL_SHARE = 0.1


def stream(seed: int, purpose: str, *extra: int) -> np.random.SeedSequence:
    """The seed sequence of one purpose (``STREAM_TAGS``), optionally split further (class, severity)."""
    return np.random.SeedSequence([int(seed), STREAM_TAGS[purpose], *(int(x) for x in extra)])


def rng_for(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(stream(seed, purpose, *extra))


# ----------------------------------------------------------------- proportions
def poisson_proportions(lam: float, max_severity: int) -> np.ndarray:
    """Poisson(lam) pmf at 0..max_severity (float64), NOT renormalised (its sum is < 1)."""
    if lam <= 0:
        raise ValueError(f"poisson lambda must be > 0, got {lam}")
    s = np.arange(max_severity + 1)
    log_pmf = -lam + s * math.log(lam) - np.array([math.lgamma(k + 1) for k in s])
    return np.exp(log_pmf)


def truncated_poisson(lam: float, max_severity: int) -> np.ndarray:
    """Poisson(lam) restricted to 0..max_severity and renormalised (the iid protocol)."""
    p = poisson_proportions(lam, max_severity)
    return p / p.sum()


def per_class_floor_counts(n_per_class: int, lam: float, max_severity: int) -> np.ndarray:
    """``floor(n * pmf(s))`` for s = 0..S (int64): the official per-class group sizes."""
    # The tiny epsilon keeps an exact integer product (n * pmf = k) from flooring to k - 1.
    return np.floor(n_per_class * poisson_proportions(lam, max_severity) + 1e-9).astype(np.int64)


# ------------------------------------------------------------------- the plan
@dataclass
class SplitPlan:
    """Indices of a split, before any corruption (cheap: what ``sharpdro info`` prints)."""

    train_index: np.ndarray  # int64, into the source train split, sorted
    train_severity: np.ndarray  # int64, aligned with train_index
    train_labels: np.ndarray  # int64, aligned with train_index
    val_index: np.ndarray  # int64, into the source train split, sorted
    test_index: np.ndarray  # int64, into the source test split, sorted
    dropped_index: np.ndarray  # picked for training but dropped by per_class_floor (in no set)
    num_classes: int
    max_severity: int
    short_classes: list = field(default_factory=list)  # [(class, available, used for training)]

    def train_counts(self) -> np.ndarray:
        """int64 [num_classes, S+1]: training images per class and severity."""
        out = np.zeros((self.num_classes, self.max_severity + 1), dtype=np.int64)
        np.add.at(out, (self.train_labels, self.train_severity), 1)
        return out


def make_plan(train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int, *, protocol: str,
              poisson_lambda: float, max_severity: int, train_per_class: int, val_per_class: int | None,
              test_per_class: int | None, seed: int, warn: bool = True,
              class_names: Sequence[str] | None = None) -> SplitPlan:
    """Pick training images and their severities, the validation pool and the test subset.

    Warns (UserWarning) when a class is too small for ``train_per_class`` or a severity gets no image.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    S = max_severity
    if protocol not in ("per_class_floor", "iid"):
        raise ValueError(f"unknown protocol {protocol!r}; allowed: per_class_floor, iid")
    tr_idx, tr_sev, val_idx, dropped, short = [], [], [], [], []
    for c in range(num_classes):
        members = np.flatnonzero(train_labels == c)
        n_avail = len(members)
        if n_avail == 0:
            short.append((c, 0, 0))
            continue
        # Keep at least MIN_VAL_SHARE of a class for validation; shrink training when needed.
        keep_val = max(1, math.ceil(MIN_VAL_SHARE * n_avail)) if n_avail > 1 else 0
        n = train_per_class
        if n_avail - n < keep_val:
            n = n_avail - keep_val
            short.append((c, n_avail, n))
        perm = members[rng_for(seed, "split", c).permutation(n_avail)]
        picked, pool = perm[:n], perm[n:]
        if protocol == "per_class_floor":
            counts = per_class_floor_counts(n, poisson_lambda, S)
            kept = int(counts.sum())
            # Official behaviour: the n - sum(floors) leftover picked images are used nowhere.
            dropped.append(picked[kept:])
            picked = picked[:kept]
            sev = np.repeat(np.arange(S + 1, dtype=np.int64), counts)
        else:
            sev = rng_for(seed, "iid-severity", c).choice(S + 1, size=n, p=truncated_poisson(poisson_lambda, S))
        tr_idx.append(picked)
        tr_sev.append(sev.astype(np.int64))
        val_idx.append(pool[:val_per_class] if val_per_class is not None else pool)

    def cat(parts):
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    train_index, train_severity = cat(tr_idx), cat(tr_sev)
    order = np.argsort(train_index, kind="stable")
    train_index, train_severity = train_index[order], train_severity[order]
    val_index = np.sort(cat(val_idx))
    dropped_index = np.sort(cat(dropped))
    if np.intersect1d(train_index, val_index).size or np.intersect1d(dropped_index, val_index).size:
        raise AssertionError("internal error: training and validation images overlap")  # pragma: no cover

    if test_per_class is None:
        test_index = np.arange(len(test_labels), dtype=np.int64)
    else:
        parts = []
        for c in range(num_classes):
            members = np.flatnonzero(test_labels == c)
            parts.append(members[rng_for(seed, "test-subset", c).permutation(len(members))[:test_per_class]])
        test_index = np.sort(cat(parts))
    plan = SplitPlan(train_index, train_severity, train_labels[train_index], val_index, test_index,
                     dropped_index, num_classes, S, short)
    if warn:
        _warn_plan(plan, train_per_class, protocol, np.bincount(train_labels[val_index], minlength=num_classes),
                   class_names)
    return plan


def val_per_class(data_cfg: dict) -> int:
    """``data.val_per_class``, or its default: a twentieth of ``train_per_class`` (at least 10), so that
    evaluating validation at every severity costs about a tenth of an epoch's training."""
    v = data_cfg.get("val_per_class")
    return int(v) if v is not None else max(10, math.ceil(int(data_cfg["train_per_class"]) / 20))


def plan_from_config(cfg: dict, train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int,
                     warn: bool = True, class_names: Sequence[str] | None = None) -> SplitPlan:
    d = cfg["data"]
    plan = make_plan(train_labels, test_labels, num_classes, protocol=d["protocol"],
                     poisson_lambda=float(d["poisson_lambda"]), max_severity=d["max_severity"],
                     train_per_class=d["train_per_class"], val_per_class=val_per_class(d),
                     test_per_class=d["test_per_class"], seed=cfg["seed"], warn=warn, class_names=class_names)
    return plan


def _warn_plan(plan: SplitPlan, train_per_class: int, protocol: str, val_counts: np.ndarray,
               class_names: Sequence[str] | None = None) -> None:
    if plan.short_classes:
        # the class by its name, and the train / val counts `sharpdro info` shows in its row (train: after
        # per_class_floor, which leaves some picked images unused)
        train_counts = plan.train_counts().sum(axis=1)
        name = (lambda c: class_names[c]) if class_names is not None else (lambda c: f"class {c}")
        shown = ", ".join(f"{name(c)}: {a} images -> {train_counts[c]} train, {val_counts[c]} val"
                          for c, a, _ in plan.short_classes[:5])
        more = f" (and {len(plan.short_classes) - 5} more)" if len(plan.short_classes) > 5 else ""
        warnings.warn(f"{len(plan.short_classes)} class(es) have too few images for data.train_per_class="
                      f"{train_per_class} plus a {MIN_VAL_SHARE:.0%} validation share; they train on fewer "
                      f"images: {shown}{more}", UserWarning, stacklevel=3)
    per_sev = np.bincount(plan.train_severity, minlength=plan.max_severity + 1)
    empty = [s for s in range(plan.max_severity + 1) if per_sev[s] == 0]
    if empty:
        fix = "raise data.train_per_class" + (" or use data.protocol=iid" if protocol != "iid" else "")
        warnings.warn(f"no training image at severity {empty} (counts per severity {per_sev.tolist()}); {fix}",
                      UserWarning, stacklevel=3)


# ------------------------------------------------------------------ what a config's split holds
def describe_split(cfg: dict) -> list[str]:
    """``sharpdro info``: training images per class and severity, validation and test sizes, and whether the
    cache holds the corrupted arrays (the dataset is loaded; nothing is corrupted or written)."""
    from sharpdro.data import cache as cache_mod
    from sharpdro.data.corruptions import resolve_table

    d = cfg["data"]
    S = d["max_severity"]
    train, test = load_source(cfg, progress=cfg["train"]["progress"])
    classes = list(train.classes)
    plan = plan_from_config(cfg, train.labels, test.labels, len(classes), class_names=classes)
    counts = plan.train_counts()
    table = resolve_table(d["table"], int(train.images.shape[1]))

    lines = [f"dataset {d['dataset']}: {len(train)} train / {len(test)} test images of "
             f"{'x'.join(map(str, train.images.shape[1:]))}, {len(classes)} classes"]
    pmf = poisson_proportions(float(d["poisson_lambda"]), S)
    lines.append(f"protocol {d['protocol']}, lambda {float(d['poisson_lambda']):g}, severities 0..{S}, Poisson pmf "
                 + " ".join(f"{p:.4f}" for p in pmf) + f"; corruption {d['corruption']} (table {table}); "
                 f"seed {cfg['seed']}")
    width = max(5, max(len(c) for c in classes) if classes else 5)
    lines.append(f"{'class':<{width}} " + "".join(f"{'s' + str(s):>7}" for s in range(S + 1)) + f"{'train':>8}{'val':>7}")
    val_pc = np.bincount(train.labels[plan.val_index], minlength=len(classes))
    for c, name in enumerate(classes):
        lines.append(f"{name:<{width}} " + "".join(f"{n:>7}" for n in counts[c]) + f"{counts[c].sum():>8}{val_pc[c]:>7}")
    tot = counts.sum(axis=0)
    lines.append(f"{'total':<{width}} " + "".join(f"{n:>7}" for n in tot) + f"{tot.sum():>8}{val_pc.sum():>7}")
    if len(plan.dropped_index):
        lines.append(f"{len(plan.dropped_index)} picked images dropped by per_class_floor (n - sum of floors per class)")
    for split, index in (("val", plan.val_index), ("test", plan.test_index)):
        lines.append(f"{split}: {len(index)} images at each of {S + 1} severities ({len(index) * (S + 1)} in all)")
    lines.append(validation_cost_line(cfg, len(plan.val_index), len(plan.train_index)))
    key = cache_key_fields(cfg, train, test, table)
    path = cache_mod.entry_path(cache_mod.cache_root(d), key, prefix=f"{d['dataset']}-{d['corruption']}-")
    lines.append(f"cache: {path} ({'present' if path.exists() else 'not built yet: run sharpdro prepare'})")
    return lines


def validation_cost_line(cfg: dict, n_val: int, n_train: int) -> str:
    """How long validation takes relative to training, from image counts: evaluating an image is one forward
    pass, about a third of a training pass (forward + backward); the SAM family makes two passes a step."""
    from sharpdro import methods

    S, every, name = cfg["data"]["max_severity"], cfg["eval"]["every"], cfg["algorithm"]["name"]
    evals = n_val * (S + 1)
    ratio = evals / max(1, 3 * methods.get(name).passes * n_train)
    return (f"validation: {evals} image evaluations every {every} epoch(s), about {100 * ratio:.0f}% of an epoch's "
            f"training time ({name}); set data.val_per_class to change it")


# ------------------------------------------------------------------ cache key
def cache_key_fields(cfg: dict, train: ImageSet, test: ImageSet, table: str) -> dict:
    """Everything that changes the corrupted arrays (the cache key is the SHA-256 of its JSON)."""
    from sharpdro.data import corruptions

    d = cfg["data"]
    return {
        "format": FORMAT_VERSION,
        "corruptions_version": getattr(corruptions, "VERSION", None),
        "dataset": d["dataset"],
        "name": d["name"],
        "train_fingerprint": train.fingerprint(),
        "test_fingerprint": test.fingerprint(),
        "image_size": d["image_size"],
        "image_shape": list(train.images.shape[1:]),
        "corruption": d["corruption"],
        "table": table,
        "max_severity": d["max_severity"],
        "protocol": d["protocol"],
        "poisson_lambda": float(d["poisson_lambda"]),
        "train_per_class": d["train_per_class"],
        "val_per_class": val_per_class(d),  # the value in effect (null means a default that has changed)
        "test_per_class": d["test_per_class"],
        "seed": cfg["seed"],
    }


def data_fingerprint(train_fingerprint: str, test_fingerprint: str) -> str:
    """What a run's data is, wherever it lies: SHA-256 of the source train and test fingerprints
    (:meth:`ImageSet.fingerprint`: decoded pixels, labels, class names). Those are computed for the
    cache key anyway (0.1 s for CIFAR-10, against 9 s to decode its JPEGs), and every split is drawn
    from them by the config, which --resume checks separately."""
    text = f"train {train_fingerprint}\ntest {test_fingerprint}\n"
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ building
def _corrupt_arrays(train: ImageSet, test: ImageSet, plan: SplitPlan, corruption: str, table: str, seed: int,
                    progress: bool) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    from sharpdro.data.corruptions import corrupt, corrupt_by_severity

    S = plan.max_severity
    shape = train.images.shape[1:]
    nv, nt = len(plan.val_index), len(plan.test_index)
    total = len(plan.train_index) + S * (nv + nt)
    arrays: dict[str, np.ndarray] = {}
    with tqdm(total=total, unit="img", desc=f"corrupting ({corruption})", disable=not progress,
              dynamic_ncols=True) as bar:
        src = train.images[plan.train_index]
        arrays["train_images"] = np.ascontiguousarray(
            corrupt_by_severity(src, plan.train_severity, corruption, seed=stream(seed, "train-corrupt"),
                                table=table), dtype=np.uint8)
        del src
        arrays["train_labels"] = train.labels[plan.train_index].astype(np.int64)
        arrays["train_severity"] = plan.train_severity.astype(np.int64)
        arrays["train_index"] = plan.train_index.astype(np.int64)
        bar.update(len(plan.train_index))
        for split, source, index, purpose in (("val", train, plan.val_index, "val-corrupt"),
                                              ("test", test, plan.test_index, "test-corrupt")):
            src = source.images[index]
            stacked = np.empty((S + 1, len(index), *shape), dtype=np.uint8)
            stacked[0] = src  # severity 0 is the clean image
            for s in range(1, S + 1):
                bar.set_postfix_str(f"{split} severity {s}")
                stacked[s] = corrupt(src, corruption, s, seed=stream(seed, purpose, s), table=table)
                bar.update(len(index))
            arrays[f"{split}_images"] = stacked
            arrays[f"{split}_labels"] = source.labels[index].astype(np.int64)
            arrays[f"{split}_index"] = index.astype(np.int64)
    return arrays


def _per_severity(images: np.ndarray, labels: np.ndarray) -> dict[int, LabeledArrays]:
    return {s: LabeledArrays(images[s], labels, np.full(len(labels), s, dtype=np.int64))
            for s in range(images.shape[0])}


def load_source(cfg: dict, progress: bool = True) -> tuple[ImageSet, ImageSet]:
    from sharpdro.data.sources import load_dataset

    train, test = load_dataset(cfg["data"], progress=progress)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"train images are {train.images.shape[1:]} but test images are {test.images.shape[1:]}; "
                        f"set data.image_size to resize both")
    return train, test


def build_splits(cfg: dict, progress: bool = True, cache: bool = True, rebuild: bool = False,
                 check: Callable[[np.ndarray], None] | None = None) -> Splits:
    """Load the source, split it by the Poisson protocol, corrupt every set (cached) and return Splits.

    ``cache=False`` builds in memory and writes nothing; ``rebuild=True`` replaces the cache entry;
    ``check(train images per severity)`` may refuse the split before anything is corrupted or written.
    """
    from sharpdro.config import validate
    from sharpdro.data import cache as cache_mod
    from sharpdro.data.corruptions import resolve_table

    t0 = time.perf_counter()
    cfg = validate(cfg)
    d = cfg["data"]
    if uses_data_groups(cfg):
        return build_group_splits(cfg, progress=progress)
    S = d["max_severity"]
    train, test = load_source(cfg, progress=progress)
    classes = list(train.classes)
    table = resolve_table(d["table"], int(train.images.shape[1]))
    _warn_if_recompressing(train, d, table)
    plan = plan_from_config(cfg, train.labels, test.labels, len(classes), class_names=classes)
    if check is not None:
        check(plan.train_counts().sum(axis=0))
    key = cache_key_fields(cfg, train, test, table)
    key_hash = cache_mod.key_hash(key)

    def builder() -> dict[str, np.ndarray]:
        return _corrupt_arrays(train, test, plan, d["corruption"], table, cfg["seed"], progress)

    cache_info: dict = {"key": key_hash, "dir": None, "hit": False}
    if cache:
        root = cache_mod.cache_root(d)
        info = {"classes": classes, "train_per_severity": plan.train_counts().sum(axis=0).tolist(),
                "val": int(len(plan.val_index)), "test": int(len(plan.test_index))}
        entry = cache_mod.get_or_build(root, key, builder, rebuild=rebuild, info=info,
                                       prefix=f"{d['dataset']}-{d['corruption']}-", progress=progress)
        arrays = entry.arrays
        cache_info.update(dir=str(entry.path), hit=not entry.built, verify_seconds=round(entry.verify_seconds, 3))
        missing = [k for k in _ARRAY_NAMES if k not in arrays]
        if missing:
            raise CacheError(f"cache entry {entry.path} lacks {missing}; delete that folder or run "
                             f"`sharpdro prepare --rebuild`")
        # Guard against a split-code change that forgot to bump FORMAT_VERSION.
        for name, want in (("train_index", plan.train_index), ("train_severity", plan.train_severity),
                           ("val_index", plan.val_index), ("test_index", plan.test_index)):
            if not np.array_equal(arrays[name], want):
                raise CacheError(f"cache entry {entry.path} was built by another version of the split code "
                                 f"({name} differs); delete that folder or run `sharpdro prepare --rebuild`")
    else:
        arrays = builder()

    counts = plan.train_counts()
    meta = {
        "dataset": d["dataset"],
        "corruption": d["corruption"],
        "table": table,
        "protocol": d["protocol"],
        "poisson_lambda": float(d["poisson_lambda"]),
        "max_severity": S,
        "seed": cfg["seed"],
        "proportions": poisson_proportions(float(d["poisson_lambda"]), S).tolist(),
        "train_per_class_requested": d["train_per_class"],
        "counts": {
            "train": counts.sum(axis=0).tolist(),
            "train_per_class": counts.tolist(),
            "train_total": int(counts.sum()),
            "dropped": int(len(plan.dropped_index)),
            "val_per_class": np.bincount(train.labels[plan.val_index], minlength=len(classes)).tolist(),
            "val": int(len(plan.val_index)),
            "test_per_class": np.bincount(test.labels[plan.test_index], minlength=len(classes)).tolist(),
            "test": int(len(plan.test_index)),
        },
        "short_classes": [list(x) for x in plan.short_classes],
        "source": {"train_fingerprint": key["train_fingerprint"], "test_fingerprint": key["test_fingerprint"],
                   "train_size": len(train), "test_size": len(test), "image_shape": list(train.images.shape[1:])},
        "data_fingerprint": data_fingerprint(key["train_fingerprint"], key["test_fingerprint"]),
        "cache": cache_info,
        "extra_test": d["extra_test"],
    }
    if train.source_jpeg:
        meta["source_jpeg"] = dict(train.source_jpeg)
    splits = Splits(
        train=LabeledArrays(arrays["train_images"], arrays["train_labels"], arrays["train_severity"]),
        val=_per_severity(arrays["val_images"], arrays["val_labels"]),
        test=_per_severity(arrays["test_images"], arrays["test_labels"]),
        classes=classes,
        max_severity=S,
        meta=meta,
    )
    if d["extra_test"]:
        splits.extra_test = load_extra_test(d["extra_test"], d["corruption"], S, train.images.shape[1:])
        meta["counts"]["extra_test"] = {str(s): len(v) for s, v in splits.extra_test.items()}
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return splits


def uses_data_groups(cfg: dict) -> bool:
    """``data.corruption: none``: the groups come from the data (``data.dataset: csv``), no severity mixture.

    Refuses the combinations that cannot work, with what to set."""
    d = cfg["data"]
    if d["corruption"] == "none" and d["dataset"] != "csv":
        raise DataError(f"data.corruption=none takes the groups from the data, which data.dataset={d['dataset']!r} "
                        f"does not have: use data.dataset=csv (a CSV of path,label,group) or a corruption")
    if d["dataset"] == "csv" and d["corruption"] != "none":
        raise DataError(f"data.dataset=csv brings its own groups (the group column): set data.corruption=none "
                        f"(got {d['corruption']!r}); a severity mixture over your images is not supported yet")
    return d["corruption"] == "none"


def build_group_splits(cfg: dict, progress: bool = True) -> Splits:
    """Splits whose groups come from the data (``data.dataset: csv``, ``data.corruption: none``).

    ``train.severity`` holds the group ids; ``val`` and ``test`` map each group id to its own images
    (not copies of one set, as severities do); ``meta["group_names"]`` keeps the names and
    ``meta["split_rule"]`` says how the rows were split.  Nothing is corrupted or cached.
    """
    from sharpdro.data.sources.csv_groups import load_csv_dataset

    t0 = time.perf_counter()
    d = cfg["data"]
    if not d["root"]:
        raise DataError("data.dataset=csv needs data.root: the path of a CSV of path,label,group[,split]")
    ds = load_csv_dataset(d["root"], d["image_size"], seed=cfg["seed"], progress=progress)
    G = len(ds.group_names)

    def per_group(part) -> dict[int, LabeledArrays]:
        return {g: LabeledArrays(part.images[part.groups == g], part.labels[part.groups == g],
                                 part.groups[part.groups == g]) for g in range(G)}

    counts = {name: np.bincount(part.groups, minlength=G).tolist()
              for name, part in (("train", ds.train), ("val", ds.val), ("test", ds.test))}
    for name in ("val", "test"):
        empty = [ds.group_names[g] for g in range(G) if counts[name][g] == 0]
        if empty:
            warnings.warn(f"no {name} image in group(s) {', '.join(empty)}: their {name} accuracy is not defined "
                          f"(reported as 0); add rows with split={name} for them", UserWarning, stacklevel=2)
    shape = list(ds.train.images.shape[1:])
    meta = {
        "dataset": "csv", "corruption": "none", "groups": "data", "group_names": list(ds.group_names),
        "split_rule": ds.split_rule, "max_severity": G - 1, "seed": cfg["seed"],
        "counts": {"train": counts["train"], "val": counts["val"], "test": counts["test"],
                   "train_total": int(len(ds.train)), "val_total": int(len(ds.val)), "test_total": int(len(ds.test))},
        "source": {"train_fingerprint": ds.fingerprint, "test_fingerprint": ds.fingerprint,
                   "train_size": len(ds.train), "test_size": len(ds.test), "image_shape": shape},
        "data_fingerprint": ds.fingerprint, "cache": {"key": None, "dir": None, "hit": False},
        "extra_test": None,
    }
    splits = Splits(train=LabeledArrays(ds.train.images, ds.train.labels, ds.train.groups),
                    val=per_group(ds.val), test=per_group(ds.test), classes=list(ds.classes), max_severity=G - 1,
                    meta=meta)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return splits


def _warn_if_recompressing(train: ImageSet, d: dict, table: str) -> None:
    """A JPEG corruption of a source that is JPEG already is a recompression: say so once, when the splits
    are built (the quality found is recorded in the splits' meta)."""
    from sharpdro.data.corruptions import severity_parameter
    from sharpdro.data.jpeg_quality import recompression_warning

    if d["corruption"] != "jpeg_compression" or not train.source_jpeg:
        return
    qualities = [int(severity_parameter("jpeg_compression", s, table)) for s in range(1, d["max_severity"] + 1)]
    warnings.warn(recompression_warning(train.source_jpeg, qualities, resized=d["image_size"] is not None),
                  stacklevel=2)


_ARRAY_NAMES = ("train_images", "train_labels", "train_severity", "train_index", "val_images", "val_labels",
                "val_index", "test_images", "test_labels", "test_index")


def load_extra_test(folder: str, corruption: str, max_severity: int, image_shape) -> dict[int, LabeledArrays]:
    """A CIFAR-10-C / CIFAR-100-C folder as an extra test set, one LabeledArrays per severity."""
    from sharpdro.data.sources import load_cifar_c

    out = {}
    for s, (images, labels) in sorted(load_cifar_c(folder, corruption, max_severity=max_severity).items()):
        images = np.asarray(images, dtype=np.uint8)
        if tuple(images.shape[1:]) != tuple(image_shape):
            raise DataError(f"data.extra_test {folder}: images are {tuple(images.shape[1:])} but training images "
                            f"are {tuple(image_shape)}; CIFAR-C is 32x32, so leave data.image_size unset")
        labels = np.asarray(labels, dtype=np.int64)
        out[int(s)] = LabeledArrays(images, labels, np.full(len(labels), int(s), dtype=np.int64))
    return out
