"""output.loggers: metrics.jsonl mirrored to TensorBoard / MLflow (read back from their files) and W&B (a stub)."""
import json
import os
import sys
import types
from pathlib import Path

import pytest

from sharpdro.cli import main
from sharpdro.config import ConfigError, load_config
from sharpdro.engine import train
from sharpdro.io import read_jsonl
from sharpdro.loggers import LoggerError, flatten_record, open_loggers

TINY = ["data.train_per_class=30", "data.val_per_class=3", "data.test_per_class=5", "model.width=8",
        "train.epochs=2", "train.batch_size=50", "train.progress=false", "train.threads=1"]


def tiny(*extra):
    return load_config("quickstart", [*TINY, *extra])


def read_tensorboard(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_mlflow_store(store: Path) -> list[dict]:
    """The default MLflow store (``<store>/mlflow.db``, SQLite) read back with a client of its own; the status
    as the file store's ``meta.yaml`` line (``status: 3`` = FINISHED)."""
    from mlflow.entities import RunStatus, ViewType
    from mlflow.tracking import MlflowClient

    assert (store / "mlflow.db").is_file() and not list(store.glob("*/meta.yaml"))  # SQLite, not a file store
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = []
    for exp in client.search_experiments(view_type=ViewType.ALL):
        for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
            metrics = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
                       for k in r.data.metrics}
            runs.append({"id": r.info.run_id, "metrics": metrics, "params": dict(r.data.params),
                         "status": [f"status: {RunStatus.from_string(r.info.status)}"]})
    return runs


def test_flatten_record_names():
    rec = {"epoch": 3, "lr": 0.1, "seconds": 2.0, "q": [0.7, 0.3],
           "train": {"loss": 1.5, "accuracy": 0.5, "group_loss": {"0": 1.0, "1": 2.0}, "group_acc": {"0": 0.6},
                     "group_count": {"0": 10}},
           "test": {"accuracy": {"0": 0.9, "3": 0.4}, "loss": {"3": 2.2}, "ece": {"3": 0.1}, "average": 0.65,
                    "worst": 0.4, "worst_severity": 3}}
    flat = flatten_record(rec)
    assert flat["test/acc/sev3"] == 0.4 and flat["test/ece/sev3"] == 0.1 and flat["test/loss/sev3"] == 2.2
    assert flat["test/acc/average"] == 0.65 and flat["test/acc/worst"] == 0.4
    assert flat["train/loss/mean"] == 1.5 and flat["train/acc/sev0"] == 0.6 and flat["train/count/sev0"] == 10
    assert flat["q/sev1"] == 0.3 and flat["lr"] == 0.1 and "epoch" not in flat
    for k in flat:  # no name is a prefix folder of another (MLflow's file store)
        assert not any(other.startswith(k + "/") for other in flat), k


def test_tensorboard_and_mlflow_hold_the_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path / "runs" / "r1"
    train(tiny("output.loggers=[tensorboard, mlflow]"), out_dir=run)
    records = read_jsonl(run / "metrics.jsonl")
    want = {k: [(r["epoch"], flatten_record(r)[k]) for r in records] for k in flatten_record(records[-1])}

    tb = read_tensorboard(run / "tensorboard")
    for key in ("test/acc/sev3", "val/acc/worst", "train/loss/mean", "test/ece/sev0", "lr"):
        assert [s for s, _ in tb[key]] == [0, 1]
        assert [v for _, v in tb[key]] == pytest.approx([v for _, v in want[key]], rel=1e-6)

    (ml,) = read_mlflow_store(tmp_path / "runs" / "mlruns")
    for key in ("test/acc/sev3", "test/nll/sev5"):  # pytest.approx takes no (step, value) tuples since pytest 9.2
        assert [s for s, _ in ml["metrics"][key]] == [s for s, _ in want[key]] == [0, 1]
        assert [v for _, v in ml["metrics"][key]] == pytest.approx([v for _, v in want[key]])
    assert ml["params"]["train.epochs"] == "2" and ml["params"]["data.dataset"] == "digits"
    assert ml["status"] == ["status: 3"]  # FINISHED
    assert json.loads((run / "tracking.json").read_text())["mlflow"] == ml["id"]


