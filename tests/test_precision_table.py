"""The bf16 equivalence runs (docs/results/cifar10_cpu/precision): the committed table is what the runs give,
each interval recomputes from the summaries by an independent path, and each bf16 run is paired with the fp32
run of the same config."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from script_loader import load_script

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu"
pytestmark = pytest.mark.skipif(not (HERE / "precision_table.json").exists(),
                                reason="the precision runs' table is not committed yet")


def _module():
    return load_script(HERE / "precision_table.py")


def test_committed_table_is_the_committed_runs(tmp_path):
    _module().write(HERE, tmp_path)
    for name in ("precision_table.md", "precision_table.csv", "precision_table.json"):
        assert (tmp_path / name).read_bytes() == (HERE / name).read_bytes(), name


def _metric(summary, key):
    return 100 * (summary["test_accuracy"]["0"] if key.startswith("clean") else
                  summary["test_average"] if key.startswith("averaged") else summary["test_worst"])


def test_every_interval_recomputes_from_the_summaries():
    committed = json.loads((HERE / "precision_table.json").read_text())
    rows = committed["rows"]
    assert {r["method"] for r in rows} == {"ERM", "SharpDRO"} and len(rows) == 6
    for r in rows:
        assert len(r["seeds"]) == 3
        b = [json.loads((HERE / "precision" / h / "summary.json").read_text()) for h in r["bf16_runs"]]
        f = [json.loads((HERE / "imagenet_table" / h / "summary.json").read_text()) for h in r["fp32_runs"]]
        assert [s["seed"] for s in b] == [s["seed"] for s in f] == r["seeds"]
        d = np.array([_metric(x, r["metric"]) - _metric(y, r["metric"]) for x, y in zip(b, f)])
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        assert r["mean_difference"] == pytest.approx(d.mean(), abs=1e-9)
        assert r["low"] == pytest.approx(d.mean() - half, abs=1e-9)
        assert r["high"] == pytest.approx(d.mean() + half, abs=1e-9)
    harmed = [r for r in rows if r["high"] < -committed["harm_threshold_points"]]
    assert ("keep fp32" in committed["verdict"]) == bool(harmed)


def test_each_bf16_run_differs_from_its_partner_in_precision_alone():
    for r in json.loads((HERE / "precision_table.json").read_text())["rows"]:
        for hb, hf in zip(r["bf16_runs"], r["fp32_runs"]):
            cb = yaml.safe_load((HERE / "precision" / hb / "config.yaml").read_text())
            cf = yaml.safe_load((HERE / "imagenet_table" / hf / "config.yaml").read_text())
            assert cb["train"].pop("precision") == "bf16" and cf["train"].pop("precision") == "fp32"
            for c in (cb, cf):  # where the data lay and how many threads ran do not change what is computed
                c["data"].pop("root")
                c["train"].pop("threads")
                c.get("output", {}).clear()
            assert cb == cf


def test_the_verdict_follows_the_one_point_rule():
    mod = _module()
    row = {"method": "ERM", "metric": "worst severity", "seeds": [1, 2, 3], "mean_difference": -2.0, "low": -3.0}
    assert "keep fp32" in mod.verdict([{**row, "high": -1.2}])
    said = mod.verdict([{**row, "high": -0.8}, {**row, "method": "SharpDRO", "low": -12.34, "high": 5.0,
                                                   "mean_difference": 0.5}])
    assert "may train in bf16" in said and "ERM -3.0, SharpDRO -12.3" in said and "1 of the 2" in said
