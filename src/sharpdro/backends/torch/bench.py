"""``sharpdro bench``: what a training step, evaluation, the input pipeline and the corruptions cost.

Everything runs on seeded synthetic data of the right shape (uint8 NHWC images, labels,
severities 0..5), through the real code paths: :class:`TorchSession` (model, algorithm,
optimizer, precision), ``session.to_device``, :class:`~sharpdro.data.batches.BatchIterator`
and :func:`~sharpdro.data.corruptions.corrupt_by_severity`.

Measurements (medians after warm-up; every step is synchronised on CUDA):

- ``step_seconds_median`` / ``images_per_second``: one ``algorithm.update`` on a batch already
  on the device.  With ``compare``, the algorithms run interleaved step by step in one
  process (same model initialisation, same batch), so their ratios share the machine's
  conditions; the first algorithm's figures are the top-level ones.
- ``pipeline``: the same step fed by the real input pipeline (BatchIterator with flip and
  crop, then ``to_device``; on CUDA the device-resident path when the set fits) against the
  in-memory batch, alternating (CPU: single steps; CUDA: chunks of 5 steps without
  synchronisation inside a chunk, so the host may run ahead as in training):
  ``overhead`` = pipeline step / in-memory step - 1; ``batch_seconds_median`` is the
  pipeline alone (fetch + copy) and ``batch_fraction_of_step`` its share of a step (the
  steadier figure on a busy machine).
- ``eval_images_per_second``: ``session.evaluate`` (eval mode, no grad, autocast as trained).
- ``corruption``: per corruption, images/s of ``corrupt_by_severity`` with every image at one
  of the severities 1..5, with one worker and with all cores, plus the cores actually used
  (process CPU time / wall time).
- ``peak_memory_mb``: CUDA ``max_memory_allocated`` over two steps; on the CPU the peak
  resident set size (``resource.getrusage``), reset before each algorithm through
  ``/proc/self/clear_refs`` where Linux allows it (``peak_memory_kind`` says which).
  ``peak_memory_step_mb`` is that peak minus what was held before the two steps (what the
  step itself adds; on the CPU the process's own RSS dominates ``peak_memory_mb``).
- ``host_syncs_per_step``: calls that read a tensor on the host (``.item()``,
  ``bool(tensor)``, ``.tolist()``, ``.cpu()``, ``nonzero`` ...) counted in one step by
  :func:`count_host_syncs`.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from sharpdro import methods
from sharpdro.config import apply_overrides, default_config, validate
from sharpdro.errors import SharpDROError

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


# ---------------------------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    algorithm: str = methods.FLAGSHIP
    model: str = "cnn"
    batch_size: int = 128
    steps: int = 20
    warmup: int = 3
    device: str = "cpu"
    precision: str = "fp32"
    image_size: int = 32
    num_classes: int = 10
    width: int = 32
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None
    compare: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    train_images: int = 10000
    flip: bool = True
    crop_padding: int = 4
    eval_images: int = 2048
    eval_batch_size: int = 256
    corruption_images: int = 2000
    corruption_source: str | None = None
    pipeline: bool = True
    evaluation: bool = True
    corruption: bool = True
    seed: int = 0


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``NAME[:key=value[:key=value...]]`` -> (algorithm, ['algorithm.key=value', ...])."""
    parts = [p for p in spec.strip().split(":") if p]
    if not parts:
        raise SharpDROError(f"empty algorithm in --compare ({spec!r})")
    name, sets = parts[0], []
    if methods.find(name) is None:
        raise SharpDROError(f"unknown algorithm {name!r} in --compare; valid algorithms: "
                            f"{', '.join(methods.names())}")
    for kv in parts[1:]:
        if "=" not in kv:
            raise SharpDROError(f"--compare entry {spec!r}: write NAME:key=value (e.g. sharpdro_agnostic:fraction=0.2)")
        sets.append(kv if "." in kv.split("=", 1)[0] else f"algorithm.{kv}")
    return name, sets


