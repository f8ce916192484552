"""eval.test=selected: the test set once, after training, with the selected epoch's weights.

Against eval.test=every on the same seed: the training is identical, only the evaluation schedule
differs, so the selected epoch's test numbers must be equal.  Also: resume after an interruption
before (or just around) that evaluation, the summary's selected_train_accuracy, and the readers of
the test block (report, runs table, plots).
"""
import dataclasses
import json

import pytest

import sharpdro.engine as engine
from sharpdro.calibration import summary_fields
from sharpdro.config import load_config
from sharpdro.data.splits import build_splits
from sharpdro.data.types import LabeledArrays
from sharpdro.engine import train
from sharpdro.experiments.report import ReportError, collect
from sharpdro.experiments.sweep_spec import job_identity
from sharpdro.io import read_jsonl

# 3 epochs of ERM on the digits: the worst-severity validation accuracy peaks at epoch index 1, so the
# selected weights are not the last ones (asserted below)
TINY = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
        "train.epochs=3", "train.batch_size=40", "train.progress=false", "train.threads=1", "eval.batch_size=256"]
SELECTED = ("eval.test=selected", "output.save_best=false")


def tiny(*extra):
    return load_config("quickstart", [*TINY, *extra])


@pytest.fixture(scope="module")
def splits():
    s = build_splits(tiny(), progress=False)
    # an extra test set (as data.extra_test gives): the test images in reverse order, every second one
    extra = {k: LabeledArrays(v.images[::-2].copy(), v.labels[::-2].copy(), v.severity[::-2].copy())
             for k, v in s.test.items()}
    return dataclasses.replace(s, extra_test=extra)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, splits):
    """The same run with eval.test=every and with eval.test=selected (output.save_best=false)."""
    root = tmp_path_factory.mktemp("pair")
    every = train(tiny(), out_dir=root / "every", splits=splits)
    selected = train(tiny(*SELECTED), out_dir=root / "selected", splits=splits)
    return root, every, selected


def _without(record, *keys):
    return {k: v for k, v in record.items() if k not in ("seconds", *keys)}


def test_selected_equals_every_at_the_selected_epoch(pair):
    root, every, selected = pair
    a, b = read_jsonl(root / "every" / "metrics.jsonl"), read_jsonl(root / "selected" / "metrics.jsonl")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):  # the training and the validation are the same run
        assert _without(ra, "test", "extra_test") == _without(rb, "test", "extra_test")
    e = selected["selected_epoch"]
    assert e == every["selected_epoch"] == 1  # not the last epoch: the best checkpoint's weights are used
    assert b[e]["test"] == a[e]["test"] and b[e]["extra_test"] == a[e]["extra_test"]
    assert [("test" in r, "extra_test" in r) for r in b] == [(i == e, i == e) for i in range(3)]
    for key in ("test_accuracy", "test_average", "test_worst", *summary_fields(a[e]["test"], "test")):
        assert selected[key] == every[key], key
    assert json.loads((root / "selected" / "summary.json").read_text())["test_accuracy"] == a[e]["test"]["accuracy"]
    # output.save_best=false: the best checkpoint was kept for the evaluation only
    assert not (root / "selected" / "checkpoints" / "best.pt").exists()
    assert (root / "every" / "checkpoints" / "best.pt").is_file()


def test_selected_train_accuracy_is_the_selected_records(pair):
    root, every, selected = pair
    for name, summary in (("every", every), ("selected", selected)):
        rec = read_jsonl(root / name / "metrics.jsonl")[summary["selected_epoch"]]
        assert summary["selected_train_accuracy"] == rec["train"]["accuracy"]
    # the running training accuracy of that epoch, not of the last one
    last = read_jsonl(root / "selected" / "metrics.jsonl")[-1]
    assert selected["selected_train_accuracy"] != last["train"]["accuracy"]


def test_default_leaves_job_identity_alone():
    assert "test" not in job_identity(tiny()).get("eval", {})
    assert job_identity(tiny("eval.test=selected"))["eval"] == {"test": "selected"}


