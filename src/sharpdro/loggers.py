"""Experiment trackers: every record of ``metrics.jsonl`` mirrored to TensorBoard, MLflow or Weights & Biases.

``output.loggers: [tensorboard, mlflow, wandb]`` (none by default; each is an optional extra:
``pip install 'sharpdro[tensorboard]'``, ``[mlflow]``, ``[wandb]``).  Each epoch's record is
flattened (:func:`flatten_record`: ``test/acc/sev3``, ``val/acc/worst``, ``train/loss/mean``,
``test/ece/sev0``, ``q/sev5``, ``lr`` ...) and logged with the epoch as the step; the resolved
config, flattened to dotted keys (``train.lr``), is logged once as hyperparameters.

Everything stays on this machine by default:

- **tensorboard**: event files in ``<run>/tensorboard/`` (``tensorboard --logdir RUNS``);
- **mlflow**: ``$MLFLOW_TRACKING_URI`` when set (a server, a database; a file store there needs the
  user's own ``MLFLOW_ALLOW_FILE_STORE=true`` under MLflow 3), else a SQLite database
  ``<parent of the run>/mlruns/mlflow.db`` (for a sweep: one for all its jobs; MLflow 3 deprecated the
  file store; SQLite needs SQLAlchemy and Alembic, in the ``mlflow`` extra), experiment
  ``$MLFLOW_EXPERIMENT_NAME`` or ``sharpdro``;
  ``mlflow ui --backend-store-uri sqlite:///DIR/mlruns/mlflow.db``. Nothing is set process-wide;
- **wandb**: offline mode (``$WANDB_MODE`` to change it), files under ``<run>/wandb/``,
  project ``$WANDB_PROJECT`` or ``sharpdro``; ``wandb sync`` uploads them later.

A resumed run logs into the same MLflow / W&B run (their ids are kept in
``<run>/tracking.json``).  ``sharpdro export-logs RUN_OR_SWEEP --to tensorboard`` writes the
same for finished runs from their ``metrics.jsonl``.

The engine calls :func:`open_loggers` on the writing process only, ``log(record)`` after each
epoch's metrics line, and ``close()`` at the end.  With ``eval.test=selected`` the test block
comes after the last epoch and is logged at the selected epoch's step (W&B, which keeps no
earlier step, puts it in the run's summary).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterable, Mapping

from sharpdro.errors import SharpDROError
from sharpdro.io import blocking_lock
from sharpdro.version import PACKAGE
from sharpdro.rundir import RunDir

LOGGERS = ("tensorboard", "mlflow", "wandb")
MLRUNS = "mlruns"  # the default MLflow store's folder, beside the run directories
MLFLOW_DB = "mlflow.db"  # the default store itself: SQLite, in MLRUNS
MLFLOW_DB_LOCK = "mlflow.db.lock"  # held while a job creates the database's tables or the experiment
_EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
_SPLITS = ("val", "test", "extra_test")
_PER_SEVERITY = {"accuracy": "acc", "loss": "loss", "ece": "ece", "nll": "nll", "brier": "brier"}


class LoggerError(SharpDROError):
    """A logger named in ``output.loggers`` cannot be used (not installed, unknown)."""


# ------------------------------------------------------------------------------ flattening
def _num(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def flatten_record(record: Mapping) -> dict[str, float]:
    """One epoch of ``metrics.jsonl`` as ``{name: value}``: ``train/loss/mean``, ``train/acc/sev2``, ``val/acc/average``,
    ``test/acc/sev3``, ``test/ece/sev3``, ``q/sev1``, ``lr``, ``seconds`` ... (numbers only)."""
    out: dict[str, float] = {}
    tr = record.get("train") or {}
    for key, name in (("loss", "loss"), ("accuracy", "acc")):
        if _num(tr.get(key)) is not None:
            out[f"train/{name}/mean"] = _num(tr[key])  # a leaf beside sevN (MLflow's store needs no key as a prefix)
    for key, name in (("group_loss", "loss"), ("group_acc", "acc"), ("group_count", "count")):
        for s, v in (tr.get(key) or {}).items():
            if _num(v) is not None:
                out[f"train/{name}/sev{s}"] = _num(v)
    for split in _SPLITS:
        block = record.get(split)
        if not isinstance(block, Mapping):
            continue
        for key, name in _PER_SEVERITY.items():
            for s, v in (block.get(key) or {}).items():
                if _num(v) is not None:
                    out[f"{split}/{name}/sev{s}"] = _num(v)
        for key in ("average", "worst", "worst_severity"):
            if _num(block.get(key)) is not None:
                out[f"{split}/acc/{key}"] = _num(block[key])
    for i, v in enumerate(record.get("q") or []):
        out[f"q/sev{i}"] = float(v)
    for key in ("lr", "seconds", "agnostic_selected_severity", "agnostic_batch_severity"):
        if _num(record.get(key)) is not None:
            out[key] = _num(record[key])
    return out


def flatten_config(cfg: Mapping, prefix: str = "") -> dict:
    """``{'train.lr': 0.03, 'data.corruption': 'gaussian_noise', ...}`` (lists and null as text)."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_config(v, key + "."))
        elif v is None or isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------ one tracker each
