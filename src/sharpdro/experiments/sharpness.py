"""Sharpness analysis of trained runs: the framework-neutral driver of ``sharpdro sharpness``.

For each run (a run directory or a checkpoint file) this module loads the checkpoint
through its backend, rebuilds the run's data with :func:`sharpdro.data.splits.build_splits`,
takes a fixed seeded subset of the chosen split (the same image indices at every severity,
and for every run whose data config is the same), asks the backend's ``loss_landscape`` module
to measure each severity, and writes JSON, a table and a figure
(:func:`sharpdro.experiments.plots.plot_sharpness`).

What is measured (the backend implements it; ``sharpdro.backends.torch.loss_landscape`` has the
details), per severity, with the model in eval mode throughout (BatchNorm running
statistics, no dropout: the loss is a fixed function of the weights):

- ``loss``: mean cross-entropy at the trained weights ``w``; ``accuracy`` there;
- ``worst_increase``: ``max L(w + eps) - L(w)`` over the iterates of ``ascent_steps`` steps
  of projected normalised-gradient ascent in the L2 ball ``||eps|| <= rho`` over all
  trainable parameters (ASAM's scaled ball ``||eps / |w| || <= rho`` with ``adaptive``);
  the first step is SAM's perturbation; a lower bound of the true maximum;
- ``mean_increase`` / ``std_increase`` per radius ``r``: mean and sample std (ddof=1) over
  ``directions`` random filter-normalised directions ``d`` (Li et al., 2018; zero on
  BatchNorm parameters and biases) of ``L(w + r d) - L(w)``; ``r`` is relative to the
  weights' filter norms.  Direction ``j`` depends only on ``(seed, j)`` (and the weights
  it is normalised to).

The weights are restored bit for bit after the measurement.

JSON (``sharpness.json``): ``{"run": {...}, "settings": {...}, "definitions": {...},
"seconds": ..., "0": {...}, "1": {...}, ...}``: one key per severity holding ``loss``,
``accuracy``, ``worst_increase``, ``radii``, ``mean_increase``, ``std_increase`` and the raw
``increases`` / ``worst_history``.  :func:`severity_entries` returns the severity part.
"""
from __future__ import annotations

import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sharpdro.errors import SharpDROError
from sharpdro.rundir import run_of_checkpoint

DEFAULT_RADII = (0.01, 0.02, 0.05, 0.1)
SUBSET_TAG = 0x5D0  # seed stream of the image subset
FILE_NAME = "sharpness.json"
FIGURE_STEM = "sharpness"

DEFINITIONS = {
    "loss": "mean cross-entropy at the trained weights w on the measured images (eval mode: BatchNorm running "
            "statistics, dropout off, for the whole measurement)",
    "worst_increase": "max over the iterates (eps = 0 included) of L(w + eps) - L(w), eps from ascent_steps steps of "
                      "projected normalised-gradient ascent (step ascent_step_size * rho) in the L2 ball ||eps|| <= "
                      "rho over all trainable parameters (adaptive: ASAM ball ||eps / |w| || <= rho); the first "
                      "step is SAM's perturbation; a lower bound of the true maximum",
    "mean_increase": "mean over `directions` random filter-normalised directions d of L(w + r d) - L(w), per radius "
                     "r; d: a Gaussian draw (CPU torch.Generator seeded by (seed, direction index)) whose every "
                     "filter (slice along dim 0 of a weight with >= 2 dims) is rescaled to the norm of the same "
                     "filter of w; parameters with <= 1 dim (BatchNorm, biases) are zero in d, so r is relative "
                     "to the filter norms",
    "std_increase": "sample standard deviation (ddof=1) of the same increases over the directions (null for one "
                    "direction)",
}


class SharpnessError(SharpDROError):
    """Bad sharpness settings or a run that cannot be measured."""


