"""Issue 25, case 15: class folders on real files. Every image in a class folder is counted whatever the
folder's shape; a file Pillow cannot turn into a picture (empty, truncated, not an image, 1x1) is never
trained on silently; the warning about small classes names them and gives the counts ``sharpdro info`` shows."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpdro.config import load_config
from sharpdro.data.sources.folders import load_image_folder
from sharpdro.data.splits import describe_split
from sharpdro.errors import DataError

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _png(path: Path, side: int = 16, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def _tree(root: Path, per_class: dict[str, int]) -> Path:
    for split in ("train", "test"):
        for c, n in per_class.items():
            for i in range(n if split == "train" else 3):
                _png(root / split / c / f"{i}.png")
    return root


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "sharpdro.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_every_image_in_a_class_folder_is_counted(tmp_path):
    root = _tree(tmp_path / "data", {"cat": 4, "dog": 4})
    cat = root / "train" / "cat"
    _png(cat / "sub" / "deeper" / "a.PNG")  # nested, upper-case extensions
    _png(cat / "b.JPG", fmt="JPEG")
    _png(cat / "c.Jpeg", fmt="JPEG")
    elsewhere = tmp_path / "more_cats"  # a sub-folder that is a link to a folder elsewhere (was not read)
    for i in range(3):
        _png(elsewhere / f"e{i}.png")
    os.symlink(elsewhere, cat / "linked")
    os.symlink(cat, cat / "sub" / "loop")  # a link back up the tree: read once, never in a loop
    (cat / "notes.txt").write_text("not an image")  # skipped: not an image name
    _png(cat / ".hidden.png")  # skipped: hidden
    train, _ = load_image_folder(root, progress=False)
    assert np.bincount(train.labels).tolist() == [4 + 3 + 3, 4]
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.train_per_class=2",
                             "data.val_per_class=1", "train.progress=false"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = describe_split(cfg)[0]
    assert "14 train / 6 test images" in first


@pytest.mark.parametrize("bad", ["tiny", "empty", "truncated", "text"])
def test_an_image_that_is_no_picture_is_never_trained_on(tmp_path, bad):
    root = _tree(tmp_path / "data", {"cat": 3, "dog": 3})
    path = root / "train" / "dog" / ("x.jpg" if bad == "text" else "x.png")
    if bad == "tiny":  # decodes, and resized to 16x16 it became a flat colour, trained on silently
        _png(path, side=1)
    elif bad == "empty":
        path.write_bytes(b"")
    elif bad == "truncated":
        buf = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    else:
        path.write_text("hello, I am not a JPEG\n")
    with pytest.raises(DataError) as exc:
        load_image_folder(root, image_size=16, progress=False)
    text = str(exc.value)
    assert "1 of 7 image files cannot be used: " in text and str(path) in text and "Delete or replace" in text
    assert {"tiny": "1x1 pixels", "empty": "empty (0 bytes)", "truncated": "truncated",
            "text": "cannot identify image file"}[bad] in text


def test_every_unusable_file_is_named_in_one_error_line(tmp_path):
    root = _tree(tmp_path / "data", {"cat": 3, "dog": 3})
    bad = [root / "train" / "cat" / "0.png", root / "train" / "dog" / "z.png", root / "test" / "cat" / "q.jpg"]
    bad[0].write_bytes(b"")  # the first file: the shape comes from the next usable one
    _png(bad[1], side=2)
    bad[2].write_text("text")
    res = _cli("info", "--set", "data.dataset=folder", "--set", f"data.root={root}", "--set", "data.image_size=16",
               "-c", "quickstart")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    (line,) = res.stderr.splitlines()
    assert "2 of 7 image files cannot be used" in line and str(bad[0]) in line and str(bad[1]) in line
    bad[0].unlink(), bad[1].unlink()
    res = _cli("info", "--set", "data.dataset=folder", "--set", f"data.root={root}", "--set", "data.image_size=16",
               "-c", "quickstart")
    assert "1 of 7 image files cannot be used" in res.stderr and str(bad[2]) in res.stderr  # the test split too


def test_small_class_warning_names_the_class_with_the_counts_info_shows(tmp_path):
    root = _tree(tmp_path / "data", {"airplane": 40, "bird": 12, "cat": 40})
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.train_per_class=30",
                             "data.val_per_class=5", "train.progress=false"])
    with pytest.warns(UserWarning, match="too few images") as record:
        lines = describe_split(cfg)
    text = str(record[0].message)
    row = next(ln.split() for ln in lines if ln.startswith("bird "))
    train, val = int(row[-2]), int(row[-1])  # the columns of `sharpdro info`
    assert f"bird: 12 images -> {train} train, {val} val" in text and "class 1" not in text
    assert (train, val) == (7, 2)  # 10 picked (12 less a 10% validation share), 7 after per_class_floor
