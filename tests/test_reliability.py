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


# ------------------------------------------------------------------ 6. --out into a folder that is not a run
def test_out_into_a_users_folder_is_refused_and_leaves_it_alone(tmp_path):
    mine = tmp_path / "my-results"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "thesis numbers"}\n')
    (mine / "train.log").write_text("my log\n")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", mine, *[f"--set={o}" for o in TINY]))
    assert str(mine) in line and "not a sharpdro run directory" in line and "summary.json" in line
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before


def test_a_run_directory_is_marked_and_can_be_resumed(tmp_path, digits_splits):
    from sharpdro.engine import train
    from sharpdro.rundir import RunDir

    out = tmp_path / "run"
    train(tiny(), out_dir=out, splits=digits_splits)
    assert RunDir(out).marker.is_file() and RunDir(out).is_ours()
    train(tiny(), out_dir=out, resume=True, splits=digits_splits)  # its own folder is not refused
    RunDir(out).marker.unlink()  # a run written before the marker existed: its config.yaml identifies it
    assert RunDir(out).is_ours()


# ------------------------------------------------------------------ 7. file and folder modes
def test_results_and_cache_get_the_mode_open_would_give(tmp_path):
    code = ("import os, sys; os.umask(0o002); from sharpdro.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "SHARPDRO_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", code, "train", "-c", "quickstart", "--out", str(out),
                          *[f"--set={o}" for o in TINY]], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    files = [out / "summary.json", out / "config.yaml", out / "checkpoints" / "last.pt", out / "checkpoints" / "best.pt"]
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o664, (f, oct(f.stat().st_mode))
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_dir()]
    assert entries
    for d in entries:
        assert d.stat().st_mode & 0o777 == 0o775, (d, oct(d.stat().st_mode))
    for f in (tmp_path / "cache").rglob("*.npy"):
        assert f.stat().st_mode & 0o777 == 0o664, f


# ------------------------------------------------------------------ 8. resuming a finished run
def test_resuming_a_finished_run_keeps_its_wall_time(tmp_path, digits_splits):
    from sharpdro.engine import train
    from sharpdro.rundir import RunDir

    out = tmp_path / "run"
    first = train(tiny(), out_dir=out, splits=digits_splits)
    summary = RunDir(out).read_summary()
    summary["wall_seconds"] = 1234.5  # as if the run had taken 20 minutes
    (out / "summary.json").write_text(json.dumps(summary))
    again = train(tiny(), out_dir=out, resume=True, splits=digits_splits)
    assert again["wall_seconds"] == 1234.5 and RunDir(out).read_summary()["wall_seconds"] == 1234.5
    assert again["test_accuracy"] == first["test_accuracy"]
    assert "run_dir" not in RunDir(out).read_summary()  # no absolute path of this machine in results


# ------------------------------------------------------------------ 11. read-only folder, full disk
class _FullDiskFile:
    """A file whose writes fail with ENOSPC, as on a full disk (everything else is the real file)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(match)``: from then on, writes to files whose path ``match(path)`` accepts fail with ENOSPC.

    The fault sits at the lowest level Python code reaches (the file object's ``write``), under every writer
    this project uses (json, yaml, ``torch.save`` and ``np.save`` through a file object)."""
    import builtins
    import io

    real_open = io.open

    def install(match):
        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) and match(Path(file)):
                return _FullDiskFile(f)
            return f

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)

    return install


def _main(capsys, *args) -> tuple[int, str]:
    from sharpdro.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_full_disk_at_start(tmp_path, capsys, full_disk):
    out = tmp_path / "run"
    full_disk(lambda p: str(p).startswith(str(out)))
    code, err = _main(capsys, "train", "-c", "quickstart", "--out", out, *[f"--set={o}" for o in TINY])
    assert code == 2 and "Traceback" not in err and len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert "no space left" in err and str(out) in err and "free under" in err


