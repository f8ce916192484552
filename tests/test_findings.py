"""docs/results/cifar10_cpu/findings.py says the reproduction's paired differences in words; the words are
claims, so they are checked here against the per-seed differences recomputed from committed runs."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from sharpdro.cli import main

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu"


def _findings():
    spec = importlib.util.spec_from_file_location("findings", ROOT / "findings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """The report JSON of the committed 16-epoch runs (ERM, SAM and GroupDRO on seeds 1-3, selected on seed 0)."""
    out = tmp_path_factory.mktemp("findings") / "imagenet_table_table"
    assert main(["report", str(ROOT / "superseded_16_epochs" / "imagenet_table"), "--select-hparams", "worst",
                 "--out", str(out), "--format", "json"]) == 0
    return json.loads(out.with_suffix(".json").read_text())


def test_every_verdict_matches_the_runs(report):
    findings = _findings()
    rows = {e["method"]: {r["seed"]: r for r in e["runs"]} for e in report["rows"]}
    assert report["paired"], "the committed runs give paired differences"
    for p in report["paired"]:
        a, b = rows[p["method"]], rows[p["reference"]]
        d = np.array([a[s][p["metric"]] - b[s][p["metric"]] for s in sorted(set(a) & set(b))])
        half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        lo, hi = d.mean() - half, d.mean() + half
        text = findings.in_words(p)
        assert f"{d.mean():+.2f} points [{lo:+.2f}, {hi:+.2f}], n = {len(d)}" in text
        if lo > 0 or hi < 0:
            assert f"**{p['method'] if d.mean() > 0 else p['reference']} is better**" in text
            # the same difference the other way round names the other row
            mirrored = dict(p, method=p["reference"], reference=p["method"], mean_diff=-p["mean_diff"],
                            ci95=[-p["ci95"][1], -p["ci95"][0]])
            assert f"**{p['method'] if d.mean() > 0 else p['reference']} is better**" in findings.in_words(mirrored)
        else:
            assert "cannot be told from zero" in text and "better" not in text
    assert any(p["excludes_zero"] for p in report["paired"])  # the runs exercise both verdicts


def test_summary_counts_what_excludes_zero(report):
    findings = _findings()
    lines = findings.summary(report)
    told = [p for p in report["paired"] if p["excludes_zero"]]
    (head,) = [ln for ln in lines if ln.startswith("**Distinguishable")]
    assert head.startswith(f"**Distinguishable from zero: {len(told)} of {len(report['paired'])} paired")
    assert f"about {0.05 * len(report['paired']):.1f} would exclude zero by chance" in head
    assert [ln for ln in lines if ln.startswith("- ") and "is better" in ln] == [findings.in_words(p) for p in told]
    # no SharpDRO row in these runs: the question's section says so rather than staying silent
    assert "- no finished SharpDRO row yet" in lines
