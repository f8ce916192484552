"""End-to-end behaviour of the training engine on the embedded digits (small, CPU)."""
import json

import numpy as np
import pytest
import torch
import yaml

from sharpdro.config import load_config
from sharpdro.data.splits import build_splits
from sharpdro.engine import evaluate_run, train
from sharpdro.errors import SharpDROError, TrainingError
from sharpdro.io import read_jsonl

# 16x16: the digits upsampled (smooth when clean), where the model-free input_hf score separates the noisy ones
TINY = ["data.image_size=16", "data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10",
        "model.width=8", "train.epochs=3", "train.batch_size=40", "train.progress=false", "train.threads=1",
        "eval.batch_size=256"]


def tiny(*extra):
    return load_config("quickstart", [*TINY, *extra])


@pytest.fixture(scope="module")
def splits():
    return build_splits(tiny(), progress=False)


def test_run_directory_contents(tmp_path, splits):
    cfg = tiny("algorithm.name=groupdro")
    summary = train(cfg, out_dir=tmp_path / "run", splits=splits)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    # the config as given, with train.precision: auto made concrete (what this machine ran)
    from sharpdro.backends.torch.amp import resolve_precision

    ran = {**cfg, "train": {**cfg["train"], "precision": resolve_precision(cfg["train"]["precision"], "cpu")}}
    assert yaml.safe_load((run / "config.yaml").read_text()) == ran
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert set(r["val"]["accuracy"]) == {str(s) for s in range(6)}
        assert len(r["q"]) == 6 and abs(sum(r["q"]) - 1) < 1e-5
        assert r["train"]["group_count"]["0"] > 0
    on_disk = json.loads((run / "summary.json").read_text())
    for key in ("algorithm", "dataset", "corruption", "seed", "selected_epoch", "test_accuracy", "test_average",
                "test_worst", "val_accuracy", "val_average", "val_worst"):
        assert key in on_disk
    acc = on_disk["test_accuracy"]
    assert on_disk["test_average"] == pytest.approx(np.mean(list(acc.values())))
    assert on_disk["test_worst"] == pytest.approx(min(acc.values()))
    sel = records[on_disk["selected_epoch"]]
    assert sel["val"]["worst"] == max(r["val"]["worst"] for r in records)
    assert summary["test_accuracy"] == sel["test"]["accuracy"]


@pytest.mark.parametrize("algorithm", ["sharpdro", "jtt", "sharpdro_agnostic"])
def test_resume_equals_uninterrupted(tmp_path, splits, algorithm):
    """Killed after epoch 1 and resumed == uninterrupted (agnostic: the score memory, its labels and the
    selection statistics too, with the selection running from epoch 1)."""
    cfg = tiny(f"algorithm.name={algorithm}", "algorithm.jtt_epochs=1", "model.dropout=0.2",
               "algorithm.warmup_epochs=1", "algorithm.fraction=0.2", "algorithm.refresh_steps=2")
    full = train(cfg, out_dir=tmp_path / "full", splits=splits)
    stop = tmp_path / "stopped"  # the same run, killed right after epoch 1 was checkpointed
    _train_until(cfg, stop, splits, stop_after=1)
    resumed = train(cfg, out_dir=stop, resume=True, splits=splits)
    a = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    b = read_jsonl(stop / "metrics.jsonl")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert resumed["test_accuracy"] == full["test_accuracy"]
    sa = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["algorithm"]
    sb = torch.load(stop / "checkpoints" / "last.pt", weights_only=False)["algorithm"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    if algorithm == "sharpdro_agnostic":
        assert torch.isfinite(sa["score_memory"]).all() and (sa["memory_labels"] >= 0).all()
        assert all("agnostic_selected_severity" in r for r in a[1:])


def test_agnostic_step_never_sees_severity_and_diagnostics_are_recorded(tmp_path, splits, monkeypatch):
    from sharpdro.backends.torch.algorithms.agnostic import SharpDROAgnostic
    from sharpdro.metrics import severity_auroc

    seen = []
    real = SharpDROAgnostic.update

    def spy(self, x, y, groups, idx):
        seen.append(groups)
        return real(self, x, y, groups, idx)

    monkeypatch.setattr(SharpDROAgnostic, "update", spy)
    cfg = tiny("algorithm.name=sharpdro_agnostic", "algorithm.warmup_epochs=1", "algorithm.score=input_hf",
               "algorithm.fraction=0.1")
    train(cfg, out_dir=tmp_path / "run", splits=splits)
    assert seen and all(g is None for g in seen)  # the step's inputs hold no severity label
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for r in records:
        assert 0.0 <= r["agnostic_auroc_train"] <= 1.0 and 0.0 <= r["agnostic_auroc_val"] <= 1.0
    for r in records[1:]:  # after the warm-up epoch
        assert len(r["agnostic_selected_fraction"]) == 6
        assert r["agnostic_selected_severity"] >= 0 and r["agnostic_batch_severity"] >= 0
    assert "agnostic_selected_severity" not in records[0]  # warm-up: nothing selected
    # the memory's AUROC is the one recorded: recompute it from the checkpoint and the split's severities
    from sharpdro.methods.sharpdro_agnostic import class_statistics, normalised

    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["algorithm"]
    mem, lab = state["score_memory"].double().numpy(), state["memory_labels"].numpy()
    z = normalised(mem, lab, class_statistics(mem, lab, 10))
    assert records[-1]["agnostic_auroc_train"] == pytest.approx(severity_auroc(z, splits.train.severity), abs=1e-12)
    # the model-free score separates the noisy digits (severities >= 3 against 0)
    assert records[-1]["agnostic_auroc_train"] > 0.9 and records[-1]["agnostic_auroc_val"] > 0.9


def _train_until(cfg, out, splits, stop_after):
    """Run ``train`` and kill it (KeyboardInterrupt) right after epoch ``stop_after`` is checkpointed."""
    import sharpdro.backends.torch.session as session_mod

    original = session_mod.TorchSession.save_checkpoint

    def save_then_maybe_die(self, path, extra):
        original(self, path, extra)
        if extra["epoch"] == stop_after:
            raise KeyboardInterrupt

    session_mod.TorchSession.save_checkpoint = save_then_maybe_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out_dir=out, splits=splits)
    finally:
        session_mod.TorchSession.save_checkpoint = original
    assert len(read_jsonl(out / "metrics.jsonl")) == stop_after + 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, splits, monkeypatch):
    cfg = tiny("algorithm.name=erm")
    out = tmp_path / "nan"
    _train_until(cfg, out, splits, stop_after=0)
    good = (out / "checkpoints" / "last.pt").read_bytes()
    import torch.nn.functional as F

    real_ce = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg, out_dir=out, resume=True, splits=splits)
    assert (out / "checkpoints" / "last.pt").read_bytes() == good
    assert len(read_jsonl(out / "metrics.jsonl")) == 1


