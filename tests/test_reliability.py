"""Reliability: bad input and faults give one clear error, never a silently wrong result, never lost work.

Each test reproduces one fault of docs/reliability.md on real files the test writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpdro.config import ConfigError, load_config
from sharpdro.errors import DataError, SharpDROError

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, env=None):
    """Run ``sharpdro ARGS`` in a fresh interpreter (so the exit code and stderr are what a user sees)."""
    e = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sharpdro.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=600)


def _one_error_line(res) -> str:
    """The CLI failed with exit code 2 and printed exactly one error line (no traceback)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.stderr
    return lines[0]


# ------------------------------------------------------------------ 4. NaN and infinity in configs
@pytest.mark.parametrize("override", ["train.lr=.nan", "train.lr=.inf", "model.dropout=.nan",
                                      "data.poisson_lambda=.nan", "algorithm.rho=-.inf", "train.lr=nan",
                                      "train.milestones=[0.3, .nan]"])
def test_nan_and_infinity_in_config_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}(\\[1\\])?' = .*not a finite number"):
        load_config("quickstart", [override])


# ------------------------------------------------------------------ 10. malformed YAML
@pytest.mark.parametrize("text, where", [
    ("data:\n  dataset: digits\n\ttrain_per_class: 10\n", ":3:1:"),  # a tab
    ("train:\n  lr: [0.1, 0.2\n", ":3:1:"),  # unclosed list
    ("train:\n  lr: 0.1\n    epochs: 2\n", ":3:11:"),  # bad indentation
])
def test_malformed_yaml_names_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}{where}" in str(err.value)
    if "\t" in text:
        assert "tab" in str(err.value)
    line = _one_error_line(_cli("info", "-c", path))
    assert f"{path}{where}" in line


def test_config_path_that_is_a_folder(tmp_path):
    line = _one_error_line(_cli("info", "-c", tmp_path))
    assert str(tmp_path) in line and "folder" in line


# ------------------------------------------------------------------ 3. label files
def _labelfile_root(tmp_path, train_lines, val_lines=("a/v0.png 0", "b/v1.png 1", "c/v2.png 2")):
    """A label-file layout with class folders a/, b/, c/ (labels 0, 1, 2), 8x8 PNGs of distinct content."""
    root = tmp_path / "release"
    rng = np.random.default_rng(0)
    for split, lines in (("train", train_lines), ("val", val_lines)):
        for line in lines:
            p = root / f"D_{split}_img" / line.split()[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(p)
        (root / f"D_{split}_label.txt").write_text("\n".join(lines) + "\n")
    return root


def _train_lines(n=4):
    return [f"{c}/{i}.png {k}" for k, c in enumerate("abc") for i in range(n)]


def _load_labelfile(root):
    from sharpdro.data.sources import load_dataset

    return load_dataset({"dataset": "labelfile", "root": str(root), "name": "D"}, progress=False)


def test_labelfile_line_listed_twice_is_refused(tmp_path):
    lines = _train_lines()
    lines.insert(5, lines[1])  # a/1.png again, at line 6 (first at line 2)
    root = _labelfile_root(tmp_path, lines)
    with pytest.raises(DataError) as err:
        _load_labelfile(root)
    txt = root / "D_train_label.txt"
    assert f"{txt}:6" in str(err.value) and f"{txt}:2" in str(err.value) and "Delete" in str(err.value)

    # through the CLI: one error line, before any split is built
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dataset: labelfile, root: {root}, name: D, train_per_class: 2}}\n")
    assert f"{txt}:6" in _one_error_line(_cli("info", "-c", cfg))


def test_labelfile_same_path_with_two_labels_is_refused(tmp_path):
    lines = _train_lines() + ["./a/2.png 1"]  # the same file as line 3, spelled differently, another label
    root = _labelfile_root(tmp_path, lines)
    with pytest.raises(DataError) as err:
        _load_labelfile(root)
    txt = root / "D_train_label.txt"
    assert f"{txt}:13" in str(err.value) and f"{txt}:3" in str(err.value) and "label 1" in str(err.value)


def test_labelfile_label_outside_the_class_folders_is_refused(tmp_path):
    lines = _train_lines()
    lines[5] = "b/1.png 99"  # one stray label in a 3-class file used to make a 100-class dataset
    root = _labelfile_root(tmp_path, lines)
    with pytest.raises(DataError) as err:
        _load_labelfile(root)
    assert f"{root / 'D_train_label.txt'}:6" in str(err.value) and "outside 0..2" in str(err.value)

    lines[5] = "b/1.png 2"  # inside 0..2 but not b/'s label
    root = _labelfile_root(tmp_path / "x", lines)
    with pytest.raises(DataError, match="other images in b/ have label 1"):
        _load_labelfile(root)

    # consistent folders still name the classes
    train, test = _load_labelfile(_labelfile_root(tmp_path / "ok", _train_lines()))
    assert train.classes == ["a", "b", "c"] and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