def test_full_disk_during_torch_save_keeps_the_last_good_checkpoint(tmp_path, capsys, full_disk, digits_splits):
    import torch

    out = tmp_path / "run"
    saves = []

    def second_checkpoint(p: Path) -> bool:  # the first checkpoint is written, the second finds the disk full
        if p.name.startswith(".last.pt."):
            saves.append(p)
        return p.name.startswith(".last.pt.") and len(saves) >= 2

    full_disk(second_checkpoint)
    code, err = _main(capsys, "train", "-c", "quickstart", "--out", out, *[f"--set={o}" for o in TINY],
                      "--set=train.epochs=3")
    assert code == 2 and "Traceback" not in err and "unexpected pos" not in err, err
    assert "no space left" in err and str(out / "checkpoints" / "last.pt") in err and "needed" in err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["extra"]["epoch"] == 0  # the last good epoch is intact
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left


def test_torch_save_to_a_full_device_says_enospc():
    """The real thing: torch.save through a file object on /dev/full raises ENOSPC (to a path it says
    'unexpected pos'), which is why checkpoints are written through a file object."""
    import errno

    import torch

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as err:
        with open("/dev/full", "wb") as f:
            torch.save({"w": torch.zeros(1000)}, f)
    assert err.value.errno == errno.ENOSPC


def test_full_disk_while_writing_the_cache(tmp_path, capsys, full_disk):
    cache = tmp_path / "cache"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{train_per_class: 40, val_per_class: 5, test_per_class: 10, cache_dir: {cache}}}\n")
    full_disk(lambda p: str(p).startswith(str(cache)) and p.suffix == ".npy")
    code, err = _main(capsys, "prepare", "-c", cfg)
    assert code == 2 and "Traceback" not in err and len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert "no space left" in err and str(cache) in err and "data.cache_dir" in err and "needed" in err
    assert not [p for p in cache.rglob("*") if p.is_dir() and p.parent == cache and not p.name.startswith("digits")
                and p.name.startswith(".tmp")]  # no half-written entry left behind