def test_resumed_run_logs_into_the_same_mlflow_run(tmp_path):
    pytest.importorskip("mlflow")
    run = tmp_path / "runs" / "r"
    cfg = tiny("output.loggers=[mlflow]", "train.epochs=1")
    train(cfg, out_dir=run)
    train(tiny("output.loggers=[mlflow]", "train.epochs=1"), out_dir=run, resume=True)  # nothing left: same run
    runs = read_mlflow_store(tmp_path / "runs" / "mlruns")
    assert len(runs) == 1


def test_mlflow_defaults_to_sqlite_and_sets_nothing_process_wide(tmp_path, monkeypatch):
    """Issue 25, case 21: the default was MLflow 3's deprecated file store, opened by setting
    MLFLOW_ALLOW_FILE_STORE for the whole process. Now a SQLite file, or the user's MLFLOW_TRACKING_URI."""
    pytest.importorskip("mlflow")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)
    run = tmp_path / "runs" / "r"
    handle = open_loggers(tiny("output.loggers=[mlflow]"), run)
    handle.log({"epoch": 0, "lr": 0.5})
    handle.close()
    assert dict(os.environ) == before  # nothing set for the rest of the process
    assert handle.trackers == [] and (tmp_path / "runs" / "mlruns" / "mlflow.db").is_file()
    (ml,) = read_mlflow_store(tmp_path / "runs" / "mlruns")
    assert ml["metrics"]["lr"] == [(0, 0.5)]
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()  # nothing in the working folder

    own = tmp_path / "elsewhere" / "mine.db"  # the user's tracking URI wins
    own.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{own}")
    open_loggers(tiny("output.loggers=[mlflow]"), tmp_path / "runs2" / "r").close()
    assert own.is_file() and not (tmp_path / "runs2" / "mlruns").exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # find_spec(None module) raises ValueError
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sqlalchemy" else real(n, *a))
    with pytest.raises(LoggerError, match=r"needs sqlalchemy .*sharpdro\[mlflow\]"):
        open_loggers(tiny("output.loggers=[mlflow]"), tmp_path / "runs3" / "r")


def test_wandb_offline_through_its_api(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def log(self, values, step):
            calls.setdefault("log", []).append((step, values))

        def finish(self, exit_code=0):
            calls["finish"] = exit_code

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "r"
    train(tiny("output.loggers=[wandb]"), out_dir=run)
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(run)
    assert calls["init"]["config"]["train.epochs"] == 2 and calls["init"]["resume"] == "allow"
    assert [s for s, _ in calls["log"]] == [0, 1] and calls["finish"] == 0
    last = read_jsonl(run / "metrics.jsonl")[-1]
    assert calls["log"][-1][1]["test/acc/sev2"] == last["test"]["accuracy"]["2"]
    assert calls["init"]["id"] == json.loads((run / "tracking.json").read_text())["wandb"]


def test_loggers_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="output.loggers"):
        tiny("output.loggers=[neptune]")
    assert tiny()["output"]["loggers"] == []
    assert not open_loggers(tiny(), tmp_path)  # none by default: nothing is opened or written
    assert not any(tmp_path.iterdir())
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with pytest.raises(LoggerError, match=r"sharpdro\[mlflow\]"):
        open_loggers(tiny("output.loggers=[mlflow]"), tmp_path / "r")


def test_loggers_do_not_change_the_sweep_job_hash():
    from sharpdro.experiments.sweep import job_hash

    assert job_hash(tiny()) == job_hash(tiny("output.loggers=[tensorboard]"))


def test_export_logs_of_a_sweep_to_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        train(tiny(f"seed={seed}", "train.epochs=1"), out_dir=sweep / f"job{seed}")
    assert main(["export-logs", str(sweep), "--to", "tensorboard"]) == 0
    assert "2 run(s) -> tensorboard" in capsys.readouterr().out
    for seed in (0, 1):
        rec = read_jsonl(sweep / f"job{seed}" / "metrics.jsonl")[0]
        tb = read_tensorboard(sweep / f"job{seed}" / "tensorboard")
        assert tb["test/acc/sev1"] == [(0, pytest.approx(rec["test"]["accuracy"]["1"]))]
    # again: the event files are replaced, not duplicated
    assert main(["export-logs", str(sweep / "job0"), "--to", "tensorboard"]) == 0
    assert len(read_tensorboard(sweep / "job0" / "tensorboard")["test/acc/sev1"]) == 1
