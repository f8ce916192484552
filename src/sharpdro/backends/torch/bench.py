"""The PyTorch side of ``sharpdro bench`` (:mod:`sharpdro.experiments.bench` has the rest and the
definitions): training steps of every compared algorithm, interleaved, through the real code
paths (:class:`TorchSession`: model, algorithm, optimizer, precision; ``session.to_device``;
:class:`~sharpdro.data.batches.BatchIterator`), peak memory, host syncs per step
(:func:`count_host_syncs`), the input pipeline and evaluation.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import statistics
import time
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from sharpdro import methods

from .amp import hardware_record

if TYPE_CHECKING:
    from sharpdro.experiments.bench import BenchSettings

NUM_GROUPS = 6  # severities 0..5


# ---------------------------------------------------------------------------------------- host syncs
_SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "nonzero",
                 "unique", "bincount", "masked_select", "argwhere")
_SYNC_FUNCTIONS = ("nonzero", "unique", "bincount", "masked_select", "argwhere", "unique_consecutive")


@contextlib.contextmanager
def count_host_syncs() -> Iterator[dict]:
    """Count the Python-visible calls that make the host wait for a tensor's value.

    Patches ``torch.Tensor`` methods (``item``, ``tolist``, ``numpy``, ``cpu``, ``__bool__``,
    ``__float__``, ``__int__``, ``__index__``, ``nonzero``, ``unique``, ``bincount`` ...),
    the matching ``torch`` functions, and boolean-mask indexing (``x[mask]``, which needs
    the mask's count).  Yields a dict ``{name: calls}``; ``sum(d.values())`` is the total.
    On CUDA ``torch.cuda.set_sync_debug_mode('error')`` is the stronger check (it also
    sees syncs inside C++); this one runs on the CPU too.
    """
    counts: dict[str, int] = {}
    saved: list[tuple[object, str, object]] = []

    def wrap(owner, name, label):
        orig = getattr(owner, name, None)
        if orig is None:
            return

        def counted(*args, **kwargs):
            counts[label] = counts.get(label, 0) + 1
            return orig(*args, **kwargs)

        saved.append((owner, name, orig))
        setattr(owner, name, counted)

    for name in _SYNC_METHODS:
        wrap(torch.Tensor, name, f"Tensor.{name}")
    for name in _SYNC_FUNCTIONS:
        wrap(torch, name, f"torch.{name}")
    get_orig, set_orig = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def _has_bool_index(index) -> bool:
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    def getitem(self, index):
        if _has_bool_index(index):
            counts["bool-mask index"] = counts.get("bool-mask index", 0) + 1
        return get_orig(self, index)

    def setitem(self, index, value):
        if _has_bool_index(index):
            counts["bool-mask index"] = counts.get("bool-mask index", 0) + 1
        return set_orig(self, index, value)

    saved += [(torch.Tensor, "__getitem__", get_orig), (torch.Tensor, "__setitem__", set_orig)]
    torch.Tensor.__getitem__, torch.Tensor.__setitem__ = getitem, setitem
    try:
        yield counts
    finally:
        for owner, name, orig in reversed(saved):
            setattr(owner, name, orig)


# ---------------------------------------------------------------------------------------- MACs
def count_macs(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on one image (``image_shape`` = channels, height, width).

    Counts convolutions (output elements x in_channels/groups x kernel area) and linear layers
    (output elements x in_features), the layers that hold nearly all of a CNN's arithmetic;
    BatchNorm, activations, pooling and additions are left out.  FLOPs are about 2 x MACs;
    a training step is about 3 x the forward (the backward costs two forwards).
    """
    total = 0

    def conv(mod, _inp, out):
        nonlocal total
        total += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    def linear(mod, _inp, out):
        nonlocal total
        total += out.numel() * mod.in_features

    kinds = {torch.nn.Conv1d: conv, torch.nn.Conv2d: conv, torch.nn.Conv3d: conv, torch.nn.Linear: linear}
    handles = [m.register_forward_hook(kinds[type(m)]) for m in model.modules() if type(m) in kinds]
    was_training = model.training
    try:
        model.eval()  # no BatchNorm statistics change
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros((1, *image_shape), dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


# ---------------------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _reset_peak(device: torch.device) -> str:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (Linux >= 4.0) that getrusage reports
        return "rss_peak_since_reset"
    except OSError:
        return "rss_peak_of_process"


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / 1024 if platform.system() != "Darwin" else kb / 2 ** 20


class _Factory:
    """The engine's batch factory shape (``train`` iterator + ``__call__``) for ``session.set_batch_factory``."""

    def __init__(self, it):
        self.train = it

    def __call__(self, epoch):
        return self.train.iterate(epoch)

    def __len__(self):
        return len(self.train)

    def ordered(self):
        return self.train.iterate(0)


class _Runner:
    """One algorithm's session, its in-memory batch and its pipeline."""

    def __init__(self, label: str, cfg: dict, s: BenchSettings, train_set):
        from sharpdro.backends.torch.session import TorchSession
        from sharpdro.data.batches import BatchIterator
        from sharpdro.data.normalize import channel_mean_std

        images, labels, severity = train_set
        self.label, self.cfg = label, cfg
        self.session = TorchSession(cfg, None, norm=channel_mean_std(images), num_classes=s.num_classes,
                                    image_shape=images.shape[1:], num_groups=NUM_GROUPS, train_size=len(images))
        algo = self.session.algorithm
        if algo.spec.prestage is not None:  # two-stage methods: bench the main stage (pre-stage skipped)
            algo.apply_prestage(torch.from_numpy(algo.spec.prestage.stand_in(len(images))))
        elif algo.hparams["gen_adjustment"] > 0 and hasattr(algo, "set_group_counts"):
            algo.set_group_counts(torch.from_numpy(np.bincount(severity, minlength=NUM_GROUPS)))
        algo.mark_prepared()
        algo.train()
        self.algo, self.device = algo, self.session.device
        it = BatchIterator(images, labels, severity, s.batch_size, seed=s.seed, shuffle=True, drop_last=True,
                           flip=s.flip, crop_padding=s.crop_padding)
        self.session.set_batch_factory(_Factory(it))
        first = next(it.iterate(0))
        self.host_batch = first
        self.batch = self.session.to_device(*first)
        self._epoch, self._it = 0, iter(())
        self.step_times: list[float] = []
        self.step_cpu_times: list[float] = []  # process CPU time of each timed step (see measure)

    def step(self, batch=None) -> dict:
        x, y, g, i = batch if batch is not None else self.batch
        return self.algo.update(x, y, g if self.algo.uses_groups else None, i)

    def next_batch(self):
        """The next batch through the real pipeline (host iterator + to_device, or the resident path)."""
        while True:
            try:
                return self.session.to_device(*next(self._it))
            except StopIteration:
                self._it = iter(self.session.epoch_batches(self._epoch))
                self._epoch += 1

    def timed_step(self) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one step."""
        _sync(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        self.step()
        _sync(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


# ---------------------------------------------------------------------------------------- measurements
def _measure_steps(runners: list[_Runner], s: BenchSettings) -> None:
    for r in runners:
        for _ in range(s.warmup):
            r.step()
    _sync(runners[0].device)
    n = len(runners)
    for k in range(s.steps):  # interleaved; the order rotates so no algorithm always runs first
        for j in range(n):
            r = runners[(j + k) % n]
            wall, cpu = r.timed_step()
            r.step_times.append(wall)
            r.step_cpu_times.append(cpu)


def _current_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2 ** 20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return float("nan")


def _measure_memory(r: _Runner) -> tuple[float, float, str]:
    """(peak MB, peak minus what was held before the steps, kind)."""
    _sync(r.device)
    before = _current_mb(r.device)
    kind = _reset_peak(r.device)
    for _ in range(2):
        r.step()
    _sync(r.device)
    peak = _peak_mb(r.device)
    return peak, peak - before, kind


def _measure_syncs(r: _Runner) -> dict:
    with count_host_syncs() as counts:
        r.step()
    _sync(r.device)
    return counts


def _measure_pipeline(r: _Runner, s: BenchSettings) -> dict:
    # CPU: alternate single steps (nothing runs ahead); CUDA: chunks of 5 unsynchronised steps, as in training
    chunk = 1 if r.device.type != "cuda" else max(1, min(5, s.steps))
    rounds = max(1, s.steps // chunk)
    mem, pipe, fetch = [], [], []
    for _ in range(2):  # warm the pipeline (first epoch order, pinned buffers)
        r.step(r.next_batch())
    for _ in range(rounds):
        _sync(r.device)
        t0 = time.perf_counter()
        for _ in range(chunk):
            r.step()
        _sync(r.device)
        mem.append((time.perf_counter() - t0) / chunk)
        t0 = time.perf_counter()
        for _ in range(chunk):
            r.step(r.next_batch())
        _sync(r.device)
        pipe.append((time.perf_counter() - t0) / chunk)
    for _ in range(max(5, s.steps)):
        _sync(r.device)
        t0 = time.perf_counter()
        r.next_batch()
        _sync(r.device)
        fetch.append(time.perf_counter() - t0)
    m, p, f = _median(mem), _median(pipe), _median(fetch)
    return {"step_seconds_in_memory": m, "step_seconds_pipeline": p, "overhead": p / m - 1.0,
            "batch_seconds_median": f, "batch_fraction_of_step": f / m,
            "data_on_device": r.session.data_on_device, "flip": s.flip, "crop_padding": s.crop_padding}


def _measure_loop(r: _Runner, s: BenchSettings) -> dict:
    """The host-side work the engine's epoch loop does around each step, timed piece by piece (each over 50
    repetitions; process CPU time on the CPU, where a shared machine stretches wall time): the next batch of
    the host iterator (gather, flip, crop), ``session.to_device`` (normalisation, layout) and the epoch's
    per-severity sums (``TrainEpochSums.add``).  Their total is set against the bare step."""
    from sharpdro.metrics import TrainEpochSums

    cpu = r.device.type == "cpu"
    clock = time.process_time if cpu else time.perf_counter
    it = r.session._batch_factory.train

    def per_call(fn, n: int = 50) -> float:
        fn()
        _sync(r.device)
        t0 = clock()
        for _ in range(n):
            fn()
        _sync(r.device)
        return (clock() - t0) / n

    batches = iter(())

    def next_host():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(it.iterate(0))
            return next(batches)

    out = r.step()
    g = r.batch[2]
    sums = TrainEpochSums(NUM_GROUPS, torch.zeros(TrainEpochSums.size(NUM_GROUPS), device=r.device,
                                                  dtype=torch.float64),
                          lambda t: t.double(), lambda target, i, v: target.index_add_(0, i, v))
    parts = {"host_batch_seconds": per_call(next_host),
             "to_device_seconds": per_call(lambda: r.session.to_device(*r.host_batch)),
             "epoch_sums_seconds": per_call(lambda: sums.add(g, out["per_sample_loss"], out["correct"],
                                                             out.get("selected")))}
    step = _median(r.step_cpu_times) if cpu else _median(r.step_times)
    total = sum(parts.values())
    return {**parts, "host_seconds_per_step": total, "step_seconds": step, "host_fraction_of_step": total / step,
            "clock": "process CPU time" if cpu else "wall"}


def _measure_eval(r: _Runner, s: BenchSettings, eval_set) -> dict:
    images, labels, _ = eval_set
    r.session.evaluate(images[:s.eval_batch_size], labels[:s.eval_batch_size], s.eval_batch_size)  # warm-up
    times, cpu = [], []
    for _ in range(3):
        _sync(r.device)
        c0, t0 = time.process_time(), time.perf_counter()
        r.session.evaluate(images, labels, s.eval_batch_size)
        _sync(r.device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    r.algo.train()
    sec = min(times)
    out = {"eval_images_per_second": len(images) / sec, "eval_seconds": sec, "eval_images": len(images),
           "eval_batch_size": s.eval_batch_size}
    if r.device.type == "cpu":
        out["eval_cpu_seconds"] = min(cpu)
    return out


def measure(s: BenchSettings, runs: list[tuple[str, dict]], train_set, eval_set=None) -> dict:
    """The backend's ``bench`` hook: every figure but the corruption timing, for ``runs`` (label, config)
    on ``train_set`` (and ``eval_set``), with settings ``s``."""
    if s.threads:
        torch.set_num_threads(int(s.threads))
    runners = [_Runner(label, cfg, s, train_set) for label, cfg in runs]
    device = runners[0].device
    _measure_steps(runners, s)
    results = {}
    for r in runners:
        med = _median(r.step_times)
        mem, delta, kind = _measure_memory(r)
        syncs = _measure_syncs(r)
        results[r.label] = {"algorithm": r.algo.name, "step_seconds_median": med,
                            "images_per_second": s.batch_size / med, "peak_memory_mb": mem,
                            "peak_memory_step_mb": delta, "peak_memory_kind": kind, "host_syncs_per_step": int(sum(syncs.values())),
                            "host_sync_calls": syncs,
                            "step_seconds_all": [round(t, 6) for t in r.step_times]}
        if device.type == "cpu":  # on a shared machine the CPU time stays near an idle core's wall time
            results[r.label]["step_cpu_seconds_median"] = _median(r.step_cpu_times)
    first = runners[0]
    out = {
        "algorithm": first.label, "model": s.model, "batch_size": s.batch_size, "steps": s.steps,
        "warmup": s.warmup, "device": str(device), "device_name": _device_name(device),
        "precision": first.cfg["train"]["precision"], "precision_requested": s.precision,
        "hardware": hardware_record(device),
        "image_size": s.image_size, "channels_last": s.channels_last, "compile": s.compile,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "forward_macs_per_image": count_macs(first.algo.model, (3, s.image_size, s.image_size)),
        **{k: results[first.label][k] for k in ("images_per_second", "step_seconds_median", "peak_memory_mb",
                                                  "peak_memory_step_mb", "peak_memory_kind",
                                                  "host_syncs_per_step")},
        "results": results,
    }
    if len(runners) > 1:
        base = methods.BASELINE if methods.BASELINE in results else first.label
        out["ratio_to"] = base
        out["ratios"] = {k: v["step_seconds_median"] / results[base]["step_seconds_median"]
                         for k, v in results.items()}
    for r in runners:
        results[r.label]["precision"] = r.cfg["train"]["precision"]
    if s.pipeline:
        out["pipeline"] = _measure_pipeline(first, s)
        out["loop"] = _measure_loop(first, s)
    if s.evaluation and eval_set is not None:
        out.update(_measure_eval(first, s, eval_set))
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"
