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

    .lock              the process writing the run holds an flock on it (:func:`hold_lock`): one
                       process per run directory, ``train`` and a sweep's job alike

A sweep adds ``done`` (the job finished), ``error.txt`` (it failed: the traceback) and
``slurm.json`` (submitted to Slurm).

Every other module asks this one for a path or a fact about a run (is it finished,
which checkpoint to load, which run a checkpoint belongs to, which backend wrote it);
none of them spells a file name.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks
    fcntl = None  # type: ignore[assignment]

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

# Files that are not the trainer's results: the lock (train's and a sweep job's) and the sweep's bookkeeping.
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
        a ``config.yaml`` with this project's sections beside what the trainer writes next (a folder holding
        only a user's own config.yaml is the user's)."""
        if self.marker.is_file():
            return True
        cfg = self.read_config()
        return (cfg is not None and all(isinstance(cfg.get(s), dict) for s in _CONFIG_SECTIONS)
                and any(p.exists() for p in (self.log, self.checkpoints, self.metrics, self.summary)))

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

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files of atomic writes that a killed process left (``.last.pt.<random>.tmp``);
        only the process holding the run's lock may call this (no write of its own is under way)."""
        from sharpdro.io import is_atomic_temp

        removed = []
        for folder in (self.path, self.checkpoints):
            for p in (folder.iterdir() if folder.is_dir() else ()):
                if is_atomic_temp(p) and p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    def missing_epochs(self, records: list[dict] | None = None) -> list[int]:
        """The epochs (0-based) of a finished run that its ``metrics.jsonl`` lacks (lines lost, e.g. a truncated
        copy): every epoch of a run has its line, and its summary says how many epochs it ran. Empty for an
        unfinished run, a complete file, or a summary that does not say."""
        if not self.summary_finished():
            return []
        try:
            epochs = self.read_summary().get("epochs")
        except (OSError, ValueError):
            return []
        if not isinstance(epochs, int) or isinstance(epochs, bool):
            return []
        have = {int(r["epoch"]) for r in (self.epoch_records() if records is None else records)}
        return [e for e in range(epochs) if e not in have]

    def lost_lines_note(self, records: list[dict] | None = None) -> str | None:
        """What a reader of a finished run must say when its ``metrics.jsonl`` lacks epochs (None: complete)."""
        missing = self.missing_epochs(records)
        if not missing:
            return None
        shown = ", ".join(str(e + 1) for e in missing[:5]) + (" ..." if len(missing) > 5 else "")
        return (f"{self.metrics} lacks the line(s) of epoch {shown} of this finished run (lost, e.g. a truncated "
                f"copy): numbers read from it are not the run's ({self.summary.name} holds its result); restore "
                f"the file from the run's original")

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


# ------------------------------------------------------------------ one process per run directory
# The lock files this process holds, by (pid, st_dev, st_ino). A sweep job holds its folder's lock while it
# calls train in the same process; train's own hold_lock(nested=True) then finds it here (a second flock on
# another descriptor of the same file would fail against its own process).
_HELD: set[tuple[int, int, int]] = set()
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def hold_lock(directory: str | os.PathLike, nested: bool = False) -> Iterator[bool]:
    """Hold ``directory/.lock`` (an flock, gone with its process even when killed); yields False when another
    process holds it. ``nested``: a lock this process holds already counts as held (``train`` inside a sweep
    job); otherwise it is another holder (yields False). Creates ``directory``."""
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        st = os.fstat(fd)
        key = (os.getpid(), st.st_dev, st.st_ino)
        with _HELD_GUARD:
            mine = key in _HELD
        if mine:  # held by an enclosing hold_lock of this process (closing this fd leaves its flock alone)
            yield nested
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                yield False
                return
            import warnings  # a file system without locks (some network mounts): go on, and say so

            warnings.warn(f"cannot lock {directory / LOCK} ({exc.strerror}): a second process on this folder "
                          f"would not be noticed", stacklevel=3)
            yield True
            return
        with _HELD_GUARD:
            _HELD.add(key)
        try:
            try:  # who holds it, for the message of a refused second process (best effort: a full disk)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
            yield True
        finally:
            with _HELD_GUARD:
                _HELD.discard(key)
    finally:
        os.close(fd)


def lock_held(directory: str | os.PathLike) -> bool:
    """Whether a live process (this one included) holds ``directory/.lock``."""
    lock = Path(directory) / LOCK
    if fcntl is None or not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:  # another descriptor: fails against a holder in this process too
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def lock_holder(directory: str | os.PathLike) -> str:
    """The process id written into a held lock file, as text ('?' when unknown)."""
    try:
        text = (Path(directory) / LOCK).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return "?"
    return text if text.isdigit() else "?"


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


# The keys a checkpoint's state is laid out by: another value is another network or algorithm state.
_STATE_KEYS = (("algorithm", "name"), ("model", "name"), ("model", "width"))


def check_checkpoint_fits(path: str | os.PathLike, written: dict | None, cfg: dict) -> None:
    """Refuse a checkpoint that another method or network wrote (its stored config ``written``) before it is
    loaded into the run of ``cfg``: loading it fails deep inside, or worse, half succeeds."""
    from sharpdro.errors import TrainingError

    if not isinstance(written, dict):
        return
    differ = [f"{s}.{k}" for s, k in _STATE_KEYS
              if isinstance(written.get(s), dict) and k in written[s] and written[s][k] != cfg[s][k]]
    if differ:
        def spell(c: dict) -> str:
            return f"{c['algorithm']['name']!r} ({c['model']['name']}, width {c['model']['width']})"

        raise TrainingError(f"checkpoint {path} was written by a run of method {spell(written)}; this run is "
                            f"{spell(cfg)} (differs in {', '.join(differ)}), so it cannot continue from it. Put this "
                            f"run's own checkpoint there, or use the checkpoint with a run of that method")


def check_finite_weights(path: str | os.PathLike, bad: list[str]) -> None:
    """Refuse a checkpoint whose network weights ``bad`` (their names) hold NaN or infinity: a damaged file
    (flipped bits) or a run that diverged; every prediction from it would be meaningless."""
    from sharpdro.errors import TrainingError

    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TrainingError(f"checkpoint {path} holds non-finite weights (NaN or infinity in {shown}): the file is "
                            f"damaged or its run diverged. Use the run's other checkpoint (best / last), or a copy "
                            f"of this one that is intact")


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
