"""Report tables: selection rules, mean ± sample std, missing/failed runs, determinism, formats."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.experiments import report as rp
from sharpdro.experiments import report_formats as rf
from sharpdro.experiments import sweep as sw
from sharpdro.metrics import summarize


def _block(acc: list[float]) -> dict:
    a = {str(i): v for i, v in enumerate(acc)}
    return {"accuracy": a, "loss": {k: 1.0 for k in a}, **summarize(a)}


def write_run(root: Path, overrides: list[str], test_acc: list[float], epochs: int = 3, status: str = "done",
              records: list[dict] | None = None) -> Path:
    """A run folder as the engine writes it; the last epoch has ``test_acc`` and is selected by every rule."""
    cfg = load_config(None, overrides)
    d = root / sw.job_hash(cfg)
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if records is None:
        records = []
        for e in range(epochs):
            acc = test_acc if e == epochs - 1 else [x - 0.1 for x in test_acc]
            records.append({"epoch": e, "lr": 0.1, "train": {"loss": 1.0 / (e + 1)}, "q": [1 / len(acc)] * len(acc),
                            "val": _block(acc), "test": _block(acc)})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status == "done":
        (d / "summary.json").write_text(json.dumps({"finished": True}))
        (d / "done").write_text("{}")
    elif status == "failed":
        (d / "error.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n")
    return d


ACC = {  # seed -> per-severity test accuracy (S = 2)
    0: [0.90, 0.80, 0.70],
    1: [0.92, 0.84, 0.66],
    2: [0.88, 0.76, 0.73],
}
BASE = ["data.dataset=cifar10", "data.corruption=gaussian_noise", "data.max_severity=2"]


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seed, acc in ACC.items():
        write_run(root, BASE + ["algorithm.name=sharpdro", f"seed={seed}"], acc)
        write_run(root, BASE + ["algorithm.name=erm", f"seed={seed}"], [a - 0.05 for a in acc])
    return root


def test_mean_and_sample_std_match_hand_computation(sweep_dir):
    table = rp.collect(sweep_dir)
    assert [r.method for r in table.rows] == ["ERM", "SharpDRO"]  # baselines first
    row = table.rows[1]
    averages = [100 * sum(a) / 3 for a in ACC.values()]  # 80.0, 80.666.., 79.0
    m = sum(averages) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in averages) / 2)  # ddof = 1
    got_m, got_sd, n = row.stat("average")
    assert n == 3 and got_m == pytest.approx(m, abs=1e-9) and got_sd == pytest.approx(sd, abs=1e-9)
    worsts = [70.0, 66.0, 73.0]
    wm = sum(worsts) / 3
    assert row.stat("worst")[0] == pytest.approx(wm)
    assert row.stat("worst")[1] == pytest.approx(math.sqrt(sum((x - wm) ** 2 for x in worsts) / 2))
    sev1 = [80.0, 84.0, 76.0]
    assert row.stat(1)[:2] == pytest.approx((80.0, 4.0))
    md = rf.to_markdown(table)
    assert f"| CIFAR10 | Gaussian | SharpDRO | {m:.2f} ± {sd:.2f} | {wm:.2f} ± " in md
    assert "| 80.00 ± 4.00 |" in md and "ddof=1" in md and sev1
    assert md.splitlines()[2].startswith("| Data | Type | Method | Averaged accuracy (%) |")


def test_mean_std_helper():
    assert rp.mean_std([]) == (None, None)
    assert rp.mean_std([0.5]) == (0.5, None)
    m, s = rp.mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(1.5275252316519468)


def test_each_selection_rule_picks_its_epoch(tmp_path):
    # epoch: val worst, val avg, test worst, test avg are each best at a different epoch
    def rec(e, val, test):
        return {"epoch": e, "train": {"loss": 1.0}, "val": _block(val), "test": _block(test)}

    records = [
        rec(0, [0.5, 0.5], [0.9, 0.1]),  # test average best (0.50 ... tie broken below)
        rec(1, [0.6, 0.6], [0.4, 0.4]),  # val worst best (0.6)
        rec(2, [0.99, 0.3], [0.45, 0.45]),  # val average best (0.645); test worst best (0.45)
        rec(3, [0.5, 0.2], [0.95, 0.2]),  # test average best (0.575)
        rec(4, [0.1, 0.1], [0.1, 0.1]),  # last evaluated
        {"epoch": 5, "train": {"loss": 1.0}},  # not evaluated
    ]
    run_dir = write_run(tmp_path, ["data.max_severity=1"], [0, 0], records=records)
    expected = {"worst": 1, "average": 2, "last": 4, "oracle_worst": 2, "oracle_average": 3}
    for rule, epoch in expected.items():
        run = rp.load_run(run_dir, rule)
        assert run.selected["epoch"] == epoch, rule
        assert run.accuracy == {0: records[epoch]["test"]["accuracy"]["0"], 1: records[epoch]["test"]["accuracy"]["1"]}


def test_resumed_metrics_keep_the_last_line_of_each_epoch(tmp_path):
    def rec(e, acc):
        return {"epoch": e, "val": _block(acc), "test": _block(acc)}

    records = [rec(0, [0.5, 0.5]), rec(1, [0.9, 0.9]), rec(1, [0.6, 0.6]), rec(2, [0.55, 0.55])]
    run = rp.load_run(write_run(tmp_path, ["data.max_severity=1"], [0, 0], records=records), "worst")
    assert run.selected["epoch"] == 1 and run.average == pytest.approx(0.6)


def test_missing_unfinished_and_failed_runs_are_explicit(sweep_dir):
    cfg_missing = load_config(None, BASE + ["algorithm.name=sharpdro", "seed=3"])
    job = sw.Job(sw.job_hash(cfg_missing), cfg_missing, (), ())
    sw.write_index(sweep_dir, [job])
    failed = write_run(sweep_dir, BASE + ["algorithm.name=sharpdro", "seed=4"], [0, 0, 0], status="failed")
    write_run(sweep_dir, BASE + ["algorithm.name=sharpdro", "seed=5"], [0, 0, 0], status="partial")
    table = rp.collect(sweep_dir)
    row = table.rows[1]
    assert row.n_text() == "3/6 seeds; 1 failed; 1 unfinished; 1 not started"
    assert row.stat("average")[2] == 3  # only finished runs enter the means
    md = rf.to_markdown(table)
    assert "3/6 seeds; 1 failed; 1 unfinished; 1 not started" in md
    assert f"Failed: {failed.name} (CIFAR10 Gaussian SharpDRO, seed 4): RuntimeError: out of memory" in md
    data = rf.to_dict(table)
    assert data["rows"][1]["n_failed"] == 1 and data["rows"][1]["n_not_started"] == 1
    assert {r["status"] for r in data["rows"][1]["runs"]} == {"done", "failed", "partial", "missing"}


def test_group_without_finished_runs_still_has_a_row(tmp_path):
    write_run(tmp_path, BASE + ["algorithm.name=jtt"], [0, 0, 0], status="failed")
    table = rp.collect(tmp_path)
    assert len(table.rows) == 1
    md = rf.to_markdown(table)
    assert "| CIFAR10 | Gaussian | JTT | – | – |" in md and "0/1 seeds; 1 failed" in md


def test_swept_hyperparameters_split_rows_and_seed_does_not(tmp_path):
    for lr in (0.1, 0.03):
        for seed in (0, 1):
            write_run(tmp_path, BASE + ["algorithm.name=sam", f"train.lr={lr}", f"seed={seed}",
                                        f"train.threads={seed + 1}"], [0.8, 0.7, 0.6])
    table = rp.collect(tmp_path)
    assert table.hparams == ["train.lr"]  # not seed, not the runtime-only train.threads
    assert [r.hparams for r in table.rows] == [(0.03,), (0.1,)]
    assert all(len(r.finished) == 2 for r in table.rows)
    assert "| SAM | 0.03 |" in rf.to_markdown(table)
    merged = rp.collect(tmp_path, group_by=[])
    assert len(merged.rows) == 1 and merged.rows[0].count("done") == 4
    with pytest.raises(rp.ReportError, match="train.nope"):
        rp.collect(tmp_path, group_by=["train.nope"])


def test_display_names_and_row_order(tmp_path):
    combos = [("cifar100", "jpeg_compression", "sharpdro_agnostic"), ("cifar10", "jpeg_compression", "eiil"),
              ("cifar10", "gaussian_noise", "groupdro"), ("digits", "shot_noise", "erm")]
    for ds, cor, alg in combos:
        write_run(tmp_path, [f"data.dataset={ds}", f"data.corruption={cor}", f"algorithm.name={alg}",
                             "data.max_severity=2"], [0.5, 0.5, 0.5])
    folder = load_config(None, ["data.dataset=folder", "data.root=/data/my_photos/", "data.max_severity=2",
                                "data.corruption=speckle_noise"])
    assert rp.dataset_name(folder) == "my_photos"
    table = rp.collect(tmp_path)
    assert [(r.data, r.type, r.method) for r in table.rows] == [
        ("CIFAR10", "Gaussian", "GroupDRO"), ("CIFAR10", "JPEG", "EIIL"),
        ("CIFAR100", "JPEG", "SharpDRO (agnostic)"), ("Digits", "Shot", "ERM")]
    assert rp.corruption_name("impulse_noise") == "Impulse" and rp.method_name("jtt") == "JTT"


def test_data_column_names_severity_constants_other_than_the_images_own(tmp_path):
    def name(*overrides):
        return rp.dataset_name(load_config(None, list(overrides)))

    # digits at 8x8 (the quickstart's): auto resolves to CIFAR-10-C's constants, so ImageNet-C's are named
    assert name("data.dataset=digits", "data.image_size=8", "data.table=imagenet") == "Digits (ImageNet-C constants)"
    for table in ("auto", "cifar"):
        assert name("data.dataset=digits", "data.image_size=8", f"data.table={table}") == "Digits"
    # large images: CIFAR-10-C's constants are the odd ones
    assert name("data.dataset=tinyimagenet", "data.root=/d", "data.table=cifar") == \
        "TinyImageNet (CIFAR-10-C constants)"
    assert name("data.dataset=cifar10", "data.image_size=64", "data.table=imagenet") == "CIFAR10"
    assert name("data.dataset=cifar10", "data.image_size=64", "data.table=auto") == "CIFAR10"
    assert name("data.dataset=folder", "data.root=/data/cifar10-jpeg", "data.table=imagenet") == \
        "cifar10-jpeg (ImageNet-C constants)"
    assert name("data.dataset=folder", "data.root=/data/cifar10-jpeg", "data.table=cifar") == "cifar10-jpeg"
    # in the table: the two tables are two rows, told apart by the Data column alone
    for table in ("imagenet", "auto"):
        write_run(tmp_path, ["data.dataset=digits", "data.image_size=8", f"data.table={table}",
                             "data.max_severity=2"], [0.5, 0.5, 0.5])
    report = rp.collect(tmp_path)
    assert [r.data for r in report.rows] == ["Digits", "Digits (ImageNet-C constants)"]
    assert "| Digits (ImageNet-C constants) | Gaussian | ERM | imagenet |" in rf.to_markdown(report)


def test_oracle_selection_is_labelled(sweep_dir):
    table = rp.collect(sweep_dir, selection="oracle_worst")
    assert "ORACLE" in table.title and table.oracle
    assert "ORACLE" in rf.to_markdown(table).splitlines()[0]
    assert "ORACLE" in rf.to_latex(table) and rf.to_dict(table)["oracle"] is True
    assert "ORACLE" not in rp.collect(sweep_dir, selection="worst").title


def test_report_is_byte_for_byte_deterministic(sweep_dir, tmp_path):
    write_run(sweep_dir, BASE + ["algorithm.name=erm", "seed=9"], [0, 0, 0], status="failed")
    out1, out2 = tmp_path / "a" / "table", tmp_path / "b" / "table"
    assert main(["report", str(sweep_dir), "--out", str(out1)]) == 0
    # the same runs copied in another order, to another place
    copy = tmp_path / "copy"
    copy.mkdir()
    for d in sorted(sweep_dir.iterdir(), reverse=True):
        shutil.copytree(d, copy / d.name)
    assert main(["report", str(copy), "--out", str(out2)]) == 0
    for fmt in rf.FORMATS:
        a = (out1.parent / f"table.{fmt}").read_bytes()
        b = (out2.parent / f"table.{fmt}").read_bytes()
        assert a == b and len(a) > 100, fmt


def test_formats_parse(sweep_dir, capsys):
    table = rp.collect(sweep_dir)
    rows = list(csv.DictReader(io.StringIO(rf.to_csv(table))))
    assert len(rows) == 2 and rows[1]["method"] == "SharpDRO" and rows[1]["n"] == "3"
    assert float(rows[1]["sev1_mean"]) == pytest.approx(80.0) and float(rows[1]["sev1_std"]) == pytest.approx(4.0)
    data = json.loads(rf.to_json(table))
    assert data["rows"][1]["severity"]["1"] == {"mean": 80.0, "std": 4.0}
    assert [r["seed"] for r in data["rows"][1]["runs"]] == [0, 1, 2]
    tex = rf.to_latex(table)
    for cmd in ("\\toprule", "\\midrule", "\\bottomrule", "$\\pm$", "\\begin{tabular}{lllrrrrrrrr}"):
        assert cmd in tex
    assert "±" not in tex
    assert main(["report", str(sweep_dir), "--format", "csv", "--selection", "last"]) == 0
    assert capsys.readouterr().out.startswith("data,type,method,")


def test_single_run_folder_and_empty_folder(sweep_dir, tmp_path):
    one = sorted(sweep_dir.iterdir())[0]
    table = rp.collect(one)
    assert len(table.rows) == 1 and table.rows[0].n_text() == "1"
    assert " ± " not in rf.to_markdown(table).split("\n")[4]  # a single run shows values alone
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(rp.ReportError, match="no runs"):
        rp.collect(empty)


# committed sweep folder -> (its table's prefix, the report options run.sh/report.sh use)
COMMITTED_TABLES = {
    "cifar10_small": ("cifar10_small_table", []),
    "cifar10_cpu/imagenet_table": ("cifar10_cpu/imagenet_table_table", ["--select-hparams", "worst"]),
    "cifar10_cpu/cifar_table": ("cifar10_cpu/cifar_table_table", ["--select-hparams", "worst"]),
    **{f"cifar10_cpu/scale/scale_{r}": (f"cifar10_cpu/scale/scale_{r}_table", [])
       for r in ("n2000_e20", "n4000_e20", "n500_e60")},
}


@pytest.mark.parametrize("sweep_name", sorted(COMMITTED_TABLES))
def test_committed_results_table_is_reproduced_byte_for_byte(tmp_path, sweep_name):
    """`sharpdro report` on a committed reproduction gives its committed tables exactly."""
    from pathlib import Path

    from sharpdro.cli import main

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    prefix, options = COMMITTED_TABLES[sweep_name]
    if not (results / f"{prefix}.md").exists():
        pytest.skip(f"no committed table for {sweep_name}")
    sweep = results / sweep_name
    if any(not (d / "done").exists() for d in sweep.iterdir() if d.is_dir()):
        pytest.skip("a reproduction job is still running in this work tree")
    assert main(["report", str(sweep), *options, "--out", str(tmp_path / "t"), "--format", "md,csv,tex,json"]) == 0
    for ext in ("md", "csv", "tex", "json", "_paired.csv"):
        ext = ext if ext.startswith("_") else "." + ext
        assert (tmp_path / f"t{ext}").read_bytes() == (results / f"{prefix}{ext}").read_bytes(), ext


# --------------------------------------------------------------------------- intervals and paired differences


def _direct_interval(values):
    """mean and 95% t-interval written out with numpy and scipy, independently of sharpdro.experiments.stats."""
    import numpy as np
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None, None
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def test_row_intervals_match_a_direct_t_interval(sweep_dir):
    table = rp.collect(sweep_dir)
    row = table.rows[1]  # SharpDRO, seeds 0..2
    averages = [100 * sum(a) / 3 for a in ACC.values()]
    worsts = [100 * min(a) for a in ACC.values()]
    for what, vals in (("average", averages), ("worst", worsts)):
        m, lo, hi = _direct_interval(vals)
        iv = row.ci95(what)
        assert (iv.n, iv.mean, iv.lo, iv.hi) == (3, pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
        assert rf.to_dict(table)["rows"][1]["ci95"][what] == [pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4)]
        csv_row = list(csv.DictReader(io.StringIO(rf.to_csv(table))))[1]
        assert float(csv_row[f"{what}_ci95_lo"]) == pytest.approx(lo, abs=1e-4)
        assert float(csv_row[f"{what}_ci95_hi"]) == pytest.approx(hi, abs=1e-4)
    m, lo, hi = _direct_interval(averages)
    assert f"| 3 | [{lo:.2f}, {hi:.2f}] |" in rf.to_markdown(table)
    # a single run: no interval anywhere
    one = rp.collect(min(sweep_dir.iterdir()))
    assert one.rows[0].ci95("average").lo is None
    assert rf.to_dict(one)["rows"][0]["ci95"] == {"average": None, "worst": None}
    assert next(csv.DictReader(io.StringIO(rf.to_csv(one))))["average_ci95_lo"] == ""
    assert rf.to_markdown(one).splitlines()[4].endswith("| 1 | – | – |")


# seed -> per-severity test accuracy (S = 1); dyadic values, so that differences are exact in floating point
PAIR_ACC = {
    "sharpdro": {0: [0.75, 0.5], 1: [0.8125, 0.625], 2: [0.6875, 0.4375], 3: [0.875, 0.875]},  # seed 3: no partner
    "erm": {0: [0.625, 0.5], 1: [0.75, 0.5], 2: [0.6875, 0.5], 4: [0.25, 0.25]},  # seed 4: no partner
    "jtt": {0: [0.5, 0.375], 1: [0.625, 0.375], 2: [0.5625, 0.375]},  # ERM - 12.5 points on every seed
    "eiil": {0: [0.625, 0.5], 1: [0.75, 0.5], 2: [0.6875, 0.5]},  # ERM exactly
    "sam": {1: [0.5, 0.5]},  # one paired seed
}
PAIR_BASE = ["data.dataset=cifar10", "data.corruption=gaussian_noise", "data.max_severity=1"]


@pytest.fixture
def paired_dir(tmp_path) -> Path:
    root = tmp_path / "paired"
    for method, by_seed in PAIR_ACC.items():
        for seed, acc in by_seed.items():
            write_run(root, PAIR_BASE + [f"algorithm.name={method}", f"seed={seed}"], acc)
    return root


def _metric(acc, metric):
    return 100 * (sum(acc) / len(acc) if metric == "average" else min(acc))


def test_paired_differences_match_a_direct_computation(paired_dir):
    table = rp.collect(paired_dir)
    got = {(e["algorithm"], e["reference_algorithm"], e["metric"]): e for e in rf.to_dict(table)["paired"]}
    # every method against each reference of the block; a reference only against those before it
    assert sorted({k[:2] for k in got}) == sorted([
        ("sam", "erm"), ("sam", "jtt"), ("sam", "eiil"), ("jtt", "erm"), ("eiil", "erm"), ("eiil", "jtt"),
        ("sharpdro", "erm"), ("sharpdro", "jtt"), ("sharpdro", "eiil")])
    for (method, ref, metric), entry in got.items():
        a, b = PAIR_ACC[method], PAIR_ACC[ref]
        seeds = sorted(set(a) & set(b))
        m, lo, hi = _direct_interval([_metric(a[s], metric) - _metric(b[s], metric) for s in seeds])
        assert entry["seeds"] == seeds and entry["n"] == len(seeds)
        assert entry["mean_diff"] == pytest.approx(m, abs=1e-4)
        if lo is None:
            assert entry["ci95"] is None and entry["excludes_zero"] is None
        else:
            assert entry["ci95"] == [pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4)]
            assert entry["excludes_zero"] == (lo > 0 or hi < 0)
    assert got[("sharpdro", "erm", "average")]["seeds"] == [0, 1, 2]  # seeds 3 and 4 have no partner
    assert got[("sam", "erm", "worst")]["n"] == 1
    # the std is that of the per-seed differences, not a combination of the two rows' stds
    diffs = [_metric(PAIR_ACC["sharpdro"][s], "worst") - _metric(PAIR_ACC["erm"][s], "worst") for s in (0, 1, 2)]
    assert got[("sharpdro", "erm", "worst")]["std_diff"] == pytest.approx(
        math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2), abs=1e-4)


def test_constant_difference_gives_a_zero_width_interval(paired_dir):
    pairs = {(p.row.method_key, p.reference.method_key): p for p in rp.collect(paired_dir).paired()}
    for metric in ("average", "worst"):
        shifted = pairs[("jtt", "erm")].intervals[metric]  # -12.5 points on every seed
        assert shifted.lo == shifted.hi == shifted.mean == -12.5 and shifted.excludes_zero is True
        back = pairs[("eiil", "jtt")].intervals[metric]
        assert back.lo == back.hi == 12.5 and back.excludes_zero is True
        same = pairs[("eiil", "erm")].intervals[metric]  # identical accuracies
        assert same.lo == same.hi == 0.0 and same.excludes_zero is False


def test_paired_section_in_every_format(paired_dir, tmp_path):
    table = rp.collect(paired_dir)
    md = rf.to_markdown(table)
    assert "**Paired differences (method - reference), percentage points, 95% t-interval over n seeds**" in md
    assert "| CIFAR10 | Gaussian | JTT | ERM | 3 | -12.50 | [-12.50, -12.50] | yes | -12.50 |" in md
    assert "| CIFAR10 | Gaussian | EIIL | ERM | 3 | +0.00 | [0.00, 0.00] | no |" in md
    assert "| CIFAR10 | Gaussian | SAM | ERM | 1 | -12.50 | – | – |" in md
    tex = rf.to_latex(table)
    assert "tab:sharpdro-worst-paired" in tex and "JTT & ERM & 3 & -12.50 & [-12.50, -12.50] & yes" in tex
    paths = rf.write_report(table, tmp_path / "out" / "t", ["csv"])
    assert [p.name for p in paths] == ["t.csv", "t_paired.csv"]
    rows = list(csv.DictReader(io.StringIO(paths[1].read_text())))
    assert len(rows) == 2 * 9 and {r["metric"] for r in rows} == {"average", "worst"}
    jtt = next(r for r in rows if r["algorithm"] == "jtt" and r["metric"] == "worst")
    assert (jtt["reference_algorithm"], jtt["n"], jtt["seeds"], float(jtt["mean_diff"]), jtt["excludes_zero"]) == \
        ("erm", "3", "0 1 2", -12.5, "true")
    assert next(r for r in rows if r["algorithm"] == "sam")["ci95_lo"] == ""
    # no reference in the sweep: no paired section, a paired CSV with its header only
    solo = rp.collect(min(paired_dir.iterdir()))
    assert "Paired" not in rf.to_markdown(solo) and rf.to_dict(solo)["paired"] == []
    assert rf.to_paired_csv(solo).count("\n") == 1


def test_pairs_stay_within_a_hyperparameter_group_or_the_selected_rows(tmp_path):
    for lr, shift in ((0.1, 0.0), (0.05, 0.125)):
        for seed in (0, 1):
            write_run(tmp_path, PAIR_BASE + ["algorithm.name=erm", f"train.lr={lr}", f"seed={seed}"],
                      [0.5 + shift, 0.25 + shift])
            write_run(tmp_path, PAIR_BASE + ["algorithm.name=sharpdro", f"train.lr={lr}", f"seed={seed}"],
                      [0.75, 0.5 + seed / 8 + (0.125 if lr == 0.1 else 0.0)])
    write_run(tmp_path, PAIR_BASE + ["algorithm.name=sharpdro", "train.lr=0.01", "seed=0"], [0.5, 0.5])
    table = rp.collect(tmp_path)
    pairs = [(p.row.hparams, p.reference.hparams, p.intervals["worst"].mean) for p in table.paired()]
    # lr 0.01 has no ERM row; each other group against its own ERM (mean worst-severity differences)
    assert pairs == [((0.05,), (0.05,), pytest.approx(100 * (0.5625 - 0.375))),
                     ((0.1,), (0.1,), pytest.approx(100 * (0.6875 - 0.25)))]
    assert "| SharpDRO | ERM | 0.05 | 2 |" in rf.to_markdown(table)
    # --select-hparams: one row per method, paired whatever their configurations
    selected = rp.collect(tmp_path, select_hparams="worst")
    (pair,) = selected.paired()
    assert pair.row.hparams == (0.1,) and pair.reference.hparams == (0.05,)  # the best of each method
    assert rf.to_dict(selected)["paired"][0]["reference_hyperparameters"] == {"train.lr": 0.05}
    # rows merged over lr hold two runs per seed: such seeds have no single partner and are left out
    merged = rp.collect(tmp_path, group_by=[])
    assert [p.seeds for p in merged.paired()] == []


def test_a_method_key_its_method_does_not_read_neither_shows_nor_blocks_a_pair(tmp_path):
    """A sweep of several methods at their own hyperparameters (include lists, as the scale study's): ERM's row
    shows no rho or eta (it reads neither), and every method is paired with ERM whatever its own rho or eta;
    a swept key outside algorithm.* (train.lr) still keeps pairs apart. Before, ERM's row showed the default
    rho and eta it never read, and a SAM at rho 0.03 had no ERM to be paired with."""
    for lr in (0.1, 0.05):
        for seed in (0, 1):
            write_run(tmp_path, PAIR_BASE + ["algorithm.name=erm", f"train.lr={lr}", f"seed={seed}"],
                      [0.5, 0.25 + seed / 16])
            for rho in (0.03, 0.05):
                write_run(tmp_path, PAIR_BASE + ["algorithm.name=sam", f"algorithm.rho={rho}", f"train.lr={lr}",
                                                 f"seed={seed}"], [0.5, 0.25 + rho + seed / 8])
            write_run(tmp_path, PAIR_BASE + ["algorithm.name=groupdro", "algorithm.eta=0.04", f"train.lr={lr}",
                                             "data.sampler=group_balanced", f"seed={seed}"], [0.5, 0.5])
    table = rp.collect(tmp_path)
    assert table.hparams == ["algorithm.eta", "algorithm.rho", "data.sampler", "train.lr"]
    erm = [r for r in table.rows if r.method_key == "erm"]
    assert [r.hparams for r in erm] == [(rp.NOT_READ, rp.NOT_READ, "auto", 0.05), (rp.NOT_READ, rp.NOT_READ, "auto", 0.1)]
    assert [r.hparams for r in table.rows if r.method_key == "groupdro"][0][:3] == (0.04, rp.NOT_READ, "group_balanced")
    pairs = sorted((p.row.method_key, p.row.hparams, p.reference.hparams[3], round(p.intervals["worst"].mean, 6))
                   for p in table.paired())
    # per seed: SAM - ERM = rho + seed / 16 points of worst accuracy; GroupDRO (its own sampler) - ERM = 0.25 - seed / 16
    assert pairs == sorted(
        [("sam", (rp.NOT_READ, rho, "auto", lr), lr, round(100 * (rho + 1 / 32), 6))
         for rho in (0.03, 0.05) for lr in (0.05, 0.1)]
        + [("groupdro", (0.04, rp.NOT_READ, "group_balanced", lr), lr, round(100 * (0.25 - 1 / 32), 6))
           for lr in (0.05, 0.1)])
    assert "| ERM | – | – | auto | 0.05 |" in rf.to_markdown(table)
    assert "same data and corruption and train.lr, each method at its own hyperparameters;" in rf.to_markdown(table)


def test_stats_helpers():
    from sharpdro.experiments import stats

    assert stats.paired_differences({0: 1.0, 1: 5.0, 2: 2.0}, {1: 4.0, 2: 4.0, 3: 0.0}) == ([1, 2], [1.0, -2.0])
    assert stats.t_interval([]).mean is None and stats.t_interval([2.0]).excludes_zero is None
    iv = stats.t_interval([1.0, 2.0, 6.0])
    m, lo, hi = _direct_interval([1.0, 2.0, 6.0])
    assert (iv.mean, iv.lo, iv.hi) == (pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    assert iv.excludes_zero is (lo > 0)
    assert stats.t_quantile(2) == pytest.approx(4.302652729749464)  # tables of Student's t, df = 2


def test_help_mentions_the_intervals_and_the_paired_table(capsys):
    # argparse %-formats help strings: a bare '95%' there breaks `sharpdro --help` itself
    for argv in (["--help"], ["report", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "95% CI over seeds, paired differences against ERM, JTT and EIIL" in text
    assert "95% Student-t interval" in text and "PREFIX_paired.csv" in text


def test_a_variant_row_is_compared_but_never_the_reference():
    """tune.variants rows share their method's key: the reference must stay the method's own row."""
    from types import SimpleNamespace

    from sharpdro.experiments.paired import pair_rows

    def row(method, acc, variant=None):
        runs = [SimpleNamespace(status="done", seed=s, name=f"{method}{variant}{s}", average=a, worst=a)
                for s, a in enumerate(acc)]
        r = rp.Row("cifar10", "CIFAR10", "gaussian_noise", method, (), runs)
        r.variant = variant
        return r

    erm, erm_v = row("erm", [0.5, 0.5, 0.5]), row("erm", [0.25, 0.25, 0.25], variant="ERM, other")
    jtt, sd = row("jtt", [0.75, 0.75, 0.75]), row("sharpdro", [1.0, 1.0, 1.0])
    pairs = {(p.row.method_key, p.row.variant, p.reference.method_key): p.intervals["average"].mean
             for p in pair_rows([erm, erm_v, jtt, sd])}
    # the variant of ERM listed after ERM did not replace it as the reference
    assert pairs[("sharpdro", None, "erm")] == 50.0 and pairs[("jtt", None, "erm")] == 25.0
    # the variant itself is compared with every reference, its own method's row included
    assert pairs[("erm", "ERM, other", "erm")] == -25.0 and pairs[("erm", "ERM, other", "jtt")] == -50.0
    assert ("erm", None, "erm") not in pairs
    # a variant of a method that is no reference is compared with its own method's row first
    sd_v = row("sharpdro", [0.5, 0.75, 1.0], variant="SharpDRO, other")
    order = [(p.reference.method_key, p.intervals["average"].mean) for p in pair_rows([erm, jtt, sd, sd_v])
             if p.row.variant == "SharpDRO, other"]
    assert order == [("sharpdro", -25.0), ("erm", 25.0), ("jtt", 0.0)]


def test_pre_stage_caveats_are_said_under_the_table(tmp_path):
    """An EIIL run whose inference did not converge, and a JTT run whose error set is most of the data, are
    reported with a caveat naming the seed; a converged inference and a minority error set are not."""
    src = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu" / "superseded_16_epochs" / \
        "imagenet_table"
    picked = {}
    for d in sorted(src.iterdir()):
        if not (d / "done").is_file():
            continue
        pre = json.loads((d / "summary.json").read_text()).get("prestage") or {}
        method = yaml.safe_load((d / "config.yaml").read_text())["algorithm"]["name"]
        key = (method, pre.get("converged", pre.get("error_set_fraction", 0) > 0.5))
        picked.setdefault(key, d)
    # the committed 16-epoch trials hold both kinds of EIIL inference and a JTT error set over half the data
    assert {("eiil", True), ("eiil", False), ("jtt", True)} <= set(picked)
    sweep = tmp_path / "s"
    for key in (("eiil", True), ("eiil", False), ("jtt", True)):
        shutil.copytree(picked[key], sweep / picked[key].name, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    notes = [n for n in rp.collect(sweep).notes() if n.startswith("Caveat:")]
    steps = json.loads((picked[("eiil", False)] / "summary.json").read_text())["prestage"]["steps"]
    frac = json.loads((picked[("jtt", True)] / "summary.json").read_text())["prestage"]["error_set_fraction"]
    assert len(notes) == 2
    assert any("EIIL [" in n and f"seed 0: environment inference not converged ({steps} steps)" in n for n in notes)
    assert any("JTT [" in n and f"error set {100 * frac:.0f}% of the training data" in n for n in notes)
    # a minority error set says nothing
    from sharpdro.methods.jtt import error_set_caveat

    assert error_set_caveat({"error_set_fraction": 0.2}) is None and error_set_caveat({}) is None


def test_report_json_carries_each_runs_selected_train_accuracy(tmp_path):
    """The reproduction's premise (ERM fits its mixture) is read from the report JSON: each run's training
    accuracy at its selected epoch equals its summary.json's selected_train_accuracy, and the row's mean
    and std are over those runs."""
    from pathlib import Path

    import numpy as np

    from sharpdro.cli import main

    sweep = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu" / "imagenet_table"
    assert main(["report", str(sweep), "--select-hparams", "worst", "--out", str(tmp_path / "t"),
                 "--format", "json"]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    checked = 0
    for row in data["rows"]:
        done = [r for r in row["runs"] if r["status"] == "done"]
        for r in done:
            summary = json.loads((sweep / r["run"] / "summary.json").read_text())
            assert r["train_accuracy"] == pytest.approx(100 * summary["selected_train_accuracy"], abs=1e-4)
            assert r["selected_epoch"] == summary["selected_epoch"]  # the report's rule is the runs' own
            checked += 1
        if len(done) >= 2:
            vals = [r["train_accuracy"] for r in done]
            assert row["train_accuracy"]["mean"] == pytest.approx(np.mean(vals), abs=1e-3)
            assert row["train_accuracy"]["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-3)
    assert checked >= 30