def _config(s: BenchSettings, name: str, extra: list[str]) -> dict:
    t = {"device": s.device, "precision": s.precision, "channels_last": s.channels_last, "compile": s.compile,
         "batch_size": s.batch_size, "threads": s.threads, "progress": False}
    cfg = default_config()
    cfg.update(seed=s.seed)
    cfg["algorithm"]["name"] = name
    cfg["model"].update(name=s.model, width=s.width)
    cfg["train"].update({k: v for k, v in t.items()})
    cfg["data"].update(flip=s.flip, crop_padding=s.crop_padding)
    cfg = apply_overrides(cfg, [*s.overrides, *extra])
    cfg["algorithm"]["name"] = name
    return validate(cfg)


def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Seeded uint8 [n, size, size, 3] images with smooth structure (not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, max(size // 8, 1), max(size // 8, 1), 3), dtype=np.uint8)
    rep = int(np.ceil(size / coarse.shape[1]))
    img = np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)[:, :size, :size]
    noise = rng.integers(-12, 13, size=img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _synthetic_set(s: BenchSettings, n: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    images = synthetic_images(n, s.image_size, seed)
    labels = rng.integers(0, s.num_classes, size=n).astype(np.int64)
    severity = np.minimum(rng.poisson(1.0, size=n), NUM_GROUPS - 1).astype(np.int64)  # Poisson(1) mixture
    return images, labels, severity


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
        self.batch = self.session.to_device(*first)
        self._epoch, self._it = 0, iter(())
        self.step_times: list[float] = []

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

    def timed_step(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step()
        _sync(self.device)
        return time.perf_counter() - t0


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
            r.step_times.append(r.timed_step())


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


def _measure_eval(r: _Runner, s: BenchSettings, eval_set) -> dict:
    images, labels, _ = eval_set
    r.session.evaluate(images[:s.eval_batch_size], labels[:s.eval_batch_size], s.eval_batch_size)  # warm-up
    times = []
    for _ in range(3):
        _sync(r.device)
        t0 = time.perf_counter()
        r.session.evaluate(images, labels, s.eval_batch_size)
        _sync(r.device)
        times.append(time.perf_counter() - t0)
    r.algo.train()
    sec = min(times)
    return {"eval_images_per_second": len(images) / sec, "eval_seconds": sec, "eval_images": len(images)}


def _corruption_images(s: BenchSettings) -> tuple[np.ndarray, str]:
    n = s.corruption_images
    if s.corruption_source:
        with np.load(s.corruption_source) as z:
            key = "x" if "x" in z.files else z.files[0]
            src = z[key]
        if src.ndim != 4 or src.shape[-1] != 3 or src.dtype != np.uint8:
            raise SharpDROError(f"{s.corruption_source}: expected uint8 [N,H,W,3] images, got {src.dtype} "
                                f"{src.shape}")
        reps = int(np.ceil(n / len(src)))
        return np.concatenate([src] * reps)[:n], f"{s.corruption_source} (tiled to {n})"
    return synthetic_images(n, s.image_size, s.seed + 7), "synthetic"


def measure_corruptions(s: BenchSettings) -> dict:
    from sharpdro.data.corruptions import CORRUPTIONS, corrupt_by_severity

    images, source = _corruption_images(s)
    severities = (np.arange(len(images)) % 5 + 1).astype(np.int64)  # every severity 1..5, equally often
    cores = os.cpu_count() or 1
    out = {"images": len(images), "source": source, "severities": "1..5 equally", "cpu_count": cores}
    corr_small = images[:64]
    for name in CORRUPTIONS:
        corrupt_by_severity(corr_small, severities[:64], name, seed=0)  # warm-up (imports, tables)
        row = {}
        for label, workers in (("1", 1), ("all", None)):
            c0, t0 = time.process_time(), time.perf_counter()
            corrupt_by_severity(images, severities, name, seed=s.seed, workers=workers)
            wall = time.perf_counter() - t0
            row[f"images_per_second_workers_{label}"] = len(images) / wall
            row[f"cores_used_workers_{label}"] = (time.process_time() - c0) / wall
        row["images_per_second"] = row["images_per_second_workers_all"]
        row["speedup"] = row["images_per_second_workers_all"] / row["images_per_second_workers_1"]
        out[name] = row
    return out


def run_bench(s: BenchSettings) -> dict:
    """All measurements; the returned dict is what ``--json`` prints."""
    if s.threads:
        torch.set_num_threads(int(s.threads))
    specs = [s.algorithm] + [c for c in s.compare if c != s.algorithm]
    parsed = [parse_spec(x) for x in specs]
    train_set = _synthetic_set(s, max(s.train_images, 2 * s.batch_size), s.seed)
    runners = [_Runner(spec, _config(s, name, extra), s, train_set) for spec, (name, extra) in zip(specs, parsed)]
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
    first = runners[0]
    out = {
        "algorithm": first.label, "model": s.model, "batch_size": s.batch_size, "steps": s.steps,
        "warmup": s.warmup, "device": str(device), "device_name": _device_name(device), "precision": s.precision,
        "image_size": s.image_size, "channels_last": s.channels_last, "compile": s.compile,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
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
    if s.pipeline:
        out["pipeline"] = _measure_pipeline(first, s)
    if s.evaluation:
        out.update(_measure_eval(first, s, _synthetic_set(s, s.eval_images, s.seed + 3)))
    if s.corruption:
        out["corruption"] = measure_corruptions(s)
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


# ---------------------------------------------------------------------------------------- table
def format_table(r: dict) -> str:
    lines = [f"sharpdro bench: {r['model']} {r['image_size']}px, batch {r['batch_size']}, {r['precision']}, "
             f"{r['steps']} timed steps after {r['warmup']} warm-up, on {r['device']} ({r['device_name']}, "
             f"torch {r['torch']}, {r['threads']} threads)"]
    ratios = r.get("ratios", {})
    head = f"{'algorithm':<44}{'step s (median)':>16}{'images/s':>11}{'peak MB':>10}{'step MB':>9}{'syncs':>7}"
    if ratios:
        head += f"{'x ' + r['ratio_to']:>10}"
    lines += ["", head]
    for label, v in r["results"].items():
        line = (f"{label:<44}{v['step_seconds_median']:>16.4f}{v['images_per_second']:>11.1f}"
                f"{v['peak_memory_mb']:>10.0f}{v['peak_memory_step_mb']:>9.0f}{v['host_syncs_per_step']:>7d}")
        if ratios:
            line += f"{ratios[label]:>10.3f}"
        lines.append(line)
    if "pipeline" in r:
        p = r["pipeline"]
        lines += ["", f"input pipeline ({'device-resident' if p['data_on_device'] else 'host BatchIterator'}, "
                      f"flip={p['flip']}, crop_padding={p['crop_padding']}): step {p['step_seconds_pipeline']:.4f}s "
                      f"vs in-memory {p['step_seconds_in_memory']:.4f}s -> overhead {100 * p['overhead']:+.1f}%; "
                      f"batch alone {1000 * p['batch_seconds_median']:.2f} ms "
                      f"({100 * p['batch_fraction_of_step']:.1f}% of a step)"]
    if "eval_images_per_second" in r:
        lines.append(f"evaluation: {r['eval_images_per_second']:.0f} images/s ({r['eval_images']} images)")
    if "corruption" in r:
        c = r["corruption"]
        lines += ["", f"corruption ({c['images']} images, {c['source']}, severities {c['severities']}, "
                      f"{c['cpu_count']} cores):",
                  f"{'corruption':<20}{'images/s 1 worker':>19}{'images/s all':>14}{'speedup':>9}{'cores used':>12}"]
        for name, v in c.items():
            if isinstance(v, dict):
                lines.append(f"{name:<20}{v['images_per_second_workers_1']:>19.0f}"
                             f"{v['images_per_second_workers_all']:>14.0f}{v['speedup']:>9.2f}"
                             f"{v['cores_used_workers_all']:>12.2f}")
    return "\n".join(lines)
