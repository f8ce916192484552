"""Image sources: real shared archives (CIFAR-10 JPEG, Tiny-ImageNet-32) and small fake layouts."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpdro.data import sources as S
from sharpdro.data.sources import load_cifar_c, load_dataset
from sharpdro.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _save(path: Path, array: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def _psnr(a: np.ndarray, b: np.ndarray, axis=None) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=axis)
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))


def _smooth(rng, h, w) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it close)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------
# Real CIFAR-10 (JPEG q75 class folders) through the class-folder reader
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar10_sets(cifar10_folder):
    t0 = time.perf_counter()
    train, test = load_dataset({"dataset": "folder", "root": str(cifar10_folder)}, progress=False)
    seconds = time.perf_counter() - t0
    print(f"\ndecoded the 60,000-image CIFAR-10 JPEG folder in {seconds:.1f} s")
    return train, test, seconds


@pytest.mark.shared_data
def test_cifar10_folder_official_counts(cifar10_sets):
    train, test, seconds = cifar10_sets
    assert train.classes == CIFAR10_NAMES and test.classes == CIFAR10_NAMES
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 32, 32, 3) and test.images.dtype == np.uint8
    assert np.bincount(train.labels, minlength=10).tolist() == [5000] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    # sorted class folders, sorted files: labels are blocks in class order
    assert (np.diff(train.labels) >= 0).all() and (np.diff(test.labels) >= 0).all()
    sample = train.images[::100].astype(np.float32)
    assert 60 < sample.mean() < 200 and sample.std() > 30  # real pictures, not blanks
    assert seconds < 60


@pytest.mark.shared_data
def test_cifar10_folder_pixels_match_lossless_originals(cifar10_sets, shared_data, cifar10_folder):
    train, _, _ = cifar10_sets
    ref = np.load(shared_data / "cifar10-lossless-train-first4000.npz")
    x, y = ref["x"], ref["y"]
    assert x.shape == (4000, 32, 32, 3)
    # file names are 0000..4999 within each class, in the official order
    assert sorted(os.listdir(cifar10_folder / "train" / "bird"))[:3] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    # k-th official image of class c  <->  train/<c>/<k:04d>.jpg  <->  train index c*5000 + k
    index = np.empty(len(y), dtype=np.int64)
    for c in range(10):
        pos = np.flatnonzero(y == c)
        index[pos] = c * 5000 + np.arange(len(pos))
    assert (train.labels[index] == y).all()
    psnr = _psnr(train.images[index], x, axis=(1, 2, 3))
    assert np.median(psnr) > 28 and psnr.min() > 20, (np.median(psnr), psnr.min())
    # control: a shifted correspondence is far off, so the match above is not a coincidence
    shifted = _psnr(train.images[index + 1], x, axis=(1, 2, 3))
    assert np.median(shifted) < 15


# ------------------------------------------------------------------------------------------
# Class-folder reader on small trees
# ------------------------------------------------------------------------------------------

def test_class_folder_ignores_hidden_and_non_image_files(tmp_path, rng):
    root = tmp_path / "ds"
    imgs = {}
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("dog", "cat"):
            for k in range(n):
                a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                _save(root / split / cls / f"{k:02d}.png", a)
                imgs[(split, cls, k)] = a
    cat = root / "train" / "cat"
    (cat / "._00.png").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")  # macOS resource fork
    (cat / ".DS_Store").write_bytes(b"Bud1 junk")
    (cat / "notes.txt").write_text("not an image")
    (cat / "labels.csv").write_text("a,b\n")
    _save(cat / ".thumbs" / "t.png", np.zeros((6, 5, 3), np.uint8))  # hidden folder inside a class
    _save(root / "train" / ".hidden_class" / "x.png", np.zeros((6, 5, 3), np.uint8))
    (root / "train" / ".DS_Store").write_bytes(b"junk")
    (root / "._train").write_bytes(b"junk")

    train, test = load_dataset({"dataset": "folder", "root": str(root)}, progress=False)
    assert train.classes == ["cat", "dog"] and test.classes == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert test.labels.tolist() == [0, 0, 1, 1]  # val/ is used when there is no test/
    expect = [imgs[("train", c, k)] for c in ("cat", "dog") for k in range(3)]
    np.testing.assert_array_equal(train.images, np.stack(expect))  # PNG: exact, sorted order
    assert train.name == "folder/train" and test.name == "folder/test"


def test_class_folder_modes_sizes_and_split_names(tmp_path, rng):
    root = tmp_path / "wrapper" / "imagenet30-ish"  # one top folder inside data.root
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    _save(root / "one_class_train" / "a" / "grey.png", grey)
    _save(root / "one_class_train" / "a" / "rgba.png", rng.integers(0, 256, (20, 12, 4), dtype=np.uint8))
    _save(root / "one_class_train" / "b" / "nested" / "p.gif", rng.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    _save(root / "one_class_test" / "b" / "t.jpg", _smooth(rng, 30, 40), quality=95)
    cfg = {"dataset": "imagenet30", "root": str(tmp_path / "wrapper")}
    with pytest.raises(DataError, match="image_size"):
        load_dataset(cfg, progress=False)
    train, test = load_dataset({**cfg, "image_size": 16}, progress=False)
    assert train.images.shape == (3, 16, 16, 3) and test.images.shape == (1, 16, 16, 3)
    assert train.labels.tolist() == [0, 0, 1] and test.labels.tolist() == [1]
    g = train.images[0]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()  # grey -> 3 equal channels
    direct = np.asarray(Image.fromarray(grey).resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(g[..., 0], direct)


def test_class_folder_prefers_test_and_reports_problems(tmp_path, rng):
    root = tmp_path / "ds"
    for split in ("train", "test", "val"):
        _save(root / split / "x" / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    _save(root / "test" / "x" / "1.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    _, test = load_dataset({"dataset": "folder", "root": str(root)}, progress=False)
    assert len(test) == 2  # test/ wins over val/

    bad = root / "train" / "x" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset({"dataset": "folder", "root": str(root)}, progress=False)
    bad.unlink()

    _save(root / "test" / "unknown" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="unknown"):
        load_dataset({"dataset": "folder", "root": str(root)}, progress=False)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train/<class>"):
        load_dataset({"dataset": "folder", "root": str(tmp_path / "empty")}, progress=False)
    with pytest.raises(DataError, match="data.root"):
        load_dataset({"dataset": "folder", "root": None}, progress=False)


def test_threaded_decoding_matches_serial(tmp_path, rng, monkeypatch):
    paths = []
    for i in range(600):  # > one chunk, images large enough for the thread pool
        p = tmp_path / f"{i:04d}.png"
        _save(p, rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
        paths.append(p)
    from sharpdro.data.sources import decode  # the knob lives beside the decoder

    monkeypatch.setattr(decode, "DECODE_THREADS", 4)
    threaded = S.decode_images(paths, 24, progress=False)
    monkeypatch.setattr(decode, "DECODE_THREADS", 1)
    serial = S.decode_images(paths, 24, progress=False)
    np.testing.assert_array_equal(threaded, serial)
    monkeypatch.setattr(decode, "DECODE_THREADS", 4)
    _save(paths[-1], rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="0599.png"):
        S.decode_images(paths, None, progress=False)


# ------------------------------------------------------------------------------------------
# CIFAR python tarballs: extraction, MD5, download, offline errors
# ------------------------------------------------------------------------------------------

def _fake_cifar10(tmp_path: Path, rng) -> tuple[Path, dict]:
    """A tiny cifar-10-python.tar.gz in the official pickled-batch format."""
    src = tmp_path / "fake-src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    names = [f"class{i}" for i in range(10)]
    truth = {"train_data": [], "train_labels": [], "test_data": None, "test_labels": None}
    for i in range(1, 6):
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 3).tolist()
        batch = {"batch_label": f"training batch {i} of 5", "labels": labels, "data": data,
                 "filenames": [f"f{i}_{k}.png" for k in range(3)]}
        if i == 2:  # keys as bytes, as some re-pickled copies have them
            batch = {k.encode(): v for k, v in batch.items()}
        (src / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        truth["train_data"].append(data)
        truth["train_labels"] += labels
    test_data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    test_labels = [9, 0, 5, 1]
    (src / "test_batch").write_bytes(pickle.dumps({"labels": test_labels, "data": test_data}, protocol=2))
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    (src / "readme.html").write_text("<html></html>")
    tarball = tmp_path / "fake-src" / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    truth["train_data"] = np.concatenate(truth["train_data"])
    truth.update(test_data=test_data, test_labels=test_labels, names=names)
    return tarball, truth


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_fake(train, test, truth):
    assert train.classes == truth["names"] and len(train) == 15 and len(test) == 4
    assert train.labels.tolist() == truth["train_labels"] and test.labels.tolist() == truth["test_labels"]
    d = truth["train_data"]
    # row = 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert train.images[4, 2, 7, 0] == d[4, 0 * 1024 + 2 * 32 + 7]
    assert train.images[4, 2, 7, 1] == d[4, 1 * 1024 + 2 * 32 + 7]
    assert train.images[7, 31, 0, 2] == d[7, 2 * 1024 + 31 * 32 + 0]
    np.testing.assert_array_equal(train.images, d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(test.images, truth["test_data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


@pytest.fixture
def fake_cifar(tmp_path, rng, monkeypatch):
    tarball, truth = _fake_cifar10(tmp_path, rng)
    monkeypatch.setitem(S.CIFAR_ARCHIVES["cifar10"], "md5", _md5(tarball))
    monkeypatch.setitem(S.CIFAR_ARCHIVES["cifar10"], "url", tarball.as_uri())
    return tarball, truth


def test_cifar_tarball_is_checked_extracted_once_and_read(tmp_path, fake_cifar):
    tarball, truth = fake_cifar
    root = tmp_path / "data"
    root.mkdir()
    (root / tarball.name).write_bytes(tarball.read_bytes())
    train, test = load_dataset({"dataset": "cifar10", "root": str(root), "download": False}, progress=False)
    _check_fake(train, test, truth)
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no temp leftovers
    (root / tarball.name).unlink()  # the extracted folder is read from now on
    train2, _ = load_dataset({"dataset": "cifar10", "root": str(root), "download": False}, progress=False)
    assert train2.fingerprint() == train.fingerprint()
    # data.root may also be the extracted folder itself
    train3, _ = S.load_cifar("cifar10", root / "cifar-10-batches-py", download=False, progress=False)
    assert train3.fingerprint() == train.fingerprint()
    # image_size resizes
    small, _ = load_dataset({"dataset": "cifar10", "root": str(root), "image_size": 16}, progress=False)
    assert small.images.shape == (15, 16, 16, 3)


def test_cifar_md5_mismatch_names_the_file(tmp_path, fake_cifar, monkeypatch):
    tarball, _ = fake_cifar
    root = tmp_path / "data"
    root.mkdir()
    (root / tarball.name).write_bytes(tarball.read_bytes()[:-100])  # truncated copy
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "cifar10", "root": str(root)}, progress=False)
    msg = str(err.value)
    assert str(root / tarball.name) in msg and "MD5" in msg and S.CIFAR_ARCHIVES["cifar10"]["url"] in msg
    assert not (root / "cifar-10-batches-py").exists()


def test_cifar_missing_and_offline_gives_one_clear_error(tmp_path, fake_cifar, monkeypatch):
    root = tmp_path / "data"
    dest = root / "cifar-10-python.tar.gz"
    nowhere = (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri()
    monkeypatch.setitem(S.CIFAR_ARCHIVES["cifar10"], "url", nowhere)
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "cifar10", "root": str(root), "download": True}, progress=False)
    msg = str(err.value)
    assert nowhere in msg and str(dest) in msg and "cifar-10-batches-py" in msg
    assert not root.exists() or os.listdir(root) == []  # no partial download left behind

    # no network at all: urlopen fails for the official https URL
    official = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    monkeypatch.setitem(S.CIFAR_ARCHIVES["cifar10"], "url", official)

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(S.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "cifar10", "root": str(root)}, progress=False)
    msg = str(err.value)
    assert official in msg and str(dest) in msg and "name resolution" in msg
    assert os.listdir(root) == []

    with pytest.raises(DataError, match="download") as err:
        load_dataset({"dataset": "cifar10", "root": str(root), "download": False}, progress=False)
    assert str(dest) in str(err.value)


def test_cifar_download_from_file_url_verifies_md5(tmp_path, fake_cifar):
    tarball, truth = fake_cifar
    root = tmp_path / "fresh" / "data"  # created on demand
    train, test = load_dataset({"dataset": "cifar10", "root": str(root), "download": True}, progress=False)
    _check_fake(train, test, truth)
    assert _md5(root / tarball.name) == _md5(tarball)


def test_cifar_download_of_an_html_page_is_rejected(tmp_path, fake_cifar, monkeypatch):
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body>Please log in</body></html>")
    monkeypatch.setitem(S.CIFAR_ARCHIVES["cifar10"], "url", page.as_uri())
    root = tmp_path / "data"
    with pytest.raises(DataError, match="HTML") as err:
        load_dataset({"dataset": "cifar10", "root": str(root)}, progress=False)
    assert str(root / "cifar-10-python.tar.gz") in str(err.value)
    assert os.listdir(root) == []


def test_cifar_default_root_is_sharpdro_data(tmp_path, fake_cifar, monkeypatch):
    tarball, truth = fake_cifar
    monkeypatch.setenv("SHARPDRO_DATA", str(tmp_path / "envdata"))
    assert S.default_data_root() == tmp_path / "envdata"
    train, test = load_dataset({"dataset": "cifar10", "root": None}, progress=False)  # downloads (file://)
    _check_fake(train, test, truth)
    assert (tmp_path / "envdata" / "cifar-10-batches-py" / "batches.meta").is_file()


def test_cifar100_extracted_folder(tmp_path, rng):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"fine{i:02d}" for i in range(100)]
    tr = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    te = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    (folder / "train").write_bytes(pickle.dumps({"data": tr, "fine_labels": [0, 99, 3, 4, 5],
                                                 "coarse_labels": [0] * 5}, protocol=2))
    (folder / "test").write_bytes(pickle.dumps({"data": te, "fine_labels": [7, 8], "coarse_labels": [1, 1]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": ["x"] * 20}))
    train, test = load_dataset({"dataset": "cifar100", "root": str(tmp_path / "data"), "download": False},
                               progress=False)
    assert train.classes == names and train.labels.tolist() == [0, 99, 3, 4, 5] and test.labels.tolist() == [7, 8]
    np.testing.assert_array_equal(test.images, te.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    # a pickle that tries to run code is refused
    (folder / "test").write_bytes(pickle.dumps({"data": te, "fine_labels": [7, 8], "x": os.system}))
    with pytest.raises(DataError, match="test"):
        load_dataset({"dataset": "cifar100", "root": str(tmp_path / "data")}, progress=False)


# ------------------------------------------------------------------------------------------
# The original release's label-file layout
# ------------------------------------------------------------------------------------------

def _labelfile_tree(root: Path, rng, val_list_name: str) -> dict:
    imgs = {}
    for rel in ("acorn/n1_1.png", "acorn/n1_2.JPEG", "zebra/n2_1.png"):
        a = _smooth(rng, 9, 11)
        jpeg = {"quality": 95, "subsampling": 0} if rel.endswith("JPEG") else {}
        _save(root / "ImageNet30_train_img" / rel, a, **jpeg)
        imgs[("train", rel)] = a
    for rel in ("zebra/v1.png", "acorn/v2.png"):
        a = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
        _save(root / "ImageNet30_val_img" / rel, a)
        imgs[("val", rel)] = a
    (root / "ImageNet30_train_label.txt").write_text(
        "# path label\nacorn/n1_1.png 0\n\nzebra/n2_1.png 1\n  acorn/n1_2.JPEG\t0  \n")
    (root / val_list_name).write_text("zebra/v1.png 1\nacorn/v2.png 0\n")
    return imgs


def test_labelfile_round_trip(tmp_path, rng):
    root = tmp_path / "release"
    imgs = _labelfile_tree(root, rng, "ImageNet30_train_val.txt")  # the old README's name for the val list
    cfg = {"dataset": "labelfile", "root": str(root), "name": "ImageNet30"}
    train, test = load_dataset(cfg, progress=False)
    assert train.classes == ["acorn", "zebra"] and test.classes == ["acorn", "zebra"]
    assert train.labels.tolist() == [0, 1, 0] and test.labels.tolist() == [1, 0]  # list-file order
    np.testing.assert_array_equal(train.images[0], imgs[("train", "acorn/n1_1.png")])
    np.testing.assert_array_equal(train.images[1], imgs[("train", "zebra/n2_1.png")])
    assert _psnr(train.images[2], imgs[("train", "acorn/n1_2.JPEG")]) > 30  # the JPEG, decoded
    np.testing.assert_array_equal(test.images[0], imgs[("val", "zebra/v1.png")])

    # <NAME>_val_label.txt wins over the fallback name
    (root / "ImageNet30_val_label.txt").write_text("acorn/v2.png 0\n")
    _, test = load_dataset(cfg, progress=False)
    assert test.labels.tolist() == [0]

    # image_size resizes both splits
    train, test = load_dataset({**cfg, "image_size": 8}, progress=False)
    assert train.images.shape == (3, 8, 8, 3) and test.images.shape == (1, 8, 8, 3)


def test_labelfile_class_names_fall_back_to_ids(tmp_path, rng):
    root = tmp_path / "flat"
    for split in ("train", "val"):
        for name in ("a.png", "b.png"):
            _save(root / f"D_{split}_img" / name, rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    (root / "D_train_label.txt").write_text("a.png 0\nb.png 2\n")
    (root / "D_val_label.txt").write_text("a.png 0\n")
    train, _ = load_dataset({"dataset": "labelfile", "root": str(root), "name": "D"}, progress=False)
    assert train.classes == ["class_0", "class_1", "class_2"]

    # folders that are not consistent per label give class_<id> too
    _save(root / "D_train_img" / "x" / "c.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    _save(root / "D_train_img" / "y" / "d.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    _save(root / "D_val_img" / "x" / "e.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    (root / "D_train_label.txt").write_text("x/c.png 0\ny/d.png 0\n")
    (root / "D_val_label.txt").write_text("x/e.png 1\n")
    train, _ = load_dataset({"dataset": "labelfile", "root": str(root), "name": "D"}, progress=False)
    assert train.classes == ["class_0", "class_1"]


@pytest.mark.parametrize("bad_line", ["acorn/n1_1.png", "acorn/n1_1.png zero", "acorn/n1_1.png -1"])
def test_labelfile_malformed_line_names_file_and_line(tmp_path, rng, bad_line):
    root = tmp_path / "release"
    _labelfile_tree(root, rng, "ImageNet30_val_label.txt")
    txt = root / "ImageNet30_train_label.txt"
    txt.write_text("# header\nacorn/n1_1.png 0\n" + bad_line + "\n")
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "labelfile", "root": str(root), "name": "ImageNet30"}, progress=False)
    assert f"{txt}:3" in str(err.value)

    txt.write_text("acorn/n1_1.png 0\nacorn/missing.png 0\n")
    with pytest.raises(DataError, match="missing.png") as err:
        load_dataset({"dataset": "labelfile", "root": str(root), "name": "ImageNet30"}, progress=False)
    assert f"{txt}:2" in str(err.value)


def test_labelfile_missing_layout_lists_what_is_expected(tmp_path):
    (tmp_path / "X_train_img").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset({"dataset": "labelfile", "root": str(tmp_path), "name": "X"}, progress=False)
    msg = str(err.value)
    assert "X_val_img" in msg and "X_train_label.txt" in msg and "X_val_label.txt" in msg
    assert "X_train_img/ " not in msg.split("missing:")[1].split(".")[0]  # the present folder is not listed
    with pytest.raises(DataError, match="data.name"):
        load_dataset({"dataset": "labelfile", "root": str(tmp_path)}, progress=False)


# ------------------------------------------------------------------------------------------
# Tiny-ImageNet
# ------------------------------------------------------------------------------------------

def test_tinyimagenet_fake_tree(tmp_path, rng):
    root = tmp_path / "tiny-imagenet-200"  # found one level below data.root
    wnids = ["n0300", "n0100", "n0200"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n0100\tgoldfish, Carassius auratus\nn0200\tmaillot\n"
                                    "n0300\tmaillot, tank suit\nn9999\tunused\n")
    for w in wnids:
        for k in range(3):
            _save(root / "train" / w / "images" / f"{w}_{k}.JPEG", rng.integers(0, 256, (8, 8, 3), np.uint8))
        (root / "train" / w / f"{w}_boxes.txt").write_text("junk\n")
        _save(root / "train" / w / "images" / f"._{w}_9.JPEG", np.zeros((8, 8, 3), np.uint8))
    val = {"val_0.JPEG": "n0200", "val_1.JPEG": "n0100", "val_2.JPEG": "n0300", "val_3.JPEG": "n0100"}
    for f in val:
        _save(root / "val" / "images" / f, rng.integers(0, 256, (8, 8, 3), np.uint8))
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t7\t7\n" for f, w in val.items()))
    _save(root / "test" / "images" / "test_0.JPEG", np.zeros((8, 8, 3), np.uint8))  # unlabelled: unused

    train, test = load_dataset({"dataset": "tinyimagenet", "root": str(tmp_path)}, progress=False)
    assert train.classes == ["goldfish", "maillot (n0200)", "maillot (n0300)"]  # sorted wnids, unique names
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert test.labels.tolist() == [1, 0, 2, 0]
    assert train.images.shape == (9, 8, 8, 3) and test.images.shape == (4, 8, 8, 3)

    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn0500\t0\t0\t7\t7\n")
    with pytest.raises(DataError, match="val_annotations.txt:1"):
        load_dataset({"dataset": "tinyimagenet", "root": str(root)}, progress=False)
    with pytest.raises(DataError, match="wnids.txt"):
        load_dataset({"dataset": "tinyimagenet", "root": str(root / "train")}, progress=False)


def _keep_tiny(wnid: str) -> bool:
    return wnid == "n01443537" or int(wnid[1:]) % 40 == 0  # goldfish + 4 more real classes


@pytest.fixture(scope="module")
def tiny_subset(shared_data, tmp_path_factory):
    """One streaming pass over the real archive: count everything, extract a few classes.

    Extracting and decoding all 110,000 files takes ~20 s on 2 cores, so the reader is run on
    5 real classes; the counts of the whole archive are checked from the tar listing.
    """
    out = tmp_path_factory.mktemp("tiny-subset")
    train_counts: Counter = Counter()
    texts: dict[str, str] = {}
    val_bytes: dict[str, bytes] = {}
    pending: list[tuple[str, bytes]] = []
    with tarfile.open(shared_data / "tinyimagenet32-jpeg.tar.gz") as tar:
        for m in tar:
            name = os.path.normpath(m.name)
            parts = name.split("/")
            if not m.isfile():
                continue
            if name in ("wnids.txt", "words.txt", "val/val_annotations.txt"):
                texts[name] = tar.extractfile(m).read().decode()
            elif len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
                train_counts[parts[1]] += 1
                if _keep_tiny(parts[1]):
                    pending.append((name, tar.extractfile(m).read()))
            elif len(parts) == 3 and parts[:2] == ["val", "images"]:
                val_bytes[parts[2]] = tar.extractfile(m).read()
    wnids = texts["wnids.txt"].split()
    ann = [line.split("\t") for line in texts["val/val_annotations.txt"].splitlines() if line.strip()]
    keep = sorted(w for w in wnids if _keep_tiny(w))
    for name, data in pending:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    kept_ann = [a for a in ann if a[1] in keep]
    (out / "val" / "images").mkdir(parents=True)
    for a in kept_ann:
        (out / "val" / "images" / a[0]).write_bytes(val_bytes[a[0]])
    (out / "val" / "val_annotations.txt").write_text("".join("\t".join(a) + "\n" for a in kept_ann))
    (out / "wnids.txt").write_text("\n".join(keep) + "\n")
    (out / "words.txt").write_text(texts["words.txt"])
    return {"root": out, "wnids": wnids, "train_counts": train_counts, "ann": ann, "keep": keep}


@pytest.mark.shared_data
def test_tinyimagenet_real_archive(tiny_subset):
    # the whole archive: 200 classes, 500 train images each, 10,000 val annotations, 50 per class
    assert len(tiny_subset["wnids"]) == 200 == len(set(tiny_subset["wnids"]))
    assert set(tiny_subset["train_counts"]) == set(tiny_subset["wnids"])
    assert set(tiny_subset["train_counts"].values()) == {500}
    assert len(tiny_subset["ann"]) == 10_000
    assert set(Counter(a[1] for a in tiny_subset["ann"]).values()) == {50}
    # the reader on the real files of the kept classes
    keep = tiny_subset["keep"]
    t0 = time.perf_counter()
    train, test = load_dataset({"dataset": "tinyimagenet", "root": str(tiny_subset["root"])}, progress=False)
    print(f"\nTiny-ImageNet-32 subset ({len(keep)} classes) read in {time.perf_counter() - t0:.1f} s")
    k = len(keep)
    assert k == 5
    assert train.images.shape == (500 * k, 32, 32, 3) and test.images.shape == (50 * k, 32, 32, 3)
    assert np.bincount(train.labels, minlength=k).tolist() == [500] * k
    assert np.bincount(test.labels, minlength=k).tolist() == [50] * k
    assert train.classes[0] == "goldfish"  # n01443537, first synonym of words.txt
    assert len(set(train.classes)) == k
    assert train.images.std() > 30 and test.images.std() > 30


# ------------------------------------------------------------------------------------------
# Embedded digits
# ------------------------------------------------------------------------------------------

def test_digits_fixed_stratified_split():
    train, test = load_dataset({"dataset": "digits"}, progress=False)
    assert train.images.shape[1:] == (32, 32, 3) and test.images.shape[1:] == (32, 32, 3)
    assert train.images.dtype == np.uint8 and train.classes == [str(i) for i in range(10)]
    assert len(train) + len(test) == 1797
    tr_counts, te_counts = np.bincount(train.labels, minlength=10), np.bincount(test.labels, minlength=10)
    assert (te_counts > 0).all() and np.allclose(te_counts / (tr_counts + te_counts), 0.3, atol=0.01)
    assert train.images.max() == 255 and train.images.min() == 0
    assert (train.images[..., 0] == train.images[..., 2]).all()  # grey replicated to RGB
    from sklearn.datasets import load_digits as sk_digits

    labels = sk_digits().target
    tr_idx, te_idx = S.digits_split(labels)
    assert len(np.intersect1d(tr_idx, te_idx)) == 0 and len(tr_idx) + len(te_idx) == len(labels)
    assert (labels[tr_idx] == train.labels).all() and (labels[te_idx] == test.labels).all()
    # deterministic: the same sets on every call, independent of any global RNG state
    np.random.seed(123)
    train2, test2 = load_dataset({"dataset": "digits", "image_size": 32}, progress=False)
    assert train2.fingerprint() == train.fingerprint() and test2.fingerprint() == test.fingerprint()
    small, _ = load_dataset({"dataset": "digits", "image_size": 16}, progress=False)
    assert small.images.shape == (len(train), 16, 16, 3)


# ------------------------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-100-C
# ------------------------------------------------------------------------------------------

def test_cifar_c_reader(tmp_path):
    n = 6
    images = np.concatenate([np.full((n, 32, 32, 3), 10 * s, np.uint8) for s in range(1, 6)])
    labels = np.tile(np.arange(n), 5)
    np.save(tmp_path / "gaussian_noise.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    out = load_cifar_c(tmp_path, "gaussian_noise")
    assert sorted(out) == [1, 2, 3, 4, 5]
    for s, (x, y) in out.items():
        assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8 and (np.asarray(x) == 10 * s).all()
        assert y.dtype == np.int64 and y.tolist() == list(range(n))
    assert isinstance(out[1][0], np.memmap) or isinstance(out[1][0].base, np.memmap)
    assert sorted(load_cifar_c(tmp_path, "gaussian_noise", max_severity=3)) == [1, 2, 3]

    np.save(tmp_path / "labels.npy", np.arange(n))  # N labels (not 5 x N) are accepted
    assert load_cifar_c(tmp_path, "gaussian_noise")[4][1].tolist() == list(range(n))

    with pytest.raises(DataError, match="shot_noise.npy") as err:
        load_cifar_c(tmp_path, "shot_noise")
    assert "gaussian_noise" in str(err.value)  # says what the folder does hold
    np.save(tmp_path / "labels.npy", np.arange(n + 1))
    with pytest.raises(DataError, match="labels"):
        load_cifar_c(tmp_path, "gaussian_noise")
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "gaussian_noise.npy", images[:-1])  # not 5 x N
    with pytest.raises(DataError, match="5"):
        load_cifar_c(tmp_path, "gaussian_noise")
    with pytest.raises(DataError):
        load_cifar_c(tmp_path / "absent", "gaussian_noise")
