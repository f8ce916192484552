"""One sweep job's folder: its status, its lock, running it, and the sweep's index.

Job life cycle (file names: :mod:`sharpdro.rundir`): ``new`` (no folder) -> the trainer writes
its config, the epoch metrics, checkpoints (``partial``) -> the summary -> :func:`run_job`
writes the ``done`` marker atomically.  A finished job is skipped; a partial one is run
again with ``resume=True``; a job that raises leaves ``error.txt`` (the traceback, status
``failed``).  While a job runs, its process holds an ``flock`` on the job's ``.lock``
(:func:`sharpdro.rundir.hold_lock`, the run directory's own lock, which ``train`` takes too;
released when the process ends, even when killed), so two sweeps started on the same
folder never run the same job.  After a job the backends it used release their cached
accelerator memory (:func:`sharpdro.backends.base.release_memory`).
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from sharpdro.errors import SharpDROError
from sharpdro.experiments.sweep_spec import SweepError
from sharpdro.io import atomic_write_json, atomic_write_text, blocking_lock
from sharpdro.rundir import DONE, ERROR, SLURM_MARKER, RunDir, hold_lock, lock_held

if TYPE_CHECKING:
    from sharpdro.experiments.sweep_spec import Job, SweepSpec

DEFAULT_TRAIN = "sharpdro.engine:train"
INDEX = "sweep.json"
INDEX_LOCK = ".sweep.json.lock"  # the index's read-merge-write, under blocking_lock


# --------------------------------------------------------------------------- job state


def job_status(job_dir: str | os.PathLike) -> str:
    """``done`` | ``running`` (locked by a live process) | ``failed`` | ``submitted`` (to Slurm, not finished)
    | ``partial`` | ``new``."""
    d = Path(job_dir)
    if (d / DONE).exists():
        return "done"
    if lock_held(d):
        return "running"
    if (d / ERROR).exists():
        return "failed"
    if (d / SLURM_MARKER).exists():
        return "submitted"
    if _has_run_files(d):
        return "partial"
    return "new"


def _has_run_files(d: Path) -> bool:
    """Whether the trainer has written anything in ``d`` (sweep bookkeeping files aside)."""
    return RunDir(d).has_trainer_files()


def job_lock(job_dir: Path):
    """Hold ``job_dir/.lock`` while a job runs (a context manager yielding False when another process, or
    another holder in this one, holds it): the run directory's lock, :func:`sharpdro.rundir.hold_lock`."""
    return hold_lock(job_dir)


def _summary_finished(job_dir: Path) -> bool:
    return RunDir(job_dir).summary_finished()


def _mark_done(job_dir: Path, h: str | None) -> None:
    atomic_write_json(job_dir / DONE, {"hash": h, "finished_at": _dt.datetime.now().isoformat(timespec="seconds")})


def resolve_train(train: Callable | str | None) -> Callable:
    """The train function: a callable, a ``module:function`` string, or the engine's ``train``."""
    if callable(train):
        return train
    ref = train or DEFAULT_TRAIN
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr or "train")


def run_job(cfg: dict, job_dir: str | os.PathLike, h: str | None = None,
            train: Callable | str | None = None) -> dict:
    """Run (or resume, or skip) one job. Never raises for a failing job: returns its status.

    Returns ``{"hash", "status": "done"|"failed"|"skipped"|"running", "seconds", "error"}``;
    ``running``: another live process (a second sweep on the same folder) holds the job.
    """
    job_dir = Path(job_dir)
    start = time.time()
    if (job_dir / DONE).exists():
        return {"hash": h, "status": "skipped", "seconds": 0.0, "error": None}
    with job_lock(job_dir) as mine:
        if not mine:
            return {"hash": h, "status": "running", "seconds": 0.0, "error": None}
        if (job_dir / DONE).exists():  # finished by another process while we waited for the lock
            return {"hash": h, "status": "skipped", "seconds": 0.0, "error": None}
        if _summary_finished(job_dir):  # killed between the summary and the marker
            _mark_done(job_dir, h)
            return {"hash": h, "status": "done", "seconds": 0.0, "error": None}
        resume = _has_run_files(job_dir)
        (job_dir / ERROR).unlink(missing_ok=True)
        try:
            fn = resolve_train(train)
            fn(cfg, out_dir=job_dir, resume=resume)
            if not _summary_finished(job_dir):
                raise SharpDROError(f"train returned but {RunDir(job_dir).summary} is missing or not finished")
            _mark_done(job_dir, h)
            return {"hash": h, "status": "done", "seconds": time.time() - start, "error": None}
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failing job must not stop the sweep
            tb = traceback.format_exc()
            _write_error(job_dir, tb)
            return {"hash": h, "status": "failed", "seconds": time.time() - start,
                    "error": f"{type(exc).__name__}: {exc}"}
        finally:
            _release_accelerator_memory()


def _write_error(job_dir: Path, text: str) -> None:
    try:
        atomic_write_text(job_dir / ERROR, text if text.endswith("\n") else text + "\n")
    except OSError:  # pragma: no cover - nothing more we can do
        pass


def _release_accelerator_memory() -> None:
    from sharpdro.backends.base import release_memory

    release_memory()


# --------------------------------------------------------------------------- the sweep index


def write_index(out: str | os.PathLike, jobs: Sequence[Job], spec: SweepSpec | None = None) -> Path:
    """Write (merge into) ``OUT/sweep.json``: every job hash -> its overrides and resolved config (and, for
    a tune block's variant job, ``variant_of``: {variant name: the selected final job's hash})."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # a lock file of its own: sweep.json is replaced by a rename, so a lock on it would be on a file no longer read
    with blocking_lock(out / INDEX_LOCK):  # two sweeps on one folder: each merges into what the other wrote
        return _merge_index(out, jobs, spec)



def _merge_index(out: Path, jobs: Sequence[Job], spec: SweepSpec | None) -> Path:
    path = out / INDEX
    index: dict = {"format": 1, "jobs": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and isinstance(old.get("jobs"), dict):
                index["jobs"].update(old["jobs"])
        except ValueError:
            pass
    base = spec.base if spec is not None else None
    for j in jobs:
        index["jobs"][j.hash] = {"base": base, "overrides": list(j.overrides), "varying": list(j.varying),
                                 "config": j.config}
        if j.variant_of:  # a tune block's variant job: which selected final job it reruns, per variant
            index["jobs"][j.hash]["variant_of"] = dict(j.variant_of)
    index["jobs"] = dict(sorted(index["jobs"].items()))
    if spec is not None:
        index["last_sweep"] = spec.to_dict()
    atomic_write_json(path, index)
    return path


def read_index(out: str | os.PathLike) -> dict:
    """``{hash: {"overrides", "config", ...}}`` from ``OUT/sweep.json`` (empty when absent)."""
    path = Path(out) / INDEX
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SweepError(f"{path} is not valid JSON ({exc})") from None
    return dict(data.get("jobs") or {})
