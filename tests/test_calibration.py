"""ECE (15 bins), NLL and Brier score against direct computations; their place in evaluations and summaries."""
import json

import numpy as np
import pytest

from sharpdro.calibration import (brier_score, calibration, expected_calibration_error, finish_sums,
                                  negative_log_likelihood, score_sums, softmax)
from sharpdro.data.types import LabeledArrays
from sharpdro.engine import evaluate_sets


def _direct(logits, labels):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        inside = [i for i in range(len(labels)) if (lo < conf[i] <= hi) or (m == 0 and conf[i] <= hi)]
        if inside:
            acc = np.mean([pred[i] == labels[i] for i in inside])
            ece += len(inside) / len(labels) * abs(acc - np.mean(conf[inside]))
    nll = -np.mean([np.log(p[i, labels[i]]) for i in range(len(labels))])
    brier = np.mean([sum((p[i, k] - (k == labels[i])) ** 2 for k in range(p.shape[1])) for i in range(len(labels))])
    return ece, nll, brier, np.mean(pred == labels)


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_against_direct_computation(scale):
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(500, 7)) * scale).astype(np.float32)
    labels = rng.integers(0, 7, 500)
    ece, nll, brier, acc = _direct(logits, labels)
    got = calibration(logits, labels)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["nll"] == pytest.approx(nll, rel=1e-9)
    assert got["brier"] == pytest.approx(brier, rel=1e-9)
    assert got["accuracy"] == pytest.approx(acc)
    p = softmax(logits)
    assert expected_calibration_error(p, labels) == pytest.approx(ece, abs=1e-12)
    assert negative_log_likelihood(p, labels) == pytest.approx(nll, rel=1e-9)
    assert brier_score(p, labels) == pytest.approx(brier, rel=1e-9)


def test_known_values():
    # two images, certain and right / uniform over 2 classes and wrong-by-tie
    logits = np.array([[100.0, 0.0], [0.0, 0.0]])
    got = calibration(logits, np.array([0, 1]))
    assert got["accuracy"] == 0.5  # the tie predicts class 0
    assert got["nll"] == pytest.approx(np.log(2) / 2)
    assert got["brier"] == pytest.approx((0.0 + 0.5) / 2)
    # bin (14/15, 1]: conf 1, acc 1 -> 0; bin (7/15, 8/15]: conf 0.5, acc 0 -> 0.5 * 1/2
    assert got["ece"] == pytest.approx(0.25)


def test_sums_add_over_shards():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(300, 5)) * 3, rng.integers(0, 5, 300)
    whole = finish_sums(score_sums(logits, labels))
    parts = finish_sums(score_sums(logits[::2], labels[::2]) + score_sums(logits[1::2], labels[1::2]))
    for k in ("accuracy", "nll", "brier", "ece"):
        assert parts[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-12)


class _FakeSession:
    def __init__(self, logits):
        self.logits = logits

    def predict_logits(self, images, batch_size):
        return self.logits[images[:, 0, 0, 0].astype(np.int64)]


def test_evaluate_sets_reports_calibration_per_severity():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(50, 4)).astype(np.float32) * 2
    images = np.zeros((50, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(50)
    labels = rng.integers(0, 4, 50)
    sets = {s: LabeledArrays(images, labels, np.full(50, s)) for s in (0, 3)}
    block = evaluate_sets(_FakeSession(logits), sets, batch_size=7)
    ref = calibration(logits, labels)
    for key in ("ece", "nll", "brier"):
        assert block[key]["3"] == pytest.approx(ref[key])
    assert block["loss"]["0"] == pytest.approx(ref["nll"])
    assert block["accuracy"]["0"] == pytest.approx(ref["accuracy"]) and block["average"] == pytest.approx(ref["accuracy"])


def test_summary_holds_calibration(tmp_path):
    from sharpdro.config import load_config
    from sharpdro.engine import train

    cfg = load_config("quickstart", ["data.train_per_class=30", "data.val_per_class=3", "data.test_per_class=5",
                                     "model.width=8", "train.epochs=1", "train.batch_size=50",
                                     "train.progress=false", "train.threads=1"])
    summary = train(cfg, out_dir=tmp_path / "r")
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in ("test_ece", "test_nll", "test_brier"):
        assert set(on_disk[key]) == {str(s) for s in range(6)}
        assert on_disk[f"{key}_average"] == pytest.approx(np.mean(list(on_disk[key].values())))
    assert summary["test_nll"] == on_disk["test_nll"]
    assert all(0.0 <= v <= 1.0 for v in on_disk["test_ece"].values())


def test_report_calibration_columns_are_optional(tmp_path):
    import csv
    import io

    import yaml

    from sharpdro.config import load_config
    from sharpdro.experiments import report as rp
    from sharpdro.experiments import report_formats as rf
    from sharpdro.metrics import summarize

    def block(acc, ece):
        a = {str(i): v for i, v in enumerate(acc)}
        b = {"accuracy": a, "loss": {k: 1.0 for k in a}, **summarize(a)}
        b.update(ece={str(i): ece for i in range(len(acc))}, nll={str(i): 2 * ece for i in range(len(acc))},
                 brier={str(i): 3 * ece for i in range(len(acc))})
        return b

    root = tmp_path / "sweep"
    base = ["data.dataset=cifar10", "data.max_severity=1", "algorithm.name=erm"]
    for seed, ece in ((0, 0.10), (1, 0.20)):
        rec = {"epoch": 0, "lr": 0.1, "train": {"loss": 1.0}, "val": block([0.8, 0.6], ece),
               "test": block([0.8, 0.6], ece)}
        d = root / f"run{seed}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump(load_config(None, base + [f"seed={seed}"])))
        (d / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
        (d / "summary.json").write_text(json.dumps({"finished": True}))
    plain = rp.collect(root)
    assert "ECE" not in rf.to_markdown(plain) and "ece_mean" not in rf.to_csv(plain)
    table = rp.collect(root, calibration=True)
    row = next(csv.DictReader(io.StringIO(rf.to_csv(table))))
    assert float(row["ece_mean"]) == pytest.approx(15.0) and float(row["nll_mean"]) == pytest.approx(0.3)
    assert float(row["brier_std"]) == pytest.approx(np.std([0.3, 0.6], ddof=1), abs=1e-4)
    md = rf.to_markdown(table)
    assert "| ECE (%) | NLL | Brier |" in md and "15.00 ± 7.07" in md
    assert "ECE (\\%)" in rf.to_latex(table)
    assert rf.to_dict(table)["rows"][0]["ece"]["mean"] == pytest.approx(15.0)


def test_evaluate_command_prints_calibration(tmp_path, capsys):
    from sharpdro.cli import main
    from sharpdro.config import load_config
    from sharpdro.engine import train

    cfg = load_config("quickstart", ["data.train_per_class=30", "data.val_per_class=3", "data.test_per_class=5",
                                     "model.width=8", "train.epochs=1", "train.batch_size=50",
                                     "train.progress=false", "train.threads=1"])
    train(cfg, out_dir=tmp_path / "r")
    out_json = tmp_path / "e.json"
    assert main(["evaluate", str(tmp_path / "r"), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "ECE (%)" in out and "Brier" in out
    res = json.loads(out_json.read_text())
    assert set(res["test"]["ece"]) == {str(s) for s in range(6)}