class TensorBoardLogger:
    def __init__(self, cfg: Mapping, run: RunDir, logdir: Path | None = None, **_):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as exc:
            raise _missing("tensorboard", exc) from None
        self.writer = SummaryWriter(log_dir=str(logdir or run.tensorboard))
        flat = flatten_config(cfg)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat.items()), 0)
        exp, ssi, sei = hparams({k: v for k, v in flat.items()}, {})
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)

    def log(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def mlflow_store(run_dir) -> Path:
    """The default MLflow store of a run: ``<parent of the run>/mlruns/mlflow.db`` (SQLite)."""
    return Path(run_dir).resolve().parent / MLRUNS / MLFLOW_DB


class MLflowLogger:
    def __init__(self, cfg: Mapping, run: RunDir, ids: dict, fresh: bool = False, **_):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise _missing("mlflow", exc) from None
        uri, store = os.environ.get("MLFLOW_TRACKING_URI"), None
        artifacts = None
        if not uri:  # a SQLite file (MLflow 3 deprecated the file store); nothing set process-wide
            import importlib.util

            lacking = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
            if lacking:
                raise LoggerError(f"output.loggers names 'mlflow', whose default store is a SQLite file that needs "
                                  f"{' and '.join(lacking)} (not installed); pip install 'sharpdro[mlflow]', or set "
                                  f"MLFLOW_TRACKING_URI to a tracking server")
            store = mlflow_store(run.path)
            store.parent.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{store}", (store.parent / "artifacts").as_uri()
        self._Metric = Metric
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PACKAGE)
        with blocking_lock(None if store is None else store.with_name(MLFLOW_DB_LOCK)):
            # the jobs of a parallel sweep start together: one creates the database's tables and the experiment
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                name, artifact_location=artifacts)
        run_id = None if fresh else ids.get("mlflow")
        if run_id is not None:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 - the store was moved or cleaned: start a new tracked run
                run_id = None
        new = run_id is None
        if new:
            run_id = self.client.create_run(exp_id, run_name=run.path.name,
                                            tags={"sharpdro.run_dir": str(run.path.resolve())}).info.run_id
        self.run_id = run_id
        ids["mlflow"] = run_id
        if new:
            params = [Param(k, str(v)[:500]) for k, v in flatten_config(cfg).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])

    def log(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 500])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbLogger:
    def __init__(self, cfg: Mapping, run: RunDir, ids: dict, fresh: bool = False, **_):
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb", exc) from None
        run_id = None if fresh else ids.get("wandb")
        run_id = run_id or uuid.uuid4().hex[:12]
        ids["wandb"] = run_id
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PACKAGE), name=run.path.name, id=run_id,
                              resume="allow", dir=str(run.path), config=flatten_config(cfg),
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, values: Mapping[str, float], step: int) -> None:
        if int(step) < int(getattr(self.run, "step", 0) or 0):
            # W&B drops a step before its current one (eval.test=selected logs test at the selected epoch
            # after the last): keep those values in the run's summary instead
            self.run.summary.update(dict(values))
            return
        self.run.log(dict(values), step=int(step))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


