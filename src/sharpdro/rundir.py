"""The run directory: its file names and rules, in one place.

A run directory holds::

    config.yaml        the resolved config
    data.json          the fingerprint of the data it trains on, and where that data was (--resume compares it)
    metrics.jsonl      one line per epoch (train stats per severity, q, lr, seconds, val/test; with
                       eval.test=selected test only in the selected epoch's line, written after training)
    summary.json       the selected epoch's per-severity accuracies, average and worst
    train.log          what was printed
    checkpoints/last.pt, checkpoints/best.pt      (PyTorch backend; MindSpore: last.npz, best.npz,
                                                  or last.pt / best.pt in runs written before)
    evaluation-*.json  results of ``sharpdro evaluate``
    .sharpdro-run      marks the folder as a run directory of this project (written first)
    config-changes.jsonl  optimisation keys changed on --resume --allow-optimizer-changes (when any)
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
DATA = "data.json"  # what the data is (its fingerprint), since data.root only says where it was
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PRESTAGE = "prestage.json"  # what a method's pre-stage found (JTT, EIIL)
LOG = "train.log"
CHECKPOINTS = "checkpoints"
CHECKPOINT_SUFFIXES = {"torch": ".pt", "mindspore": ".npz"}  # a backend's checkpoint file suffix
LAST = "last.pt"  # the PyTorch backend's names (checkpoint_name gives any backend's)
BEST = "best.pt"
DONE = "done"
ERROR = "error.txt"
LOCK = ".lock"
SLURM_MARKER = "slurm.json"
EVALUATION_PREFIX = "evaluation-"
MARKER = ".sharpdro-run"
CHANGES = "config-changes.jsonl"
TENSORBOARD = "tensorboard"
TRACKING = "tracking.json"

# Files written by the sweep around a run, not by the trainer.
SWEEP_FILES = (LOCK, ERROR, SLURM_MARKER)
# Any of these marks a folder as (the beginning of) a run.
RUN_MARKERS = (MARKER, CONFIG, METRICS, SUMMARY, DONE, ERROR)
# The sections every run's config.yaml has (what tells a run of this project from a stranger's file).
_CONFIG_SECTIONS = ("data", "model", "algorithm", "train")

# The key a MindSpore-backend checkpoint (an .npz archive) stores its metadata under.
MINDSPORE_META_KEY = "__meta__"


def checkpoint_name(kind: str, backend: str = "torch") -> str:
    """File name of a backend's ``last`` or ``best`` checkpoint: ``last.pt`` (torch), ``last.npz`` (mindspore)."""
    if kind not in ("last", "best"):
        raise ValueError(f"checkpoint kind must be 'last' or 'best', got {kind!r}")
    return kind + CHECKPOINT_SUFFIXES.get(backend, CHECKPOINT_SUFFIXES["torch"])