def test_read_only_output_folder(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a real read-only place
        target = Path("/sys/sharpdro-test-run")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "run"
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", target, *[f"--set={o}" for o in TINY]))
    assert str(target) in line and "cannot write" in line


# ------------------------------------------------------------------ 12. class folder name not UTF-8
def test_class_folder_name_that_is_not_utf8(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in (b"caf\xe9", b"tea"):  # Latin-1 'café', as an old archive may carry it
            d = os.path.join(os.fsencode(root / split), name)
            os.makedirs(d, exist_ok=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    os.path.join(d, f"{i}.png".encode()).decode("utf-8", "surrogateescape"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dataset: folder, root: {root}, train_per_class: 2}}\n")
    line = _one_error_line(_cli("info", "-c", cfg))
    assert "caf\\xe9" in line and "not valid UTF-8" in line and "rename" in line


# ------------------------------------------------------------------ 1, 2. evaluate on other data
def _class_folders(root: Path, classes, per_class=12, seed=0):
    """<root>/{train,test}/<class>/<i>.png, 16x16, each class a different mean colour (learnable)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.array([40 + 50 * k, 200 - 40 * k, 120], dtype=np.int64)
                img = np.clip(base + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from sharpdro.engine import train

    base = tmp_path_factory.mktemp("folder-run")
    root = _class_folders(base / "data", ["airplane", "automobile", "bird", "cat"])
    cfg = load_config("quickstart", [*TINY, "data.dataset=folder", f"data.root={root}", "data.train_per_class=8",
                                     "data.val_per_class=2", "data.test_per_class=5", "train.batch_size=16"])
    train(cfg, out_dir=base / "run")
    return base / "run"


def test_evaluate_refuses_data_with_other_classes(tmp_path, folder_run):
    other = _class_folders(tmp_path / "other", ["airplane", "cat", "ship"])
    line = _one_error_line(_cli("evaluate", folder_run, "--set", f"data.root={other}"))
    assert "lacks automobile, bird" in line and "does not know ship" in line
    assert not list(folder_run.glob("evaluation-*"))  # nothing written that looks like a result


def test_evaluate_refuses_cifar_c_files_of_another_dataset(tmp_path, erm_run):
    from sharpdro.data.match import check_cifar_c_matches

    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "gaussian_noise.npy", rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(10), 5))
    line = _one_error_line(_cli("evaluate", erm_run, "--cifar-c", folder))  # a digits model
    assert "CIFAR-10-C" in line and "digits" in line
    sets = {s: (np.zeros((10, 32, 32, 3), np.uint8), np.arange(10)) for s in range(1, 6)}
    check_cifar_c_matches("cifar10", 10, (32, 32, 3), folder, sets)  # the files a cifar10 run fits
    with pytest.raises(DataError, match="CIFAR-10-C"):
        check_cifar_c_matches("cifar100", 100, (32, 32, 3), folder, sets)


def test_evaluations_on_two_folders_are_both_kept(tmp_path, folder_run):
    classes = ["airplane", "automobile", "bird", "cat"]
    a = _class_folders(tmp_path / "a", classes, seed=1)
    b = _class_folders(tmp_path / "b", classes, seed=2)
    for root in (a, b):
        res = _cli("evaluate", folder_run, "--set", f"data.root={root}")
        assert res.returncode == 0, res.stderr
    files = sorted(folder_run.glob("evaluation-*.json"))
    assert len(files) == 2
    roots = sorted(json.loads(f.read_text())["data"]["root"] for f in files)
    assert roots == sorted([str(a.resolve()), str(b.resolve())])
    for f in files:
        data = json.loads(f.read_text())["data"]
        assert data["dataset"] == "folder" and data["corruption"] == "gaussian_noise" and "table" in data
        assert "severities" in data


# ------------------------------------------------------------------ 14. the NaN guard says what is true
@pytest.fixture
def nan_after(monkeypatch):
    """``nan_after(k)``: the training loss becomes NaN once ``k`` checkpoints have been written."""
    import torch.nn.functional as F

    import sharpdro.backends.torch.session as session_mod

    real_ce, real_save = F.cross_entropy, session_mod.TorchSession.save_checkpoint
    saved = []

    def install(k):
        def save(self, path, extra):
            real_save(self, path, extra)
            saved.append(extra["epoch"])

        def ce(*a, **kw):
            loss = real_ce(*a, **kw)
            return loss * float("nan") if len(saved) >= k else loss

        monkeypatch.setattr(session_mod.TorchSession, "save_checkpoint", save)
        monkeypatch.setattr(F, "cross_entropy", ce)

    return install


def test_nan_in_the_first_epoch_does_not_mention_a_checkpoint(tmp_path, digits_splits, nan_after):
    from sharpdro.engine import train
    from sharpdro.errors import TrainingError

    nan_after(0)
    with pytest.raises(TrainingError) as err:
        train(tiny("train.epochs=3"), out_dir=tmp_path / "run", splits=digits_splits)
    msg = str(err.value)
    assert "epoch 1 " in msg and "No checkpoint was written yet" in msg and "train.lr=0.005" in msg  # lr 0.05 / 10
    assert "last.pt" not in msg and "--resume" not in msg


def test_nan_later_advice_works_resume_with_a_lower_lr(tmp_path, digits_splits, nan_after, monkeypatch):
    from sharpdro.engine import train
    from sharpdro.errors import TrainingError
    from sharpdro.rundir import RunDir

    out = tmp_path / "run"
    nan_after(1)
    with pytest.raises(TrainingError) as err:
        train(tiny("train.epochs=3"), out_dir=out, splits=digits_splits)
    msg = str(err.value)
    assert "epoch 2 " in msg and f"{out / 'checkpoints' / 'last.pt'} holds epoch 1" in msg
    assert "--resume --allow-optimizer-changes --set train.lr=0.005" in msg
    monkeypatch.undo()  # the cause of the NaN is gone

    from sharpdro.schedule import lr_at

    lower = tiny("train.epochs=3", "train.lr=0.005")
    with pytest.raises(SharpDROError, match="--allow-optimizer-changes"):
        train(lower, out_dir=out, resume=True, splits=digits_splits)
    with pytest.raises(SharpDROError, match="model.width"):  # the model itself may never change
        train(tiny("train.epochs=3", "train.lr=0.005", "model.width=16"), out_dir=out, resume=True,
              splits=digits_splits, allow_changes=True)
    summary = train(lower, out_dir=out, resume=True, splits=digits_splits, allow_changes=True)
    records = RunDir(out).epoch_records()
    assert [r["epoch"] for r in records] == [0, 1, 2] and records[1]["lr"] == pytest.approx(lr_at(1, lower))
    assert summary["config_changes"][0]["changes"] == {"train.lr": [0.05, 0.005]}
    assert summary["config_changes"][0]["from_epoch"] == 1
    assert "train.lr 0.05 -> 0.005" in (out / "train.log").read_text()


# ------------------------------------------------------------------ surprises: progress, epoch numbering
def test_progress_false_hides_bars_not_epoch_lines_and_epochs_count_from_one(tmp_path):
    out = tmp_path / "run"
    sets = [f"--set={o}" for o in TINY] + ["--set=train.epochs=2"]  # TINY has train.progress=false
    res = _cli("train", "-c", "quickstart", "--out", out, *sets)
    assert res.returncode == 0, res.stderr
    assert "epoch 1/2 " in res.stdout and "epoch 2/2 " in res.stdout and "%|" not in res.stderr
    (out / "summary.json").unlink()  # killed before its summary (a finished run is not resumed at all)
    res = _cli("train", "-c", "quickstart", "--out", out, "--resume", *sets)
    assert f"resumed {out} after epoch 2" in res.stdout  # two epochs done: the same count as the lines above
    log = (out / "train.log").read_text()
    assert "epoch 2/2 " in log and "after epoch 2" in log


# ------------------------------------------------------------------ surprises: quickstart, validation size
def test_quickstart_with_other_settings_is_a_new_run(tmp_path):
    out = tmp_path / "qs"
    sets = [f"--set={o}" for o in TINY if not o.startswith("data.train_per_class")]
    first = _cli("quickstart", "--algorithms", "erm", "--out", out, *sets)
    assert first.returncode == 0, first.stderr
    second = _cli("quickstart", "--algorithms", "erm", "--out", out, *sets, "--set=train.epochs=2")
    assert second.returncode == 0, second.stderr
    assert len(list(out.iterdir())) == 2  # two runs, two folders
    again = _cli("quickstart", "--algorithms", "erm", "--out", out, *sets, "--set=train.progress=true")
    assert again.returncode == 0 and len(list(out.iterdir())) == 2  # runtime keys do not make a new run
    # another thread count computes other numbers: a run of its own, never the first run's numbers read back
    threads = _cli("quickstart", "--algorithms", "erm", "--out", out, *sets, "--set=train.threads=2")
    assert threads.returncode == 0 and len(list(out.iterdir())) == 3


@pytest.mark.parametrize("name", ["quickstart", "cifar10", "cifar100", "imagenet30"])
def test_every_severity_of_the_shipped_configs_has_training_images(name):
    import warnings

    from sharpdro.data.splits import per_class_floor_counts

    cfg = load_config(name)
    d = cfg["data"]
    counts = per_class_floor_counts(d["train_per_class"], float(d["poisson_lambda"]), d["max_severity"])
    assert counts.min() >= 1, counts
    if name == "quickstart":  # the embedded data: build the real split, with no warning at all
        from sharpdro.data.splits import load_source, plan_from_config

        train, test = load_source(cfg, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plan = plan_from_config(cfg, train.labels, test.labels, len(train.classes))
        assert np.bincount(plan.train_severity, minlength=6).min() >= 10


def test_default_validation_is_a_small_fraction_of_an_epoch(tmp_path):
    res = _cli("info", "-c", "quickstart")
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("validation:"))
    assert "of an epoch's training time" in line
    from sharpdro.data.splits import val_per_class

    assert val_per_class({"train_per_class": 100, "val_per_class": None}) == 10
    assert val_per_class({"train_per_class": 4000, "val_per_class": None}) == 200  # CIFAR-10: 12,000 evaluations
    assert val_per_class({"train_per_class": 4000, "val_per_class": 7}) == 7


# ------------------------------------------------------------------ surprises: plots of runs that differ in many keys
def test_plot_of_runs_differing_in_many_keys(tmp_path, erm_run):
    import shutil

    import yaml

    from sharpdro.experiments.plots import plot_dir

    sweep = tmp_path / "sweep"
    keys = {"train.lr": [0.0123456, 0.0234567], "train.momentum": [0.81234, 0.91234],
            "train.weight_decay": [0.000123, 0.000456], "train.gamma": [0.1234, 0.2345],
            "algorithm.rho": [0.051234, 0.061234], "algorithm.eta": [0.011234, 0.021234],
            "algorithm.fraction": [0.21234, 0.31234], "algorithm.temperature": [1.1234, 2.1234],
            "model.dropout": [0.11234, 0.21234], "data.poisson_lambda": [1.01234, 1.51234],
            "algorithm.eiil_lr": [0.0012345, 0.0023456], "algorithm.jtt_lambda_up": [6.12345, 7.12345],
            "algorithm.gen_adjustment": [0.12345, 0.23456], "algorithm.eiil_steps": [2001, 2002],
            "train.batch_size": [41, 42], "model.width": [9, 10], "eval.every": [1, 2]}
    for i in range(2):
        run = sweep / f"job{i}"
        shutil.copytree(erm_run, run)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        for k, vals in keys.items():
            s, key = k.split(".")
            cfg[s][key] = vals[i]
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    paths = plot_dir(sweep, formats=("png",))  # crashed with "OSError: File name too long"
    assert paths and all(len(p.name) <= 110 for p in paths)  # the 100-character name limit + extension
    legend = (sweep / "plots" / "legend.tsv").read_text()
    assert "lr=0.0123456" in legend and "lr=0.0234567" in legend
    res = _cli("plot", sweep)
    assert res.returncode == 0, res.stderr

    from sharpdro.experiments import plots
    from sharpdro.experiments.report import collect

    table = collect(sweep, "worst")
    titles = [plots._block_title(table, row) for row in table.rows]
    assert titles and all(len(title) <= 80 and "settings" in title for title in titles)
    fig, ax = plots._figure()
    ax.plot([0, 5], [71.2, 71.8])  # a 0.6-point spread
    plots._readable_accuracy_axis(ax)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 10 and lo <= 71.2 and hi >= 71.8


# ------------------------------------------------------------------ faults of a shared GPU server (docs/reliability.md)
def test_shared_cache_folder_that_is_not_writable(tmp_path):
    if os.geteuid() == 0:
        cache = Path("/sys/sharpdro-test-cache")  # root writes through permission bits: a real read-only place
    else:
        ro = tmp_path / "shared"
        ro.mkdir()
        ro.chmod(0o555)
        cache = ro / "cache"
    res = _cli("prepare", "-c", "quickstart", "--set", "train.progress=false", env={"SHARPDRO_CACHE": str(cache)})
    line = _one_error_line(res)
    assert str(cache) in line and "SHARPDRO_CACHE" in line


def test_cuda_requested_where_there_is_none(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", tmp_path / "run",
                                *[f"--set={o}" for o in TINY], "--set=train.device=cuda:1"))
    assert "CUDA is not available" in line and "train.device=cpu" in line


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 0.1  # caf\u00e9\n".encode("latin-1"))
    line = _one_error_line(_cli("info", "-c", path))
    assert str(path) in line and "not UTF-8" in line


def test_full_disk_while_appending_metrics_then_resume(tmp_path, capsys, full_disk, digits_splits, monkeypatch):
    from sharpdro.engine import train
    from sharpdro.io import read_jsonl

    out = tmp_path / "run"
    appends = []

    def second_metrics_line(p: Path) -> bool:
        if p.name == "metrics.jsonl":
            appends.append(p)
        return p.name == "metrics.jsonl" and len(appends) >= 2

    full_disk(second_metrics_line)
    code, err = _main(capsys, "train", "-c", "quickstart", "--out", out, *[f"--set={o}" for o in TINY],
                      "--set=train.epochs=2")
    assert code == 2 and "no space left" in err and str(out / "metrics.jsonl") in err and "Traceback" not in err
    monkeypatch.undo()  # space freed
    resumed = train(tiny("train.epochs=2"), out_dir=out, resume=True, splits=digits_splits)
    full = train(tiny("train.epochs=2"), out_dir=tmp_path / "full", splits=digits_splits)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]
