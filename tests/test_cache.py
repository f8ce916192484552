"""The corrupted-array cache: keyed by every parameter, checksummed, atomic."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from sharpdro.config import validate
from sharpdro.data import cache as cache_mod
from sharpdro.data import splits as splits_mod
from sharpdro.data.types import ImageSet
from sharpdro.errors import CacheError

pytestmark = pytest.mark.filterwarnings("ignore:no training image at severity")


def synthetic_source(seed=0, n=40, size=8, num_classes=3):
    rng = np.random.default_rng(seed)
    ytr = np.repeat(np.arange(num_classes), n)
    yte = np.repeat(np.arange(num_classes), 6)
    classes = [f"c{i}" for i in range(num_classes)]
    return (ImageSet(rng.integers(0, 256, (len(ytr), size, size, 3), dtype=np.uint8), ytr, classes),
            ImageSet(rng.integers(0, 256, (len(yte), size, size, 3), dtype=np.uint8), yte, classes))


class Spy:
    """Replaces the source loader and counts how often the corrupted arrays are built."""

    def __init__(self, monkeypatch):
        self.source = synthetic_source()
        self.builds = 0
        real = splits_mod._corrupt_arrays

        def counting(*args, **kwargs):
            self.builds += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(splits_mod, "load_source", lambda cfg, progress=True: self.source)
        monkeypatch.setattr(splits_mod, "_corrupt_arrays", counting)


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


def cfg_with(*overrides, seed=0):
    data = {"dataset": "cifar10", "train_per_class": 30}
    for text in overrides:
        k, v = text.split("=")
        data[k] = yaml.safe_load(v)
    return validate({"seed": seed, "data": data, "train": {"progress": False}})


def root() -> Path:
    return Path(os.environ["SHARPDRO_CACHE"])


def entries() -> list[Path]:
    return sorted(p for p in root().iterdir() if not p.name.startswith(".")) if root().exists() else []


def test_cache_root_resolution(monkeypatch, tmp_path):
    assert cache_mod.cache_root({"cache_dir": str(tmp_path / "x")}) == tmp_path / "x"
    assert cache_mod.cache_root({"cache_dir": None}) == root()
    monkeypatch.delenv("SHARPDRO_CACHE")
    assert cache_mod.cache_root({}) == Path.home() / ".cache" / "sharpdro"


def test_second_build_loads_the_entry(spy):
    a = splits_mod.build_splits(cfg_with(), progress=False)
    b = splits_mod.build_splits(cfg_with(), progress=False)
    assert spy.builds == 1 and not a.meta["cache"]["hit"] and b.meta["cache"]["hit"]
    assert a.meta["cache"]["dir"] == b.meta["cache"]["dir"] and len(entries()) == 1
    assert b.train.images.tobytes() == a.train.images.tobytes()
    manifest = json.loads((Path(b.meta["cache"]["dir"]) / "manifest.json").read_text())
    assert manifest["key_hash"] == b.meta["cache"]["key"]
    assert manifest["key"]["train_fingerprint"] == spy.source[0].fingerprint()
    info = manifest["files"]["train_images"]
    assert info["shape"] == list(a.train.images.shape) and info["dtype"] == "uint8"
    assert info["sha256"] == cache_mod.file_sha256(Path(b.meta["cache"]["dir"]) / "train_images.npy")
    assert manifest["files"]["val_images"]["shape"][0] == 6  # severities 0..5 stacked


@pytest.mark.parametrize("change", [
    "seed", "protocol=iid", "poisson_lambda=1.5", "train_per_class=25", "val_per_class=4", "test_per_class=3",
    "corruption=shot_noise", "table=imagenet", "max_severity=3", "image_size=8", "dataset=cifar100", "source",
])
def test_any_key_parameter_change_rebuilds(spy, change):
    base = cfg_with()
    splits_mod.build_splits(base, progress=False)
    assert spy.builds == 1
    if change == "seed":
        cfg = cfg_with(seed=1)
    elif change == "source":  # one pixel of the source changes its fingerprint
        train, test = spy.source
        img = train.images.copy()
        img[0, 0, 0, 0] ^= 1
        spy.source = (ImageSet(img, train.labels, train.classes), test)
        cfg = base
    else:
        cfg = cfg_with(change)
    changed = splits_mod.build_splits(cfg, progress=False)
    assert spy.builds == 2, f"{change} did not rebuild"
    assert not changed.meta["cache"]["hit"] and len(entries()) == 2
    again = splits_mod.build_splits(cfg, progress=False)
    assert spy.builds == 2 and again.meta["cache"]["hit"]


def test_key_covers_each_field():
    base = {"a": 1, "b": [1, 2], "c": None}
    h = cache_mod.key_hash(base)
    assert cache_mod.key_hash(dict(reversed(list(base.items())))) == h  # order does not matter
    for k, v in (("a", 2), ("b", [2, 1]), ("c", 0)):
        assert cache_mod.key_hash({**base, k: v}) != h


def test_tampered_file_is_detected(spy):
    sp = splits_mod.build_splits(cfg_with(), progress=False)
    entry = Path(sp.meta["cache"]["dir"])
    path = entry / "val_images.npy"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # one bit of one pixel
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="rebuild") as info:
        splits_mod.build_splits(cfg_with(), progress=False)
    assert str(entry) in str(info.value) and "val_images.npy" in str(info.value)
    # a truncated file is caught by its size
    (entry / "train_labels.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(CacheError):
        cache_mod.load_entry(entry)
    # --rebuild replaces the damaged entry
    fresh = splits_mod.build_splits(cfg_with(), progress=False, rebuild=True)
    assert spy.builds == 2 and fresh.train.images.tobytes() == sp.train.images.tobytes()
    assert splits_mod.build_splits(cfg_with(), progress=False).meta["cache"]["hit"]


def test_damaged_manifest_is_reported(spy):
    sp = splits_mod.build_splits(cfg_with(), progress=False)
    (Path(sp.meta["cache"]["dir"]) / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="manifest"):
        splits_mod.build_splits(cfg_with(), progress=False)


def test_builder_that_raises_leaves_nothing(tmp_path):
    def failing():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache_mod.get_or_build(tmp_path, {"k": 1}, failing)
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_no_partial_entry(tmp_path, monkeypatch):
    arrays = {"a": np.arange(10), "b": np.ones((3, 4), np.uint8)}
    real_save = np.save
    calls = []

    def save_then_fail(f, arr, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_save(f, arr, **kw)

    monkeypatch.setattr(cache_mod.np, "save", save_then_fail)
    with pytest.raises(OSError, match="simulated"):
        cache_mod.get_or_build(tmp_path, {"k": 1}, lambda: arrays)
    assert list(tmp_path.iterdir()) == []  # neither the entry nor the temp folder
    monkeypatch.setattr(cache_mod.np, "save", real_save)
    entry = cache_mod.get_or_build(tmp_path, {"k": 1}, lambda: arrays)
    assert entry.built and np.array_equal(cache_mod.load_entry(entry.path).arrays["b"], arrays["b"])


def test_concurrent_builder_losing_the_race_uses_the_winner(tmp_path):
    key = {"k": "race"}
    winner = {"x": np.full(5, 7, np.int64)}

    def slow_builder():
        # While we build, another process finishes the same entry first.
        cache_mod.get_or_build(tmp_path, key, lambda: winner)
        return {"x": np.full(5, 9, np.int64)}

    entry = cache_mod.get_or_build(tmp_path, key, slow_builder)
    assert not entry.built and entry.arrays["x"].tolist() == [7] * 5
    assert [p.name for p in tmp_path.iterdir()] == [cache_mod.entry_path(tmp_path, key).name]


def test_load_returns_verified_writable_arrays(tmp_path):
    arrays = {"img": np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8),
              "f": np.asfortranarray(np.arange(12.0).reshape(3, 4))}
    built = cache_mod.get_or_build(tmp_path, {"k": 2}, lambda: arrays, info={"note": "x"})
    loaded = cache_mod.load_entry(built.path, key={"k": 2})
    assert loaded.manifest["info"] == {"note": "x"}
    for k, v in arrays.items():
        assert np.array_equal(loaded.arrays[k], v) and loaded.arrays[k].dtype == v.dtype
    assert loaded.arrays["img"].flags.writeable
    with pytest.raises(CacheError, match="other parameters"):
        cache_mod.load_entry(built.path, key={"k": 3})


def test_npy_headers_are_never_parsed_in_two_threads_at_once(tmp_path, monkeypatch):
    """numpy parses .npy headers with ast.literal_eval, which CPython 3.11 cannot run in two threads at once
    (SystemError: AST constructor recursion depth mismatch, seen in this suite). A parse held open for a
    while shows whether the parallel load of an entry's arrays ever overlaps two of them."""
    import ast
    import threading
    import time

    arrays = {f"a{i}": np.arange(i + 3, dtype=np.int32) for i in range(6)}
    built = cache_mod.get_or_build(tmp_path, {"k": 4}, lambda: arrays)
    real, lock = ast.literal_eval, threading.Lock()
    state = {"inside": 0, "most": 0}

    def slow_literal_eval(source):
        with lock:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
        time.sleep(0.02)  # long enough for every other thread to reach its own parse
        try:
            return real(source)
        finally:
            with lock:
                state["inside"] -= 1

    monkeypatch.setattr(ast, "literal_eval", slow_literal_eval)
    loaded = cache_mod.load_entry(built.path, key={"k": 4})
    assert all(np.array_equal(loaded.arrays[k], v) for k, v in arrays.items())
    assert state["most"] == 1


def test_stale_temp_folders_are_cleaned(tmp_path):
    stale = tmp_path / ".tmp-old-abc"
    stale.mkdir()
    os.utime(stale, (1, 1))
    fresh = tmp_path / ".tmp-new-abc"
    fresh.mkdir()
    assert cache_mod.clean_stale_tmp(tmp_path) == 1
    assert not stale.exists() and fresh.exists()


def test_prepare_and_info_commands(capsys):
    from sharpdro.cli import main

    args = ["-c", "quickstart", "--set", "train.progress=false", "--set", "data.train_per_class=60",
            "--set", "data.poisson_lambda=1.0"]  # the counts below are those of lambda 1
    assert main(["prepare", *args]) == 0
    out = capsys.readouterr().out
    assert "cache entry (built)" in out and "train per severity: 0:220  1:220  2:110  3:30  4:0  5:0" in out
    assert main(["prepare", *args]) == 0
    assert "cache entry (verified)" in capsys.readouterr().out
    assert main(["prepare", *args, "--rebuild"]) == 0
    assert "cache entry (built)" in capsys.readouterr().out
    assert main(["info", *args]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "(present)" in out and "test: 539 images at each of 6 severities" in out
