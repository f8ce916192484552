"""The framework-neutral training loop: run directory, epochs, evaluation, selection, resume.

Everything here is NumPy/PyYAML; the backend (``sharpdro.backends.<name>``) owns the
tensors.  The run directory's files are :mod:`sharpdro.rundir`'s.

Crash safety: an epoch's metrics line is appended before its checkpoint is written;
on ``resume`` the metrics are cut back to the checkpoint's epoch, so a kill at any
point resumes to exactly the uninterrupted run (on CPU, bit for bit).  With
``eval.test=selected`` the test set is evaluated once, after the last epoch, from the
best checkpoint (kept on disk until then, whatever ``output.save_best`` says), so a run
killed before that evaluation does it when resumed.

Data parallelism (torchrun; see docs/distributed.md): the backend's
``init_distributed(cfg)`` gives a process handle (rank, world size, barrier, sums of
NumPy arrays, broadcast); ``train.batch_size`` is the global batch, each rank iterates
its shard of every epoch with B / world_size images per step, evaluation is sharded and
summed over ranks, and only rank 0 writes files (config, metrics, checkpoints, summary,
log).  Nothing here imports a framework; a backend without ``init_distributed`` runs one
process.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from sharpdro import config as config_mod
from sharpdro import methods
from sharpdro.calibration import summary_fields
from sharpdro.data.groups import group_label, group_names_of, group_word
from sharpdro.errors import NonFiniteLossError, SharpDROError, TrainingError
from sharpdro.io import append_jsonl, atomic_write_json, atomic_write_text, check_path_name, jsonl_text, read_jsonl
from sharpdro.loggers import open_loggers
from sharpdro.metrics import select_epoch
from sharpdro.rundir import (RunDir, checkpoint_backend, find_checkpoint,  # noqa: F401  (find_checkpoint: public API)
                             hold_lock, lock_holder)

log = logging.getLogger("sharpdro")


# ---------------------------------------------------------------- run directory
def default_run_name(cfg: dict) -> str:
    d = cfg["data"]
    model = re.sub(r"[^A-Za-z0-9_.-]", "_", str(cfg["model"]["name"]))  # timm:NAME, module.path:factory
    return (f"{d['dataset']}-{d['corruption']}-{cfg['algorithm']['name']}-{model}"
            f"-s{cfg['seed']}-{config_mod.config_hash(cfg, 8)}")


def run_dir_for(cfg: dict, out_dir=None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    return Path(cfg["output"]["dir"]) / (cfg["output"]["name"] or default_run_name(cfg))


def _setup_log_file(run: RunDir) -> logging.Handler:
    handler = logging.FileHandler(run.log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _echo(msg: str, enabled: bool = True) -> None:
    log.info(msg)
    if enabled:
        from tqdm.auto import tqdm

        tqdm.write(msg)


# ------------------------------------------------------------------ processes
class OneProcess:
    """The process handle of a single-process run (what a backend's ``init_distributed`` returns for W=1)."""

    rank = 0
    local_rank = 0
    world_size = 1
    is_main = True

    def barrier(self) -> None:
        pass

    def all_reduce_sum(self, array) -> np.ndarray:
        return np.asarray(array, dtype=np.float64)

    def broadcast(self, obj, src: int = 0):
        return obj

    def close(self) -> None:
        pass


def init_processes(backend, cfg: dict):
    """The backend's process handle (torchrun's process group), or :class:`OneProcess`."""
    init = getattr(backend, "init_distributed", None)
    if init is None:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise SharpDROError(f"backend {cfg['backend']!r} does not support data-parallel training "
                                f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); run one process")
        return OneProcess()
    return init(cfg)


# ------------------------------------------------------------------ evaluation
def evaluate_sets(session, sets: dict, batch_size: int, processes=None) -> dict:
    """Per-severity accuracy, loss and calibration (ECE, NLL, Brier) on ``{severity: LabeledArrays}``,
    plus average and worst accuracy (:func:`sharpdro.calibration.severity_block`).

    With several processes each rank evaluates every ``world_size``-th image and the
    additive statistics are summed over ranks (every rank gets the same result).
    """
    from sharpdro.backends.base import finite_logits
    from sharpdro.calibration import evaluate_arrays, severity_block

    rank, world = (0, 1) if processes is None else (processes.rank, processes.world_size)
    sevs = sorted(sets)
    local = np.stack([evaluate_arrays(lambda x: finite_logits(session, x, batch_size), sets[s].images[rank::world],
                                      sets[s].labels[rank::world]) for s in sevs])
    return severity_block(sevs, local if world == 1 else processes.all_reduce_sum(local))


def _test_blocks(session, splits, batch_size: int, processes) -> dict:
    """``test`` (and ``extra_test`` when configured) of the session's current weights, for an epoch's record."""
    out = {"test": evaluate_sets(session, splits.test, batch_size, processes)}
    if splits.extra_test:
        out["extra_test"] = evaluate_sets(session, splits.extra_test, batch_size, processes)
    return out


def _train_block(stats: dict) -> dict:
    keys = [str(i) for i in range(len(stats["group_loss"]))]
    return {
        "loss": stats["loss"],
        "accuracy": stats["accuracy"],
        "group_loss": dict(zip(keys, stats["group_loss"])),
        "group_acc": dict(zip(keys, stats["group_acc"])),
        "group_count": dict(zip(keys, stats["group_count"])),
    }


# ------------------------------------------------------------------- checks
def check_runnable(cfg: dict, splits, backend) -> None:
    """Refuse, before any training, a config that cannot work."""
    from sharpdro.data.groups import check_group_array

    # once, on the host: the steps then see valid ids only (on a GPU they check without a host sync)
    check_group_array(splits.train.severity, splits.num_groups, "the training set")
    check_split_runnable(cfg, np.bincount(splits.train.severity, minlength=splits.num_groups), backend)
    check_config_runnable(cfg)


def check_split_runnable(cfg: dict, counts, backend) -> None:
    """What the training split must hold (``counts``: its images per severity); ``build_splits`` checks it
    before it builds the cache."""
    counts = np.asarray(counts)
    name = cfg["algorithm"]["name"]
    if backend.requires_groups(cfg) and (counts > 0).sum() < 2:
        raise SharpDROError(
            f"algorithm {name!r} reweights severity groups, but the training set has only "
            f"{int((counts > 0).sum())} non-empty severity group (counts {counts.tolist()}); raise "
            f"data.train_per_class, use data.protocol=iid, or pick an algorithm that needs no severity labels "
            f"({', '.join(methods.group_agnostic())})")
    if int(counts.sum()) < cfg["train"]["batch_size"]:
        raise SharpDROError(f"train.batch_size={cfg['train']['batch_size']} exceeds the {int(counts.sum())} "
                            f"training images; lower train.batch_size")


def check_config_runnable(cfg: dict) -> None:
    """The checks of a config that need no data."""
    name = cfg["algorithm"]["name"]
    methods.get(name).validate(cfg["algorithm"])  # the method's cross-key checks (ConfigError)
    if cfg["data"]["sampler"] == "group_balanced" and not methods.get(name).group_sampling:
        raise SharpDROError(
            f"data.sampler={cfg['data']['sampler']!r} balances the groups of a group-weighted method; "
            f"{name!r} weights none (methods it applies to: "
            f"{', '.join(m.name for m in methods.all_methods() if m.group_sampling)}); use data.sampler=uniform")


# ------------------------------------------------------------------ training
class _BatchFactory:
    """Epoch batches for the main loop and for algorithm pre-stages (JTT, EIIL).

    With ``world_size`` > 1 the main loop's iterator is this rank's shard with
    ``batch_size / world_size`` images per step (the union over ranks of step b is the
    global batch b); pre-stages (``prestage``, ``ordered``) see the whole training set.
    """

    def __init__(self, cfg, train, rank: int = 0, world_size: int = 1, val: dict | None = None):
        from sharpdro.data.batches import BatchIterator

        t, d = cfg["train"], cfg["data"]
        drop_last = len(train) > t["batch_size"]  # a 1-image last batch breaks BatchNorm in training mode

        def make(batch_size, r=0, w=1):
            return BatchIterator(train.images, train.labels, train.severity, batch_size, seed=cfg["seed"],
                                 shuffle=True, drop_last=drop_last, flip=d["flip"],
                                 crop_padding=d["crop_padding"], rank=r, world_size=w)

        self.train = make(t["batch_size"] // world_size, rank, world_size)
        self._full = self.train if world_size == 1 else make(t["batch_size"])
        self._ordered = BatchIterator(train.images, train.labels, train.severity, cfg["eval"]["batch_size"],
                                      seed=cfg["seed"], shuffle=False, drop_last=False)
        self._val = None
        if val:
            sets = [val[s] for s in sorted(val)]
            self._val = BatchIterator(np.concatenate([a.images for a in sets]), np.concatenate([a.labels for a in sets]),
                                      np.concatenate([a.severity for a in sets]), cfg["eval"]["batch_size"],
                                      seed=cfg["seed"], shuffle=False, drop_last=False)

    def set_plan(self, plan, sampler: str = "uniform") -> None:
        """The training epochs from now on follow a method's sampling plan and ``data.sampler``."""
        self.train = self.train.planned(plan, sampler)

    def __call__(self, epoch: int):
        return self.train.iterate(epoch)

    def __len__(self) -> int:
        return len(self.train)

    def prestage(self, epoch: int):
        return self._full.iterate(epoch)

    def ordered(self):
        return self._ordered.iterate(0)

    def validation(self):
        """Every validation image once (all severities), in order; None without validation data."""
        return None if self._val is None else self._val.iterate(0)


def train(cfg: dict, out_dir=None, resume: bool = False, splits=None, allow_changes: bool = False) -> dict:
    """Train one run from a resolved config; returns the summary (also written to the run's summary file).

    ``allow_changes``: on ``resume``, accept a config whose optimisation keys (``RESUME_CHANGEABLE``:
    the learning rate, its schedule, SAM's rho) differ from the run's; the change is recorded in the
    run (``config-changes.jsonl``, ``train.log``, ``summary.json``). Under torchrun every rank calls
    this; rank 0 alone writes the run directory.
    """
    cfg = config_mod.validate(cfg)
    from sharpdro.backends.base import get_backend

    backend = get_backend(cfg["backend"])
    procs = init_processes(backend, cfg)
    main = procs.is_main
    run_dir = run_dir_for(cfg, out_dir)
    run = RunDir(run_dir)
    requested_precision = cfg["train"]["precision"]
    last_ckpt, metrics_path = run.checkpoint("last", cfg["backend"]), run.metrics
    handler = tracker = None
    owner = contextlib.ExitStack()  # rank 0: the run directory's lock, held until train returns
    created: list[Path] = []  # the folders this call made: a start that fails removes them again
    started = False
    try:
        refusal, changes, finished = None, {}, None
        if main:  # rank 0 decides; every rank raises the same refusal
            try:
                check_path_name(run_dir, "the run directory")
                _refuse_foreign_folder(run)
                created = _own_run_dir(run, owner)
                cfg = _resolve_precision(cfg, backend, run, resume)
                if not resume and run.holds_run():
                    raise SharpDROError(f"run directory {run_dir} already holds a run; continue it with --resume, "
                                        f"or choose another --out / output.name")
                if resume and run.config.exists():
                    changes = _check_same_config(run.config, cfg, allow_changes)
                finished = _previous_summary(run) if resume else None
                if resume and finished is None:
                    _check_checkpoint_present(run, cfg)
                run.remove_temp_files()  # of a process killed while writing (this one holds the lock)
            except SharpDROError as exc:
                refusal = str(exc)
        refusal = procs.broadcast(refusal)
        if refusal:
            raise SharpDROError(refusal)
        cfg = {**cfg, "train": {**cfg["train"], "precision": procs.broadcast(cfg["train"]["precision"])}}
        finished = procs.broadcast(finished)
        check_config_runnable(cfg)
        show = cfg["train"]["progress"] and main
        t_start = time.time()
        if splits is None:
            from sharpdro.data.splits import build_splits

            def check(train_per_severity):  # before the cache of the splits is built
                check_split_runnable(cfg, train_per_severity, backend)

            # One process per node builds (and caches) the splits first; the others then read the cache.
            if procs.local_rank == 0:
                splits = build_splits(cfg, progress=show, check=check)
            procs.barrier()
            if splits is None:
                splits = build_splits(cfg, progress=False)
        check_runnable(cfg, splits, backend)
        # Before the run directory is touched: a resumed run continues on the data it trained on.
        refusal = None
        if main and resume:
            try:
                _check_same_data(run, cfg, splits)
            except SharpDROError as exc:
                refusal = str(exc)
        refusal = procs.broadcast(refusal)
        if refusal:
            raise SharpDROError(refusal)
        if finished is not None:  # a finished run is never rewritten: its summary is the result
            if main and run.read_data() is None:
                _record_data(run, cfg, splits)  # a run written before data fingerprints records them from now on
            _echo(f"{run_dir} is finished (its {run.summary.name}): nothing to resume, nothing changed", main)
            return finished
        if main:
            handler = _start_run_dir(run, cfg)
            _record_data(run, cfg, splits)
            tracker = open_loggers(cfg, run_dir)  # output.loggers (sharpdro.loggers); rank 0 only
        session = backend.create_session(cfg, splits)
        batches = _BatchFactory(cfg, splits.train, procs.rank, procs.world_size, val=splits.val)
        session.set_batch_factory(batches)
        epoch_batches = getattr(session, "epoch_batches", None) or batches

        records: list[dict] = []
        start_epoch = 0
        epochs, rule = cfg["train"]["epochs"], cfg["eval"]["selection"]
        best_ckpt = run.checkpoint("best", cfg["backend"])
        # rank 0 picks the backend's own last checkpoint, else another name (MindSpore runs written before
        # .npz: last.pt); the session reads it on every rank (torch: rank 0 reads and broadcasts)
        resume_from = run.existing_checkpoint("last", cfg["backend"]) if resume and main else None
        resume_from = procs.broadcast(None if resume_from is None else resume_from.name)
        if resume_from is not None:
            extra = session.load_checkpoint(run.checkpoints / resume_from)
            start_epoch = int(extra["epoch"]) + 1
            if main:
                records = [r for r in (read_jsonl(metrics_path) if metrics_path.exists() else [])
                           if r["epoch"] < start_epoch]
                atomic_write_text(metrics_path, jsonl_text(records))
            records = procs.broadcast(records)
            if main and resume_from == last_ckpt.name:
                _repair_best(records, rule, start_epoch, last_ckpt, best_ckpt)
            _echo(f"resumed {run_dir} after epoch {start_epoch}", main)
            if main and changes:
                _record_changes(run, changes, start_epoch)
        elif main and metrics_path.exists():
            metrics_path.unlink()  # a run killed before its first checkpoint starts over
        started = True

        prestage = _prestage(session, batches, cfg, splits, run, main, show)
        world = f", {procs.world_size} processes" if procs.world_size > 1 else ""
        names = group_names_of(splits.meta)
        counts = np.bincount(splits.train.severity, minlength=splits.num_groups).tolist()
        per = (f"counts per group {dict(zip(names.values(), counts))}; split: {splits.meta.get('split_rule')}"
               if names else f"counts per severity {counts}")
        _echo(f"run {run_dir}: {cfg['algorithm']['name']} / {cfg['model']['name']} on {cfg['data']['dataset']} "
              f"({cfg['data']['corruption']}), {len(splits.train)} training images, {per}{world}", main)
        from sharpdro.schedule import lr_at

        for epoch in range(start_epoch, epochs):
            t0 = time.time()
            lr = lr_at(epoch, cfg)
            try:
                stats = session.train_epoch(epoch, epoch_batches(epoch), lr, len(batches))
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(f"{exc}. {_nonfinite_advice(run, epoch, cfg['train']['lr'])}") from None
            record = {"epoch": epoch, "lr": lr, "train": _train_block(stats)}
            spec = methods.get(cfg["algorithm"]["name"])
            for key in spec.record_keys:
                if key in stats:
                    record[key] = stats[key]
            if "agnostic_auroc_val" in spec.record_keys and main:  # severity labels: here, never in the step
                from sharpdro.metrics import agnostic_diagnostics

                record.update(agnostic_diagnostics(session, cfg["algorithm"], splits.train, splits.val,
                                                   cfg["eval"]["batch_size"]))
            if (epoch + 1) % cfg["eval"]["every"] == 0 or epoch == epochs - 1:
                bs = cfg["eval"]["batch_size"]
                record["val"] = evaluate_sets(session, splits.val, bs, procs)
                if cfg["eval"]["test"] == "every":
                    record.update(_test_blocks(session, splits, bs, procs))
            record["seconds"] = time.time() - t0
            records.append(record)
            if main:
                append_jsonl(metrics_path, record)
                tracker.log(record)
                session.save_checkpoint(last_ckpt, {"epoch": epoch})
                if "val" in record:
                    selected = select_epoch(records, rule)
                    # every run keeps the selected epoch's weights until _evaluate_selected has used them
                    if selected["epoch"] == epoch:
                        _copy_atomic(last_ckpt, best_ckpt)
            _echo(_epoch_line(record, epochs), main)  # train.progress hides the bars, not these lines

        _evaluate_selected(session, splits, records, cfg, run, procs, tracker)
        summary = build_summary(cfg, records, rule)
        if names:  # groups from the data: test_accuracy's keys are these groups' ids
            summary["group_names"] = {str(k): v for k, v in names.items()}
        if prestage is not None:
            summary["prestage"] = prestage
        summary["precision"], summary["precision_requested"] = cfg["train"]["precision"], requested_precision
        hardware = getattr(backend, "hardware", None)
        if hardware is not None:
            summary["hardware"] = hardware(cfg)
        if main and run.changes.exists():
            summary["config_changes"] = read_jsonl(run.changes)
        summary["wall_seconds"] = _wall_seconds(records, start_epoch, t_start)
        if procs.world_size > 1:
            summary["processes"] = procs.world_size
        if main:
            atomic_write_json(run.summary, summary)
        procs.barrier()  # every rank leaves together (and after rank 0 has written everything)
        return summary
    except BaseException:
        if not started and created:
            if handler is not None:  # closed before its folder goes
                log.removeHandler(handler)
                handler.close()
                handler = None
            _remove_created(created)  # a failed start leaves no run folder behind
        raise
    finally:
        if tracker is not None:
            tracker.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        owner.close()
        procs.close()


def _resolve_precision(cfg: dict, backend, run: RunDir, resume: bool) -> dict:
    """``train.precision: auto`` made concrete before anything is compared or written (config.yaml records it).

    A resumed run keeps the precision it recorded (a run written before ``auto`` existed recorded fp32),
    and says so when this machine would resolve ``auto`` otherwise: results depend on the precision.
    """
    if cfg["train"]["precision"] != "auto":
        return cfg
    here = backend.resolve_precision(cfg)
    value = here
    if resume and run.config.exists():
        try:
            recorded = ((config_mod.read_yaml(run.config) or {}).get("train") or {}).get("precision", "fp32")
        except (OSError, config_mod.ConfigError):
            recorded = None  # an unreadable config.yaml is reported by the config check that follows
        if recorded not in (None, "auto"):
            value = recorded
            if recorded != here:
                _echo(f"train.precision=auto: {run.path} trained in {recorded} and continues in {recorded} "
                      f"(this machine would resolve auto to {here})")
    return {**cfg, "train": {**cfg["train"], "precision": value}}


def _repair_best(records: list[dict], rule: str, start_epoch: int, last: Path, best: Path) -> None:
    """A run killed between its last checkpoint and the copy to best resumes with a stale best checkpoint
    when that last epoch was the selected one: copy it again (the checkpoint holds exactly that epoch)."""
    if any("val" in r for r in records):
        if select_epoch(records, rule)["epoch"] == start_epoch - 1:
            _copy_atomic(last, best)


def _fit_block(session, train, batch_size: int, processes) -> dict:
    """The weights' accuracy on the training mixture as drawn (no augmentation): per severity, and weighted
    by the mixture (``mixture``: every training image counts once).  Under group-balanced batches the running
    accuracy of the sampled stream over-weights the rare severities, so it does not measure this."""
    from sharpdro.data.types import LabeledArrays

    sets = {int(s): LabeledArrays(train.images[train.severity == s], train.labels[train.severity == s],
                                  train.severity[train.severity == s]) for s in np.unique(train.severity)}
    block = evaluate_sets(session, sets, batch_size, processes)
    counts = {str(s): len(v) for s, v in sets.items()}
    block["counts"] = counts
    block["mixture"] = sum(block["accuracy"][k] * n for k, n in counts.items()) / sum(counts.values())
    return block


def _evaluate_selected(session, splits, records: list[dict], cfg: dict, run: RunDir, procs, tracker) -> None:
    """After training, the selected epoch's weights (the best checkpoint, written at that epoch) once: the
    training-mixture fit (``train_fit``) and, with eval.test=selected, the test set, into that epoch's record.
    A resumed run whose record holds them already skips this.  Every process takes part (the evaluation is
    sharded); rank 0 rewrites the metrics file."""
    sel = select_epoch(records, cfg["eval"]["selection"])
    best = run.checkpoint("best", cfg["backend"])
    wanted = (["test"] if cfg["eval"]["test"] == "selected" else []) + ["train_fit"]
    if any(k not in sel for k in wanted):
        missing = procs.broadcast(None if not procs.is_main or best.is_file() else str(best))
        if missing:
            raise TrainingError(f"{missing} (the weights of the selected epoch {sel['epoch'] + 1}) is missing, so "
                                f"they cannot be evaluated; train the run again")
        held = int(session.load_checkpoint(best, weights_only=True)["epoch"])
        if held != sel["epoch"]:
            raise TrainingError(f"{best} holds epoch {held + 1}, not the selected epoch {sel['epoch'] + 1}; train "
                                f"the run again")
        bs = cfg["eval"]["batch_size"]
        tested = "test" in wanted and "test" not in sel
        if tested:
            sel.update(_test_blocks(session, splits, bs, procs))
            _echo(f"test at the selected epoch {sel['epoch'] + 1}: avg {100 * sel['test']['average']:.2f} "
                  f"worst {100 * sel['test']['worst']:.2f}", procs.is_main)
        if "train_fit" not in sel:
            sel["train_fit"] = _fit_block(session, splits.train, bs, procs)
        if procs.is_main:
            atomic_write_text(run.metrics, jsonl_text(records))
            if tested:  # the trackers hold every epoch's other figures already
                tracker.log({"epoch": sel["epoch"], **{k: sel[k] for k in ("test", "extra_test") if k in sel}})
    if procs.is_main and not cfg["output"]["save_best"]:
        best.unlink(missing_ok=True)  # kept only for this evaluation


def _refuse_foreign_folder(run: RunDir) -> None:
    """A non-empty folder that is not a run directory of this project is the user's: never write into it."""
    foreign = run.foreign_files()
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SharpDROError(f"{run.path} is not empty ({shown}) and is not a sharpdro run directory; nothing was "
                            f"written. Choose a new or empty folder with --out (or output.dir / output.name)")


def _prestage(session, batches, cfg: dict, splits, run: RunDir, main: bool, show: bool) -> dict | None:
    """Run the method's pre-stage (unless a checkpoint restored it), record what it found, plan the batches.

    The record (``prestage.json``, copied into the summary's ``prestage``) is what the
    session's ``prepare()`` returns: JTT's error set, EIIL's penalty and convergence ...,
    with the fraction of each training severity among the points it singles out
    (``members``: JTT's error set, EIIL's environment 1).  A resumed run reads it back.
    """
    prepare = getattr(session, "prepare", None)
    t0 = time.time()
    info = prepare() if prepare is not None else None
    if info is not None:
        info = dict(info)
        members = info.pop("members", None)
        if members is not None:
            members = np.asarray(members, dtype=bool)
            sev = splits.train.severity
            info["members_fraction_by_severity"] = {str(int(s)): float(members[sev == s].mean())
                                                   for s in np.unique(sev)}
        info["seconds"] = time.time() - t0
        if main:
            atomic_write_json(run.prestage, info)
        _echo(f"pre-stage: {json.dumps({k: v for k, v in info.items() if not isinstance(v, dict)})}", show)
    elif run.prestage.exists():
        info = json.loads(run.prestage.read_text(encoding="utf-8"))
    plan = session.sampling_plan() if hasattr(session, "sampling_plan") else None
    batches.set_plan(plan, sampler(cfg))
    return info


def sampler(cfg: dict) -> str:
    """The training sampler of a run: ``data.sampler``, with ``auto`` = group_balanced for a method that
    weights groups (``MethodSpec.group_sampling``), uniform for the others."""
    s = cfg["data"]["sampler"]
    if s == "auto":
        return "group_balanced" if methods.get(cfg["algorithm"]["name"]).group_sampling else "uniform"
    return s


def _start_run_dir(run: RunDir, cfg: dict) -> logging.Handler:
    """Create the run directory, its marker and config.yaml; a folder that cannot be written is one clear error."""
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_marker(config_mod.config_hash(cfg))
        run.checkpoints.mkdir(exist_ok=True)
        config_mod.dump_config(cfg, run.config)
        return _setup_log_file(run)
    except OSError as exc:
        raise _run_dir_error(run, exc) from None


def _run_dir_error(run: RunDir, exc: OSError) -> SharpDROError:
    """One clear error for a run directory that cannot be written (a full disk: the space needed and free)."""
    import errno

    from sharpdro.io import disk_full_error

    if isinstance(exc, SharpDROError):
        return exc
    if exc.errno == errno.ENOSPC:
        return disk_full_error(run.path)
    where = exc.filename or run.path
    return SharpDROError(f"cannot write the run directory {run.path} ({exc.strerror or exc}: {where}); choose a "
                         f"folder you can write with --out (or output.dir)")


def _previous_summary(run: RunDir) -> dict | None:
    try:
        return run.read_summary() if run.summary_finished() else None
    except (OSError, ValueError):
        return None


def _wall_seconds(records: list[dict], start_epoch: int, t_start: float) -> float:
    """The run's total wall time: a resumed run adds this session to the epochs it had already run (their
    ``seconds``); a finished one is never resumed (its summary keeps its own)."""
    before = sum(float(r.get("seconds", 0.0)) for r in records[:start_epoch])
    return before + time.time() - t_start


def _own_run_dir(run: RunDir, owner: contextlib.ExitStack) -> list[Path]:
    """Create the run directory if needed and take its lock (one process per run directory) into ``owner``;
    returns the folders it created, outermost first. A second process is refused in one line."""
    created = [p for p in (run.path, *run.path.parents) if not p.exists()][::-1]
    try:
        mine = owner.enter_context(hold_lock(run.path, nested=True))  # nested: a sweep job's own lock
    except OSError as exc:
        _remove_created(created)
        raise _run_dir_error(run, exc) from None
    if not mine:
        raise SharpDROError(f"run directory {run.path} is in use by another sharpdro process (pid "
                            f"{lock_holder(run.path)}, training or resuming it); nothing was changed. Wait for "
                            f"it to end, or choose another --out / output.name")
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove the folders a failed start made (the run directory and the parents it created for it)."""
    if created:
        shutil.rmtree(created[-1], ignore_errors=True)
        for folder in reversed(created[:-1]):
            try:
                folder.rmdir()  # only while empty: another run may have been started inside meanwhile
            except OSError:
                break


def _check_checkpoint_present(run: RunDir, cfg: dict) -> None:
    """--resume of a run that has trained (it wrote a checkpoint: best, or the metrics of a second epoch)
    needs its last checkpoint: without it the run would silently start over and replace its results."""
    if run.existing_checkpoint("last", cfg["backend"]) is not None:
        return
    best = run.existing_checkpoint("best", cfg["backend"])
    epochs = [int(r["epoch"]) for r in run.epoch_records()]
    if best is None and not any(e >= 1 for e in epochs):
        return  # killed before its first checkpoint: it starts over (nothing of value is lost)
    held = f"{best.name} and " if best is not None else ""
    raise SharpDROError(f"--resume: {run.checkpoint('last', cfg['backend'])} is missing, but the run has "
                        f"trained ({held}{len(epochs)} epoch(s) in {run.metrics.name}); nothing was changed. Put "
                        f"the last checkpoint back to continue the run, or start a new run (another --out or "
                        f"output.name)")


# Keys --resume may change with allow_changes (--allow-optimizer-changes): read afresh every epoch or step,
# never from the checkpoint, so the run continues exactly with the new values.
RESUME_CHANGEABLE = ("train.lr", "train.schedule", "train.milestones", "train.gamma", "algorithm.rho")


RESUME_SAME = config_mod.RESUME_SAME  # keys --resume refuses to change (config.py says why)


def _check_same_numerics(path: Path, old: dict, cfg: dict) -> None:
    from sharpdro.experiments.sweep_spec import format_value

    for key in RESUME_SAME:
        # train.precision: auto is resolved before this check (_resolve_precision): both sides are what ran
        was, now = config_mod.get(old, key), config_mod.get(cfg, key)
        if was != now:
            raise SharpDROError(f"--resume with {key} = {format_value(now)}, but the run computed with "
                                f"{format_value(was)} ({path.name}); its numbers depend on {key}, so they would "
                                f"not be this setting's: resume with --set {key}={format_value(was)}, or start a "
                                f"new run (another --out or output.name)")


def _check_same_config(path: Path, cfg: dict, allow_changes: bool = False) -> dict:
    """{key: [old, new]} of the allowed optimisation changes; any other difference is refused."""
    old = config_mod.validate(config_mod.read_yaml(path) or {})  # fills keys added since the run started
    _check_same_numerics(path, old, cfg)
    ignore = set(config_mod.RUNTIME_KEYS) | set(RESUME_SAME)
    diffs = [f"{s}.{k}" for s in cfg if isinstance(cfg[s], dict) for k in cfg[s]
             if f"{s}.{k}" not in ignore and old[s][k] != cfg[s][k]]
    diffs += [k for k in cfg if not isinstance(cfg[k], dict) and old[k] != cfg[k]]
    fixed = [k for k in diffs if k not in RESUME_CHANGEABLE]
    if fixed or (diffs and not allow_changes):
        hint = ""
        if diffs and not fixed:
            hint = " or add --allow-optimizer-changes to continue with the new values (recorded in the run)"
        raise SharpDROError(f"--resume with a config that differs from the run's {path.name} in: "
                            f"{', '.join(diffs)}; resume with the same config{hint}, or start a new run"
                            + (f" (--resume may change only {', '.join(RESUME_CHANGEABLE)})" if fixed else ""))
    return {k: [config_mod.get(old, k), config_mod.get(cfg, k)] for k in diffs}


def _data_record(cfg: dict, splits) -> dict | None:
    """What ``data.json`` holds: the data's fingerprint (``build_splits``; None for hand-made splits), where
    it lay and its sizes."""
    fingerprint = (splits.meta or {}).get("data_fingerprint")
    if fingerprint is None:
        return None
    d, source = cfg["data"], splits.meta.get("source", {})
    record = {"fingerprint": fingerprint, "dataset": d["dataset"],
              "root": str(Path(d["root"]).expanduser().resolve()) if d["root"] else None,
              "train_images": source.get("train_size"), "test_images": source.get("test_size")}
    if splits.meta.get("group_names"):  # groups from the data: their names, and how the rows were split
        record["group_names"] = list(splits.meta["group_names"])
        record["split_rule"] = splits.meta.get("split_rule")
    if splits.meta.get("source_jpeg"):  # a JPEG source: what its files' headers say of their quality
        record["source_jpeg"] = splits.meta["source_jpeg"]
    return record


def _check_same_data(run: RunDir, cfg: dict, splits) -> None:
    """Refuse to resume a run on other data than it recorded; a run without a record (written before
    fingerprints) resumes as before, and one that has not trained yet starts over on the data given."""
    old, new = run.read_data(), _data_record(cfg, splits)
    if old is None or new is None or old["fingerprint"] == new["fingerprint"]:
        return
    if not (run.summary.exists() or any(run.existing_checkpoint(k, cfg["backend"]) for k in ("last", "best"))):
        return

    def where(r: dict) -> str:
        return (f"{r.get('dataset')} at {r.get('root') or 'its default location'}, {r.get('train_images')} train / "
                f"{r.get('test_images')} test images, fingerprint {str(r['fingerprint'])[:16]}")

    raise SharpDROError(f"--resume with other data than the run trained on: it recorded {where(old)} "
                        f"({run.data.name}); the data now is {where(new)}. Point data.root at the data the run "
                        f"trained on to continue it, or start a new run (another --out or output.name)")


def _record_data(run: RunDir, cfg: dict, splits) -> None:
    record = _data_record(cfg, splits)
    if record is not None:
        atomic_write_json(run.data, record)


def _record_changes(run: RunDir, changes: dict, start_epoch: int) -> None:
    record = {"from_epoch": start_epoch, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changes}
    append_jsonl(run.changes, record)
    _echo("resumed with changed " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())
          + f" from epoch {start_epoch + 1} on (recorded in {run.changes.name})")


def _nonfinite_advice(run: RunDir, epoch: int, lr: float) -> str:
    """What is true after a NaN in ``epoch`` (0-based) and what to do that works."""
    lower = f"{lr / 10:g}"
    last = run.existing_checkpoint("last")
    if epoch == 0 or last is None:
        return (f"No checkpoint was written yet (the loss diverged in the first epoch): run the same command "
                f"again with a lower learning rate, e.g. --set train.lr={lower} (or a lower algorithm.rho, or "
                f"train.precision=fp32)")
    return (f"{last} holds epoch {epoch}, the last good one. Continue from it with a lower learning rate: "
            f"add --resume --allow-optimizer-changes --set train.lr={lower} (or lower algorithm.rho) to the same "
            f"command; or start a new run")


def _copy_atomic(src: Path, dst: Path) -> None:
    from sharpdro.io import atomic_path

    with atomic_path(dst, need=src.stat().st_size) as tmp:
        shutil.copyfile(src, tmp)


def _epoch_line(r: dict, epochs: int) -> str:
    line = f"epoch {r['epoch'] + 1}/{epochs} lr {r['lr']:.4g} loss {r['train']['loss']:.4f}"
    if "val" in r:
        line += f" | val avg {100 * r['val']['average']:.2f} worst {100 * r['val']['worst']:.2f}"
    if "test" in r:
        line += f" | test avg {100 * r['test']['average']:.2f} worst {100 * r['test']['worst']:.2f}"
    if "q" in r:
        line += " | q " + " ".join(f"{v:.3f}" for v in r["q"])
    return line + f" | {r['seconds']:.1f}s"


def build_summary(cfg: dict, records: list[dict], rule: str) -> dict:
    sel = select_epoch(records, rule)
    return {
        "algorithm": cfg["algorithm"]["name"],
        "dataset": cfg["data"]["dataset"],
        "corruption": cfg["data"]["corruption"],
        "model": cfg["model"]["name"],
        "backend": cfg["backend"],
        "seed": cfg["seed"],
        "selection": rule,
        "selected_epoch": sel["epoch"],
        "epochs": cfg["train"]["epochs"],
        "test_accuracy": sel["test"]["accuracy"],
        "test_average": sel["test"]["average"],
        "test_worst": sel["test"]["worst"],
        "val_accuracy": sel["val"]["accuracy"],
        "val_average": sel["val"]["average"],
        "val_worst": sel["val"]["worst"],
        "selected_train_accuracy": sel["train"]["accuracy"],  # the epoch's running accuracy (record["train"])
        **_fit_fields(sel),
        **summary_fields(sel["test"], "test"),
        "config_hash": config_mod.config_hash(cfg),
        "finished": True,
    }


def _fit_fields(sel: dict) -> dict:
    """The selected weights' fit of the training mixture (absent from runs written before it was measured)."""
    fit = sel.get("train_fit")
    if fit is None:
        return {}
    return {"train_accuracy_by_severity": fit["accuracy"], "train_accuracy_mixture": fit["mixture"],
            "train_count_by_severity": fit["counts"]}


# ---------------------------------------------------------------- evaluation API
def evaluate_run(path, overrides=(), severities=None, cifar_c=None, device=None, progress=True) -> dict:
    """Evaluate a trained model per severity on its own test set or on another data config.

    ``overrides`` are ``section.key=value`` strings applied to the run's config (for example
    ``data.corruption=jpeg_compression``); ``cifar_c`` is a CIFAR-10-C style folder.
    """
    from sharpdro.backends.base import get_backend

    ckpt = find_checkpoint(path)
    backend_name = checkpoint_backend(ckpt)
    backend = get_backend(backend_name)
    session, run_cfg = backend.load_for_inference(ckpt, device=device)
    cfg = config_mod.validate(config_mod.apply_overrides(run_cfg, overrides))
    bs = cfg["eval"]["batch_size"]
    result = {"checkpoint": str(ckpt), "algorithm": cfg["algorithm"]["name"], "model": cfg["model"]["name"]}
    if cifar_c is not None:
        from sharpdro.data.sources import load_cifar_c
        from sharpdro.data.types import LabeledArrays

        from sharpdro.data.match import check_cifar_c_matches

        raw = load_cifar_c(cifar_c, cfg["data"]["corruption"], cfg["data"]["max_severity"])
        check_cifar_c_matches(run_cfg["data"]["dataset"], session.num_classes, session.image_shape, cifar_c, raw,
                              session.classes)
        sets = {s: LabeledArrays(x, y, np.full(len(y), s)) for s, (x, y) in raw.items()}
        result.update(dataset=f"cifar-c:{cifar_c}", corruption=cfg["data"]["corruption"])
    else:
        from sharpdro.data.match import check_classes_match
        from sharpdro.data.splits import build_splits

        splits = build_splits(cfg, progress=progress)
        d = cfg["data"]
        check_classes_match(getattr(session, "classes", None), session.num_classes, splits.classes,
                            f"the data ({d['dataset']}{' at ' + str(d['root']) if d['root'] else ''})")
        sets = splits.test
        result.update(dataset=cfg["data"]["dataset"], corruption=cfg["data"]["corruption"])
        if splits.meta.get("group_names"):  # groups from the data: the test blocks' keys are these groups
            result["group_names"] = {str(i): n for i, n in enumerate(splits.meta["group_names"])}
    result["data"] = evaluation_data(cfg, cifar_c, severities)
    if severities is not None:
        bad = [s for s in severities if s not in sets]
        if bad:
            raise SharpDROError(f"severity {bad} not available; available: {sorted(sets)}")
        sets = {s: sets[s] for s in severities}
    result["test"] = evaluate_sets(session, sets, bs)
    return result


def write_evaluation(result: dict, path=None) -> Path:
    """Write an :func:`evaluate_run` result to ``path``, by default to its run directory's evaluation file named
    after the data and a hash of its whole config (:func:`evaluation_tag`: one file per data config); returns
    the path."""
    from sharpdro.rundir import run_of_checkpoint

    if path is None:
        path = run_of_checkpoint(result["checkpoint"]).evaluation(evaluation_tag(result))
    atomic_write_json(path, result)
    return Path(path)


def evaluation_data(cfg: dict, cifar_c=None, severities=None) -> dict:
    """Everything that defines an evaluation's data (recorded in its file and hashed into its name)."""
    d = cfg["data"]
    if cifar_c is not None:
        data = {"cifar_c": str(Path(cifar_c).expanduser().resolve()), "corruption": d["corruption"],
                "max_severity": d["max_severity"]}
    else:
        # the folder evaluated on names the evaluation, although a run's name ignores where its data lay
        runtime = {k.split(".", 1)[1] for k in config_mod.RUNTIME_KEYS if k.startswith("data.")} - {"root"}
        data = {k: v for k, v in d.items() if k not in runtime}
        if data.get("root"):
            data["root"] = str(Path(data["root"]).expanduser().resolve())
        data["seed"] = cfg["seed"]  # the test subset and the corruption noise follow it
    data["severities"] = sorted(int(s) for s in severities) if severities is not None else None
    return data


def evaluation_tag(result: dict) -> str:
    """The name of an evaluation's file: the data it ran on, readable, plus a hash of all of it."""
    data = result.get("data") or {}
    where = Path(str(data["cifar_c"])).name if data.get("cifar_c") else str(result.get("dataset"))
    return f"{where}-{result.get('corruption')}-{config_mod.config_hash(data, 8)}"


def severity_gap(block: dict) -> float:
    """Accuracy at severity 0 minus accuracy at the highest severity of an evaluate_sets() block."""
    acc = block["accuracy"]
    return acc["0"] - acc[str(max(int(s) for s in acc))]


def format_severity_table(columns: dict[str, dict], title: str = "", gap: bool = False,
                          group_names: dict[int, str] | None = None) -> str:
    """Side-by-side per-severity accuracy (%) table: ``columns`` maps a label to an evaluate_sets() block;
    ``gap`` adds the row severity 0 minus the highest severity.  ``group_names`` (groups from the data):
    the rows are named groups."""
    labels = list(columns)
    sevs = sorted({int(s) for c in columns.values() for s in c["accuracy"]})
    w = max(10, *(len(x) + 2 for x in labels))
    lw = max(10, *(len(group_label(s, group_names)) + 2 for s in sevs))
    lines = [title] if title else []
    lines.append(group_word(group_names).ljust(lw) + "".join(x.rjust(w) for x in labels))
    for s in sevs:
        lines.append(group_label(s, group_names).ljust(lw) + "".join(f"{100 * columns[x]['accuracy'][str(s)]:.2f}".rjust(w)
                                                for x in labels))
    lines.append("average".ljust(lw) + "".join(f"{100 * columns[x]['average']:.2f}".rjust(w) for x in labels))
    lines.append("worst".ljust(lw) + "".join(f"{100 * columns[x]['worst']:.2f}".rjust(w) for x in labels))
    if gap:
        lines.append(f"gap 0-{sevs[-1]}".ljust(10) + "".join(f"{100 * severity_gap(columns[x]):.2f}".rjust(w)
                                                             for x in labels))
    return "\n".join(lines)