def test_last_selection_evaluates_the_last_weights(tmp_path, splits, pair):
    root, _, _ = pair
    summary = train(tiny("eval.test=selected", "eval.selection=last"), out_dir=tmp_path / "last", splits=splits)
    every = read_jsonl(root / "every" / "metrics.jsonl")
    assert summary["selected_epoch"] == 2 and summary["test_accuracy"] == every[2]["test"]["accuracy"]
    assert (tmp_path / "last" / "checkpoints" / "best.pt").is_file()  # output.save_best=true keeps it


def test_interrupted_before_the_test_evaluation_resumes_to_it(tmp_path, splits, pair, monkeypatch):
    root, _, selected = pair
    real = engine.evaluate_sets

    def die_on_test(session, sets, *args, **kw):
        if sets is splits.test:
            raise KeyboardInterrupt
        return real(session, sets, *args, **kw)

    monkeypatch.setattr(engine, "evaluate_sets", die_on_test)
    cfg = tiny(*SELECTED)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=tmp_path / "r", splits=splits)
    assert [("test" in r) for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [False] * 3
    assert (tmp_path / "r" / "checkpoints" / "best.pt").is_file() and not (tmp_path / "r" / "summary.json").exists()
    monkeypatch.setattr(engine, "evaluate_sets", real)
    resumed = train(cfg, out_dir=tmp_path / "r", resume=True, splits=splits)
    _assert_same_run(root / "selected", tmp_path / "r", selected, resumed)
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()


def test_killed_before_the_best_copy_resumes_with_the_right_weights(tmp_path, splits, monkeypatch):
    """Killed after the last epoch's checkpoint but before its copy to best: the resumed run copies it again
    (otherwise best holds the epoch before and the test set would be evaluated with the wrong weights)."""
    cfg = tiny("eval.test=selected", "eval.selection=last")
    full = train(cfg, out_dir=tmp_path / "full", splits=splits)
    real, calls = engine._copy_atomic, []

    def die_on_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # eval.selection=last copies at every epoch: the third is the last epoch's
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(engine, "_copy_atomic", die_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=tmp_path / "r", splits=splits)
    monkeypatch.setattr(engine, "_copy_atomic", real)
    resumed = train(cfg, out_dir=tmp_path / "r", resume=True, splits=splits)
    _assert_same_run(tmp_path / "full", tmp_path / "r", full, resumed)


def _assert_same_run(dir_a, dir_b, sum_a, sum_b):
    a, b = read_jsonl(dir_a / "metrics.jsonl"), read_jsonl(dir_b / "metrics.jsonl")
    assert [_without(r) for r in a] == [_without(r) for r in b]
    drop = ("wall_seconds",)
    assert {k: v for k, v in sum_a.items() if k not in drop} == {k: v for k, v in sum_b.items() if k not in drop}


def test_report_runs_table_and_plots_read_the_selected_epoch(pair, tmp_path, monkeypatch):
    root, _, selected = pair
    run = root / "selected"
    table = collect(run, "worst")
    (row,) = table.rows
    assert row.finished[0].accuracy == {int(k): v for k, v in selected["test_accuracy"].items()}
    with pytest.raises(ReportError, match=r"oracle_worst.*only 1 of its 3 evaluated epochs.*eval.test=selected"):
        collect(run, "oracle_worst")
    with pytest.raises(ReportError, match=r"--selection last picks epoch 3.*own eval.selection=worst"):
        collect(run, "last")
    from sharpdro.cli import main

    assert main(["report", str(run), "--selection", "oracle_average"]) == 2  # one line, no traceback

    pd = pytest.importorskip("pandas")
    from sharpdro import load_runs

    df = load_runs(run)
    tested = df[df.split.isin(["test", "extra_test"])]
    assert set(tested.epoch) == {selected["selected_epoch"]} and tested.selected.all()
    assert isinstance(df, pd.DataFrame)

    pytest.importorskip("matplotlib")
    from sharpdro.experiments import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, formats: figures.append(fig) or [])
    plots.plot_training_curves(table, tmp_path / "figs", ["png"])
    (fig,) = figures
    for ax, key in zip(fig.axes[1:], ("test_average", "test_worst")):
        # test is a single star at the selected epoch (1-based on screen), not a curve
        (star,) = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
        assert list(star.get_xdata()) == [selected["selected_epoch"] + 1]
        assert list(star.get_ydata()) == pytest.approx([100 * selected[key]])
        assert not any("(test)" in (ln.get_label() or "") for ln in ax.get_lines())
