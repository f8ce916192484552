"""Seeded batches: determinism per (seed, epoch), coverage, batched flip/crop, subsets and shards."""
from __future__ import annotations

import numpy as np
import pytest

from sharpdro.data.batches import BatchIterator, augment_batch, draw_augmentation


def data(n=103, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, (n, h, w, 3), dtype=np.uint8)  # no zero pixel: padding is recognisable
    return images, rng.integers(0, 10, n), rng.integers(0, 6, n)


def reference_augment(img, flip, oy, ox, p):
    """One image at a time, the obvious way."""
    if flip:
        img = img[:, ::-1]
    padded = np.pad(img, ((p, p), (p, p), (0, 0)))
    return padded[oy:oy + img.shape[0], ox:ox + img.shape[1]]


def collect(it, epoch, **kw):
    return [tuple(x.copy() for x in b) for b in it.iterate(epoch, **kw)]


def test_same_seed_and_epoch_same_batches():
    x, y, s = data()
    a = BatchIterator(x, y, s, 16, seed=3, flip=True, crop_padding=2)
    b = BatchIterator(x, y, s, 16, seed=3, flip=True, crop_padding=2)  # e.g. a resumed run
    for epoch in (0, 4):
        for ba, bb in zip(collect(a, epoch), collect(b, epoch), strict=True):
            for u, v in zip(ba, bb):
                assert u.tobytes() == v.tobytes()
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    c = BatchIterator(x, y, s, 16, seed=4)
    assert not np.array_equal(a.epoch_order(0), c.epoch_order(0))
    # resuming in the middle of an epoch gives the remaining batches
    full = collect(a, 2)
    tail = collect(a, 2, start_batch=3)
    assert len(tail) == len(full) - 3
    assert all(np.array_equal(u[0], v[0]) and np.array_equal(u[3], v[3]) for u, v in zip(full[3:], tail))


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_index_once_per_epoch(drop_last):
    x, y, s = data()
    it = BatchIterator(x, y, s, 16, seed=0, drop_last=drop_last)
    batches = collect(it, 0)
    assert len(batches) == len(it) == (103 // 16 if drop_last else 7)
    idx = np.concatenate([b[3] for b in batches])
    assert len(np.unique(idx)) == len(idx)
    if drop_last:
        assert len(idx) == 96 and all(len(b[3]) == 16 for b in batches)
    else:
        assert sorted(idx.tolist()) == list(range(103))
    for images, labels, sev, index in batches:
        assert images.dtype == np.uint8 and images.shape[1:] == (6, 5, 3)
        assert labels.dtype == sev.dtype == index.dtype == np.int64
        assert np.array_equal(images, x[index]) and np.array_equal(labels, y[index])
        assert np.array_equal(sev, s[index])


def test_no_shuffle_keeps_order():
    x, y, s = data()
    it = BatchIterator(x, y, s, 50, seed=0, shuffle=False)
    assert np.concatenate([b[3] for b in it.iterate(7)]).tolist() == list(range(103))


@pytest.mark.parametrize("p", [0, 1, 3])
def test_augment_batch_matches_per_image_reference(p):
    x, _, _ = data(n=40)
    rng = np.random.default_rng(p)
    flip, oy, ox = draw_augmentation(rng, 40, True, p)
    assert flip.any() and not flip.all()
    if p:
        assert oy.min() >= 0 and oy.max() <= 2 * p and len(np.unique(oy)) > 1
    out = augment_batch(x, flip, oy, ox, p)
    for i in range(40):
        np.testing.assert_array_equal(out[i], reference_augment(x[i], flip[i], oy[i], ox[i], p))
    assert x.dtype == out.dtype and out.shape == x.shape


def test_iterator_augmentation_matches_reference():
    x, y, s = data()
    it = BatchIterator(x, y, s, 32, seed=5, flip=True, crop_padding=2)
    n_flipped = 0
    for b, (images, _, _, index) in enumerate(it.iterate(1)):
        flip, oy, ox = it.augmentation_params(1, b)
        n_flipped += int(flip.sum())
        for i in range(len(index)):
            np.testing.assert_array_equal(images[i], reference_augment(x[index[i]], flip[i], oy[i], ox[i], 2))
    assert 20 < n_flipped < 83
    flip_only = BatchIterator(x, y, s, 32, seed=5, flip=True)
    for b, (images, _, _, index) in enumerate(flip_only.iterate(0)):
        flip, _, _ = flip_only.augmentation_params(0, b)
        np.testing.assert_array_equal(images[flip], x[index[flip]][:, :, ::-1])
        np.testing.assert_array_equal(images[~flip], x[index[~flip]])


def test_subset_indices():
    x, y, s = data()
    sub = np.array([5, 9, 17, 40, 41, 100])
    it = BatchIterator(x, y, s, 4, seed=0, indices=sub)
    assert len(it) == 2
    assert sorted(np.concatenate([b[3] for b in it.iterate(0)]).tolist()) == sub.tolist()


@pytest.mark.parametrize("n, world", [(103, 4), (96, 3), (10, 4)])
def test_shards_are_disjoint_equal_and_cover(n, world):
    x, y, s = data(n=n)
    base = BatchIterator(x, y, s, 8, seed=2)
    shards = [base.shard(r, world) for r in range(world)]
    orders = [sh.epoch_order(3) for sh in shards]
    size = -(-n // world)
    assert all(len(o) == size for o in orders) and len({len(sh) for sh in shards}) == 1
    allidx = np.concatenate(orders)
    assert set(allidx.tolist()) == set(range(n))  # cover
    assert len(allidx) - len(np.unique(allidx)) == size * world - n  # only the wrap-around padding repeats
    # the shards are strided parts of the single-process global permutation
    glob = base.epoch_order(3)
    padded = np.concatenate([glob, np.resize(glob, size * world - n)])
    for r in range(world):
        assert np.array_equal(orders[r], padded[r::world])
    # batches follow the shard's order; augmentation differs per rank but is seeded
    got = np.concatenate([b[3] for b in shards[1].iterate(3)])
    assert np.array_equal(got, orders[1])


def test_bad_arguments():
    x, y, s = data()
    with pytest.raises(ValueError):
        BatchIterator(x, y[:5], s, 8, seed=0)
    with pytest.raises(ValueError):
        BatchIterator(x, y, s, 8, seed=0).shard(4, 4)
    with pytest.raises(ValueError):
        BatchIterator(x, y, s, 0, seed=0)