def test_groupdro_refused_without_severity_groups(tmp_path):
    cfg = load_config("quickstart", [*TINY, "data.train_per_class=1", "algorithm.name=groupdro"])
    with pytest.raises(SharpDROError, match="severity group"):
        train(cfg, out_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_existing_run_needs_resume(tmp_path, splits):
    cfg = tiny("train.epochs=1")
    train(cfg, out_dir=tmp_path / "r", splits=splits)
    with pytest.raises(SharpDROError, match="--resume"):
        train(cfg, out_dir=tmp_path / "r", splits=splits)
    with pytest.raises(SharpDROError, match="train.lr"):
        train(load_config("quickstart", [*TINY, "train.epochs=1", "train.lr=0.2"]), out_dir=tmp_path / "r",
              resume=True, splits=splits)


def test_same_seed_same_metrics(tmp_path, splits):
    cfg = tiny("train.epochs=1", "algorithm.name=sam")
    a = train(cfg, out_dir=tmp_path / "a", splits=splits)
    b = train(cfg, out_dir=tmp_path / "b", splits=splits)
    assert a["test_accuracy"] == b["test_accuracy"]
    ra, rb = read_jsonl(tmp_path / "a" / "metrics.jsonl")[0], read_jsonl(tmp_path / "b" / "metrics.jsonl")[0]
    assert ra["train"] == rb["train"]


def test_evaluate_run_matches_training_evaluation(tmp_path, splits):
    cfg = tiny("train.epochs=1")
    summary = train(cfg, out_dir=tmp_path / "r", splits=splits)
    res = evaluate_run(tmp_path / "r", progress=False)
    assert res["test"]["accuracy"] == summary["test_accuracy"]
    other = evaluate_run(tmp_path / "r", ["data.corruption=jpeg_compression"], severities=[0, 5], progress=False)
    assert set(other["test"]["accuracy"]) == {"0", "5"}
    assert other["test"]["accuracy"]["0"] == summary["test_accuracy"]["0"]  # severity 0 is clean either way


def test_cnn7_trains_and_evaluates(tmp_path, splits):
    """One epoch of cnn7 on the 16 px digits: the checkpoint holds a cnn7; evaluating it again gives its figures."""
    from sharpdro.backends.torch.checkpoints import read_checkpoint

    summary = train(tiny("model.name=cnn7", "train.epochs=1"), out_dir=tmp_path / "r", splits=splits)
    record = read_jsonl(tmp_path / "r" / "metrics.jsonl")[0]
    assert np.isfinite(record["train"]["loss"])
    state = read_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["algorithm"]
    assert state["model.stem.0.weight"].shape == (16, 3, 3, 3)  # width 8: the stem's floor of 16 channels
    assert state["model.head.3.weight"].shape == (splits.num_classes, 32)
    assert evaluate_run(tmp_path / "r", progress=False)["test"]["accuracy"] == summary["test_accuracy"]
