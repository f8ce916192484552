"""Where the data lies (data.root) does not name a job; what the data is (its fingerprint) guards --resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sharpdro.config import load_config, validate
from sharpdro.engine import train
from sharpdro.errors import SharpDROError
from sharpdro.experiments.sweep import job_hash
from sharpdro.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.dataset=folder", "data.train_per_class=8", "data.val_per_class=2", "data.test_per_class=5",
        "model.width=8", "train.epochs=2", "train.batch_size=16", "train.progress=false", "train.threads=1",
        "eval.batch_size=64"]


def _class_folders(root: Path, seed: int) -> Path:
    """<root>/{train,test}/<class>/<i>.png: 4 classes of 12 noisy 16x16 images, each class its own colour."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, c in enumerate(["airplane", "automobile", "bird", "cat"]):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(12):
                base = np.array([40 + 50 * k, 200 - 40 * k, 120])
                Image.fromarray(np.clip(base + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)).save(
                    d / f"{i}.png")
    return root


def _cfg(root: Path) -> dict:
    return load_config("quickstart", [*TINY, f"data.root={root}"])


def _train_until_epoch_0(cfg, out: Path) -> None:
    """Run ``train`` and kill it (KeyboardInterrupt) right after epoch 0 is checkpointed."""
    import sharpdro.backends.torch.session as session_mod

    original = session_mod.TorchSession.save_checkpoint

    def save_then_die(self, path, extra):
        original(self, path, extra)
        raise KeyboardInterrupt

    session_mod.TorchSession.save_checkpoint = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out_dir=out)
    finally:
        session_mod.TorchSession.save_checkpoint = original


def test_job_hash_ignores_where_the_data_lies():
    a = validate({"data": {"dataset": "folder", "root": "/tmp/fb_data/cifar10-jpeg"}})
    b = validate({"data": {"dataset": "folder", "root": "/home/me/data/cifar10-jpeg"}})
    c = validate({"data": {"dataset": "folder", "root": "/home/me/data/cifar10-jpeg", "name": "other"}})
    assert job_hash(a) == job_hash(b) == job_hash(validate({"data": {"dataset": "folder"}}))
    assert job_hash(c) != job_hash(b)  # what the data is still names the job


def test_resume_follows_the_data_not_its_path(tmp_path):
    here = _class_folders(tmp_path / "here" / "cifar", seed=0)
    full = train(_cfg(here), out_dir=tmp_path / "full")
    record = json.loads((tmp_path / "full" / "data.json").read_text())
    assert record["root"] == str(here.resolve()) and record["train_images"] == 48 and record["test_images"] == 48

    # the same data moved elsewhere: the interrupted run resumes there and equals the uninterrupted one
    stop = tmp_path / "stopped"
    _train_until_epoch_0(_cfg(here), stop)
    elsewhere = tmp_path / "elsewhere" / "cifar"
    shutil.copytree(here, elsewhere)
    shutil.rmtree(here)
    resumed = train(_cfg(elsewhere), out_dir=stop, resume=True)
    a, b = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(stop / "metrics.jsonl")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert resumed["test_accuracy"] == full["test_accuracy"]
    moved = json.loads((stop / "data.json").read_text())
    assert moved["fingerprint"] == record["fingerprint"] and moved["root"] == str(elsewhere.resolve())

    # other pixels at the run's path (same classes and counts): refused before anything in the run changes
    other = _class_folders(tmp_path / "other" / "cifar", seed=1)
    before = {p.name: p.read_bytes() for p in stop.iterdir() if p.is_file()}
    with pytest.raises(SharpDROError) as exc:
        train(_cfg(other), out_dir=stop, resume=True)
    text = str(exc.value)
    assert "other data than the run trained on" in text and "Point data.root at the data" in text
    assert record["fingerprint"][:16] in text and str(elsewhere.resolve()) in text and str(other.resolve()) in text
    assert {p.name: p.read_bytes() for p in stop.iterdir() if p.is_file()} == before

    # on the command line: one error line, exit code 2, no traceback
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    args = ["train", "-c", "quickstart", "--out", str(stop), "--resume"]
    for o in [*TINY, f"data.root={other}"]:
        args += ["--set", o]
    res = subprocess.run([sys.executable, "-m", "sharpdro.cli", *args], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert [ln for ln in res.stderr.splitlines() if "error:" in ln and "other data" in ln]

    # a run written before data fingerprints (no data.json) resumes as before, and records its data from then on
    (stop / "data.json").unlink()
    (stop / "summary.json").unlink()  # killed before its summary (a finished run is never rewritten by a resume)
    train(_cfg(other), out_dir=stop, resume=True)
    assert json.loads((stop / "data.json").read_text())["fingerprint"] != record["fingerprint"]
    assert yaml.safe_load((stop / "config.yaml").read_text())["data"]["root"] == str(other)

    # nothing trained yet (killed before its first checkpoint): it starts over on the data given, whatever
    # data.json says
    shutil.rmtree(stop / "checkpoints")
    (stop / "summary.json").unlink()
    (stop / "metrics.jsonl").unlink()
    again = train(_cfg(elsewhere), out_dir=stop, resume=True)
    assert again["test_accuracy"] == full["test_accuracy"]
    assert json.loads((stop / "data.json").read_text())["fingerprint"] == record["fingerprint"]


def test_resume_with_another_thread_count_or_precision_is_refused(tmp_path):
    """Issue 25, case 9: a rerun with another train.threads printed "resumed" and showed the old run's numbers
    (threads is a runtime key, out of the sweep's job names, yet the numbers depend on it). --resume now
    refuses another thread count or precision than the run's, naming the key; the job's name is unchanged."""
    here = _class_folders(tmp_path / "data", seed=0)
    run = tmp_path / "run"
    first = train(_cfg(here), out_dir=run)  # train.threads=1, fp32
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for override, key, was in (("train.threads=2", "train.threads", "1"), ("train.threads=null", "train.threads", "1"),
                               ("train.precision=bf16", "train.precision", "fp32")):
        cfg = load_config("quickstart", [*TINY, f"data.root={here}", override])
        with pytest.raises(SharpDROError) as exc:
            train(cfg, out_dir=run, resume=True)
        assert f"--resume with {key} = " in str(exc.value) and f"--set {key}={was}" in str(exc.value)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched
    assert job_hash(load_config("quickstart", [*TINY, "train.threads=2"])) == job_hash(_cfg(here))  # same name
    assert train(_cfg(here), out_dir=run, resume=True)["test_accuracy"] == first["test_accuracy"]
