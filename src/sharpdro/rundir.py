"""The run directory: its file names and rules, in one place.

A run directory holds::

    config.yaml        the resolved config
    metrics.jsonl      one line per epoch (train stats per severity, q, lr, seconds, val/test)
    summary.json       the selected epoch's per-severity accuracies, average and worst
    train.log          what was printed
    checkpoints/last.pt, checkpoints/best.pt
    evaluation-*.json  results of ``sharpdro evaluate``
    tensorboard/       TensorBoard event files (``output.loggers: [tensorboard]``, ``sharpdro export-logs``)
    tracking.json      the MLflow / W&B run ids of this run, so a resumed run logs into the same one

A sweep adds ``done`` (the job finished), ``error.txt`` (it failed: the traceback),
``.lock`` (held by the process running it) and ``slurm.json`` (submitted to Slurm).

Every other module asks this one for a path or a fact about a run (is it finished,
which checkpoint to load, which run a checkpoint belongs to, which backend wrote it);
none of them spells a file name.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOG = "train.log"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
DONE = "done"
ERROR = "error.txt"
LOCK = ".lock"
SLURM_MARKER = "slurm.json"
EVALUATION_PREFIX = "evaluation-"
TENSORBOARD = "tensorboard"
TRACKING = "tracking.json"

# Files written by the sweep around a run, not by the trainer.
SWEEP_FILES = (LOCK, ERROR, SLURM_MARKER)
# Any of these marks a folder as (the beginning of) a run.
RUN_MARKERS = (CONFIG, METRICS, SUMMARY, DONE, ERROR)

# The key a MindSpore-backend checkpoint (an .npz archive) stores its metadata under.
MINDSPORE_META_KEY = "__meta__"


class RunDir:
    """Paths inside one run directory (``RunDir(path).summary`` and so on)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    log = property(lambda self: self.path / LOG)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last = property(lambda self: self.path / CHECKPOINTS / LAST)
    best = property(lambda self: self.path / CHECKPOINTS / BEST)
    done = property(lambda self: self.path / DONE)
    error = property(lambda self: self.path / ERROR)
    lock = property(lambda self: self.path / LOCK)
    slurm_marker = property(lambda self: self.path / SLURM_MARKER)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    tracking = property(lambda self: self.path / TRACKING)

    def evaluation(self, tag: str) -> Path:
        return self.path / f"{EVALUATION_PREFIX}{tag}.json"

    def evaluations(self) -> list[Path]:
        return sorted(self.path.glob(f"{EVALUATION_PREFIX}*.json"))

    # ------------------------------------------------------------ facts
    def holds_run(self) -> bool:
        """The trainer has started here (metrics or a checkpoint exist)."""
        return self.metrics.exists() or self.last.exists()

    def looks_like_run(self) -> bool:
        return any((self.path / f).exists() for f in RUN_MARKERS)

    def has_trainer_files(self) -> bool:
        """Anything in the folder besides the sweep's bookkeeping files."""
        return self.path.is_dir() and any(p.name not in SWEEP_FILES for p in self.path.iterdir())

    def summary_finished(self) -> bool:
        """``summary.json`` exists and says the run finished."""
        try:
            summary = json.loads(self.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(summary, dict) and summary.get("finished") is True

    def is_finished(self) -> bool:
        return self.done.exists() or self.summary_finished()

    def read_config(self) -> dict | None:
        """The run's ``config.yaml`` as a dict (None when absent or unreadable); never runs code."""
        import yaml

        try:
            cfg = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None
        return cfg if isinstance(cfg, dict) else None

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text(encoding="utf-8"))

    def epoch_records(self) -> list[dict]:
        """``metrics.jsonl``, one record per epoch (the last written wins, after a resume), by epoch."""
        from sharpdro.io import read_jsonl

        if not self.metrics.exists():
            return []
        by_epoch: dict[int, dict] = {}
        for rec in read_jsonl(self.metrics):
            if isinstance(rec, dict) and "epoch" in rec:
                by_epoch[int(rec["epoch"])] = rec
        return [by_epoch[e] for e in sorted(by_epoch)]

    def last_error_line(self, limit: int = 200) -> str:
        try:
            lines = [ln.strip() for ln in self.error.read_text(encoding="utf-8", errors="replace").splitlines()
                     if ln.strip()]
        except OSError:
            return f"failed ({ERROR} unreadable)"
        text = lines[-1] if lines else f"failed (empty {ERROR})"
        return text if len(text) <= limit else text[:limit - 3] + "..."


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or a run directory's best checkpoint, else its last."""
    from sharpdro.errors import SharpDROError

    p = Path(path)
    if p.is_file():
        return p
    run = RunDir(p)
    for ckpt in (run.best, run.last):
        if ckpt.is_file():
            return ckpt
    raise SharpDROError(f"{p} is neither a checkpoint file nor a run directory with "
                        f"{CHECKPOINTS}/{BEST} or {CHECKPOINTS}/{LAST}")


def run_of_checkpoint(ckpt: str | os.PathLike) -> RunDir:
    """The run directory a checkpoint belongs to (its folder's parent for ``checkpoints/*``)."""
    ckpt = Path(ckpt)
    return RunDir(ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt.parent)


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """``'mindspore'`` (our .npz), ``'torch'`` (a torch.save archive), or None, from the file's content."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if f"{MINDSPORE_META_KEY}.npy" in names:
        return "mindspore"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "torch"
    return None


def checkpoint_backend(ckpt: str | os.PathLike) -> str:
    """The backend that wrote a checkpoint: the file's content says (a converted file may sit in another
    backend's run); an unreadable file falls back to its run's config, then to torch."""
    kind = checkpoint_format(ckpt)
    if kind is not None:
        return kind
    cfg = run_of_checkpoint(ckpt).read_config()
    if cfg is not None and isinstance(cfg.get("backend"), str):
        return cfg["backend"]
    return "torch"