_CLASSES = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


def _missing(name: str, exc: Exception) -> LoggerError:
    return LoggerError(f"output.loggers names {name!r}, which is not installed ({exc}); "
                       f"pip install 'sharpdro[{_EXTRA[name]}]' or remove it from output.loggers")


# ------------------------------------------------------------------------------ the engine's handle
class Loggers:
    """The trackers of one run: ``log(record)`` mirrors a metrics.jsonl record, ``close()`` ends them."""

    def __init__(self, trackers: list, run: RunDir | None = None, ids: dict | None = None):
        self.trackers = trackers
        self.run, self.ids = run, ids or {}

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, record: Mapping) -> None:
        if not self.trackers:
            return
        values = {k: v for k, v in flatten_record(record).items() if math.isfinite(v)}
        for t in self.trackers:
            t.log(values, int(record.get("epoch", 0)))

    def close(self) -> None:
        failed = sys.exc_info()[0] is not None  # closed while an exception propagates: the run failed
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.close(failed)


def open_loggers(cfg: Mapping, run_dir, names: Iterable[str] | None = None, fresh: bool = False,
                 tensorboard_dir=None) -> Loggers:
    """Trackers of ``output.loggers`` (or ``names``) for the run in ``run_dir``; an empty handle when none.

    ``fresh``: new MLflow / W&B runs, ids not saved (``export-logs``); ``tensorboard_dir``: where
    event files go (default ``<run>/tensorboard``).
    """
    names = list(cfg.get("output", {}).get("loggers") or [] if names is None else names)
    if not names:
        return Loggers([])
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise LoggerError(f"unknown logger(s) {', '.join(unknown)}; allowed: {', '.join(LOGGERS)}")
    run = RunDir(run_dir)
    ids = {}
    if not fresh and run.tracking.is_file():
        try:
            ids = json.loads(run.tracking.read_text(encoding="utf-8"))
        except ValueError:
            ids = {}
    trackers = []
    try:
        for name in dict.fromkeys(names):
            trackers.append(_CLASSES[name](cfg, run, ids=ids, fresh=fresh, logdir=tensorboard_dir))
    except BaseException:
        for t in trackers:
            t.close(True)
        raise
    if not fresh and ids:
        from sharpdro.io import atomic_write_json

        atomic_write_json(run.tracking, ids)
    return Loggers(trackers, run, ids)


# ------------------------------------------------------------------------------ finished runs
def find_run_dirs(path) -> list[Path]:
    """A run directory, or the run directories inside a sweep (or any) folder, sorted."""
    p = Path(path)
    if not p.is_dir():
        raise SharpDROError(f"{p} is not a folder")
    if RunDir(p).metrics.exists():
        return [p]
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and RunDir(d).metrics.exists())


def export_logs(path, to: str = "tensorboard", out=None) -> list[Path]:
    """Write the metrics of finished (or partial) runs under ``path`` to a tracker; returns the runs done.

    TensorBoard event files go to ``<run>/tensorboard`` (replacing event files written there before: the
    metrics file is the source) or ``<out>/<run name>``; MLflow / W&B get a new tracked run per run.
    """
    from sharpdro.config import validate_or_raw

    runs = find_run_dirs(path)
    if not runs:
        raise SharpDROError(f"no run directory (with {RunDir(path).metrics.name}) in {path}")
    done = []
    for d in runs:
        run = RunDir(d)
        cfg = validate_or_raw(run.read_config() or {})
        tb_dir = None
        if to == "tensorboard":
            tb_dir = Path(out) / d.name if out is not None else run.tensorboard
            if tb_dir.is_dir():
                for f in tb_dir.glob("events.out.tfevents.*"):
                    f.unlink()
        records = run.epoch_records()
        lost = run.lost_lines_note(records)
        if lost is not None:  # exported as they are, but never silently
            warnings.warn(lost, stacklevel=2)
        handle = open_loggers(cfg, d, names=[to], fresh=True, tensorboard_dir=tb_dir)
        try:
            for rec in records:
                handle.log(rec)
        finally:
            handle.close()
        done.append(d)
    return done