@dataclass
class SharpnessSettings:
    severities: list[int] | None = None  # None: every severity of the split
    rho: float = 0.05
    radii: list[float] = field(default_factory=lambda: list(DEFAULT_RADII))
    directions: int = 10
    ascent_steps: int = 5
    ascent_step_size: float = 1.0  # in units of rho
    adaptive: bool = False
    max_images: int = 1000
    split: str = "test"
    seed: int = 0
    batch_size: int | None = None  # None: the run's eval.batch_size
    device: str | None = None  # None: the run's train.device

    def validate(self) -> "SharpnessSettings":
        if not (self.rho > 0):
            raise SharpnessError(f"--rho must be > 0, got {self.rho}")
        if not self.radii and self.directions > 0:
            raise SharpnessError("--radii is empty; give at least one radius (e.g. 0.01,0.05,0.1)")
        if any(not (r > 0) for r in self.radii):
            raise SharpnessError(f"--radii must all be > 0, got {self.radii}")
        if self.directions < 0:
            raise SharpnessError(f"--directions must be >= 0, got {self.directions}")
        if self.ascent_steps < 0:
            raise SharpnessError(f"--ascent-steps must be >= 0, got {self.ascent_steps}")
        if self.directions == 0 and self.ascent_steps == 0:
            raise SharpnessError("nothing to measure: --directions and --ascent-steps are both 0")
        if not (self.ascent_step_size > 0):
            raise SharpnessError(f"--ascent-step-size must be > 0, got {self.ascent_step_size}")
        if self.max_images < 1:
            raise SharpnessError(f"--max-images must be >= 1, got {self.max_images}")
        if self.split not in ("test", "val"):
            raise SharpnessError(f"--split must be test or val, got {self.split!r}")
        if self.seed < 0:
            raise SharpnessError(f"--seed must be >= 0, got {self.seed}")
        if self.batch_size is not None and self.batch_size < 1:
            raise SharpnessError(f"--batch-size must be >= 1, got {self.batch_size}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def parse_radii(text: str) -> list[float]:
    """``"0.01,0.02, 0.05"`` -> ``[0.01, 0.02, 0.05]``."""
    out = []
    for part in str(text).replace(" ", ",").split(","):
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise SharpnessError(f"--radii: {part!r} is not a number; write e.g. 0.01,0.02,0.05,0.1") from None
    return out


def subset_indices(n: int, max_images: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, max_images)`` images of ``n``, fixed by ``seed`` alone."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SUBSET_TAG]))
    return np.sort(rng.permutation(n)[:min(n, max_images)]).astype(np.int64)


def severity_entries(result: Mapping) -> dict[int, dict]:
    """The per-severity entries of a ``sharpness.json`` result, keyed by int severity."""
    return {int(k): v for k, v in result.items() if str(k).isdigit()}


def load_result(path: str | os.PathLike) -> dict:
    import json

    p = Path(path)
    if p.is_dir():
        p = p / FILE_NAME
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _backend_module(name: str):
    try:
        return importlib.import_module(f"sharpdro.backends.{name}.loss_landscape")
    except ModuleNotFoundError as exc:
        if exc.name == f"sharpdro.backends.{name}.loss_landscape":
            raise SharpnessError(f"sharpness analysis is not implemented for the {name!r} backend "
                                 f"(available: torch)") from None
        raise


# --------------------------------------------------------------------------- measuring
def measure_run(path: str | os.PathLike, settings: SharpnessSettings, progress: bool = True,
                splits_cache: dict | None = None) -> dict:
    """Measure one run (run directory or checkpoint file); returns the ``sharpness.json`` content."""
    from sharpdro import config as config_mod
    from sharpdro.backends.base import get_backend
    from sharpdro.rundir import checkpoint_backend, find_checkpoint

    settings.validate()
    t0 = time.time()
    ckpt = find_checkpoint(path)
    backend_name = checkpoint_backend(ckpt)
    backend = get_backend(backend_name)
    impl = _backend_module(backend_name)
    if settings.device is not None:
        session, run_cfg = backend.load_for_inference(ckpt, device=settings.device)
    else:
        session, run_cfg = backend.load_for_inference(ckpt)
    cfg = config_mod.validate(run_cfg)

    data_key = config_mod.config_hash({"data": cfg["data"], "seed": cfg["seed"]})
    splits = splits_cache.get(data_key) if splits_cache is not None else None
    if splits is None:
        from sharpdro.data.splits import build_splits

        splits = build_splits(cfg, progress=progress)
        if splits_cache is not None:
            splits_cache[data_key] = splits
    sets = splits.test if settings.split == "test" else splits.val
    severities = sorted(sets) if settings.severities is None else [int(s) for s in settings.severities]
    bad = [s for s in severities if s not in sets]
    if bad:
        raise SharpnessError(f"severity {bad} not in the run's {settings.split} split; available: {sorted(sets)}")
    if not severities:
        raise SharpnessError("no severity to measure")
    bs = settings.batch_size or cfg["eval"]["batch_size"]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(severities) * impl.work_units(settings.directions, settings.ascent_steps),
                   desc=f"sharpness {run_of_checkpoint(ckpt).path.name}", leave=False, dynamic_ncols=True)
    entries: dict[str, dict] = {}
    images_used = None
    try:
        for s in severities:
            arr = sets[s]
            if len(arr) == 0:
                raise SharpnessError(f"the {settings.split} set of severity {s} is empty")
            idx = subset_indices(len(arr), settings.max_images, settings.seed)
            images_used = len(idx)
            if bar is not None:
                bar.set_postfix_str(f"severity {s}")
            t_sev = time.time()
            entry = impl.measure_session(
                session, arr.images[idx], arr.labels[idx], rho=float(settings.rho), radii=settings.radii,
                directions=int(settings.directions), ascent_steps=int(settings.ascent_steps),
                adaptive=bool(settings.adaptive), step_size=float(settings.ascent_step_size),
                seed=int(settings.seed), batch_size=int(bs), progress=bar.update if bar is not None else None)
            entry["images"] = int(len(idx))
            entry["seconds"] = round(time.time() - t_sev, 3)
            entries[str(s)] = entry
    finally:
        if bar is not None:
            bar.close()

    resolved = settings.as_dict()
    resolved.update(severities=severities, radii=[float(r) for r in settings.radii], batch_size=int(bs),
                    images=images_used, backend=backend_name,
                    device=str(getattr(session, "device", settings.device or cfg["train"]["device"])),
                    precision="fp32 (no autocast)", bn="eval mode (running statistics) throughout")
    return {
        "run": {
            "run_dir": str(run_of_checkpoint(ckpt).path),
            "checkpoint": str(ckpt),
            "algorithm": cfg["algorithm"]["name"],
            "model": cfg["model"]["name"],
            "dataset": cfg["data"]["dataset"],
            "corruption": cfg["data"]["corruption"],
            "seed": cfg["seed"],
            "config_hash": config_mod.config_hash(cfg),
        },
        "settings": resolved,
        "definitions": DEFINITIONS,
        "seconds": round(time.time() - t0, 3),
        **entries,
    }


