"""docs/results/cifar10_cpu/scale_study.py (issue 27) compares the methods across regimes of data size and length.
Its tables, verdict and README blocks are claims: each number is recomputed here from the run folders, found
independently of the script (by the runs' own config.yaml, not by job identity), and its verdict logic is
checked on runs made up to change sign."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from sharpdro.config import read_yaml

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu"


def _study():
    return load_script(ROOT / "scale_study.py")


def _independent_runs() -> dict[tuple[str, str, int], dict]:
    """(regime, method, seed) -> summary of every finished run of the study, read from the folders: the scale
    sweeps' runs, and the arm's Gaussian final runs of each method's selected configuration (no variant)."""
    out = {}
    for folder in sorted((ROOT / "scale").glob("scale_*/*/done")):
        cfg = read_yaml(folder.parent / "config.yaml")
        key = f"n{cfg['data']['train_per_class']}_e{cfg['train']['epochs']}"
        assert folder.parent.parent.name == f"scale_{key}", folder
        out[key, cfg["algorithm"]["name"], cfg["seed"]] = json.loads((folder.parent / "summary.json").read_text())
    jobs = json.loads((ROOT / "imagenet_table" / "sweep.json").read_text())["jobs"]
    for h, job in jobs.items():
        o = job["overrides"]
        if "data.corruption=gaussian_noise" not in o or "seed=0" in o or job.get("variant_of"):
            continue
        cfg = read_yaml(ROOT / "imagenet_table" / h / "config.yaml")
        key = ("n500_e20", cfg["algorithm"]["name"], cfg["seed"])
        assert key not in out, f"two final runs of {key}"
        out[key] = json.loads((ROOT / "imagenet_table" / h / "summary.json").read_text())
    return out


def _interval(values):
    v = np.asarray(values, dtype=float)
    half = student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


@pytest.fixture(scope="module")
def built():
    study = _study()
    return study, *study.build(ROOT)


def test_the_runs_found_by_identity_are_the_runs_in_the_folders(built):
    study, found, _ = built
    independent = _independent_runs()
    assert {(r["regime"], r["method"], r["seed"]) for r in found["runs"]} == set(independent)
    assert len([k for k in independent if k[0] == "n500_e20"]) == 21  # the committed arm: 7 methods x 3 seeds
    for r in found["runs"]:
        s = independent[r["regime"], r["method"], r["seed"]]
        assert r["worst"] == pytest.approx(100 * s["test_worst"], abs=1e-9)
        assert r["average"] == pytest.approx(100 * s["test_average"], abs=1e-9)
        if "train_accuracy_mixture" in s:  # the engine's own mixture weighting of the evaluated fit
            assert r["fit_source"] == "evaluated"
            assert r["fit_mixture"] == pytest.approx(100 * s["train_accuracy_mixture"], abs=1e-9)
        else:
            assert r["fit_source"] == "stream"
    assert found["expected"] == {k: 21 for k, _, _ in study.REGIMES}


def test_every_paired_difference_against_a_direct_computation(built):
    study, found, table = built
    runs = _independent_runs()
    checked = 0
    for p in table:
        a = {s: 100 * runs[k][f"test_{p['metric']}"] for k in runs if k[:2] == (p["regime"], p["method"])
             for s in [k[2]]}
        b = {s: 100 * runs[k][f"test_{p['metric']}"] for k in runs if k[:2] == (p["regime"], p["reference"])
             for s in [k[2]]}
        seeds = sorted(set(a) & set(b))
        assert p["seeds"] == seeds
        if len(seeds) >= 2:
            mean, lo, hi = _interval([a[s] - b[s] for s in seeds])
            assert (p["mean"], p["low"], p["high"]) == pytest.approx((mean, lo, hi), abs=1e-9)
            assert p["excludes_zero"] == (lo > 0 or hi < 0)
            checked += 1
    assert checked >= 18  # at least the committed (500, 20) regime's 3 methods x 3 references x 2 metrics


