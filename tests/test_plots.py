"""Figures: every plot writes non-empty PNG and SVG files; the selected rows of a tuning sweep, their bands."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.experiments import plots
from sharpdro.experiments.report import collect
from sharpdro.experiments.sweep import job_hash
from sharpdro.metrics import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(root: Path, overrides: list[str], offset: float, with_q: bool, q=None) -> None:
    cfg = load_config(None, ["data.max_severity=3", "data.dataset=cifar10"] + overrides)
    d = root / job_hash(cfg)
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for e in range(4):
        acc = {str(s): 0.5 + 0.05 * e - 0.08 * s + offset for s in range(4)}
        block = {"accuracy": acc, **summarize(acc)}
        rec = {"epoch": e, "lr": 0.1, "train": {"loss": 2.0 / (e + 1) + offset}, "val": block, "test": block}
        if with_q:
            rec["q"] = q(e) if q else [0.25 - 0.02 * e, 0.25 - 0.01 * e, 0.25 + 0.01 * e, 0.25 + 0.02 * e]
        lines.append(json.dumps(rec) + "\n")
    (d / "metrics.jsonl").write_text("".join(lines))
    (d / "summary.json").write_text(json.dumps({"finished": True}))
    (d / "done").write_text("{}")


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seed in (0, 1, 2):
        _run(root, ["algorithm.name=erm", f"seed={seed}"], 0.01 * seed, with_q=False)
        _run(root, ["algorithm.name=sharpdro", f"seed={seed}"], 0.05 + 0.01 * seed, with_q=True)
    return root


def _check(paths, expected_stems):
    stems = {p.stem for p in paths}
    assert stems == set(expected_stems), stems
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000, p
        if p.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert b"<svg" in data[:2000]


def test_plot_dir_writes_every_figure(sweep_dir):
    paths = plots.plot_dir(sweep_dir)
    assert len(paths) == 6 and {p.suffix for p in paths} == {".png", ".svg"}
    assert all(p.parent == sweep_dir / "plots" for p in paths)
    _check(paths, ["accuracy_vs_severity_CIFAR10_gaussian_noise", "q_CIFAR10_gaussian_noise_sharpdro",
                   "curves_CIFAR10_gaussian_noise"])


def test_single_run_and_cli(sweep_dir, tmp_path, capsys):
    run_dir = sorted(sweep_dir.iterdir())[0]
    out = tmp_path / "figs"
    assert main(["plot", str(run_dir), "--out", str(out), "--format", "png"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(p.endswith(".png") and Path(p).stat().st_size > 1000 for p in printed)


def test_plot_sharpness(tmp_path):
    radii = [0.0, 0.01, 0.02, 0.05]
    results = {
        "erm": {s: {"radii": radii, "mean_increase": [0, 0.1 * (s + 1), 0.3 * (s + 1), 0.9 * (s + 1)],
                    "worst_increase": 1.0 + s} for s in range(6)},
        "sharpdro": {str(s): {"radii": radii, "mean_increase": [0, 0.05, 0.1, 0.3], "worst_increase": 0.5 + 0.1 * s,
                              "std_increase": [0, 0.01, 0.02, None]} for s in range(6)},
        "jtt [run-b]": {0: {"radii": [], "mean_increase": [], "worst_increase": None}},
    }
    paths = plots.plot_sharpness(results, tmp_path / "sharpness")
    _check(paths, ["sharpness"])
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    one = plots.plot_sharpness(results, tmp_path / "one.svg")
    assert one == [tmp_path / "one.svg"] and one[0].stat().st_size > 1000


def test_plotting_leaves_the_callers_backend_rcparams_and_figures_alone(sweep_dir, tmp_path):
    """Issue 25, case 20: the plots called matplotlib.use("Agg", force=True) and set a global rcParam, so
    plotting from a notebook switched the notebook's backend. They now draw on Figure objects of their own."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import json, sys
        import matplotlib
        matplotlib.use("svg")  # the caller's backend (a notebook's would be inline)
        import matplotlib.pyplot as plt
        plt.rcParams["lines.linewidth"] = 3.25
        mine = plt.figure()
        before = {{k: repr(v) for k, v in matplotlib.rcParams.items()}}
        from sharpdro.experiments import plots
        plots.plot_dir({str(sweep_dir)!r})
        a = plots.plot_sharpness({{"erm": {{0: {{"radii": [0, 0.1], "mean_increase": [0, 1], "worst_increase": 1}}}}}},
                                 {str(tmp_path / "a.svg")!r})[0]
        b = plots.plot_sharpness({{"erm": {{0: {{"radii": [0, 0.1], "mean_increase": [0, 1], "worst_increase": 1}}}}}},
                                 {str(tmp_path / "b.svg")!r})[0]
        after = {{k: repr(v) for k, v in matplotlib.rcParams.items()}}
        json.dump({{"backend": matplotlib.get_backend(), "figures": plt.get_fignums(), "mine": plt.gcf() is mine,
                   "changed": sorted(k for k in before if before[k] != after[k]),
                   "same_svg": open(a, "rb").read() == open(b, "rb").read()}}, sys.stdout)
    """)
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    assert state == {"backend": "svg", "figures": [1], "mine": True, "changed": [], "same_svg": True}
    assert len(list((sweep_dir / "plots").glob("*.png"))) == 3  # and the figures were written


def test_sharpness_runs_of_one_algorithm_share_a_colour(tmp_path, figures):
    """Seeds of one method (labels ERM_s1, ERM_s2, ...) are drawn in their method's colour with a line style
    each, so that a figure of nine runs reads as three methods."""
    radii = [0.01, 0.05]
    entry = lambda k: {s: {"radii": radii, "mean_increase": [0.01 * k, 0.02 * k],  # noqa: E731
                           "worst_increase": 0.1 * k} for s in range(3)}
    labels = {"ERM_s1": "erm", "ERM_s2": "erm", "SharpDRO_s1": "sharpdro", "SharpDRO_s2": "sharpdro"}
    results = {label: entry(k + 1) for k, label in enumerate(labels)}
    plots.plot_sharpness(results, tmp_path / "sharp", formats=("png",), algorithms=labels)
    worst = figures["sharp"].axes[3]  # after the three severity panels
    lines = {ln.get_label(): ln for ln in worst.get_lines()}
    assert lines["ERM_s1"].get_color() == lines["ERM_s2"].get_color() != lines["SharpDRO_s1"].get_color()
    assert lines["SharpDRO_s1"].get_color() == lines["SharpDRO_s2"].get_color()
    assert lines["ERM_s1"].get_linestyle() != lines["ERM_s2"].get_linestyle()
    assert list(lines["SharpDRO_s2"].get_ydata()) == pytest.approx([0.4] * 3)


def test_accuracy_plot_labels_oracle(sweep_dir, tmp_path):
    table = collect(sweep_dir, selection="oracle_average")
    paths = plots.plot_accuracy_vs_severity(table, tmp_path, formats=("svg",))
    assert len(paths) == 1 and b"ORACLE" in paths[0].read_bytes()


def test_plot_agnostic_selection(tmp_path):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        cfg = load_config(None, ["data.max_severity=3", "data.dataset=cifar10", "algorithm.name=sharpdro_agnostic",
                                 f"seed={seed}"])
        d = root / job_hash(cfg)
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        lines = []
        for e in range(4):
            acc = {str(s): 0.5 - 0.08 * s for s in range(4)}
            block = {"accuracy": acc, **summarize(acc)}
            rec = {"epoch": e, "lr": 0.1, "train": {"loss": 1.0}, "val": block, "test": block,
                   "agnostic_auroc_train": 0.5 + 0.1 * e, "agnostic_auroc_val": 0.6 + 0.05 * e}
            if e > 0:  # after the warm-up
                rec.update(agnostic_selected_severity=1.0 + 0.3 * e, agnostic_batch_severity=1.0,
                           agnostic_selected_fraction=[0.02, 0.05, 0.1 * e, 0.2 * e])
            lines.append(json.dumps(rec) + "\n")
        (d / "metrics.jsonl").write_text("".join(lines))
        (d / "summary.json").write_text(json.dumps({"finished": True}))
        (d / "done").write_text("{}")
    paths = plots.plot_agnostic_selection(collect(root), tmp_path / "out", formats=("png", "svg"))
    _check(paths, ["agnostic_CIFAR10_gaussian_noise_sharpdro_agnostic"])
    assert any(p.stem.startswith("agnostic") for p in plots.plot_dir(root))


def test_plot_prestage_selection_bars_are_the_runs_shares(tmp_path, figures):
    """JTT selects once, before training: its figure has the share of each severity in the error set
    (from each run's summary), as bars of the mean with the t-interval over seeds, and no empty panels."""
    from scipy.stats import t as student_t

    root = tmp_path / "sweep"
    shares = {0: [0.70, 0.72, 0.80, 0.90], 1: [0.74, 0.70, 0.84, 0.96]}
    for seed, share in shares.items():
        _run(root, ["algorithm.name=jtt", f"seed={seed}"], 0.0, with_q=False)
    for d in root.iterdir():
        seed = yaml.safe_load((d / "config.yaml").read_text())["seed"]
        pre = {"error_set_fraction": 0.75, "members_fraction_by_severity": {str(g): v for g, v in
                                                                            enumerate(shares[seed])}}
        (d / "summary.json").write_text(json.dumps({"finished": True, "prestage": pre}))
    paths = plots.plot_agnostic_selection(collect(root), tmp_path / "out", formats=("png",))
    _check(paths, ["agnostic_CIFAR10_gaussian_noise_jtt"])
    (ax,) = figures["agnostic_CIFAR10_gaussian_noise_jtt"].axes  # no per-epoch diagnostics were logged
    heights = [b.get_height() for b in ax.patches]
    assert heights == pytest.approx([np.mean([shares[0][g], shares[1][g]]) for g in range(4)])
    (bars,) = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    segments = bars.errorbar.lines[2][0].get_segments()
    for g, seg in enumerate(segments):
        a, b = shares[0][g], shares[1][g]
        half = student_t.ppf(0.975, 1) * abs(a - b) / math.sqrt(2) / math.sqrt(2)
        assert sorted(seg[:, 1]) == pytest.approx([(a + b) / 2 - half, (a + b) / 2 + half])


def test_plot_of_runs_that_differ_in_a_list_valued_key(tmp_path):
    """Runs differing in train.milestones (a list) once crashed the plots with 'unhashable type: list'."""
    root = tmp_path / "sweep"
    for milestones in ("[0.3,0.6,0.8]", "[0.5,0.75]"):
        _run(root, ["algorithm.name=erm", f"train.milestones={milestones}"], 0.0, with_q=False)
    table = collect(root)
    assert len(table.rows) == 2
    paths = plots.plot_accuracy_vs_severity(table, tmp_path / "plots", formats=("png",))
    assert len(paths) == 2 and all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)
    assert len({p.name for p in paths}) == 2  # one figure per milestones setting


