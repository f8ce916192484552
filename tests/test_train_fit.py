"""Every run measures the selected weights' fit of its training mixture once (``train_accuracy_by_severity``),
checked here against an independent evaluation of the kept best checkpoint on the same training images."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sharpdro.config import load_config

SET = ["train.epochs=3", "train.progress=false", "train.threads=1", "data.train_per_class=30",
       "data.val_per_class=5", "data.test_per_class=8", "model.width=8", "train.batch_size=30"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("test_mode, sampler", [("every", "uniform"), ("selected", "group_balanced")])
def test_fit_is_the_selected_weights_on_the_training_mixture(tmp_path, test_mode, sampler):
    from sharpdro.backends.base import get_backend
    from sharpdro.data.splits import build_splits
    from sharpdro.engine import train

    cfg = load_config("quickstart", SET + [f"eval.test={test_mode}", "algorithm.name=groupdro",
                                           f"data.sampler={sampler}"])
    summary = train(cfg, tmp_path / "run")
    fit, counts = summary["train_accuracy_by_severity"], summary["train_count_by_severity"]
    splits = build_splits(cfg)
    sev = splits.train.severity
    assert counts == {str(s): int((sev == s).sum()) for s in np.unique(sev)}
    # independently: the kept best checkpoint (the selected epoch) on the same images
    session, _ = get_backend("torch").load_for_inference(tmp_path / "run" / "checkpoints" / "best.pt")
    pred = session.predict_logits(splits.train.images, 64).argmax(1)
    correct = pred == splits.train.labels
    for s in np.unique(sev):
        assert fit[str(s)] == pytest.approx(correct[sev == s].mean(), abs=1e-12)
    assert summary["train_accuracy_mixture"] == pytest.approx(correct.mean(), abs=1e-12)
    # the selected epoch's record holds it, so a resume of the finished run keeps it without evaluating again
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    held = [r["epoch"] for r in records if "train_fit" in r]
    assert held == [summary["selected_epoch"]]
    again = train(cfg, tmp_path / "run", resume=True)
    assert again["train_accuracy_by_severity"] == fit


def test_without_save_best_the_fit_is_measured_and_the_checkpoint_removed(tmp_path, one_thread):
    from sharpdro.engine import train

    cfg = load_config("quickstart", SET + ["output.save_best=false"])
    summary = train(cfg, tmp_path / "run")
    assert set(summary["train_accuracy_by_severity"]) == set(summary["train_count_by_severity"])
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
