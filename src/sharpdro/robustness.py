"""The field's standard corruption benchmark: CIFAR-10-C / CIFAR-100-C and ImageNet-C (Hendrycks & Dietterich, 2019).

Every corruption found in the folder is evaluated at severities 1-5, beside the clean
accuracy: the 15 standard types (noise, blur, weather, digital) and, when present, the 4
extra ones (speckle noise, Gaussian blur, spatter, saturate), not only this package's five
photon-limited corruptions.

Layouts:

- **CIFAR-10-C / CIFAR-100-C**: ``<folder>/<corruption>.npy`` (uint8 [5 N, H, W, 3], five
  blocks of N images, severity 1 first) and ``<folder>/labels.npy`` (5 N or N labels).
  Any N works (tests use small files).
- **ImageNet-C**: ``<folder>/<corruption>/<severity>/<class>/<image>``; class folders are
  matched to the model's class names (folders of other classes are skipped and listed in
  the result); images are resized to the model's square input size (BICUBIC, as
  ``data.image_size``).

Results (fractions in [0, 1]; tables print percent):

- per corruption and severity: accuracy, ECE, NLL, Brier (:mod:`sharpdro.calibration`);
- per corruption: the mean over its severities; per category: the mean over its types;
- **mean corruption accuracy** (mCA): the mean over the standard types present of their
  mean accuracy (the extra types have their own mean, never mixed in);
- with a reference result: the **corruption error** of each type,
  ``CE_c = sum_s err_{c,s} / sum_s err^ref_{c,s}``, their mean **mCE** over the standard
  types both hold, and the **relative mCE** (errors minus the clean error, same ratio);
  Hendrycks' mCE uses AlexNet as the reference, here any earlier result or run is.

:func:`evaluate_predict` takes any ``predict(uint8 NHWC) -> logits``;
:func:`evaluate_model` wraps a ``torch.nn.Module`` that takes [0, 1] NCHW images
(RobustBench's convention, also what :func:`sharpdro.load_pretrained` returns), so a
RobustBench or timm model and a run of this package go through the same table.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from sharpdro.calibration import CALIBRATION_KEYS, evaluate_arrays, finish_sums
from sharpdro.errors import DataError

CATEGORIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
STANDARD = tuple(c for group in CATEGORIES.values() for c in group)  # the 15 types of the benchmark
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # the 4 held-out types
ALL_CORRUPTIONS = STANDARD + EXTRA
SEVERITIES = (1, 2, 3, 4, 5)
KINDS = ("cifar-c", "imagenet-c")
_IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def category_of(corruption: str) -> str:
    for cat, members in CATEGORIES.items():
        if corruption in members:
            return cat
    return "extra"


# ------------------------------------------------------------------------------ sources
class CorruptionFolder:
    """One benchmark folder: which corruptions it holds and their (images, labels) per severity."""

    kind: str = ""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(f"{self.folder} is not a folder")

    def corruptions(self) -> list[str]:
        raise NotImplementedError

    def ignored(self) -> list[str]:
        return []

    def load(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def tag(self, corruptions: Sequence[str], severities: Sequence[int]) -> str:
        """A short name for result files: the kind and a hash of the folder and the selection."""
        text = json.dumps([self.kind, str(self.folder.resolve()), list(corruptions), list(severities)])
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


class CifarC(CorruptionFolder):
    """Hendrycks' ``<corruption>.npy`` + ``labels.npy`` folder (read as memory maps)."""

    kind = "cifar-c"

    def __init__(self, folder, image_shape: Sequence[int] | None = None):
        super().__init__(folder)
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        if not (self.folder / "labels.npy").is_file():
            raise DataError(f"{self.folder} holds no labels.npy: not a CIFAR-10-C / CIFAR-100-C folder "
                            f"(<corruption>.npy files + labels.npy)")
        self._present = {p.stem for p in self.folder.glob("*.npy") if p.stem != "labels" and not p.name.startswith(".")}
        if not set(ALL_CORRUPTIONS) & self._present:
            raise DataError(f"{self.folder} holds none of the CIFAR-C corruption files ({', '.join(STANDARD)}, ...)")

    def corruptions(self) -> list[str]:
        return [c for c in ALL_CORRUPTIONS if c in self._present]

    def ignored(self) -> list[str]:
        return sorted(self._present - set(ALL_CORRUPTIONS))

    def load(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        from sharpdro.data.sources import load_cifar_c

        images, labels = load_cifar_c(self.folder, corruption, 5)[int(severity)]
        if self.image_shape is not None and tuple(images.shape[1:3]) != tuple(self.image_shape[:2]):
            raise DataError(f"{self.folder / (corruption + '.npy')}: images are {images.shape[1]}x{images.shape[2]} "
                            f"but the model takes {self.image_shape[0]}x{self.image_shape[1]}")
        return images, labels


class ImageNetC(CorruptionFolder):
    """``<corruption>/<severity>/<class>/<image>``; labels are indices into ``classes``."""

    kind = "imagenet-c"

    def __init__(self, folder, classes: Sequence[str] | None = None, image_size: int | None = None,
                 progress: bool = False):
        super().__init__(folder)
        self._present = sorted(d.name for d in self.folder.iterdir()
                               if d.is_dir() and not d.name.startswith(".") and _severity_dirs(d))
        if not self._present:
            raise DataError(f"{self.folder} holds no <corruption>/<severity 1-5>/<class>/ folders (ImageNet-C layout)")
        if classes is None:  # ImageFolder's convention: the sorted class folder names
            first = self.folder / self._present[0] / _severity_dirs(self.folder / self._present[0])[0]
            classes = sorted(d.name for d in first.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = list(classes)
        self._index = {c: i for i, c in enumerate(self.classes)}
        self.image_size = image_size
        self.progress = progress
        self.skipped_classes: set[str] = set()

    def corruptions(self) -> list[str]:
        known = [c for c in ALL_CORRUPTIONS if c in self._present]
        return known + [c for c in self._present if c not in ALL_CORRUPTIONS]

    def load(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        from sharpdro.data.sources import decode_images

        sev_dir = self.folder / corruption / str(int(severity))
        if not sev_dir.is_dir():
            raise DataError(f"{sev_dir} is missing (ImageNet-C holds severities 1-5 of every corruption)")
        paths, labels = [], []
        for cls in sorted(d.name for d in sev_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if cls not in self._index:
                self.skipped_classes.add(cls)
                continue
            files = sorted(p for p in (sev_dir / cls).rglob("*")
                           if p.suffix.lower() in _IMAGE_EXTENSIONS and not p.name.startswith("."))
            paths += files
            labels += [self._index[cls]] * len(files)
        if not paths:
            raise DataError(f"{sev_dir}: no image of the model's classes ({', '.join(self.classes[:5])}, ...); "
                            f"class folders must be named as the model's classes")
        images = decode_images(paths, self.image_size, progress=self.progress, desc=f"{corruption} {severity}")
        return images, np.asarray(labels, dtype=np.int64)


def _severity_dirs(d: Path) -> list[str]:
    return [str(s) for s in SEVERITIES if (d / str(s)).is_dir()]


def open_folder(folder, kind: str, classes=None, image_shape=None, progress: bool = False) -> CorruptionFolder:
    if kind == "cifar-c":
        return CifarC(folder, image_shape)
    if kind == "imagenet-c":
        return ImageNetC(folder, classes, None if image_shape is None else int(image_shape[0]), progress)
    raise DataError(f"unknown benchmark kind {kind!r}; allowed: {', '.join(KINDS)}")


# ------------------------------------------------------------------------------ evaluation
def _metrics(sums: np.ndarray) -> dict:
    d = finish_sums(sums)
    return {k: d[k] for k in ("accuracy", *CALIBRATION_KEYS, "count")}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def select(source: CorruptionFolder, corruptions: Sequence[str] | None,
           severities: Sequence[int]) -> tuple[list[str], list[int]]:
    """The corruptions (in the benchmark's order) and severities to evaluate; unknown ones are an error."""
    available = source.corruptions()
    if corruptions:
        unknown = [c for c in corruptions if c not in available]
        if unknown:
            raise DataError(f"corruption(s) {', '.join(unknown)} not in {source.folder}; it holds: "
                            f"{', '.join(available)}")
        chosen = [c for c in available if c in corruptions]
    else:
        chosen = available
    sevs = sorted({int(s) for s in severities})
    bad = [s for s in sevs if s not in SEVERITIES]
    if bad or not sevs:
        raise DataError(f"severities must be in 1-5, got {list(severities)}")
    return chosen, sevs


def evaluate_predict(predict: Callable[[np.ndarray], np.ndarray], source: CorruptionFolder,
                     clean: tuple[np.ndarray, np.ndarray] | None = None, corruptions: Sequence[str] | None = None,
                     severities: Sequence[int] = SEVERITIES, reference: Mapping | None = None,
                     progress: bool = True) -> dict:
    """Evaluate ``predict`` (uint8 NHWC images -> logits [N, C]) on every corruption of ``source``."""
    chosen, sevs = select(source, corruptions, severities)
    result: dict = {"benchmark": source.kind, "folder": str(source.folder), "tag": source.tag(chosen, sevs),
                    "severities": sevs, "clean": None, "corruptions": {}}
    if clean is not None:
        result["clean"] = _metrics(evaluate_arrays(predict, clean[0], clean[1]))
    steps = [(c, s) for c in chosen for s in sevs]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc=source.kind, leave=False, dynamic_ncols=True)
    try:
        for c in chosen:
            per = {}
            for s in sevs:
                images, labels = source.load(c, s)
                per[str(s)] = _metrics(evaluate_arrays(predict, images, labels))
                if bar is not None:
                    bar.update(1)
            entry = {"category": category_of(c), "severity": per}
            for key in ("accuracy", *CALIBRATION_KEYS):
                entry[key] = _mean(v[key] for v in per.values())
            result["corruptions"][c] = entry
    finally:
        if bar is not None:
            bar.close()
    result.update(aggregate(result))
    ignored = source.ignored()
    if ignored:
        result["ignored_files"] = ignored
    skipped = sorted(getattr(source, "skipped_classes", ()))
    if skipped:
        result["skipped_classes"] = skipped
    if reference is not None:
        result.update(corruption_errors(result, reference))
    return result


def aggregate(result: Mapping) -> dict:
    """Means per category, over the standard types (mCA) and over the extra ones."""
    cors = result["corruptions"]
    out = {"categories": {}}
    for cat, members in CATEGORIES.items():
        vals = [cors[c]["accuracy"] for c in members if c in cors]
        if vals:
            out["categories"][cat] = _mean(vals)
    standard = [c for c in STANDARD if c in cors]
    extra = [c for c in EXTRA if c in cors]
    out["mean_corruption_accuracy"] = _mean(cors[c]["accuracy"] for c in standard)
    out["mean_corruption_accuracy_extra"] = _mean(cors[c]["accuracy"] for c in extra)
    for key in CALIBRATION_KEYS:
        out[f"mean_corruption_{key}"] = _mean(cors[c][key] for c in standard)
    out["standard_types"] = len(standard)
    out["missing_standard_types"] = [c for c in STANDARD if c not in cors]
    return out


def corruption_errors(result: Mapping, reference: Mapping) -> dict:
    """CE per type, mCE and relative mCE of ``result`` against ``reference`` (another result of this module)."""
    cors, ref = result["corruptions"], reference.get("corruptions", {})
    ce, rel = {}, {}
    clean_err = None if not result.get("clean") else 1.0 - result["clean"]["accuracy"]
    ref_clean_err = None if not reference.get("clean") else 1.0 - reference["clean"]["accuracy"]
    for c, entry in cors.items():
        if c not in ref:
            continue
        sevs = [s for s in entry["severity"] if s in ref[c]["severity"]]
        err = sum(1.0 - entry["severity"][s]["accuracy"] for s in sevs)
        ref_err = sum(1.0 - ref[c]["severity"][s]["accuracy"] for s in sevs)
        if sevs and ref_err > 0:
            ce[c] = err / ref_err
        if sevs and clean_err is not None and ref_clean_err is not None:
            denom = ref_err - len(sevs) * ref_clean_err
            if denom > 0:
                rel[c] = (err - len(sevs) * clean_err) / denom
    std = [c for c in STANDARD if c in ce]
    out = {"corruption_error": ce, "mce": _mean(ce[c] for c in std),
           "reference": reference.get("label") or reference.get("checkpoint") or reference.get("model")}
    if rel:
        out["relative_corruption_error"] = rel
        out["relative_mce"] = _mean(rel[c] for c in STANDARD if c in rel)
    return out


# ------------------------------------------------------------------------------ any torch module
def module_predict(model, device=None, batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(uint8 NHWC) -> float32 logits`` of a ``torch.nn.Module`` taking [0, 1] NCHW float images."""
    import torch

    dev = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    model = model.to(dev).eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(dev)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            out.append(model(x).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)

    return predict


def evaluate_model(model, cifar_c: str | os.PathLike | None = None, imagenet_c: str | os.PathLike | None = None,
                   clean: tuple[np.ndarray, np.ndarray] | None = None, classes: Sequence[str] | None = None,
                   image_size: int | None = None, corruptions: Sequence[str] | None = None,
                   severities: Sequence[int] = SEVERITIES, reference: Mapping | None = None,
                   device=None, batch_size: int = 256, progress: bool = True) -> dict:
    """Evaluate any ``torch.nn.Module`` taking [0, 1] NCHW images on a CIFAR-C or ImageNet-C folder.

    ``clean`` is an optional (uint8 NHWC images, labels) pair for the clean accuracy (e.g. the
    CIFAR-10 test set); ``classes`` names the model's outputs in order (ImageNet-C class folders
    are matched to it; default: the sorted folder names); ``image_size`` resizes ImageNet-C images
    (default: keep).  Returns the same dict as ``sharpdro evaluate --cifar-c`` writes.
    """
    if (cifar_c is None) == (imagenet_c is None):
        raise DataError("give exactly one of cifar_c= and imagenet_c=")
    if cifar_c is not None:
        source = open_folder(cifar_c, "cifar-c")
    else:
        source = open_folder(imagenet_c, "imagenet-c", classes=classes,
                             image_shape=None if image_size is None else (image_size, image_size), progress=False)
    result = evaluate_predict(module_predict(model, device, batch_size), source, clean=clean, corruptions=corruptions,
                              severities=severities, reference=reference, progress=progress)
    result["model"] = type(model).__name__
    return result


# ------------------------------------------------------------------------------ runs of this package
def evaluate_run_corruptions(path, cifar_c=None, imagenet_c=None, overrides: Sequence[str] = (),
                             corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES,
                             clean: bool = True, reference=None, device=None, progress: bool = True) -> dict:
    """A run (or checkpoint) on a CIFAR-C / ImageNet-C folder; clean accuracy on the run's own test set at
    severity 0 (``clean=False`` skips it).  ``reference``: a result dict, a result JSON file, or a run
    (evaluated here, and its result saved in it, unless it already holds this benchmark's result)."""
    from sharpdro import config as config_mod
    from sharpdro.backends.base import get_backend
    from sharpdro.rundir import checkpoint_backend, find_checkpoint

    if (cifar_c is None) == (imagenet_c is None):
        raise DataError("give exactly one of --cifar-c and --imagenet-c")
    ckpt = find_checkpoint(path)
    backend = get_backend(checkpoint_backend(ckpt))
    session, run_cfg = backend.load_for_inference(ckpt, device=device)
    cfg = config_mod.validate(config_mod.apply_overrides(run_cfg, overrides))
    bs = cfg["eval"]["batch_size"]
    kind, folder = ("cifar-c", cifar_c) if cifar_c is not None else ("imagenet-c", imagenet_c)
    source = open_folder(folder, kind, classes=session.classes, image_shape=session.image_shape, progress=False)
    if kind == "cifar-c":  # files without class names: their dataset must be the run's (sharpdro.data.match)
        from sharpdro.data.match import check_cifar_c_matches
        from sharpdro.data.sources import load_cifar_c

        first = load_cifar_c(folder, source.corruptions()[0], 5)
        check_cifar_c_matches(run_cfg["data"]["dataset"], session.num_classes, session.image_shape, folder, first,
                              session.classes)
    clean_set = None
    if clean:
        from sharpdro.data.splits import build_splits

        test0 = build_splits(cfg, progress=progress).test[0]
        clean_set = (test0.images, test0.labels)
    ref = load_reference(reference, source, corruptions, severities, device, progress) if reference else None
    from sharpdro.backends.base import finite_logits

    result = evaluate_predict(lambda x: finite_logits(session, x, bs), source, clean=clean_set,
                              corruptions=corruptions, severities=severities, reference=ref, progress=progress)
    result.update(checkpoint=str(ckpt), algorithm=cfg["algorithm"]["name"], model=cfg["model"]["name"],
                  label=f"{cfg['algorithm']['name']} ({cfg['model']['name']})",
                  clean_source=f"{cfg['data']['dataset']} test split, severity 0" if clean else None)
    return result


def result_path(path, result: Mapping) -> Path:
    """Where ``sharpdro evaluate`` writes a benchmark result: the run directory, named by the benchmark's tag."""
    from sharpdro.rundir import find_checkpoint, run_of_checkpoint

    return run_of_checkpoint(find_checkpoint(path)).evaluation(result["tag"])


def load_reference(reference, source: CorruptionFolder, corruptions, severities, device, progress) -> dict:
    if isinstance(reference, Mapping):
        return dict(reference)
    p = Path(reference)
    if p.is_file() and p.suffix == ".json":
        return json.loads(p.read_text(encoding="utf-8"))
    from sharpdro.rundir import find_checkpoint, run_of_checkpoint

    tag = source.tag(*select(source, corruptions, severities))
    saved = run_of_checkpoint(find_checkpoint(p)).evaluation(tag)
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    kind_arg = {"cifar_c": source.folder} if source.kind == "cifar-c" else {"imagenet_c": source.folder}
    result = evaluate_run_corruptions(p, corruptions=corruptions, severities=severities, device=device,
                                      progress=progress, **kind_arg)
    from sharpdro.io import atomic_write_json

    atomic_write_json(saved, result)  # the reference run keeps its result: the next comparison reuses it
    return result


# ------------------------------------------------------------------------------ table
def format_table(result: Mapping) -> str:
    """Per-type accuracy (%) at each severity, the type's mean (and CE), then clean, category means, mCA, mCE."""
    sevs = [str(s) for s in result["severities"]]
    has_ce = "corruption_error" in result
    name_w = max([len("corruption")] + [len(c) for c in result["corruptions"]]) + 2
    head = "corruption".ljust(name_w) + "type".ljust(9) + "".join(f"s{s}".rjust(8) for s in sevs) + "mean".rjust(8)
    head += "ECE".rjust(8) + ("CE".rjust(8) if has_ce else "")
    lines = [f"accuracy (%) on {result['benchmark']} {result['folder']}", head]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    for c, e in result["corruptions"].items():
        row = c.ljust(name_w) + e["category"].ljust(9)
        row += "".join(pct(e["severity"][s]["accuracy"]).rjust(8) for s in sevs) + pct(e["accuracy"]).rjust(8)
        row += pct(e["ece"]).rjust(8)
        if has_ce:
            row += pct(result["corruption_error"].get(c)).rjust(8)
        lines.append(row)
    lines.append("")
    rows = []
    if result.get("clean"):
        rows.append(("clean accuracy", pct(result["clean"]["accuracy"])))
    for cat, v in result.get("categories", {}).items():
        rows.append((f"mean accuracy, {cat}", pct(v)))
    rows.append((f"mean corruption accuracy ({result['standard_types']}/15 standard types)",
                 pct(result["mean_corruption_accuracy"])))
    if result.get("mean_corruption_accuracy_extra") is not None:
        rows.append(("mean accuracy, extra types", pct(result["mean_corruption_accuracy_extra"])))
    if has_ce:
        rows.append((f"mCE (reference: {result.get('reference')})", pct(result.get("mce"))))
        if result.get("relative_mce") is not None:
            rows.append(("relative mCE", pct(result["relative_mce"])))
    w = max(len(label) for label, _ in rows) + 2
    lines += [label.ljust(w) + value.rjust(8) for label, value in rows]
    if result.get("missing_standard_types"):
        lines.append(f"missing standard types: {', '.join(result['missing_standard_types'])}")
    for key in ("ignored_files", "skipped_classes"):
        if result.get(key):
            lines.append(f"{key.replace('_', ' ')}: {', '.join(result[key])}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line
def run_command(args) -> int:
    """``sharpdro evaluate RUN --cifar-c DIR | --imagenet-c DIR [--reference REF] [--corruptions ...]``."""
    from sharpdro.io import atomic_write_json

    result = evaluate_run_corruptions(args.path, cifar_c=args.cifar_c, imagenet_c=args.imagenet_c,
                                      overrides=args.overrides, corruptions=args.corruptions,
                                      severities=args.severity or SEVERITIES, clean=not args.no_clean,
                                      reference=args.reference, device=args.device)
    print(format_table(result))
    out = args.json_out or result_path(args.path, result)
    atomic_write_json(out, result)
    print(f"-> {out}")
    return 0