# --------------------------------------------------------------------------- bands and the q axis


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots save, by file name without suffix (each is still written)."""
    saved = {}
    real = plots.save_figure

    def save(fig, path, formats=plots.FORMATS):
        saved[Path(path).name] = fig
        return real(fig, path, formats)

    monkeypatch.setattr(plots, "save_figure", save)
    return saved


def _band_at(collection, x: float) -> tuple[float, float]:
    """The (lowest, highest) y of a fill_between band at ``x``."""
    v = np.concatenate([p.vertices for p in collection.get_paths()])
    ys = v[np.isclose(v[:, 0], x), 1]
    return float(ys.min()), float(ys.max())


def test_accuracy_band_is_the_t_interval_or_the_std(sweep_dir, tmp_path, figures):
    # ERM's runs: at the selected (last) epoch, accuracy 0.66 - 0.08 s + 0.01 seed for seeds 0, 1, 2
    # (see _run): in percent, mean 66 - 8 s and sample std 1 over the three seeds
    table = collect(sweep_dir)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) · 1 / sqrt(3)
    for band, width in (("ci95", half), ("std", 1.0)):
        plots.plot_accuracy_vs_severity(table, tmp_path / band, formats=("png",), band=band)
        ax = figures["accuracy_vs_severity_CIFAR10_gaussian_noise"].axes[0]
        assert ("95% interval over 3 seeds" in ax.get_title()) == (band == "ci95")
        erm = ax.collections[0]  # rows in the table's order: ERM first
        for s in range(4):
            lo, hi = _band_at(erm, s)
            assert (lo, hi) == pytest.approx((66 - 8 * s - width, 66 - 8 * s + width))
    with pytest.raises(ValueError, match="band must be one of"):
        plots.plot_accuracy_vs_severity(table, tmp_path, band="sem")


def test_a_single_seed_is_not_titled_as_an_interval(sweep_dir, tmp_path, figures):
    """One finished seed has no interval: the title says so and no band is drawn (it said '95% interval over
    1 seed' before)."""
    one = min(sweep_dir.iterdir())
    plots.plot_accuracy_vs_severity(collect(one), tmp_path / "one", formats=("png",))
    (name,) = [n for n in figures if n.startswith("accuracy_vs_severity")]
    ax = figures[name].axes[0]
    assert ax.get_title().endswith("one seed: its values, no interval") and "95%" not in ax.get_title()
    assert not ax.collections  # no fill_between band
    from sharpdro.experiments.plot_series import spread_text

    assert spread_text("mean and 95% interval", [3, 3]) == "mean and 95% interval over 3 seeds"
    assert spread_text("mean and 95% interval", [3, 1]) == ("mean and 95% interval over n seeds (n per line in "
                                                            "the legend); no interval where n = 1")
    assert spread_text("mean and 95% interval", [0]) == "no finished seed"


def _q_axis(figures, name):
    ax = figures[name].axes[0]
    (mark,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("q = 0.02")]
    assert list(mark.get_ydata()) == [0.02, 0.02] and mark.get_linestyle() == ":"
    return ax


def test_q_axis_is_log_when_a_rare_severity_is_starved(sweep_dir, tmp_path, figures):
    plots.plot_group_weights(collect(sweep_dir), tmp_path / "lin", formats=("png",))
    ax = _q_axis(figures, "q_CIFAR10_gaussian_noise_sharpdro")
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "group weight q (linear scale)"
    root = tmp_path / "starved"
    for seed in (0, 1):  # severity 3's weight falls to 1e-3 after the first epoch, 400 times below severity 0's
        _run(root, ["algorithm.name=groupdro", f"seed={seed}"], 0.0, with_q=True,
             q=lambda e: [0.4, 0.3, 0.299 if e else 0.2, 0.001 if e else 0.1])
    plots.plot_group_weights(collect(root), tmp_path / "log", formats=("png",))
    ax = _q_axis(figures, "q_CIFAR10_gaussian_noise_groupdro")
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "group weight q (log scale)"
    lo, hi = ax.get_ylim()
    assert lo <= 0.001 and hi == 1.0
    sev3 = next(ln for ln in ax.get_lines() if ln.get_label() == "severity 3")
    assert list(sev3.get_ydata()) == pytest.approx([0.1, 0.001, 0.001, 0.001])


def test_log_q_band_is_the_interval_of_log_q(tmp_path, figures):
    """On the log axis a severity whose q differs by decades between seeds gets the geometric mean and the
    t-interval of log10 q. The arithmetic interval of 1e-4, 2e-4 and 4e-4 reaches below zero, so its band was
    clipped to the axis floor and covered every decade under the mean (seen on the reproduction's q plots)."""
    root = tmp_path / "decades"
    for seed, x in enumerate((1e-4, 2e-4, 4e-4)):
        _run(root, ["algorithm.name=sharpdro", f"seed={seed}"], 0.0, with_q=True,
             q=lambda e, x=x: [0.5, 0.5 - x - 1e-6, 1e-6, x] if e else [0.25] * 4)
    plots.plot_group_weights(collect(root), tmp_path / "log", formats=("png",))
    ax = _q_axis(figures, "q_CIFAR10_gaussian_noise_sharpdro")
    assert ax.get_yscale() == "log" and "geometric mean and 95% interval (of log q)" in ax.get_title()
    sev3 = next(ln for ln in ax.get_lines() if ln.get_label() == "severity 3")
    assert list(sev3.get_ydata()) == pytest.approx([0.25, 2e-4, 2e-4, 2e-4])  # (1e-4 · 2e-4 · 4e-4) ** (1/3)
    half = 4.302652729911275 * math.log10(2) / math.sqrt(3)  # t(0.975, 2) · std of log10 q / sqrt(3)
    lo, hi = _band_at(ax.collections[3], 3)
    assert (lo, hi) == pytest.approx((2e-4 * 10 ** -half, 2e-4 * 10 ** half))
    assert lo > ax.get_ylim()[0] * 10  # well above the floor the arithmetic band was clipped to


# --------------------------------------------------------------------------- a tuning sweep: the selected rows

TUNE_EXTRA = ["train.epochs=2"]  # on top of the shared tiny_sweep_set
VARIANT = "SharpDRO, released reading"
CORRUPTIONS = ("gaussian_noise", "jpeg_compression")
DATA = "Digits_ImageNet-C_constants"  # the quickstart's digits with data.table=imagenet: the Data label says so


@pytest.fixture(scope="module")
def tuned_sweep(tmp_path_factory, tiny_tune_sweep) -> Path:
    """A real tuning sweep on the embedded digits: 2 trials per method on seed 0, the selected trial on
    seeds 1 and 2, and a SharpDRO variant, for two corruptions."""
    return tiny_tune_sweep(tmp_path_factory.mktemp("tuned"), {
        "trials": 2, "seed": 0, "methods": ["erm", "groupdro", "sharpdro", "sharpdro_agnostic"],
        "seeds": [0], "final_seeds": [1, 2],
        "variants": [{"name": VARIANT, "method": "sharpdro",
                      "set": {"data.sampler": "uniform", "algorithm.q_absent": "zero"}}]},
        TUNE_EXTRA, grid={"data.corruption": list(CORRUPTIONS)})


def _selected_test_accuracy(run_dir: Path, severity: int) -> float:
    """A run's test accuracy (%) at the epoch of its best validation worst-severity accuracy (earliest on
    ties), read from its metrics file."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "val" in r]
    best = max(evaluated, key=lambda r: (r["val"]["worst"], -r["epoch"]))
    return 100.0 * best["test"]["accuracy"][str(severity)]


def test_selected_rows_figures(tuned_sweep, tmp_path, figures):
    from scipy.stats import t as student_t

    out = tmp_path / "figs"
    paths = plots.plot_dir(tuned_sweep, out, formats=("svg",), select_hparams="worst")
    table = collect(tuned_sweep, "worst", select_hparams="worst")
    labels = ["ERM", "GroupDRO", "SharpDRO", VARIANT, "SharpDRO (agnostic)"]
    for corruption in CORRUPTIONS:
        assert [r.method for r in table.rows if r.corruption == corruption] == labels
    kinds = {"q_{}_groupdro", "q_{}_sharpdro", "q_{}_sharpdro_SharpDRO_released_reading",
             "agnostic_{}_sharpdro_agnostic", "accuracy_vs_severity_{}", "curves_{}"}
    assert {p.stem for p in paths} == {k.format(f"{DATA}_{c}") for k in kinds for c in CORRUPTIONS}
    for corruption in CORRUPTIONS:
        rows = [r for r in table.rows if r.corruption == corruption]
        assert all(sorted(r.seed for r in row.runs) == [1, 2] for row in rows)
        name = f"accuracy_vs_severity_{DATA}_{corruption}"
        # two panels: the methods; the variant beside its own method (same colour, its own line style)
        ax, beside = figures[name].axes
        methods = [m for m in labels if m != VARIANT]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"{m} (n=2)" for m in methods]
        assert [t.get_text() for t in beside.get_legend().get_texts()] == ["SharpDRO (n=2)", f"{VARIANT} (n=2)"]
        svg = (out / f"{name}.svg").read_text()
        assert all(f"{m} (n=2)" in svg for m in labels) and "95% interval over 2 seeds" in svg
        lines = {ln.get_label(): ln for ln in beside.get_lines()}
        method, variant = lines["SharpDRO (n=2)"], lines[f"{VARIANT} (n=2)"]
        assert method.get_color() == variant.get_color() and method.get_linestyle() != variant.get_linestyle()
        # each row's band, severity by severity, is the t-interval of its runs' accuracies read directly
        by_label = {r.method: r for r in rows}
        for axis, panel in ((ax, methods), (beside, ["SharpDRO", VARIANT])):
            assert len(axis.collections) == len(panel)
            for band, label in zip(axis.collections, panel):
                row = by_label[label]
                for s in row.severities:
                    acc = [_selected_test_accuracy(tuned_sweep / r.name, s) for r in row.runs]
                    half = student_t.ppf(0.975, len(acc) - 1) * np.std(acc, ddof=1) / math.sqrt(len(acc))
                    assert _band_at(band, s) == pytest.approx((np.mean(acc) - half, np.mean(acc) + half),
                                                              abs=1e-9)
        # training curves: the same rows; agnostic diagnostics: the selected trial's, drawn over both epochs
        (legend,) = figures[f"curves_{DATA}_{corruption}"].legends  # one, of the rows, under the panels
        assert [t.get_text() for t in legend.get_texts()] == labels
        diag = figures[f"agnostic_{DATA}_{corruption}_sharpdro_agnostic"].axes[1]
        (val,) = [ln for ln in diag.get_lines() if ln.get_label() == "validation"]
        assert list(val.get_xdata()) == [1, 2]
        for key in ("groupdro", "sharpdro", f"sharpdro_{VARIANT.replace(', ', '_').replace(' ', '_')}"):
            ax = _q_axis(figures, f"q_{DATA}_{corruption}_{key}")
            assert len([ln for ln in ax.get_lines() if ln.get_label().startswith("severity")]) == 6
    # without the selection, each of the agnostic method's two trials has its figure
    assert len(plots.plot_agnostic_selection(collect(tuned_sweep), tmp_path / "all", formats=("png",))) == 4


def test_plot_select_hparams_command_line(tuned_sweep, sweep_dir, tmp_path, capsys, figures):
    assert main(["plot", str(tuned_sweep), "--select-hparams", "worst", "--out", str(tmp_path / "a"),
                 "--format", "png"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 12 and all(Path(p).stat().st_size > 1000 for p in printed)
    assert main(["plot", str(tuned_sweep), "--select-hparams", "worst", "--tuning-seeds", "0,x"]) == 2
    err = capsys.readouterr().err
    assert "--tuning-seeds: expected integers" in err and len(err.strip().splitlines()) == 1
    # no tune block: as report --select-hparams, each method's best configuration over every seed
    for seed in (0, 1, 2):  # a second SharpDRO configuration, worse on validation
        _run(sweep_dir, ["algorithm.name=sharpdro", "algorithm.rho=0.2", f"seed={seed}"], 0.01 * seed,
             with_q=True)
    assert main(["report", str(sweep_dir), "--select-hparams", "worst"]) == 0
    assert "(every seed)" in capsys.readouterr().out
    assert main(["plot", str(sweep_dir), "--select-hparams", "worst", "--out", str(tmp_path / "b")]) == 0
    ax = figures["accuracy_vs_severity_CIFAR10_gaussian_noise"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ERM (n=3)", "SharpDRO (n=3)"]
    sharp = ax.get_lines()[1]
    assert list(sharp.get_ydata()) == pytest.approx([71 - 8 * s for s in range(4)])  # offset 0.05: the better


def test_report_selected_column_lists_only_each_methods_tuned_keys(tuned_sweep, tiny_sweep_set):
    """The report of the same sweep: one "Selected" column; each row names its own method's tuned keys only,
    with the selected run's values, leaving out those at the base config's; a trial 0 reads "defaults"."""
    from sharpdro.config import get
    from sharpdro.experiments import tuning, tuning_report
    from sharpdro.experiments.report_formats import render
    from sharpdro.experiments.sweep_jobs import read_index

    table = collect(tuned_sweep, "worst", select_hparams="worst")
    header = [c.strip() for c in render(table, "md").splitlines()[2].strip("|").split("|")]
    assert header[2:5] == ["Method", "Selected", "Averaged accuracy (%)"]
    assert not [c for c in header if c.startswith(("algorithm.", "data.", "train."))]
    assert len(table.hparams) > 1  # the sweep varies several keys; the table shows them in one column
    base = load_config("quickstart", [*tiny_sweep_set, *TUNE_EXTRA])

    def parse(text):
        return {} if text == "defaults" else dict(part.split("=", 1) for part in text.split(", "))

    for row in table.rows:
        cfg, keys = row.runs[0].config, tuning.tuned_keys(row.method_key)
        if not keys:
            assert row.selected_text == "–"
            continue
        head, _, tail = row.selected_text.partition(" + ")
        own = {"sampler": "uniform", "q_absent": "zero"} if row.variant else {}
        assert parse(tail) if row.variant else not tail
        assert (parse(tail) if row.variant else {}) == own
        shown = parse(head)
        for k in keys:
            name = k.split(".")[-1]
            if name in own:
                continue
            if get(cfg, k) == get(base, k):
                assert name not in shown, (row.method, k)
            else:
                assert shown.pop(name) == str(get(cfg, k)), (row.method, k)
        assert shown == {}, (row.method, shown)  # nothing but the method's own tuned keys
    # every trial of every method, labelled as if selected: trial 0 is "defaults", trial 1 its draws
    index = read_index(tuned_sweep)
    sweep = json.loads((tuned_sweep / "sweep.json").read_text())["last_sweep"]
    rows = tuning_report.without_runs(collect(tuned_sweep).rows, tuning_report.variant_only_runs(index))
    everything = collect(tuned_sweep).hparams
    tuning_report.label_selection(rows, rows, everything, sweep, index)
    for method in ("groupdro", "sharpdro", "sharpdro_agnostic"):
        for corruption in CORRUPTIONS:
            texts = {r.selected_text for r in rows if r.method_key == method and r.corruption == corruption}
            drawn = tuning.trial_values(method, 1, 0)
            trial1 = ", ".join(sorted(f"{k.split('.')[-1]}={v}" for k, v in drawn.items() if v != get(base, k)))
            assert texts == {"defaults", trial1}, method
    assert {r.selected_text for r in rows if r.method_key == "erm"} == {"–"}
