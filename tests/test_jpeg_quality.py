"""A JPEG corruption of a JPEG source is a recompression: the source's quality is read from its files' headers,
recorded with the data, and said once when the splits are built."""
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.data.jpeg_quality import (
    file_quality,
    recompression_warning,
    source_quality,
)
from sharpdro.data.splits import build_splits

TINY = ["data.dataset=folder", "data.train_per_class=8", "data.val_per_class=2", "data.test_per_class=5",
        "train.progress=false", "train.batch_size=8", "eval.batch_size=32", "train.threads=1"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _folders(root: Path, fmt: str, quality: int = 75) -> Path:
    """<root>/{train,test}/<class>/<i>.<ext>: 3 classes of 12 noisy 16x16 images."""
    for split in ("train", "test"):
        for k, c in enumerate(["cat", "dog", "frog"]):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(12):
                img = _image(100 * k + i + (0 if split == "train" else 5000))
                if fmt == "jpg":
                    img.save(d / f"{i}.jpg", quality=quality)
                else:
                    img.save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("quality", [7, 40, 50, 75, 95])
def test_file_quality_reads_the_quality_a_file_was_written_at(tmp_path, quality):
    path = tmp_path / "a.jpg"
    _image(0).save(path, quality=quality)
    assert file_quality(path) == quality
    buf = io.BytesIO()
    _image(1).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    assert file_quality(buf) == quality


def test_file_quality_of_what_is_not_a_jpeg(tmp_path):
    _image(0).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    assert file_quality(tmp_path / "a.png") is None
    assert file_quality(tmp_path / "b.jpg") is None


def test_source_quality_samples_evenly_and_counts_the_jpeg_files(tmp_path):
    paths = []
    for i in range(10):
        p = tmp_path / (f"{i}.jpg" if i % 2 else f"{i}.png")
        _image(i).save(p, **({"quality": 60 + i} if i % 2 else {}))
        paths.append(p)
    info = source_quality(paths, sample=10)
    assert info == {"sampled": 10, "jpeg": 5, "quality": 65, "quality_range": [61, 69]}
    assert source_quality(paths, sample=2) == {"sampled": 2, "jpeg": 1, "quality": 69, "quality_range": [69, 69]}
    assert source_quality([p for p in paths if p.suffix == ".png"]) is None
    assert source_quality([]) is None


def test_the_warning_names_the_qualities_that_change_little():
    info = {"sampled": 32, "jpeg": 32, "quality": 75, "quality_range": [75, 75]}
    text = recompression_warning(info, [80, 65, 58, 50, 40], resized=False)
    assert "quality about 75" in text and "quality 80 at or above" in text and "blocks stay aligned" in text
    text = recompression_warning(info, [25, 18, 15, 10, 7], resized=True)
    assert "at or above" not in text and "aligned" not in text


def test_splits_record_a_jpeg_source_and_warn_only_for_the_jpeg_corruption(tmp_path):
    jpg = _folders(tmp_path / "jpg", "jpg", quality=70)
    with pytest.warns(UserWarning, match=r"JPEG already \(quality about 70 in 32 of 32 sampled files\)"):
        s = build_splits(load_config("quickstart", [*TINY, f"data.root={jpg}", "data.corruption=jpeg_compression"]),
                         progress=False, cache=False)
    assert s.meta["source_jpeg"] == {"sampled": 32, "jpeg": 32, "quality": 70, "quality_range": [70, 70]}
    png = _folders(tmp_path / "png", "png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no warning for a noise corruption, and the record stays
        s = build_splits(load_config("quickstart", [*TINY, f"data.root={jpg}", "data.corruption=gaussian_noise"]),
                         progress=False, cache=False)
        assert s.meta["source_jpeg"]["quality"] == 70
        s = build_splits(load_config("quickstart", [*TINY, f"data.root={png}", "data.corruption=jpeg_compression"]),
                         progress=False, cache=False)
        assert "source_jpeg" not in s.meta
    assert not [w for w in caught if "JPEG" in str(w.message)]


def test_prepare_says_it_in_one_line_and_train_records_it(tmp_path, capsys):
    jpg = _folders(tmp_path / "jpg", "jpg", quality=75)
    sets = [*TINY, f"data.root={jpg}", "data.corruption=jpeg_compression", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["prepare", "-c", "quickstart", *[a for s in sets for a in ("--set", s)]]) == 0
    err = capsys.readouterr()
    assert "sharpdro prepare: warning: the source images are JPEG already (quality about 75" in err.err
    assert "source: JPEG files, quality about 75" in err.out
    out = tmp_path / "run"
    assert main(["train", "-c", "quickstart", "--out", str(out), "--set", "train.epochs=1", "--set", "model.width=8",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    assert json.loads((out / "data.json").read_text())["source_jpeg"]["quality"] == 75