def test_sharpdro_final_q_of_severity_5_is_the_last_epochs(built):
    _, found, _ = built
    for r in found["runs"]:
        if r["method"] != "sharpdro":
            continue
        folder = ROOT / r["run"] if r["regime"] == "n500_e20" else ROOT / "scale" / r["run"]
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        assert r["q_top"] == last["q"][5]
        assert 0 < r["q_top"] < 1


def test_committed_files_are_what_the_script_writes(built, tmp_path):
    study, _, _ = built
    if not (ROOT / "scale_study.md").is_file():
        pytest.skip("no committed scale study")
    study.write(ROOT, tmp_path, plot=False)
    for name in ("scale_study.md", "scale_study.csv", "scale_study.json"):
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_readme_blocks_are_the_committed_runs(built):
    """The README section and the top-level headline are what the script builds from the committed runs today."""
    study, found, table = built
    for path in (ROOT / "README.md", ROOT.parents[2] / "README.md"):
        text = path.read_text(encoding="utf-8")
        marker = study.SECTION if path.parent == ROOT else study.HEADLINE
        assert marker in text, path
        assert study.render(text, found, table) == text, f"{path}: rerun scale_study.py --update-readme"


def test_the_figure_is_drawn_from_the_study(built, tmp_path):
    study, found, table = built
    path = study.figure(found, table, tmp_path / "scale_dose_response.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ROOT / "plots" / "scale_dose_response.png").is_file()


# ------------------------------------------------------------------------------- the verdict's logic

def _made_up(study, worst_diff: dict, q5: float) -> dict:
    """Complete regimes of made-up runs: every method 3 seeds; SharpDRO's worst severity is ERM's plus
    worst_diff[regime] + a small per-seed wobble; every other method equals ERM."""
    runs = []
    for key, _, _ in study.REGIMES:
        for m in study.METHODS:
            for seed in (1, 2, 3):
                base = 40.0 + seed
                worst = base + (worst_diff[key] + 0.1 * (seed - 2) if m == "sharpdro" else 0.0)
                runs.append({"regime": key, "method": m, "seed": seed, "run": f"x/{key}{m}{seed}",
                             "worst": worst, "average": 50.0 + seed, "fit": {str(s): 90.0 for s in range(6)},
                             "fit_source": "evaluated", "fit_mixture": 90.0,
                             "counts": {"0": 10, "1": 10, "2": 5, "3": 2, "4": 1, "5": 1},
                             "q_top": q5 if m in ("sharpdro", "groupdro") else None, "minutes": 1.0})
    return {"runs": runs, "expected": {k: 21 for k, _, _ in study.REGIMES}, "pending": []}


def test_verdict_says_a_sign_change_and_where_an_interval_excludes_zero():
    study = _study()
    made = _made_up(study, {"n500_e20": -1.0, "n2000_e20": 0.0, "n4000_e20": 2.0, "n500_e60": -0.5}, 1e-7)
    table = study.paired(made["runs"])
    lines = study.verdict(made, table)
    (erm_worst,) = [ln for ln in lines if ln.startswith("- SharpDRO − ERM, worst severity")]
    assert "changes sign" in erm_worst
    # every regime's difference has spread 0.1 per seed: all four exclude zero but the one near zero
    assert "excludes zero at (500, 20) (ERM better), (4000, 20) (SharpDRO better), (500, 60) (ERM better)" \
        in erm_worst
    (erm_avg,) = [ln for ln in lines if ln.startswith("- SharpDRO − ERM, averaged")]
    assert "no interval excludes zero" in erm_avg
    (q,) = [ln for ln in lines if "final q of severity 5" in ln]
    assert "below 0.001 in 3 of 3" in q
    # JTT and EIIL equal ERM here, so SharpDRO's worst-severity difference against each of the three changes sign
    # with an interval on each side of zero, and starts to favour SharpDRO beyond (500, 20); nothing else moves
    (short,) = [ln for ln in lines if ln.startswith("- **In short**")]
    three = "(SharpDRO − ERM worst severity; SharpDRO − JTT worst severity; SharpDRO − EIIL worst severity)"
    assert f"3 of the 18 differences change sign, 3 of them with an interval on each side of zero {three}" in short
    assert f"3 start to exclude zero in the method's favour beyond (500, 20) {three}" in short
    assert "about 0.9 per regime would exclude zero by chance" in short
    head = study.headline(made, table)
    assert head.startswith("Toward the paper's data size the answer changes: SharpDRO − ERM at the worst severity "
                           "is +2.0 [")
    assert "in 1 of the 4 regimes ((4000, 20))" in head


def test_the_headline_reads_the_paper_sized_regime_not_the_most_favourable_one():
    study = _study()
    made = _made_up(study, {"n500_e20": -1.0, "n2000_e20": 3.0, "n4000_e20": 0.0, "n500_e60": 2.0}, 0.2)
    head = study.headline(made, study.paired(made["runs"]))
    assert head.startswith("Toward the paper's data size the answer does not change: SharpDRO − ERM at the worst "
                           "severity is +0.0 [")
    assert "at (4000, 20) against -1.0 [" in head
    assert "in 2 of the 4 regimes ((2000, 20), (500, 60))" in head
    # favoured at (500, 20) already: a lead that holds is not one that starts
    made = _made_up(study, {"n500_e20": 2.0, "n2000_e20": 3.0, "n4000_e20": 1.0, "n500_e60": 2.0}, 0.2)
    (short,) = [ln for ln in study.verdict(made, study.paired(made["runs"])) if ln.startswith("- **In short**")]
    assert "0 of the 18 differences change sign, 0 of them with an interval on each side of zero; 0 start" in short


def test_partial_regimes_give_no_verdict():
    study = _study()
    made = _made_up(study, {"n500_e20": -1.0, "n2000_e20": 1.0, "n4000_e20": 2.0, "n500_e60": 0.0}, 0.2)
    made["runs"] = [r for r in made["runs"] if r["regime"] == "n500_e20" or r["seed"] == 1]
    lines = study.verdict(made, study.paired(made["runs"]))
    assert lines[0].startswith("**No verdict yet**")
    assert not any(ln.startswith("- SharpDRO − ERM") for ln in lines)
    assert "under way" in study.headline(made, study.paired(made["runs"]))


def test_hours_to_go_use_the_regimes_own_minutes_else_the_scaled_arm():
    study = _study()
    made = _made_up(study, {k: 0.0 for k, _, _ in study.REGIMES}, 0.2)
    for r in made["runs"]:
        r["minutes"] = {"n500_e20": 4.0, "n2000_e20": 20.0}.get(r["regime"], 1.0)
    keep = [r for r in made["runs"] if not (r["regime"] == "n2000_e20" and r["seed"] == 3)
            and not (r["regime"] == "n4000_e20" and r["method"] == "jtt")]
    made["pending"] = [[r["regime"], r["method"], r["seed"]] for r in made["runs"] if r not in keep]
    made["runs"] = keep
    # 7 jobs at (2000, 20) at their own 20 minutes; 3 JTT jobs at (4000, 20) at 4 minutes x 8 (images x epochs)
    assert study.to_go_hours(made) == pytest.approx((7 * 20 + 3 * 4 * 8) / 60)
    assert f"The 10 runs to go would take about {(7 * 20 + 3 * 32) / 60:.0f} more" in study.status(made)


def test_status_names_the_machines_when_the_minutes_mix_them():
    """Minutes per run are only comparable on one machine: when the scale runs come from CPUs of more than one
    kind, the status says how many ran on each (the (500, 20) arm's runs are not scale runs, so not counted)."""
    study = _study()
    made = _made_up(study, {k: 0.0 for k, _, _ in study.REGIMES}, 0.2)
    for r in made["runs"]:
        r["machine"] = "CPU AVX512"
    assert "more than one kind of machine" not in study.status(made)
    scale = [r for r in made["runs"] if r["regime"] != "n500_e20"]
    for r in scale[:1]:
        r["machine"] = "CPU AVX2"
    for r in made["runs"]:
        if r["regime"] == "n500_e20":
            r["machine"] = "not recorded"
    assert (f"CPU AVX2 1 run, CPU AVX512 {len(scale) - 1} runs; a run's minutes depend on its machine."
            in study.status(made))
