"""The MindSpore side of ``sharpdro bench`` (:mod:`sharpdro.experiments.bench`): the median time of
one training step (:func:`bench_train_step`)."""
from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from sharpdro.backends.mindspore import _runtime  # noqa: F401  (the CPU setting, before MindSpore loads)
import mindspore as ms

from sharpdro.errors import TrainingError

from .algorithms.base import set_lr
from .session import MindSporeSession
def bench_train_step(cfg: dict, steps: int = 10, batch_size: int | None = None, warmup: int = 2) -> dict:
    """Median time of one training step of ``cfg``'s model and algorithm on synthetic data (MindSpore).

    Images are random uint8 of ``data.image_size`` (32 when null) and ``train.batch_size``
    unless ``batch_size`` is given, labels over 10 classes, severities over
    ``data.max_severity + 1`` groups.  A step is one ``algorithm.update`` on a batch already
    converted to tensors (as ``sharpdro bench`` times PyTorch); it returns when its results
    are on the host (PyNative with launch_blocking is synchronous).
    The pre-stages of JTT/EIIL are not run (their steps are timed with default weights).
    ``peak_memory_mb``: peak resident memory of the process (CPU), or MindSpore's peak
    device allocation on a GPU.
    """
    from sharpdro import config as config_mod

    cfg = config_mod.validate(cfg)
    batch = int(batch_size or cfg["train"]["batch_size"])
    size = int(cfg["data"]["image_size"] or 32)
    num_groups = int(cfg["data"]["max_severity"]) + 1
    num_classes = 10
    n = batch * max(1, steps + warmup)
    session = MindSporeSession(cfg, None, norm=([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]), num_classes=num_classes,
                               image_shape=(size, size, 3), num_groups=num_groups, train_size=n)
    algo = session.algorithm
    if getattr(algo, "gen_adjustment", 0) > 0:
        algo.set_group_counts(np.full(num_groups, n // num_groups))
    rng = np.random.default_rng(int(cfg["seed"]))
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n)
    sev = np.arange(n) % num_groups
    set_lr(session.optimizer, float(cfg["train"]["lr"]))
    algo.train()
    batches = []
    for step in range(min(warmup + steps, 4)):  # a few distinct batches, cycled
        sl = slice(step * batch, (step + 1) * batch)
        batches.append((*session.to_device(images[sl], labels[sl], sev[sl]), np.arange(n)[sl]))
    times = []
    for step in range(warmup + steps):
        x, y, s, idx = batches[step % len(batches)]
        t0 = time.perf_counter()
        out = algo.update(x, y, s if algo.uses_groups else None, idx)
        elapsed = time.perf_counter() - t0
        if not np.isfinite(out["per_sample_loss"]).all():
            raise TrainingError("non-finite loss in the benchmark; lower train.lr")
        if step >= warmup:
            times.append(elapsed)
    median = statistics.median(times)
    if session.runtime["target"] == "CPU":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    else:
        peak = ms.runtime.max_memory_allocated() / 2 ** 20
    return {"backend": "mindspore", "device": session.runtime["target"].lower(), "mode": "pynative",
            "model": cfg["model"]["name"], "algorithm": cfg["algorithm"]["name"], "batch_size": batch,
            "image_size": size, "steps": len(times), "threads": session.runtime["threads"],
            "images_per_second": batch / median, "step_seconds_median": median,
            "step_seconds": times, "peak_memory_mb": peak}


def measure(s, runs: list[tuple[str, dict]], train_set=None, eval_set=None) -> dict:
    """The backend's ``bench`` hook: :func:`bench_train_step` of the first run's config at the bench's image
    size (MindSpore draws its own random batches; ``train_set`` and ``eval_set`` are not used)."""
    label, cfg = runs[0]
    cfg = {**cfg, "data": {**cfg["data"], "image_size": s.image_size}}
    result = bench_train_step(cfg, steps=s.steps, batch_size=s.batch_size, warmup=max(0, s.warmup))
    return {"backend": "mindspore", "algorithm": label, "model": s.model, "batch_size": s.batch_size, **result}
