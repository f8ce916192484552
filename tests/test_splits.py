"""The Poisson severity mixture: formula counts, protocols, seeds, disjointness, per-severity eval sets."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from sharpdro.config import validate
from sharpdro.data import splits as splits_mod
from sharpdro.data.corruptions import corrupt
from sharpdro.data.splits import (make_plan, per_class_floor_counts, poisson_proportions, stream,
                                  truncated_poisson)
from sharpdro.data.types import ImageSet

# Small synthetic classes leave severities 4-5 empty under per_class_floor: expected, not tested here.
pytestmark = pytest.mark.filterwarnings("ignore:no training image at severity")


# ------------------------------------------------------------------ helpers
def synthetic_source(n_train_per_class=60, n_test_per_class=12, num_classes=4, size=8, seed=0):
    """Random, pairwise-distinct images: a stand-in source that makes build_splits fast."""
    rng = np.random.default_rng(seed)
    ytr = np.repeat(np.arange(num_classes), n_train_per_class)
    yte = np.repeat(np.arange(num_classes), n_test_per_class)
    rng.shuffle(ytr)
    xtr = rng.integers(0, 256, (len(ytr), size, size, 3), dtype=np.uint8)
    xte = rng.integers(0, 256, (len(yte), size, size, 3), dtype=np.uint8)
    classes = [f"c{i}" for i in range(num_classes)]
    return ImageSet(xtr, ytr, classes, "train"), ImageSet(xte, yte, classes, "test")


@pytest.fixture
def source(monkeypatch):
    train, test = synthetic_source()
    monkeypatch.setattr(splits_mod, "load_source", lambda cfg, progress=True: (train, test))
    return train, test


def cfg_with(**data):
    seed = data.pop("seed", 0)
    base = {"dataset": "cifar10", "train_per_class": 40, "corruption": "gaussian_noise"}
    base.update(data)
    return validate({"seed": seed, "data": base, "train": {"progress": False}})


def plan_kw(**kw):
    out = dict(protocol="per_class_floor", poisson_lambda=1.0, max_severity=5, train_per_class=4000,
               val_per_class=None, test_per_class=None, seed=0)
    out.update(kw)
    return out


# ------------------------------------------------------------------ proportions
def test_poisson_proportions_are_the_unnormalised_pmf():
    p = poisson_proportions(1.0, 5)
    want = np.array([math.exp(-1) / math.factorial(s) for s in range(6)])
    np.testing.assert_allclose(p, want, rtol=1e-12)
    assert p.sum() < 1.0
    q = poisson_proportions(2.5, 3)
    np.testing.assert_allclose(q, [math.exp(-2.5) * 2.5 ** s / math.factorial(s) for s in range(4)], rtol=1e-12)
    np.testing.assert_allclose(truncated_poisson(1.0, 5), want / want.sum(), rtol=1e-12)


@pytest.mark.parametrize("n, want", [(4000, [1471, 1471, 735, 245, 61, 12]),  # CIFAR-10
                                     (400, [147, 147, 73, 24, 6, 1]),  # CIFAR-100
                                     (1000, [367, 367, 183, 61, 15, 3])])  # ImageNet-30
def test_per_class_floor_counts_match_the_official_numbers(n, want):
    got = per_class_floor_counts(n, 1.0, 5)
    assert got.tolist() == want
    assert got.tolist() == [math.floor(n * math.exp(-1) / math.factorial(s)) for s in range(6)]


# ------------------------------------------------------------------ plans
def test_per_class_floor_plan_at_cifar10_scale():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 5000))
    plan = make_plan(labels, np.repeat(np.arange(10), 1000), 10, **plan_kw())
    counts = plan.train_counts()
    for c in range(10):
        assert counts[c].tolist() == [1471, 1471, 735, 245, 61, 12]
    assert np.all(labels[plan.train_index] == plan.train_labels)
    # leftover of the 4000 picked (4000 - 3995 = 5 per class) is dropped: in no set
    assert len(plan.dropped_index) == 50
    assert np.bincount(labels[plan.val_index], minlength=10).tolist() == [1000] * 10
    tr, va, dr = set(plan.train_index.tolist()), set(plan.val_index.tolist()), set(plan.dropped_index.tolist())
    assert not tr & va and not tr & dr and not va & dr
    assert len(tr | va | dr) == len(labels)
    assert len(plan.test_index) == 10000


def test_iid_frequencies_follow_the_truncated_pmf():
    labels = np.repeat(np.arange(10), 5000)
    plan = make_plan(labels, labels[:10], 10, **plan_kw(protocol="iid"))
    assert len(plan.train_index) == 40000 and len(plan.dropped_index) == 0
    freq = np.bincount(plan.train_severity, minlength=6) / 40000
    want = truncated_poisson(1.0, 5)
    # binomial standard error at 40,000 draws is <= 0.0025: 4 of them
    np.testing.assert_allclose(freq, want, atol=0.01)
    assert np.bincount(plan.train_severity, minlength=6)[5] > 0
    # the same picks as per_class_floor (the severity draw is its own stream)
    floor_plan = make_plan(labels, labels[:10], 10, **plan_kw())
    assert set(floor_plan.train_index.tolist()) <= set(plan.train_index.tolist())


def test_plan_seeds():
    labels = np.repeat(np.arange(5), 300)
    a = make_plan(labels, labels, 5, **plan_kw(train_per_class=200, seed=3))
    b = make_plan(labels, labels, 5, **plan_kw(train_per_class=200, seed=3))
    c = make_plan(labels, labels, 5, **plan_kw(train_per_class=200, seed=4))
    assert np.array_equal(a.train_index, b.train_index) and np.array_equal(a.val_index, b.val_index)
    assert not np.array_equal(a.train_index, c.train_index)


def test_limits_and_short_classes():
    labels = np.concatenate([np.repeat(0, 500), np.repeat(1, 50)])
    test_labels = np.repeat([0, 1], 30)
    with pytest.warns(UserWarning, match="too few images"):
        plan = make_plan(labels, test_labels, 2, **plan_kw(train_per_class=100, val_per_class=20,
                                                           test_per_class=7, protocol="iid"))
    per_class = np.bincount(plan.train_labels, minlength=2)
    assert per_class.tolist() == [100, 45]  # class 1: 50 images, 10% (5) kept for validation
    assert plan.short_classes == [(1, 50, 45)]
    assert np.bincount(labels[plan.val_index], minlength=2).tolist() == [20, 5]
    assert np.bincount(test_labels[plan.test_index], minlength=2).tolist() == [7, 7]
    assert not np.intersect1d(plan.train_index, plan.val_index).size


def test_streams_are_independent_of_each_other():
    a = np.random.default_rng(stream(0, "val-corrupt", 1)).integers(0, 2**32, 4)
    b = np.random.default_rng(stream(0, "val-corrupt", 2)).integers(0, 2**32, 4)
    c = np.random.default_rng(stream(0, "test-corrupt", 1)).integers(0, 2**32, 4)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    again = np.random.default_rng(stream(0, "val-corrupt", 1)).integers(0, 2**32, 4)
    assert np.array_equal(a, again)


# ------------------------------------------------------------------ build_splits
def test_build_splits_contents(source):
    train, test = source
    cfg = cfg_with(val_per_class=10)
    sp = splits_mod.build_splits(cfg, progress=False, cache=False)
    plan = splits_mod.plan_from_config(cfg, train.labels, test.labels, 4, warn=False)
    # per-class counts of the built split equal the formula (n = 40: 14/14/7/2/0/0)
    want = per_class_floor_counts(40, 1.0, 5)
    assert want.tolist() == [14, 14, 7, 2, 0, 0]
    for c in range(4):
        assert np.bincount(sp.train.severity[sp.train.labels == c], minlength=6).tolist() == want.tolist()
    assert sp.meta["counts"]["train_per_class"] == [want.tolist()] * 4
    assert sp.meta["counts"]["train"] == (want * 4).tolist()
    # training images: clean ones equal the source; corrupted ones equal corrupt_by_severity
    clean = sp.train.severity == 0
    assert np.array_equal(sp.train.images[clean], train.images[plan.train_index][clean])
    assert not np.array_equal(sp.train.images[~clean], train.images[plan.train_index][~clean])
    assert np.array_equal(sp.train.labels, train.labels[plan.train_index])
    # train and val never overlap: by index and by content (synthetic images are distinct)
    assert not np.intersect1d(plan.train_index, plan.val_index).size
    tr_bytes = {img.tobytes() for img in train.images[plan.train_index]}
    assert not any(img.tobytes() in tr_bytes for img in sp.val[0].images)
    # val and test: every severity 0..5, the same images and labels at each
    assert sorted(sp.val) == sorted(sp.test) == list(range(6))
    assert len(sp.val[0]) == 40 and len(sp.test[0]) == len(test)
    assert np.array_equal(sp.val[0].images, train.images[plan.val_index])
    assert np.array_equal(sp.test[0].images, test.images)
    for s in range(1, 6):
        assert np.array_equal(sp.val[s].labels, sp.val[0].labels)
        assert np.all(sp.val[s].severity == s) and np.all(sp.test[s].severity == s)
        np.testing.assert_array_equal(sp.val[s].images, corrupt(sp.val[0].images, "gaussian_noise", s,
                                                                stream(0, "val-corrupt", s), table="cifar"))
        np.testing.assert_array_equal(sp.test[s].images, corrupt(test.images, "gaussian_noise", s,
                                                                 stream(0, "test-corrupt", s), table="cifar"))
    # noise grows with severity on the same images
    err = [np.abs(sp.test[s].images.astype(int) - sp.test[0].images).mean() for s in range(6)]
    assert err[0] == 0 and all(a < b for a, b in zip(err[1:], err[2:]))
    assert sp.meta["table"] == "cifar" and sp.meta["protocol"] == "per_class_floor"


def test_build_splits_seed_determinism(source):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = splits_mod.build_splits(cfg_with(seed=1), progress=False, cache=False)
        b = splits_mod.build_splits(cfg_with(seed=1), progress=False, cache=False)
        c = splits_mod.build_splits(cfg_with(seed=2), progress=False, cache=False)
    for x, y in ((a.train.images, b.train.images), (a.val[3].images, b.val[3].images),
                 (a.test[5].images, b.test[5].images), (a.train.severity, b.train.severity)):
        assert x.tobytes() == y.tobytes()
    assert a.train.images.tobytes() != c.train.images.tobytes()
    assert a.test[5].images.tobytes() != c.test[5].images.tobytes()  # test noise follows the seed too
    assert np.array_equal(a.test[0].images, c.test[0].images)  # the same test images


def test_build_splits_iid_and_cache_roundtrip(source):
    cfg = cfg_with(protocol="iid", train_per_class=50)
    built = splits_mod.build_splits(cfg, progress=False)
    loaded = splits_mod.build_splits(cfg, progress=False)
    assert not built.meta["cache"]["hit"] and loaded.meta["cache"]["hit"]
    assert len(built.train) == 4 * 50 and built.meta["counts"]["dropped"] == 0
    assert loaded.train.images.tobytes() == built.train.images.tobytes()
    assert np.array_equal(loaded.train.severity, built.train.severity)
    for s in range(6):
        assert loaded.val[s].images.tobytes() == built.val[s].images.tobytes()
        assert loaded.test[s].images.tobytes() == built.test[s].images.tobytes()


def test_extra_test_is_loaded(source, monkeypatch, tmp_path):
    from sharpdro.data import sources

    rng = np.random.default_rng(0)
    fake = {s: (rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), np.arange(5) % 4) for s in range(1, 6)}
    monkeypatch.setattr(sources, "load_cifar_c", lambda folder, corruption, max_severity=5: fake, raising=False)
    sp = splits_mod.build_splits(cfg_with(extra_test=str(tmp_path)), progress=False, cache=False)
    assert sorted(sp.extra_test) == [1, 2, 3, 4, 5]
    assert np.array_equal(sp.extra_test[2].images, fake[2][0]) and np.all(sp.extra_test[2].severity == 2)


def test_digits_source_end_to_end():
    """The embedded digits dataset through the real source loader (skipped until sources.py exists)."""
    pytest.importorskip("sharpdro.data.sources")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = validate({"data": {"dataset": "digits", "train_per_class": 100}, "train": {"progress": False}})
        sp = splits_mod.build_splits(cfg, progress=False)
        again = splits_mod.build_splits(cfg, progress=False)
    assert again.meta["cache"]["hit"]
    assert again.train.images.tobytes() == sp.train.images.tobytes()
    short = {c: n for c, _, n in sp.meta["short_classes"]}
    for c in range(sp.num_classes):
        got = np.bincount(sp.train.severity[sp.train.labels == c], minlength=6)
        assert got.tolist() == per_class_floor_counts(short.get(c, 100), 1.0, 5).tolist()
    assert len(sp.val[0]) > 0 and len(sp.test[0]) > 0
    assert sorted(sp.val) == list(range(6))


@pytest.mark.shared_data
def test_real_cifar10_official_counts(cifar10_folder):
    """The shared CIFAR-10 archive (class folders): the official 1471/1471/735/245/61/12 per class."""
    cfg = validate({"data": {"dataset": "folder", "root": str(cifar10_folder), "train_per_class": 4000,
                             "val_per_class": 20, "test_per_class": 20, "table": "cifar"},
                    "train": {"progress": False}})
    sp = splits_mod.build_splits(cfg, progress=False, cache=False)
    assert sp.num_classes == 10 and sp.image_shape == (32, 32, 3)
    for c in range(10):
        got = np.bincount(sp.train.severity[sp.train.labels == c], minlength=6)
        assert got.tolist() == [1471, 1471, 735, 245, 61, 12]
    assert sp.meta["counts"]["dropped"] == 50
    assert sp.meta["counts"]["val_per_class"] == [20] * 10 and sp.meta["counts"]["test_per_class"] == [20] * 10
    assert sp.meta["source"]["train_size"] == 50000 and sp.meta["source"]["test_size"] == 10000
    assert len(sp.val[5]) == 200 and len(sp.test[5]) == 200