def make_labels(results: Sequence[Mapping], labels: Sequence[str] | None = None) -> list[str]:
    """Plot labels: the algorithm key (so the figure names and colours it), made unique by run name."""
    if labels:
        if len(labels) != len(results):
            raise SharpnessError(f"--labels gives {len(labels)} labels for {len(results)} runs")
        if len(set(labels)) != len(labels):
            raise SharpnessError(f"--labels must be distinct, got {list(labels)}")
        return list(labels)
    algos = [r["run"]["algorithm"] for r in results]
    out = []
    for r, a in zip(results, algos):
        out.append(a if algos.count(a) == 1 else f"{a} [{Path(r['run']['run_dir']).name}]")
    if len(set(out)) != len(out):  # same algorithm and same run folder name: number them
        out = [f"{x} #{i + 1}" for i, x in enumerate(out)]
    return out


def plot_results(labelled: Mapping[str, Mapping], path: str | os.PathLike,
                 formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """One figure of every labelled result (label -> ``sharpness.json`` content)."""
    from sharpdro.experiments.plots import plot_sharpness

    return plot_sharpness({label: severity_entries(res) for label, res in labelled.items()}, path, formats,
                          algorithms={label: res["run"]["algorithm"] for label, res in labelled.items()})


# --------------------------------------------------------------------------- tables
def _g(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x != x:
        return "nan"
    return f"{x:.{digits}g}"


def format_table(result: Mapping, label: str | None = None) -> str:
    """A per-severity text table of one result."""
    run, st = result["run"], result["settings"]
    entries = severity_entries(result)
    radii = st["radii"] if st.get("directions") else []
    ball = "ASAM ||eps/|w|||" if st.get("adaptive") else "L2 ||eps||"
    head = (f"{label or run['algorithm']}: {run['algorithm']} / {run['model']} on {run['dataset']} / "
            f"{run['corruption']}, {st['split']} split, {st['images']} images per severity, seed {st['seed']}\n"
            f"worst: {st['ascent_steps']} ascent steps, {ball} <= {st['rho']:g}; random: {st['directions']} "
            f"filter-normalised directions, mean (std) loss increase at radius r")
    cols = ["severity", "loss", "acc%", f"worst@{st['rho']:g}"] + [f"r={r:g}" for r in radii]
    rows = []
    for s in sorted(entries):
        e = entries[s]
        acc = "-" if e.get("accuracy") is None else f"{100 * e['accuracy']:.2f}"
        row = [str(s), _g(e["loss"]), acc, _g(e.get("worst_increase"))]
        for i in range(len(radii)):
            m = e["mean_increase"][i] if i < len(e.get("mean_increase", [])) else None
            sd = e["std_increase"][i] if i < len(e.get("std_increase", [])) else None
            row.append(_g(m) + ("" if sd is None else f" ({_g(sd, 2)})"))
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) + 2 for i, c in enumerate(cols)]
    lines = [head, "".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_comparison(labelled: Mapping[str, Mapping]) -> str:
    """Worst-case increase and the mean increase at the largest radius, a column per run."""
    labels = list(labelled)
    sevs = sorted({s for res in labelled.values() for s in severity_entries(res)})
    w = max(12, *(len(x) + 2 for x in labels))
    first = next(iter(labelled.values()))["settings"]
    out = []
    blocks = [("worst-case loss increase at rho=" + f"{first['rho']:g}", lambda e: e.get("worst_increase"))]
    if first.get("directions") and first.get("radii"):
        r_i = int(np.argmax(first["radii"]))
        blocks.append((f"mean loss increase at r={first['radii'][r_i]:g} ({first['directions']} directions)",
                       lambda e, i=r_i: e["mean_increase"][i] if len(e.get("mean_increase", [])) > i else None))
    for title, get in blocks:
        out.append(title)
        out.append("severity".ljust(10) + "".join(x.rjust(w) for x in labels))
        for s in sevs:
            cells = []
            for x in labels:
                e = severity_entries(labelled[x]).get(s)
                cells.append((_g(get(e)) if e else "-").rjust(w))
            out.append(str(s).ljust(10) + "".join(cells))
        out.append("")
    return "\n".join(out).rstrip("\n")


# --------------------------------------------------------------------------- the command
def run_sharpness(paths: Sequence[str | os.PathLike], settings: SharpnessSettings, out: str | os.PathLike | None = None,
                  labels: Sequence[str] | None = None, formats: Sequence[str] = ("png", "svg"),
                  progress: bool = True, echo=print) -> dict:
    """Measure every run, write JSON and the figure, print tables; returns ``{"results", "json", "figures"}``.

    One run: ``sharpness.json`` and ``sharpness.{png,svg}`` in ``out`` (default: the run
    directory).  Several runs: each run's ``sharpness.json`` in its run directory, and in
    ``out`` (default ``./sharpness``) a combined ``sharpness.json`` (``{"settings",
    "runs": [{"label", "result"}, ...]}``) and one figure with a line per run.
    """
    from sharpdro.io import atomic_write_json

    if not paths:
        raise SharpnessError("give at least one run directory or checkpoint")
    settings.validate()
    cache: dict = {}
    results = [measure_run(p, settings, progress=progress, splits_cache=cache) for p in paths]
    names = make_labels(results, labels)
    labelled = dict(zip(names, results))
    json_paths: list[Path] = []
    if len(results) == 1:
        dest = Path(out) if out is not None else Path(results[0]["run"]["run_dir"])
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_json(dest / FILE_NAME, results[0])
        json_paths.append(dest / FILE_NAME)
    else:
        for res in results:
            p = Path(res["run"]["run_dir"]) / FILE_NAME
            atomic_write_json(p, res)
            json_paths.append(p)
        dest = Path(out) if out is not None else Path("sharpness")
        dest.mkdir(parents=True, exist_ok=True)
        combined = {"settings": results[0]["settings"], "definitions": DEFINITIONS,
                    "runs": [{"label": x, "result": r} for x, r in labelled.items()]}
        atomic_write_json(dest / FILE_NAME, combined)
        json_paths.append(dest / FILE_NAME)
    figures = plot_results(labelled, dest / FIGURE_STEM, formats)
    if echo is not None:
        for x, r in labelled.items():
            echo(format_table(r, x))
            echo("")
        if len(labelled) > 1:
            echo(format_comparison(labelled))
            echo("")
        for p in json_paths + list(figures):
            echo(f"-> {p}")
    return {"results": labelled, "json": json_paths, "figures": figures}
