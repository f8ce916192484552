"""``sharpdro bench``: what a training step, evaluation, the input pipeline and the corruptions cost.

This module is the framework-neutral side: the settings, the config of each timed session,
the seeded synthetic data (uint8 NHWC images, labels, severities 0..5), the corruption
timing and the table (text or Markdown, :func:`format_table`).  A backend times its
training steps in its ``bench`` module (``measure(settings, runs, train_set, eval_set) ->
dict``): ``sharpdro.backends.torch.bench`` measures steps, memory, host syncs, the input
pipeline and evaluation; ``sharpdro.backends.mindspore.bench`` the training step.

Measurements (medians after warm-up; every step is synchronised on CUDA):

- ``step_seconds_median`` / ``images_per_second``: one ``algorithm.update`` on a batch already
  on the device.  With ``compare``, the algorithms run interleaved step by step in one
  process (same model initialisation, same batch), so their ratios share the machine's
  conditions; the first algorithm's figures are the top-level ones.
- ``step_cpu_seconds_median`` (CPU only): the process CPU time of the same steps.  With one
  thread it is what the step takes on an idle core, also when other jobs share the machine
  and stretch the wall time (``eval_cpu_seconds`` likewise for the evaluation).
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
  ``sharpdro.backends.torch.bench.count_host_syncs``.
- ``forward_macs_per_image``: multiply-accumulates of the network's forward pass on one image
  (convolutions and linear layers, counted by forward hooks:
  ``sharpdro.backends.torch.bench.count_macs``), the basis of a FLOP-based time estimate on
  hardware not at hand.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from sharpdro import methods
from sharpdro.config import apply_overrides, default_config, validate
from sharpdro.errors import SharpDROError

NUM_GROUPS = 6  # severities 0..5


# ---------------------------------------------------------------------------------------- settings
@dataclass
class BenchSettings:
    algorithm: str = methods.FLAGSHIP
    model: str = "cnn"
    batch_size: int = 128
    steps: int = 20
    warmup: int = 3
    device: str = "cpu"
    precision: str = "auto"
    compare_precision: list[str] = field(default_factory=list)  # e.g. ["fp32", "bf16"]: interleaved
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
    backend: str = "torch"


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


def bench_config(s: BenchSettings, name: str, extra: Sequence[str] = (), extra_train: dict | None = None) -> dict:
    """The resolved config of one timed session: algorithm ``name`` with its ``extra`` overrides."""
    t = {"device": s.device, "precision": s.precision, "channels_last": s.channels_last, "compile": s.compile,
         "batch_size": s.batch_size, "threads": s.threads, "progress": False, **(extra_train or {})}
    cfg = default_config()
    cfg.update(seed=s.seed, backend=s.backend)
    cfg["algorithm"]["name"] = name
    cfg["model"].update(name=s.model, width=s.width)
    cfg["train"].update({k: v for k, v in t.items()})
    cfg["data"].update(flip=s.flip, crop_padding=s.crop_padding)
    cfg = apply_overrides(cfg, [*s.overrides, *extra])
    cfg["algorithm"]["name"] = name
    return validate(cfg)


def bench_runs(s: BenchSettings) -> list[tuple[str, dict]]:
    """``(label, config)`` of every timed session: ``s.algorithm`` first, then ``s.compare``; with
    ``s.compare_precision`` each of them once per precision (labelled ``NAME [PRECISION]``).

    ``auto`` is resolved by the backend for the bench's device, as training resolves it.
    """
    from sharpdro.backends.base import get_backend

    specs = [s.algorithm] + [c for c in s.compare if c != s.algorithm]
    precisions = list(dict.fromkeys(s.compare_precision)) or [s.precision]
    runs = []
    for spec in specs:
        for p in precisions:
            cfg = bench_config(s, *parse_spec(spec), extra_train={"precision": p})
            cfg["train"]["precision"] = get_backend(s.backend).resolve_precision(cfg)
            runs.append((f"{spec} [{p}]" if len(precisions) > 1 else spec, cfg))
    return runs


# ---------------------------------------------------------------------------------------- data
def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Seeded uint8 [n, size, size, 3] images with smooth structure (not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, max(size // 8, 1), max(size // 8, 1), 3), dtype=np.uint8)
    rep = int(np.ceil(size / coarse.shape[1]))
    img = np.repeat(np.repeat(coarse, rep, axis=1), rep, axis=2)[:, :size, :size]
    noise = rng.integers(-12, 13, size=img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def synthetic_set(s: BenchSettings, n: int, seed: int):
    """(images, labels, severities) of ``n`` synthetic images; severities a Poisson(1) mixture over 0..5."""
    rng = np.random.default_rng(seed + 1)
    images = synthetic_images(n, s.image_size, seed)
    labels = rng.integers(0, s.num_classes, size=n).astype(np.int64)
    severity = np.minimum(rng.poisson(1.0, size=n), NUM_GROUPS - 1).astype(np.int64)  # Poisson(1) mixture
    return images, labels, severity


# ---------------------------------------------------------------------------------------- corruptions
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


# ---------------------------------------------------------------------------------------- all of it
def run_bench(s: BenchSettings) -> dict:
    """All measurements; the returned dict is what ``--json`` prints."""
    from sharpdro.backends.base import backend_module

    hook = backend_module(s.backend, "bench")
    runs = bench_runs(s)
    train_set = synthetic_set(s, max(s.train_images, 2 * s.batch_size), s.seed)
    eval_set = synthetic_set(s, s.eval_images, s.seed + 3) if s.evaluation else None
    out = hook.measure(s, runs, train_set, eval_set)
    precisions = list(dict.fromkeys(s.compare_precision))
    if len(precisions) > 1 and "results" in out:  # each algorithm's step time per precision / its first precision's
        res = out["results"]
        specs = dict.fromkeys(label.rsplit(" [", 1)[0] for label in res)
        out["precision_ratios"] = {
            spec: {p: res[f"{spec} [{p}]"]["step_seconds_median"] / res[f"{spec} [{precisions[0]}]"]["step_seconds_median"]
                   for p in precisions} for spec in specs}
    if s.corruption:
        out["corruption"] = measure_corruptions(s)
    return out


# ---------------------------------------------------------------------------------------- tables
def hardware_line(hw: dict) -> str:
    """What ``auto`` precision was resolved from, in one line."""
    isa = hw.get("cpu_isa")
    if isa is not None:
        facts = (f"CPU capability {isa['capability']}, AMX-BF16 {'yes' if isa['amx_bf16'] else 'no'}, "
                 f"AVX512-BF16 {'yes' if isa['avx512_bf16'] else 'no'}")
    else:
        facts = hw.get("cuda_device", hw.get("device", "?"))
    return f"hardware: {facts}; fast bf16: {'yes' if hw.get('fast_bf16') else 'no'} (auto = " \
           f"{'bf16' if hw.get('fast_bf16') else 'fp32'})"


def _table(columns: Sequence[tuple[str, int, Callable]], rows: Sequence, markdown: bool) -> list[str]:
    """Columns ``(header, text width, cell(row) -> str)``: fixed-width text (first column left-aligned)
    or a Markdown table (the others right-aligned)."""
    if markdown:
        lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
                 "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(columns))) + " |"]
        return lines + ["| " + " | ".join(cell(r) for _, _, cell in columns) + " |" for r in rows]

    def line(cells):
        return "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, columns)))

    return [line([h for h, _, _ in columns])] + [line([cell(r) for _, _, cell in columns]) for r in rows]


def format_table(r: dict, markdown: bool = False) -> str:
    """The bench result as a text table (``sharpdro bench``) or in Markdown (``benchmarks/README.md``)."""
    if "results" not in r:  # a training-step timing alone (the MindSpore backend)
        return "  ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in r.items())
    framework = f"torch {r['torch']}, " if "torch" in r else ""
    each = list(dict.fromkeys(v.get("precision", r["precision"]) for v in r.get("results", {}).values()))
    if len(each) > 1:
        precision = " and ".join(each) + " (interleaved)"
    elif r.get("precision_requested", r["precision"]) != r["precision"]:
        precision = f"{r['precision']} ({r['precision_requested']})"
    else:
        precision = r["precision"]
    lines = [f"sharpdro bench: {r['model']} {r['image_size']}px, batch {r['batch_size']}, {precision}, "
             f"{r['steps']} timed steps after {r['warmup']} warm-up, on {r['device']} ({r['device_name']}, "
             f"{framework}{r['threads']} threads)"]
    if "hardware" in r:
        lines.append(hardware_line(r["hardware"]))
    if "forward_macs_per_image" in r:
        lines.append(f"forward pass: {r['forward_macs_per_image'] / 1e6:.1f} M multiply-accumulates per image "
                     f"(convolutions and linear layers; a training step is about 3x, SAM-type steps 6x)")
    ratios = r.get("ratios", {})
    columns = [("algorithm", 44, lambda x: f"`{x[0]}`" if markdown else x[0]),
               ("step s (median)", 16, lambda x: f"{x[1]['step_seconds_median']:.4f}"),
               ("images/s", 11, lambda x: f"{x[1]['images_per_second']:.1f}"),
               *([("CPU s (median)", 16, lambda x: f"{x[1]['step_cpu_seconds_median']:.4f}")]
                 if all("step_cpu_seconds_median" in v for v in r["results"].values()) else []),
               ("peak MB", 10, lambda x: f"{x[1]['peak_memory_mb']:.0f}"),
               ("step MB", 9, lambda x: f"{x[1]['peak_memory_step_mb']:.0f}"),
               ("syncs", 7, lambda x: f"{x[1]['host_syncs_per_step']:d}")]
    if ratios:
        columns.append(("x " + r["ratio_to"], max(10, len(r["ratio_to"]) + 5), lambda x: f"{ratios[x[0]]:.3f}"))
    lines += ["", *_table(columns, list(r["results"].items()), markdown)]
    for spec, by in r.get("precision_ratios", {}).items():
        first = next(iter(by))
        lines.append(f"{spec}: step time / {first} " + ", ".join(f"{p} {x:.3f}" for p, x in by.items()
                                                                 if p != first))
    if "pipeline" in r:
        p = r["pipeline"]
        lines += ["", f"input pipeline ({'device-resident' if p['data_on_device'] else 'host BatchIterator'}, "
                      f"flip={p['flip']}, crop_padding={p['crop_padding']}): step {p['step_seconds_pipeline']:.4f}s "
                      f"vs in-memory {p['step_seconds_in_memory']:.4f}s -> overhead {100 * p['overhead']:+.1f}%; "
                      f"batch alone {1000 * p['batch_seconds_median']:.2f} ms "
                      f"({100 * p['batch_fraction_of_step']:.1f}% of a step)"]
    if "loop" in r:
        lp = r["loop"]
        lines.append(f"host work per step ({lp['clock']}): next batch {1000 * lp['host_batch_seconds']:.2f} ms, "
                     f"to_device {1000 * lp['to_device_seconds']:.2f} ms, epoch sums "
                     f"{1000 * lp['epoch_sums_seconds']:.2f} ms: {1000 * lp['host_seconds_per_step']:.2f} ms, "
                     f"{100 * lp['host_fraction_of_step']:.1f}% of the {1000 * lp['step_seconds']:.1f} ms step")
    if "eval_images_per_second" in r:
        lines.append(f"evaluation: {r['eval_images_per_second']:.0f} images/s ({r['eval_images']} images)")
    if "corruption" in r:
        c = r["corruption"]
        lines += ["", f"corruption ({c['images']} images, {c['source']}, severities {c['severities']}, "
                      f"{c['cpu_count']} cores):"]
        if markdown:
            lines.append("")
        columns = [("corruption", 20, lambda x: x[0]),
                   ("images/s 1 worker", 19, lambda x: f"{x[1]['images_per_second_workers_1']:.0f}"),
                   ("images/s all", 14, lambda x: f"{x[1]['images_per_second_workers_all']:.0f}"),
                   ("speedup", 9, lambda x: f"{x[1]['speedup']:.2f}"),
                   ("cores used", 12, lambda x: f"{x[1]['cores_used_workers_all']:.2f}")]
        lines += _table(columns, [(k, v) for k, v in c.items() if isinstance(v, dict)], markdown)
    return "\n".join(lines)