class RunDir:
    """Paths inside one run directory (``RunDir(path).summary`` and so on)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG)
    data = property(lambda self: self.path / DATA)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    prestage = property(lambda self: self.path / PRESTAGE)
    log = property(lambda self: self.path / LOG)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last = property(lambda self: self.path / CHECKPOINTS / LAST)  # the PyTorch backend's; see checkpoint()
    best = property(lambda self: self.path / CHECKPOINTS / BEST)
    done = property(lambda self: self.path / DONE)
    error = property(lambda self: self.path / ERROR)
    lock = property(lambda self: self.path / LOCK)
    slurm_marker = property(lambda self: self.path / SLURM_MARKER)
    marker = property(lambda self: self.path / MARKER)
    changes = property(lambda self: self.path / CHANGES)

    def checkpoint(self, kind: str, backend: str = "torch") -> Path:
        """Where ``backend`` writes its ``last`` / ``best`` checkpoint."""
        return self.checkpoints / checkpoint_name(kind, backend)

    def existing_checkpoint(self, kind: str, backend: str | None = None) -> Path | None:
        """The ``last`` / ``best`` checkpoint file present, under the name of ``backend`` (default: the run's
        config's) first, then under the other backends' names (MindSpore runs written before their own
        suffix hold ``.pt`` files); None when there is none."""
        if backend is None:
            backend = (self.read_config() or {}).get("backend", "torch")
        names = [checkpoint_name(kind, backend)] + [checkpoint_name(kind, b) for b in CHECKPOINT_SUFFIXES]
        for name in dict.fromkeys(names):
            if (self.checkpoints / name).is_file():
                return self.checkpoints / name
        return None
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    tracking = property(lambda self: self.path / TRACKING)

    def evaluation(self, tag: str) -> Path:
        return self.path / f"{EVALUATION_PREFIX}{tag}.json"

    def evaluations(self) -> list[Path]:
        return sorted(self.path.glob(f"{EVALUATION_PREFIX}*.json"))

    # ------------------------------------------------------------ facts
    def holds_run(self) -> bool:
        """The trainer has started here (metrics or a checkpoint exist)."""
        return self.metrics.exists() or any(self.checkpoint("last", b).exists() for b in CHECKPOINT_SUFFIXES)

    def is_ours(self) -> bool:
        """A run directory of this project: its marker file, or (runs written before the marker existed)
        a ``config.yaml`` with this project's sections."""
        if self.marker.is_file():
            return True
        cfg = self.read_config()
        return cfg is not None and all(isinstance(cfg.get(s), dict) for s in _CONFIG_SECTIONS)

    def foreign_files(self) -> list[str]:
        """Names in a folder that is not a run directory of this project (empty when it is one, or holds
        only a sweep's bookkeeping): writing a run there would overwrite or append to them."""
        if not self.path.is_dir() or self.is_ours():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in SWEEP_FILES)

    def write_marker(self, config_hash: str) -> None:
        from sharpdro.io import atomic_write_text

        if not self.marker.is_file():
            atomic_write_text(self.marker, f"sharpdro run directory\nconfig_hash: {config_hash}\n")

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
        """The run's ``config.yaml`` as a dict (None when absent or unreadable); never runs code, bounded
        (:func:`sharpdro.yaml_input.read_yaml`)."""
        from sharpdro.errors import ConfigError
        from sharpdro.yaml_input import read_yaml

        if not self.config.is_file():
            return None
        try:
            cfg = read_yaml(self.config)
        except ConfigError:
            return None
        return cfg if isinstance(cfg, dict) else None

    def read_data(self) -> dict | None:
        """``data.json`` (None when absent: a run written before data fingerprints, or unreadable)."""
        try:
            record = json.loads(self.data.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("fingerprint") else None

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
    for kind in ("best", "last"):
        ckpt = run.existing_checkpoint(kind)
        if ckpt is not None:
            return ckpt
    names = " or ".join(f"{CHECKPOINTS}/{checkpoint_name(k, b)}" for k in ("best", "last") for b in CHECKPOINT_SUFFIXES)
    raise SharpDROError(f"{p} is neither a checkpoint file nor a run directory with {names}")


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


def unreadable_checkpoint_message(path: str | os.PathLike, exc: BaseException) -> str:
    """What to tell a user whose checkpoint file could not be loaded, from what the file is."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"checkpoint {path} cannot be read ({err.strerror or err})"
    if head != b"PK\x03\x04":  # every checkpoint of either backend is a zip archive
        return (f"{path} cannot be read: it is not a sharpdro checkpoint (give a run directory, or its "
                f"{CHECKPOINTS}/{BEST} or {CHECKPOINTS}/{LAST})")
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text or "Weights only load failed" in text:
        return (f"checkpoint {path} holds Python objects other than tensors and plain values; sharpdro does not "
                f"load it, because unpickling them could run code from the file. Use a checkpoint written by "
                f"sharpdro")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (f"checkpoint {path} cannot be read ({first}): it is incomplete or damaged, for example an "
            f"interrupted copy or write. Copy it again, or use the run's other checkpoint")
