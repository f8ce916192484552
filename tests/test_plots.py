"""Figures: every plot writes non-empty PNG and SVG files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.experiments import plots
from sharpdro.experiments.report import collect
from sharpdro.experiments.sweep import job_hash
from sharpdro.metrics import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(root: Path, overrides: list[str], offset: float, with_q: bool) -> None:
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
            q = [0.25 - 0.02 * e, 0.25 - 0.01 * e, 0.25 + 0.01 * e, 0.25 + 0.02 * e]
            rec["q"] = q
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
