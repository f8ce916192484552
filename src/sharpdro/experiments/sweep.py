"""Sweeps: a grid of configs, one run directory per job, resumable, on three launchers.

A sweep file is YAML::

    base: quickstart              # config path (relative to this file, then the cwd) or shipped name
    set: [train.epochs=3]         # overrides applied to every job (list of k=v, or a mapping)
    grid:                         # cartesian product over any config keys
      algorithm.name: [erm, sharpdro]
      seed: [0, 1, 2]
    include:                      # (or ``jobs:``) extra jobs: base + set + these overrides
      - {algorithm.name: jtt, train.lr: 0.01}

A ``tune`` block (:mod:`sharpdro.experiments.tuning`, checked by
:mod:`sharpdro.experiments.tune_block`) replaces the grid's methods and seeds with equal
tuning: ``trials`` random configurations per method on the tuning ``seeds``, then the selected
one on ``final_seeds``; ``space`` narrows a key's search distribution for this sweep (listed in
the report's notes), and ``variants`` rerun a method's selected trial on the final seeds with a
few settings changed (untuned; a row of their own in the report)::

    tune:
      trials: 8
      methods: [erm, jtt, sharpdro]
      seeds: [0]
      final_seeds: [1, 2, 3]
      space: {algorithm.jtt_lambda_up: [choice, [4, 5, 6]]}
      variants:
        - {name: "SharpDRO, f=0.25", method: sharpdro, set: {algorithm.second_pass_fraction: 0.25}}

The final-seed and variant jobs exist once a method's trials are done: ``--dry-run`` lists
those still waiting as pending after selection.

Overrides are applied in this order: base file, ``set``, command-line ``--set``,
the grid point (or the ``include`` entry).  Command-line ``--grid key=v1,v2``
adds an axis or replaces the file's axis of the same key.

Each job runs in ``OUT/<job hash>``, where the hash is
:func:`sharpdro.config.config_hash` of the resolved config with the runtime-only
keys (:data:`RUNTIME_KEYS`: threads, progress bars, device, data, cache and output
locations) reset to their defaults, so running the same sweep with another
launcher, worker count or machine, or with the data at another path, finds the jobs
it already finished (a resumed job checks its data's fingerprint instead: ``rundir.DATA``).
A runtime key the sweep itself varies (a ``grid`` axis or ``include`` entry over ``data.root``:
two data sets) is part of the hash (:func:`identity_axes`).

The rooms (this module re-exports their public names):

- :mod:`sharpdro.experiments.sweep_spec`: job identity (hash), override text, the sweep file, its jobs;
- :mod:`sharpdro.experiments.sweep_jobs`: a job's status and lock, running one job, the ``sweep.json`` index;
- :mod:`sharpdro.experiments.sweep_slurm`: Slurm time limits, executor parameters, submitit;
- here: the three launchers (local, parallel, slurm) and the dry run.

Job life cycle: see :mod:`sharpdro.experiments.sweep_jobs`.  A job that raises leaves
``error.txt`` and the sweep goes on with the next job.
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from sharpdro.config import RUNTIME_KEYS  # noqa: F401  (re-exported)
from sharpdro.experiments.sweep_jobs import (DEFAULT_TRAIN, INDEX, job_lock, job_status, read_index,  # noqa: F401
                                             resolve_train, run_job, write_index, _write_error)
from sharpdro.experiments.sweep_slurm import (SlurmJobFunction, make_slurm_executor,  # noqa: F401
                                              parse_slurm_time, slurm_parameters)
from sharpdro.experiments.sweep_spec import (Job, SweepError, SweepSpec, build_spec, expand,  # noqa: F401
                                             format_value, identity_axes, job_hash, job_identity, load_sweep,
                                             make_override, normalize_override, parse_grid_arg, split_values)
from sharpdro.io import atomic_write_json
from sharpdro.rundir import ERROR, SLURM_MARKER

LAUNCHERS = ("local", "parallel", "slurm")


# --------------------------------------------------------------------------- runtime settings of a launch


def _runtime_config(cfg: dict, threads: int | None = None, progress: bool | None = None,
                    job_dir: Path | None = None) -> dict:
    """The job's config with the launcher's settings: ``threads`` unless the config fixes them, except that a
    job that began keeps the thread count it began with (its numbers depend on it; --resume refuses another)."""
    cfg = copy.deepcopy(cfg)
    if cfg["train"].get("threads") is None:
        began = _threads_begun_with(job_dir)
        if began is not None or threads is not None:
            cfg["train"]["threads"] = int(began if began is not None else threads)
    if progress is not None:
        cfg["train"]["progress"] = bool(progress)
    return cfg


def _threads_begun_with(job_dir: Path | None) -> int | None:
    from sharpdro.rundir import RunDir

    if job_dir is None or not RunDir(job_dir).has_trainer_files():
        return None
    recorded = RunDir(job_dir).read_config() or {}
    threads = (recorded.get("train") or {}).get("threads")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) else None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


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
    text = " ".join(job.varying) or "(base config)"
    if job.variant_of:
        text += "  [variant: " + "; ".join(name for name, _ in job.variant_of) + "]"
    return text


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
            result = run_job(_runtime_config(job.config, job_dir=out / job.hash), out / job.hash, job.hash, train)
            _after(result, job, outcome, bar, say)


def _job_process(conn, cfg: dict, job_dir: str, h: str, train, threads: int, gpu: str | None) -> None:
    """A parallel job's own process: its thread count and GPU set before the job imports a framework, then
    :func:`run_job`; the result goes back through ``conn``."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # one GPU of its own, before CUDA starts
    try:
        result = run_job(cfg, job_dir, h, train)
    except BaseException as exc:  # noqa: BLE001 - e.g. the train function cannot be imported
        _write_error(Path(job_dir), "".join(traceback.format_exception(exc)))
        result = {"hash": h, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    conn.send(result)
    conn.close()


def _run_parallel(pending, out, train, workers, outcome, progress, say) -> None:
    """One fresh process per job (spawned, as DomainBed's launcher does), at most ``workers`` alive, polled.

    No process pool: ``ProcessPoolExecutor(max_tasks_per_child=1)`` is a TypeError before Python 3.11, and
    submitting every job at once is the pattern of CPython gh-115634 (a hang); in a pool one dead worker
    also broke the jobs running beside it. Here a job whose process dies (killed, out of memory) fails
    alone, with ``error.txt`` saying so, and the others go on.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from sharpdro.cluster import parallel_devices

    ctx = mp.get_context("spawn")
    threads = max(1, available_cores() // workers)
    free_gpus = parallel_devices(workers)  # one GPU per worker slot; [] without GPUs
    gpus = bool(free_gpus)
    queue = list(pending)
    running: dict = {}  # process -> (job, connection, gpu)
    results: dict = {}  # process -> the result its job sent

    def finish(proc) -> None:
        job, conn, gpu = running.pop(proc)
        proc.join()
        result = results.pop(proc, None)
        if result is None and conn.poll():
            try:
                result = conn.recv()
            except (EOFError, OSError):
                result = None
        conn.close()
        if gpu is not None:
            free_gpus.append(gpu)
        if result is None:
            code = proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            msg = (f"the process running this job died ({how}: killed, crashed or out of memory); run the "
                   f"sweep again to resume it")
            _write_error(out / job.hash, f"WorkerDied: {msg}\n")
            result = {"hash": job.hash, "status": "failed", "error": f"worker died: {msg}"}
        _after(result, job, outcome, bar, say)

    with _bar(len(pending), progress) as bar:
        try:
            while queue or running:
                while queue and len(running) < workers:
                    job = queue.pop(0)
                    gpu = free_gpus.pop(0) if gpus else None
                    recv, send = ctx.Pipe(duplex=False)
                    cfg = _runtime_config(job.config, threads=threads, progress=False, job_dir=out / job.hash)
                    proc = ctx.Process(target=_job_process, name=f"sweep-{job.hash}",
                                       args=(send, cfg, str(out / job.hash), job.hash, train, threads, gpu))
                    proc.start()
                    send.close()  # the child holds the other end: EOF when it dies
                    running[proc] = (job, recv, gpu)
                by_conn = {running[p][1]: p for p in running if p not in results}  # at EOF once read
                by_sentinel = {p.sentinel: p for p in running}
                for ready in wait(list(by_conn) + list(by_sentinel)):
                    if ready in by_conn:  # a result (read now, so that a large one never blocks its sender)
                        proc = by_conn[ready]
                        if proc not in results:
                            try:
                                results[proc] = ready.recv()
                            except (EOFError, OSError):
                                results[proc] = None
                for proc in [p for p in running if not p.is_alive()]:
                    finish(proc)
        except BaseException:  # Ctrl-C or an error here: no job process outlives the sweep
            for proc in running:
                proc.terminate()
            for proc in running:
                proc.join()
            raise


def _run_slurm(pending, out, train, params, cluster, wait, outcome, progress, say) -> None:
    if not pending:
        return
    executor = make_slurm_executor(out / ".submitit" / "%j", params, cluster)
    fn = SlurmJobFunction()
    threads = params.get("cpus_per_task")
    submitted = []
    with executor.batch():
        for job in pending:
            cfg = _runtime_config(job.config, threads=threads, progress=False, job_dir=out / job.hash)
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


# --------------------------------------------------------------------------- selection and dry run


def select_jobs(jobs: Sequence[Job], wanted: Sequence[str]) -> list[Job]:
    """The jobs named by hash (or an unambiguous prefix of 4+ characters; entries may be comma-separated),
    in the sweep's order. A name that matches no job, or more than one, is an error: a typo must not run
    nothing, or the wrong job, quietly."""
    names = [w.strip() for item in wanted for w in str(item).split(",") if w.strip()]
    if not names:
        raise SweepError("--only needs at least one job hash (`sharpdro sweep ... --dry-run` lists them)")
    picked: set[str] = set()
    for name in names:
        if len(name) < 4:
            raise SweepError(f"--only {name!r}: give at least 4 characters of a job hash")
        hits = sorted({j.hash for j in jobs if j.hash.startswith(name)})
        if not hits:
            raise SweepError(f"--only {name!r}: no job of this sweep has that hash; "
                             "`sharpdro sweep ... --dry-run` lists the jobs")
        if len(hits) > 1:
            raise SweepError(f"--only {name!r} matches {', '.join(hits)}; give more characters")
        picked.add(hits[0])
    return [j for j in jobs if j.hash in picked]


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
