"""docs/results/cifar10_cpu/findings.py says the reproduction's paired differences in words and writes the README's
tables; the words, tables and the intervals typed into the READMEs are claims, so they are checked here against
what the committed runs give."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from sharpdro.cli import main

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu"


def _findings():
    return load_script(ROOT / "findings.py")


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


@pytest.fixture(scope="module")
def committed_reports(tmp_path_factory) -> dict:
    """The report JSON of each cifar10_cpu arm, rebuilt from its committed run folders (as report.sh does)."""
    out = tmp_path_factory.mktemp("committed")
    reports = {}
    for arm in _findings().ARMS:
        if (ROOT / arm / "sweep.json").is_file():
            assert main(["report", str(ROOT / arm), "--select-hparams", "worst", "--out", str(out / arm),
                         "--format", "json"]) == 0
            reports[arm] = json.loads((out / f"{arm}.json").read_text())
    return reports


def test_readme_tables_are_the_committed_runs(committed_reports):
    """Each generated table in the reproduction's README is what findings.py builds from the committed runs
    today: a number typed by hand, or left from an earlier state of the runs, fails here."""
    findings = _findings()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    markers = [ln for ln in text.splitlines() if ln.startswith("<!-- findings.py:")]
    assert findings.HEADLINE in markers and len(markers) >= 2
    rebuilt, done = findings.render_readme(text, committed_reports)
    assert sorted(done) == sorted(markers), "a README table names a combination the committed runs do not complete"
    assert rebuilt == text


def test_table_beside_the_original_against_the_rows(committed_reports):
    """Each cell of the table beside the original README's is that method's averaged accuracy in that arm (mean and
    t-interval over its finished seeds), beside the original's number for the methods it reports; variants are
    left out."""
    findings = _findings()
    lines = findings.original_table(committed_reports)
    arms = [arm for arm, _, _ in findings.complete_combinations(committed_reports)]
    arms = list(dict.fromkeys(arms))
    n_rows = 0
    for line in lines[2:]:
        kind, method, original, *ours = (c.strip() for c in line.strip("|").split("|"))
        assert original == findings.ORIGINAL.get((kind, method), "–")
        for arm, cell in zip(arms, ours, strict=True):
            (e,) = [e for e in committed_reports[arm]["rows"] if e["method"] == method and e["type"] == kind]
            assert not e.get("variant")
            v = np.array([r["average"] for r in e["runs"] if r["status"] == "done"])
            half = student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
            mean, lo, hi = (float(x) for x in cell.replace("[", "").replace("]", "").replace(",", "").split())
            assert (mean, lo, hi) == pytest.approx((v.mean(), v.mean() - half, v.mean() + half), abs=0.051)
        n_rows += 1
    assert n_rows >= 6 and sum(line.count(" ± ") for line in lines) >= 6  # the original's six CIFAR10 rows


def test_combination_table_against_the_rows(committed_reports):
    """Clean, most severe, gap and training accuracy as the table prints them, from the per-run numbers."""
    findings = _findings()
    report = committed_reports["imagenet_table"]
    lines = findings.combination_table(report, "gaussian_noise")
    rows = [e for e in report["rows"] if e["corruption"] == "gaussian_noise"]
    assert len(lines) == 2 + len(rows)
    for line, e in zip(lines[2:], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        done = [r for r in e["runs"] if r["status"] == "done"]
        clean = np.mean([r["accuracy"]["0"] for r in done])
        severe = np.mean([r["accuracy"]["5"] for r in done])
        assert cells[0] == e["method"] and cells[-1] == str(len(done))
        assert float(cells[4]) == pytest.approx(clean, abs=0.051)
        assert float(cells[5]) == pytest.approx(severe, abs=0.051)
        assert float(cells[6]) == pytest.approx(clean - severe, abs=0.11)
        assert float(cells[7]) == pytest.approx(np.mean([r["train_accuracy"] for r in done]), abs=0.051)
        mean, lo, hi = (float(x) for x in cells[3].replace("[", "").replace("]", "").replace(",", "").split())
        worst = np.array([r["worst"] for r in done])
        half = student_t.ppf(0.975, len(worst) - 1) * worst.std(ddof=1) / math.sqrt(len(worst))
        assert (mean, lo, hi) == pytest.approx((worst.mean(), worst.mean() - half, worst.mean() + half), abs=0.051)


INTERVAL = re.compile(r"([−+-]?\d+\.\d) \[([−+-]?\d+\.\d), ([−+-]?\d+\.\d)\]")


def _computed_intervals(reports: dict) -> list[tuple[float, float, float]]:
    """Every mean [95% t-interval] the committed runs give in a complete combination: each row's average,
    worst and per-severity accuracy, and each ordered pair of rows' per-seed differences of the same."""
    findings = _findings()
    out = []

    def interval(values):
        v = np.asarray(values, dtype=float)
        half = student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
        out.append((v.mean(), v.mean() - half, v.mean() + half))

    precision = ROOT / "precision_table.json"
    if precision.is_file():  # bf16 - fp32 paired by seed (tests/test_precision_table.py recomputes each from runs)
        for row in json.loads(precision.read_text())["rows"]:
            interval(row["differences"])
    scale = ROOT / "scale_study.json"
    if scale.is_file():  # the scale study's paired differences (tests/test_scale_study.py recomputes each from runs)
        for row in json.loads(scale.read_text())["paired"]:
            if len(row["differences"]) >= 2:
                interval(row["differences"])
    for arm, _, rows in findings.complete_combinations(reports):
        per_seed = [{r["seed"]: {"average": r["average"], "worst": r["worst"], **r["accuracy"]}
                     for r in e["runs"] if r["status"] == "done"} for e in rows]
        metrics = ["average", "worst", *map(str, reports[arm]["severities"])]
        for a in per_seed:
            for m in metrics:
                interval([a[s][m] for s in sorted(a)])
            for b in per_seed:
                seeds = sorted(set(a) & set(b))
                if a is not b and len(seeds) >= 2:
                    for m in metrics:
                        interval([a[s][m] - b[s][m] for s in seeds])
    return out


def test_every_interval_in_the_prose_is_one_the_runs_give(committed_reports):
    """Each 'x [lo, hi]' the reproduction's README and the top-level README write (a mean or a paired
    difference with its interval, typed into sentences) is one the committed runs give, to the printed
    decimal. A typo, or a number left from an earlier state of the runs, fails here."""
    computed = np.array(_computed_intervals(committed_reports))
    assert len(computed) > 100
    checked = 0
    for path in (ROOT / "README.md", ROOT.parents[2] / "README.md"):
        text = " ".join(path.read_text(encoding="utf-8").split())  # intervals wrapped over two lines too
        for match in INTERVAL.finditer(text):
            shown = np.array([float(x.replace("−", "-")) for x in match.groups()])
            close = np.all(np.abs(computed - shown) <= 0.05 + 1e-6, axis=1)
            assert close.any(), f"{path.name}: '{match.group(0)}' is no mean or paired difference of the runs"
            checked += 1
    assert checked >= 40


def test_committed_findings_are_the_committed_tables(capsys):
    """findings.md is what findings.py says of the committed report JSON (which test_report rebuilds byte for byte
    from the runs): a verdict edited by hand, or left from an earlier table, fails here."""
    if not (ROOT / "findings.md").is_file():
        pytest.skip("no committed findings.md")
    assert _findings().main([str(ROOT)]) == 0
    assert capsys.readouterr().out == (ROOT / "findings.md").read_text(encoding="utf-8")
