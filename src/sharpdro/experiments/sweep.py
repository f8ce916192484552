"""Sweeps: a grid of configs, one run directory per job, resumable, on three launchers.

A sweep file is YAML::

    base: quickstart              # config path (relative to this file, then the cwd) or shipped name
    set: [train.epochs=3]         # overrides applied to every job (list of k=v, or a mapping)
    grid:                         # cartesian product over any config keys
      algorithm.name: [erm, sharpdro]
      seed: [0, 1, 2]
    include:                      # (or ``jobs:``) extra jobs: base + set + these overrides
      - {algorithm.name: jtt, train.lr: 0.01}

Overrides are applied in this order: base file, ``set``, command-line ``--set``,
the grid point (or the ``include`` entry).  Command-line ``--grid key=v1,v2``
adds an axis or replaces the file's axis of the same key.

Each job runs in ``OUT/<job hash>``, where the hash is
:func:`sharpdro.config.config_hash` of the resolved config with the runtime-only
keys (:data:`RUNTIME_KEYS`: threads, progress bars, device, cache and output
locations) reset to their defaults, so running the same sweep with another
launcher, worker count or machine finds the jobs it already finished.

Job life cycle (file names: :mod:`sharpdro.rundir`): ``new`` (no folder) -> the trainer writes
its config, the epoch metrics, checkpoints (``partial``) -> the summary -> the sweep writes
the ``done`` marker atomically.  A finished job is skipped; a partial one is run
again with ``resume=True``; a job that raises leaves ``error.txt`` (the traceback,
status ``failed``) and the sweep goes on with the next job.  While a job runs, its
process holds an ``flock`` on ``OUT/<hash>/.lock`` (released when the process ends,
even when killed), so two sweeps started on the same folder never run the same job.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import importlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no job locks
    fcntl = None  # type: ignore[assignment]

from sharpdro.config import RUNTIME_KEYS, SCHEMA, NUM, ConfigError, Field, config_hash, default_config, load_config, parse_override, \
    resolve_config_path
from sharpdro.errors import SharpDROError
from sharpdro.io import atomic_write_json, atomic_write_text
from sharpdro.rundir import DONE, ERROR, LOCK, SLURM_MARKER, RunDir

LAUNCHERS = ("local", "parallel", "slurm")
DEFAULT_TRAIN = "sharpdro.engine:train"
INDEX = "sweep.json"

_SWEEP_KEYS = ("base", "set", "grid", "include", "jobs", "description")


class SweepError(SharpDROError):
    """A sweep file or sweep option that cannot work."""


# --------------------------------------------------------------------------- job identity


def _schema_field(dotted: str) -> Field | None:
    node: Any = SCHEMA
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Field) else None


def job_identity(cfg: Mapping) -> dict:
    """What a job computes: the keys whose value differs from the schema default.

    Runtime-only keys (:data:`RUNTIME_KEYS`) are left out, and so are keys at their
    default, so that adding a config key (with a default) to a later version does not
    rename every finished job of a long sweep.
    """
    return _non_default(_runtime_reset(cfg), default_config())


def _non_default(node, default) -> dict:
    out = {}
    for key, value in node.items():
        ref = default.get(key) if isinstance(default, Mapping) else None
        if isinstance(value, Mapping):
            sub = _non_default(value, ref if isinstance(ref, Mapping) else {})
            if sub:
                out[key] = sub
        elif key not in (default or {}) or value != ref:
            out[key] = value
    return out


def _runtime_reset(cfg: Mapping) -> dict:
    """The resolved config with every :data:`RUNTIME_KEYS` entry reset to its default."""
    out = copy.deepcopy(dict(cfg))
    for dotted in RUNTIME_KEYS:
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p)
            if not isinstance(node, dict):
                break
        else:
            if leaf in node:
                node[leaf] = copy.deepcopy(_schema_field(dotted).default)
    return out


def job_hash(cfg: Mapping) -> str:
    """Folder name of a job: a stable hash of what the job computes (key order does not matter)."""
    return config_hash(job_identity(cfg))


# --------------------------------------------------------------------------- overrides


def format_value(value: Any) -> str:
    """A value written so that ``parse_override`` (YAML) reads back exactly the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if text in ("inf", "-inf", "nan"):
            return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
        mantissa, e, exponent = text.partition("e")
        if e:  # PyYAML reads 1e-05 as a string; 1.0e-05 as a float
            if "." not in mantissa:
                mantissa += ".0"
            if exponent[0] not in "+-":
                exponent = "+" + exponent
            text = f"{mantissa}e{exponent}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        if plain and value and not re.search(r"[,\[\]{}#:&*!|>'\"%@`]", value) and value.strip() == value:
            return value
        return json.dumps(value)
    raise SweepError(f"cannot write {value!r} ({type(value).__name__}) as an override value")


def _coerce(dotted: str, value: Any) -> Any:
    """Numbers that YAML 1.1 left as strings (``1e-3``) become numbers for numeric keys."""
    f = _schema_field(dotted)
    if f is None or not isinstance(value, str):
        if f is not None and isinstance(value, list) and f.item_type in (float, int):
            return [_coerce_scalar(v, f.item_type) for v in value]
        return value
    if f.type is int or f.type is float or f.type == NUM:
        return _coerce_scalar(value, f.type)
    return value


def _coerce_scalar(value: Any, t) -> Any:
    if not isinstance(value, str):
        return value
    try:
        x = float(value)
    except ValueError:
        return value
    if t is int and x.is_integer():
        return int(x)
    return x


def make_override(key: str, value: Any) -> str:
    key = str(key).strip()
    return f"{key}={format_value(_coerce(key, value))}"


def normalize_override(text: str) -> str:
    """``k=v`` with the value re-written canonically (``train.lr=1e-3`` -> ``train.lr=0.001``)."""
    path, value = parse_override(text)
    return make_override(".".join(path), value)


def _overrides_from(obj: Any, where: str) -> list[str]:
    if obj is None:
        return []
    if isinstance(obj, str):
        return [normalize_override(obj)]
    if isinstance(obj, Mapping):
        return [make_override(k, v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        out: list[str] = []
        for item in obj:
            if isinstance(item, Mapping):
                out.extend(make_override(k, v) for k, v in item.items())
            elif isinstance(item, str):
                out.append(normalize_override(item))
            else:
                raise SweepError(f"{where}: {item!r} is not an override; write key=value or a mapping")
        return out
    raise SweepError(f"{where} must be a list of key=value or a mapping, got {obj!r}")


def split_values(text: str) -> list[str]:
    """Split ``a,b,[1, 2]`` at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p != ""]


def parse_grid_arg(text: str) -> tuple[str, list]:
    """``--grid key=v1,v2`` -> (key, [v1, v2]) with each value read as YAML."""
    if "=" not in text:
        raise SweepError(f"--grid {text!r} must be written key=v1,v2,... (e.g. seed=0,1,2)")
    key, raw = text.split("=", 1)
    values = []
    for part in split_values(raw):
        _, v = parse_override(f"{key}={part}")
        values.append(v)
    if not values:
        raise SweepError(f"--grid {text!r} lists no value")
    return key.strip(), values


# --------------------------------------------------------------------------- sweep spec and jobs


@dataclass
class SweepSpec:
    base: str | None = None
    set: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    include: list[list[str]] = field(default_factory=list)
    source: str | None = None  # folder the base path is relative to

    def to_dict(self) -> dict:
        return {"base": self.base, "set": list(self.set), "grid": {k: list(v) for k, v in self.grid.items()},
                "include": [list(x) for x in self.include]}


@dataclass(frozen=True)
class Job:
    hash: str
    config: dict
    overrides: tuple[str, ...]  # every override on top of the base file
    varying: tuple[str, ...]  # the grid point or include entry alone (for display)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep YAML file (a path, or the name of a shipped ``configs/sweeps`` file)."""
    p = Path(path)
    if not p.exists():
        from importlib import resources

        name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
        shipped = resources.files("sharpdro") / "configs" / "sweeps" / name
        if not shipped.is_file():
            raise SweepError(f"sweep file {str(path)!r} not found")
        p = Path(str(shipped))
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SweepError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{p}: a sweep file must be a mapping with keys {', '.join(_SWEEP_KEYS)}")
    unknown = sorted(set(raw) - set(_SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{p}: unknown sweep key(s) {', '.join(unknown)}; allowed: {', '.join(_SWEEP_KEYS)}")
    if "include" in raw and "jobs" in raw:
        raise SweepError(f"{p}: give 'include' or 'jobs' (the same thing), not both")
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, Mapping):
        raise SweepError(f"{p}: 'grid' must map config keys to lists of values")
    grid = {}
    for k, v in grid_raw.items():
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if not vals:
            raise SweepError(f"{p}: grid key {k!r} has no value")
        grid[str(k)] = [_coerce(str(k), x) for x in vals]
    include_raw = raw.get("include", raw.get("jobs")) or []
    if not isinstance(include_raw, list):
        raise SweepError(f"{p}: 'include' must be a list of jobs (each a mapping or a list of key=value)")
    include = [_overrides_from(entry if not isinstance(entry, str) else [entry], f"{p}: include[{i}]")
               for i, entry in enumerate(include_raw)]
    base = raw.get("base")
    return SweepSpec(base=None if base is None else str(base), set=_overrides_from(raw.get("set"), f"{p}: set"),
                     grid=grid, include=include, source=str(p.resolve().parent))


def build_spec(path: str | os.PathLike | None = None, base: str | None = None, sets: Sequence[str] = (),
               grids: Sequence[str] = ()) -> SweepSpec:
    """A sweep from a YAML file and/or command-line flags (``--base``, ``--set``, ``--grid``)."""
    spec = load_sweep(path) if path is not None else SweepSpec()
    if base is not None:
        spec.base, spec.source = base, None
    spec.set = spec.set + [normalize_override(s) for s in sets]
    for g in grids:
        key, values = parse_grid_arg(g)
        spec.grid[key] = [_coerce(key, v) for v in values]
    return spec


def _base_path(spec: SweepSpec) -> str | None:
    if spec.base is None:
        return None
    if spec.source is not None:
        rel = Path(spec.source) / spec.base
        if rel.exists():
            return str(rel)
    return str(resolve_config_path(spec.base))


def expand(spec: SweepSpec) -> list[Job]:
    """Every job of a sweep, resolved and validated, in grid order (first key slowest), then ``include``.

    Jobs whose resolved configs are identical are kept once.
    """
    base = _base_path(spec)
    points: list[list[str]] = []
    if spec.grid or not spec.include:
        keys = list(spec.grid)
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            points.append([make_override(k, v) for k, v in zip(keys, combo)])
    points.extend(list(x) for x in spec.include)
    jobs, seen = [], set()
    for point in points:
        overrides = tuple(spec.set) + tuple(point)
        try:
            cfg = load_config(base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep job [{' '.join(point) or 'base'}]: {exc}") from None
        h = job_hash(cfg)
        if h in seen:
            continue
        seen.add(h)
        jobs.append(Job(hash=h, config=cfg, overrides=overrides, varying=tuple(point)))
    return jobs


# --------------------------------------------------------------------------- job state


def job_status(job_dir: str | os.PathLike) -> str:
    """``done`` | ``running`` (locked by a live process) | ``failed`` | ``submitted`` (to Slurm, not finished)
    | ``partial`` | ``new``."""
    d = Path(job_dir)
    if (d / DONE).exists():
        return "done"
    if _lock_held(d):
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


def _lock_held(d: Path) -> bool:
    if fcntl is None or not (d / LOCK).exists():
        return False
    try:
        fd = os.open(d / LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


@contextlib.contextmanager
def job_lock(job_dir: Path) -> Iterator[bool]:
    """Hold ``job_dir/.lock`` (flock) while a job runs; yields False when another live process holds it.

    The lock goes away with its process, so a killed sweep leaves no stale lock.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    job_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(job_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


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
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def _runtime_config(cfg: dict, threads: int | None = None, progress: bool | None = None) -> dict:
    cfg = copy.deepcopy(cfg)
    if threads is not None and cfg["train"].get("threads") is None:
        cfg["train"]["threads"] = int(threads)
    if progress is not None:
        cfg["train"]["progress"] = bool(progress)
    return cfg


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- the sweep index


def write_index(out: str | os.PathLike, jobs: Sequence[Job], spec: SweepSpec | None = None) -> Path:
    """Write (merge into) ``OUT/sweep.json``: every job hash -> its overrides and resolved config."""
    out = Path(out)
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


# --------------------------------------------------------------------------- launchers


@dataclass
class SweepOutcome:
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0  # already done before this invocation
    submitted: int = 0  # slurm, not waited for
    waiting: int = 0  # submitted earlier to slurm, not finished, not resubmitted
    busy: int = 0  # run by another live process (a second sweep on the same folder)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (hash, error)
    slurm_ids: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        parts = [f"{self.done} done", f"{self.failed} failed", f"{self.skipped} skipped (already done)"]
        if self.submitted:
            parts.append(f"{self.submitted} submitted to slurm")
        if self.busy:
            parts.append(f"{self.busy} running in another process (skipped)")
        if self.waiting:
            parts.append(f"{self.waiting} still submitted to slurm (use --resubmit to run them again)")
        return f"{self.total} jobs: " + ", ".join(parts)


def _record(outcome: SweepOutcome, result: dict) -> None:
    status = result["status"]
    if status == "done":
        outcome.done += 1
    elif status == "skipped":
        outcome.skipped += 1
    elif status == "running":
        outcome.busy += 1
    else:
        outcome.failed += 1
        outcome.failures.append((result["hash"], result.get("error") or "failed"))


def run_sweep(jobs: Sequence[Job], out: str | os.PathLike, launcher: str = "local", workers: int = 1,
              train: Callable | str | None = None, spec: SweepSpec | None = None,
              slurm: Mapping | None = None, slurm_cluster: str = "slurm", slurm_wait: bool = False,
              resubmit: bool = False, progress: bool = True,
              log: Callable[[str], None] | None = None) -> SweepOutcome:
    """Run every job that is not done, with the chosen launcher; write ``OUT/sweep.json`` first.

    ``slurm`` holds the executor parameters from :func:`slurm_parameters`.
    """
    if launcher not in LAUNCHERS:
        raise SweepError(f"unknown launcher {launcher!r}; allowed: {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_index(out, jobs, spec)
    outcome = SweepOutcome(total=len(jobs))
    pending = []
    for j in jobs:
        st = job_status(out / j.hash)
        if st == "done":
            outcome.skipped += 1
        elif st == "running":
            outcome.busy += 1
        elif st == "submitted" and not resubmit:
            outcome.waiting += 1
        else:
            pending.append(j)
    say = log or _tqdm_write
    if train is None:  # resolved here so that worker processes use the same function as this one
        train = DEFAULT_TRAIN
    if launcher == "local":
        _run_local(pending, out, train, outcome, progress, say)
    elif launcher == "parallel":
        _run_parallel(pending, out, train, workers, outcome, progress, say)
    else:
        _run_slurm(pending, out, train, dict(slurm or {}), slurm_cluster, slurm_wait, outcome, progress, say)
    return outcome


def _tqdm_write(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="job", disable=not progress or total == 0, file=sys.stderr,
                dynamic_ncols=True)


def _describe(job: Job) -> str:
    return " ".join(job.varying) or "(base config)"


def _after(result: dict, job: Job, outcome: SweepOutcome, bar, say) -> None:
    _record(outcome, result)
    if result["status"] == "failed":
        say(f"job {job.hash} failed [{_describe(job)}]: {result['error']} (traceback in {job.hash}/{ERROR})")
    bar.update(1)
    bar.set_postfix(done=outcome.done, failed=outcome.failed, refresh=False)


def _run_local(pending, out, train, outcome, progress, say) -> None:
    with _bar(len(pending), progress) as bar:
        for job in pending:
            bar.set_description(f"sweep {job.hash}")
            result = run_job(job.config, out / job.hash, job.hash, train)
            _after(result, job, outcome, bar, say)


def _init_worker(threads: int, gpu_slots=None) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    global _GPU_SLOTS
    _GPU_SLOTS = gpu_slots


_GPU_SLOTS = None  # in a parallel worker on a GPU machine: a queue of free GPU ids (sharpdro.cluster)


def run_job_on_own_gpu(cfg: dict, job_dir: str, h: str | None = None, train: Callable | str | None = None) -> dict:
    """:func:`run_job` in a parallel worker, on one GPU of its own: a free id from the launcher's queue becomes
    this process's ``CUDA_VISIBLE_DEVICES`` (before CUDA starts: each worker process runs one job) and goes
    back to the queue when the job ends.  Without GPUs it is :func:`run_job`."""
    if _GPU_SLOTS is None:
        return run_job(cfg, job_dir, h, train)
    gpu = _GPU_SLOTS.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        return run_job(cfg, job_dir, h, train)
    finally:
        _GPU_SLOTS.put(gpu)


def _run_parallel(pending, out, train, workers, outcome, progress, say) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from sharpdro.cluster import parallel_devices

    threads = max(1, available_cores() // workers)
    gpus = parallel_devices(workers)  # one GPU per worker slot; [] without GPUs
    queue = list(pending)
    restarts = 0
    with _bar(len(pending), progress) as bar:
        while queue:
            broken: list[Job] = []
            ctx = mp.get_context("spawn")
            slots = ctx.Queue() if gpus else None
            for g in gpus:
                slots.put(g)
            pool = ProcessPoolExecutor(max_workers=min(workers, len(queue)), mp_context=ctx,
                                       max_tasks_per_child=1, initializer=_init_worker, initargs=(threads, slots))
            try:
                futures = {}
                for job in queue:
                    cfg = _runtime_config(job.config, threads=threads, progress=False)
                    futures[pool.submit(run_job_on_own_gpu, cfg, str(out / job.hash), job.hash, train)] = job
                for fut in as_completed(futures):
                    job = futures[fut]
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken.append(job)
                        continue
                    except Exception as exc:  # e.g. the train function cannot be pickled
                        _write_error(out / job.hash, "".join(traceback.format_exception(exc)))
                        result = {"hash": job.hash, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    _after(result, job, outcome, bar, say)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            queue = []
            for job in broken:  # a worker died (killed, out of memory): the jobs it took down fail,
                started = job_status(out / job.hash) != "new"  # the ones not started yet run again
                if started or restarts >= 3:
                    msg = ("the worker process running this job died (killed, crashed or out of memory), "
                           "or another worker died and the pool was shut down; run the sweep again to resume it")
                    _write_error(out / job.hash, f"BrokenProcessPool: {msg}\n")
                    _after({"hash": job.hash, "status": "failed", "error": f"worker died: {msg}"}, job, outcome,
                           bar, say)
                else:
                    queue.append(job)
            restarts += 1


# --------------------------------------------------------------------------- slurm (submitit)


def parse_slurm_time(text: str | int) -> int:
    """Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) or ``90m``/``4h``/``2d``
    -> whole minutes (seconds rounded up)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise SweepError(f"--slurm-time must be at least 1 minute, got {text}")
        return text
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhd])", s)
    if m:
        minutes = float(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)]
        return max(1, int(-(-minutes // 1)))
    days = 0
    if "-" in s:
        d, _, s = s.partition("-")
        if not d.isdigit():
            raise SweepError(f"--slurm-time {text!r}: bad day count")
        days = int(d)
    parts = s.split(":") if s else []
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise SweepError(f"--slurm-time {text!r} is not a Slurm time: use minutes, MM:SS, HH:MM:SS, D-HH:MM:SS "
                         f"or 90m / 4h / 2d")
    nums = [int(p) for p in parts]
    if days:
        h, mi, sec = (nums + [0, 0])[:3]  # D-HH, D-HH:MM, D-HH:MM:SS
    elif len(nums) == 1:
        h, mi, sec = 0, nums[0], 0
    elif len(nums) == 2:
        h, mi, sec = 0, nums[0], nums[1]
    else:
        h, mi, sec = nums
    minutes = days * 1440 + h * 60 + mi + (1 if sec > 0 else 0)
    if minutes < 1:
        raise SweepError(f"--slurm-time {text!r} is shorter than a minute")
    return minutes


def slurm_parameters(partition: str | None = None, time: str | int = "4:00:00", gpus: int = 1,
                     cpus: int | None = None, mem_gb: float | None = None, account: str | None = None,
                     qos: str | None = None, constraint: str | None = None, exclude: str | None = None,
                     array_parallelism: int | None = None, name: str = "sharpdro",
                     extra: Mapping[str, Any] | Sequence[str] | None = None) -> dict:
    """Keyword arguments for ``submitit.AutoExecutor.update_parameters`` (no submitit needed).

    Generic keys (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``name``)
    apply to any submitit cluster; ``slurm_*`` keys only to Slurm.  ``extra`` adds raw
    ``#SBATCH`` options (``{"mail-type": "END"}`` or ``["mail-type=END"]``).
    """
    if gpus is not None and gpus < 0:
        raise SweepError(f"--slurm-gpus must be >= 0, got {gpus}")
    if cpus is not None and cpus < 1:
        raise SweepError(f"--slurm-cpus must be >= 1, got {cpus}")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": parse_slurm_time(time),
        "nodes": 1,
        "tasks_per_node": max(1, int(gpus or 0)),  # one task per GPU: the tasks are the ranks of one DDP run
        "gpus_per_node": int(gpus or 0),
    }
    if cpus is not None:
        params["cpus_per_task"] = int(cpus)
    if mem_gb is not None:
        params["mem_gb"] = float(mem_gb)
    for key, value in (("partition", partition), ("account", account), ("qos", qos),
                       ("constraint", constraint), ("exclude", exclude)):
        if value:
            params[f"slurm_{key}"] = str(value)
    if array_parallelism is not None:
        params["slurm_array_parallelism"] = int(array_parallelism)
    if extra:
        items = extra.items() if isinstance(extra, Mapping) else [
            e.split("=", 1) if "=" in e else (e, None) for e in extra]
        add = {}
        for k, v in items:
            k = str(k).strip().lstrip("-")
            if not k:
                raise SweepError(f"--slurm-extra {extra!r}: empty option name")
            add[k.replace("-", "_")] = True if v is None else v
        params["slurm_additional_parameters"] = add
    return params


def _require_submitit():
    try:
        import submitit  # type: ignore
    except ImportError:
        raise SweepError("the slurm launcher needs submitit, which is not installed: "
                         "pip install 'sharpdro[slurm]' (or pip install submitit), "
                         "or use --launcher local / parallel") from None
    return submitit


class SlurmJobFunction:
    """What each Slurm job runs: :func:`run_job`.  On preemption or time-out submitit calls
    :meth:`checkpoint`, which requeues the same job; it resumes from its last checkpoint."""

    def __call__(self, cfg: dict, job_dir: str, h: str, train: Callable | str | None = None) -> dict:
        from sharpdro.cluster import slurm_rank

        if slurm_rank() > 0:  # --slurm-gpus N > 1: tasks 1..N-1 are DDP ranks of task 0's run (ranks from Slurm)
            resolve_train(train)(cfg, out_dir=job_dir, resume=True)  # rank 0 decides resume; only it writes
            return {"hash": h, "status": "rank", "seconds": 0.0, "error": None}
        return run_job(cfg, job_dir, h, train)

    def checkpoint(self, *args, **kwargs):
        import submitit  # type: ignore

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def make_slurm_executor(folder: str | os.PathLike, params: Mapping, cluster: str = "slurm"):
    """A submitit executor (``cluster``: slurm; local or debug run the jobs on this machine)."""
    submitit = _require_submitit()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SweepError("sbatch is not on the PATH: run the slurm launcher on a Slurm login node, "
                         "or use --launcher parallel")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**dict(params))
    return executor


def _run_slurm(pending, out, train, params, cluster, wait, outcome, progress, say) -> None:
    if not pending:
        return
    executor = make_slurm_executor(out / ".submitit" / "%j", params, cluster)
    fn = SlurmJobFunction()
    threads = params.get("cpus_per_task")
    submitted = []
    with executor.batch():
        for job in pending:
            cfg = _runtime_config(job.config, threads=threads, progress=False)
            submitted.append((job, executor.submit(fn, cfg, str(out / job.hash), job.hash, train)))
    for job, sjob in submitted:
        d = out / job.hash
        (d / ERROR).unlink(missing_ok=True)
        atomic_write_json(d / SLURM_MARKER, {"job_id": str(sjob.job_id), "cluster": cluster,
                                             "submitted_at": _dt.datetime.now().isoformat(timespec="seconds")})
        outcome.slurm_ids[job.hash] = str(sjob.job_id)
    say(f"submitted {len(submitted)} job(s) to {cluster}; logs in {out / '.submitit'}")
    if not wait:
        outcome.submitted += len(submitted)
        return
    with _bar(len(submitted), progress) as bar:
        for job, sjob in submitted:
            try:
                result = sjob.result()
            except Exception as exc:  # the job died without returning (killed, time limit, node failure)
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                if not (out / job.hash / ERROR).exists():
                    _write_error(out / job.hash, "".join(traceback.format_exception(exc)))
                result = {"hash": job.hash, "status": "failed", "error": msg}
            (out / job.hash / SLURM_MARKER).unlink(missing_ok=True)
            _after(result, job, outcome, bar, say)


# --------------------------------------------------------------------------- dry run


def describe_jobs(jobs: Sequence[Job], out: str | os.PathLike) -> list[str]:
    """One line per job: hash, status, the overrides that vary."""
    out = Path(out)
    lines = []
    counts: dict[str, int] = {}
    for j in jobs:
        st = job_status(out / j.hash)
        counts[st] = counts.get(st, 0) + 1
        lines.append(f"{j.hash}  {st:<9}  {_describe(j)}")
    order = ("done", "running", "partial", "failed", "submitted", "new")
    summary = ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))
    lines.append(f"{len(jobs)} jobs: {summary or 'none'}")
    return lines
