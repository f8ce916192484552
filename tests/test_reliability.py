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


# ------------------------------------------------------------------ trained runs shared by the tests below
TINY = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
        "train.epochs=1", "train.batch_size=40", "train.progress=false", "train.threads=1", "eval.batch_size=256"]


def tiny(*extra):
    return load_config("quickstart", [*TINY, *extra])


@pytest.fixture(scope="module")
def digits_splits():
    from sharpdro.data.splits import build_splits

    return build_splits(tiny(), progress=False)


@pytest.fixture(scope="module")
def erm_run(tmp_path_factory, digits_splits):
    from sharpdro.engine import train

    out = tmp_path_factory.mktemp("runs") / "erm"
    train(tiny(), out_dir=out, splits=digits_splits)
    return out


def _digit_image():
    """A 32x32 grey test image (a bright square on dark) as 8-bit and as 16-bit arrays with the same top bits."""
    a8 = np.full((32, 32), 20, np.uint8)
    a8[8:24, 10:22] = 230
    return a8, (a8.astype(np.uint16) << 8) | 0x7F


# ------------------------------------------------------------------ 5. one decoder for predict and training
def test_predict_decodes_a_16_bit_png_like_training(tmp_path, erm_run):
    from sharpdro.data.sources import decode_images

    a8, a16 = _digit_image()
    p8, p16 = tmp_path / "eight.png", tmp_path / "sixteen.png"
    Image.fromarray(a8).save(p8)
    Image.fromarray(a16).save(p16)
    assert Image.open(p16).mode.startswith("I;16")
    # training's decoder keeps the top 8 bits: the same pixels as the 8-bit file
    assert np.array_equal(decode_images([p16])[0], decode_images([p8])[0])
    res = _cli("predict", erm_run, p8, p16, "--top", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split(": ", 1)[1] == lines[1].split(": ", 1)[1]  # the same classes and probabilities


# ------------------------------------------------------------------ 13. predict: one bad file, non-checkpoints
def test_predict_reports_an_unreadable_file_and_classifies_the_others(tmp_path, erm_run):
    a8, _ = _digit_image()
    good1, bad, good2 = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.fromarray(a8).save(good1)
    Image.fromarray(255 - a8).save(good2)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    res = _cli("predict", erm_run, good1, bad, good2)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert [ln.split(":")[0] for ln in res.stdout.strip().splitlines()] == [str(good1), str(good2)]
    assert str(bad) in res.stderr and "1 of 3" in res.stderr


def test_predict_on_a_file_that_is_not_a_checkpoint(tmp_path, erm_run):
    line = _one_error_line(_cli("predict", erm_run / "config.yaml", tmp_path / "x.png"))
    assert "not a sharpdro checkpoint" in line and "interrupted" not in line
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes((erm_run / "checkpoints" / "last.pt").read_bytes()[:5000])
    line = _one_error_line(_cli("predict", truncated, tmp_path / "x.png"))
    assert "incomplete or damaged" in line


# ------------------------------------------------------------------ 9. checkpoints load with weights_only=True
class _Payload:
    """Unpickling this object would create a file: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, erm_run):
    import torch

    state = torch.load(erm_run / "checkpoints" / "last.pt", weights_only=True)
    marker = tmp_path / "pwned"
    state["extra"] = {"epoch": 0, "x": _Payload(marker)}
    evil = tmp_path / "evil" / "checkpoints" / "last.pt"
    evil.parent.mkdir(parents=True)
    torch.save(state, evil)
    for cmd in (["predict", evil, tmp_path / "x.png"], ["evaluate", evil]):
        line = _one_error_line(_cli(*cmd))
        assert "could run code" in line, line
        assert not marker.exists()


@pytest.mark.parametrize("algorithm, extra", [("erm", ["train.precision=fp16"]), ("sharpdro", []), ("jtt", []),
                                              ("eiil", ["algorithm.eiil_steps=5"]), ("sharpdro_agnostic", [])])
def test_every_checkpoint_kind_loads_with_weights_only(tmp_path, digits_splits, algorithm, extra):
    import torch

    from sharpdro.engine import train

    train(tiny(f"algorithm.name={algorithm}", *extra), out_dir=tmp_path / "run", splits=digits_splits)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert state["algorithm"] and state["rng"]["numpy"][0] == "MT19937"


def test_converted_checkpoints_load_with_weights_only(tmp_path, erm_run):
    pytest.importorskip("mindspore")
    import torch

    from sharpdro.backends.mindspore import convert

    ms = convert.torch_to_mindspore(erm_run / "checkpoints" / "last.pt", tmp_path / "ms.pt")
    back = convert.mindspore_to_torch(ms, tmp_path / "back.pt")
    state = torch.load(back, weights_only=True)
    assert state["rng"]["numpy"][0] == "MT19937"
    np.load(ms, allow_pickle=False)  # the MindSpore backend's file: arrays and JSON only


def test_checkpoint_of_an_older_version_still_resumes(tmp_path, digits_splits, erm_run):
    """Checkpoints written before this change hold NumPy's RNG state as a tuple with an ndarray."""
    import shutil

    import torch

    from sharpdro.engine import train

    run = tmp_path / "old"
    shutil.copytree(erm_run, run)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["rng"]["numpy"] = np.random.RandomState(3).get_state()
    torch.save(state, run / "checkpoints" / "last.pt")
    (run / "summary.json").unlink()
    summary = train(tiny(), out_dir=run, resume=True, splits=digits_splits)  # loads every state, RNGs included
    assert summary["finished"] and np.random.get_state()[1].tolist() == np.random.RandomState(3).get_state()[1].tolist()
