"""Shareable models: ``sharpdro export`` writes a folder, ``load_pretrained`` reads it back.

An export folder holds two files:

- ``model.safetensors``: the network's weights only (the ``state_dict`` of the PyTorch
  model; safetensors files hold tensors and nothing that runs code);
- ``config.json``: what rebuilds and feeds the network: ``architecture`` (``name``,
  ``width``, ``dropout``, ``num_classes``, ``image_size``), ``classes`` (output order),
  ``normalization`` (per-channel ``mean`` / ``std`` of images in [0, 1], applied inside the
  loaded model), ``input`` (layout NCHW, range [0, 1], size), and where it came from: the
  run's ``config_hash``, ``selected_epoch``, algorithm, dataset, corruption, seed, backend
  and the run's per-severity test accuracy.

:func:`load_pretrained` returns a ``torch.nn.Module`` in eval mode that takes float
images in [0, 1], NCHW, and normalises them itself (RobustBench's convention), so it goes
straight into :func:`sharpdro.robustness.evaluate_model` or any other harness.

A ``timm:NAME`` or ``module.path:factory`` network (``model.name``) is rebuilt by timm or by
importing the same factory (``load_pretrained(..., import_factory=True)``: the folder names a module,
it never holds code).

``model.init_from: DIR`` starts a run from exported weights (fine-tuning, either backend):
the architecture (``model.name``, ``model.width``) must match; when the new data has
another number of classes, the classifier keeps its fresh initialisation (a warning says
so) and every other weight is loaded.  The new run normalises with its own training data.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from sharpdro.errors import SharpDROError
from sharpdro.version import PACKAGE

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
EXPORT_FORMAT = "sharpdro-export"
EXPORT_VERSION = 1


class ExportError(SharpDROError):
    """An export folder is missing, incomplete or does not fit the network asked for."""


def _safetensors_torch():
    try:
        import safetensors.torch as st
    except ImportError:
        raise ExportError("exported models are safetensors files: pip install 'sharpdro[export]' "
                          "(or pip install safetensors)") from None
    return st


# ------------------------------------------------------------------------------ writing
def _torch_session(ckpt: Path):
    """A PyTorch inference session of a checkpoint of either backend (a MindSpore one is converted first)."""
    import tempfile

    from sharpdro.backends.base import get_backend
    from sharpdro.rundir import checkpoint_backend

    torch_backend = get_backend("torch")
    if checkpoint_backend(ckpt) == "mindspore":
        from sharpdro.backends.mindspore.convert import mindspore_to_torch

        with tempfile.TemporaryDirectory() as tmp:
            return torch_backend.load_for_inference(mindspore_to_torch(ckpt, Path(tmp) / "converted.pt"), device="cpu")
    return torch_backend.load_for_inference(ckpt, device="cpu")


def _selected_epoch(run, ckpt: Path, summary: Mapping) -> int | None:
    if ckpt == run.best and "selected_epoch" in summary:
        return int(summary["selected_epoch"])
    if ckpt == run.last:
        records = run.epoch_records()
        return int(records[-1]["epoch"]) if records else None
    return None


def _foreign_files(out: Path) -> list[str]:
    """The files an export into ``out`` would replace that sharpdro did not write (an export's config.json
    says its format; its model.safetensors names sharpdro as producer in its header)."""
    foreign = []
    if (out / CONFIG_FILE).exists():
        try:
            ours = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            foreign.append(CONFIG_FILE)
    if (out / MODEL_FILE).exists():
        try:
            with open(out / MODEL_FILE, "rb") as f:  # safetensors: an 8-byte length, then a JSON header
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n)) if 0 < n < 100_000_000 else {}
            ours = str(header.get("__metadata__", {}).get("producer", "")).startswith(PACKAGE)
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            foreign.append(MODEL_FILE)
    return foreign


def export_run(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export a run directory's selected model (its best checkpoint, else its last) or a checkpoint file.

    Never replaces a file sharpdro did not write (a user's own ``config.json`` in ``out``); the two files are
    both written before either replaces an earlier export's, so a full disk leaves that export whole."""
    st = _safetensors_torch()
    from sharpdro.version import __version__
    from sharpdro.config import config_hash
    from sharpdro.io import atomic_path, check_path_name, dumps_json
    from sharpdro.rundir import find_checkpoint, run_of_checkpoint

    out = Path(out)
    check_path_name(out, "the export folder")
    foreign = _foreign_files(out)
    if foreign:
        raise ExportError(f"{out} holds {' and '.join(foreign)} that sharpdro did not write; nothing was written. "
                          f"Export into a new or empty folder (or an earlier export of sharpdro) with --out")
    ckpt = find_checkpoint(path)
    session, cfg = _torch_session(ckpt)
    run = run_of_checkpoint(ckpt)
    summary = run.read_summary() if run.summary.is_file() else {}
    model = session.algorithm.model
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    # in memory, then through atomic_path: safetensors' own save_file reports a full disk as a SafetensorError
    weights = st.save(state, metadata={"format": "pt", "producer": f"{PACKAGE} {__version__}"})
    m, d = cfg["model"], cfg["data"]
    mean, std = session.norm
    meta = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "sharpdro_version": __version__,
        "architecture": {"name": m["name"], "width": m["width"], "dropout": m["dropout"],
                         "num_classes": int(session.num_classes), "image_size": int(session.image_shape[0])},
        "classes": list(session.classes),
        "normalization": {"mean": [float(x) for x in mean], "std": [float(x) for x in std],
                          "applied": "inside the model: (x - mean) / std on x in [0, 1]"},
        "input": {"layout": "NCHW", "range": [0.0, 1.0], "dtype": "float32",
                  "size": [3, int(session.image_shape[0]), int(session.image_shape[1])]},
        "config_hash": summary.get("config_hash") or config_hash(cfg),
        "selected_epoch": _selected_epoch(run, Path(ckpt), summary),
        "selection": summary.get("selection", cfg["eval"]["selection"]),
        "checkpoint": Path(ckpt).name,
        "run": {"algorithm": cfg["algorithm"]["name"], "dataset": d["dataset"], "corruption": d["corruption"],
                "seed": cfg["seed"], "backend": cfg["backend"]},
        "test_accuracy": summary.get("test_accuracy"),
    }
    with atomic_path(out / MODEL_FILE, need=len(weights)) as tmp_model:
        tmp_model.write_bytes(weights)
        with atomic_path(out / CONFIG_FILE) as tmp_config:
            tmp_config.write_text(dumps_json(meta, indent=2) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------ reading
def read_export_config(directory: str | os.PathLike) -> dict:
    d = Path(directory).expanduser()
    cfg_path, weights = d / CONFIG_FILE, d / MODEL_FILE
    missing = [p.name for p in (cfg_path, weights) if not p.is_file()]
    if missing:
        raise ExportError(f"{d} is not a sharpdro export folder (missing {', '.join(missing)}); "
                          f"write one with `sharpdro export RUN --out DIR`")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{cfg_path} cannot be read ({exc}): the export is incomplete or damaged (an interrupted "
                          f"copy?); copy it again, or export the run again with `sharpdro export RUN --out DIR`") \
            from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != EXPORT_FORMAT:
        raise ExportError(f"{cfg_path} is not a sharpdro export config (format {fmt!r})")
    if int(meta.get("version", 0)) > EXPORT_VERSION:
        raise ExportError(f"{cfg_path} was written by a newer sharpdro (export version {meta['version']}); "
                          f"upgrade sharpdro")
    return meta


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    path = Path(directory).expanduser() / MODEL_FILE
    load_file = _safetensors_torch().load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors' errors (SafetensorError, OSError) vary by version
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path} cannot be read ({first}): the export is incomplete or damaged (an interrupted "
                          f"copy?); copy it again, or export the run again with `sharpdro export RUN --out DIR`") \
            from None


def _build(arch: Mapping, num_classes: int | None = None) -> nn.Module:
    from sharpdro.backends.torch.models import build_model

    return build_model(arch["name"], int(num_classes or arch["num_classes"]), int(arch["image_size"]),
                       width=int(arch["width"]), dropout=float(arch.get("dropout", 0.0)))


class PretrainedModel(nn.Module):
    """An exported network behind its normalisation: takes float images in [0, 1], NCHW; returns logits."""

    def __init__(self, net: nn.Module, mean, std, classes, config: Mapping):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = list(classes)
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def load_pretrained(directory: str | os.PathLike, device: str | torch.device | None = None,
                    import_factory: bool = False) -> PretrainedModel:
    """The model of an export folder: a ``torch.nn.Module`` in eval mode taking [0, 1] NCHW images.

    An export of a ``module.path:factory`` network names that module in its ``config.json``; the folder
    carries no code, but importing a module runs its code, so it is imported only with
    ``import_factory=True`` (say so once you know the name is the module you mean). ``timm:NAME``
    networks import timm.
    """
    meta = read_export_config(directory)
    name = str(meta["architecture"]["name"])
    if ":" in name and not name.startswith("timm:") and not import_factory:
        raise ExportError(f"{directory}: the exported network is model.name={name!r}, a factory this folder does "
                          f"not contain; loading it imports module {name.partition(':')[0]!r} (which runs its "
                          f"code): pass import_factory=True to load_pretrained if that is the module you mean")
    net = _build(meta["architecture"])
    net.load_state_dict(_weights(Path(directory)), strict=True)
    norm = meta["normalization"]
    model = PretrainedModel(net, norm["mean"], norm["std"], meta["classes"], meta)
    if device is not None:
        model = model.to(device)
    return model.eval()


# ------------------------------------------------------------------------------ model.init_from
def pretrained_state(directory: str | os.PathLike, model_cfg: Mapping, num_classes: int,
                     image_size: int | None = None) -> dict[str, torch.Tensor]:
    """The exported weights that fit a ``model_cfg`` network with ``num_classes`` outputs (PyTorch names).

    A different architecture is an error; a different number of classes leaves the classifier out.
    """
    meta = read_export_config(directory)
    arch = meta["architecture"]
    for key in ("name", "width"):
        if arch[key] != model_cfg[key]:
            raise ExportError(f"model.init_from={directory}: the exported network has model.{key}={arch[key]!r}, "
                              f"this run has {model_cfg[key]!r}; set model.{key}={arch[key]!r}")
    state = _weights(Path(directory))
    target = _build({**arch, "image_size": image_size or arch["image_size"]}, num_classes).state_dict()
    unexpected = sorted(set(state) - set(target))
    if unexpected:
        raise ExportError(f"model.init_from={directory}: weights {unexpected[:5]} do not belong to this network")
    differ = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    head = _classifier_keys(_build({**arch, "image_size": image_size or arch["image_size"]}, num_classes))
    if any(k not in head for k in differ):
        raise ExportError(f"model.init_from={directory}: weight shapes differ outside the classifier "
                          f"({[k for k in differ if k not in head][:5]})")
    if differ:
        warnings.warn(f"model.init_from={directory}: the export has {arch['num_classes']} classes, this run "
                      f"{num_classes}; the classifier ({', '.join(differ)}) keeps its fresh initialisation",
                      stacklevel=2)
    return {k: v for k, v in state.items() if k not in differ}


def _classifier_keys(model: nn.Module) -> set[str]:
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return {f"{last}.weight", f"{last}.bias"} if last is not None else set()


def init_from_pretrained(model: nn.Module, directory: str | os.PathLike, model_cfg: Mapping, num_classes: int,
                         image_size: int | None = None) -> nn.Module:
    """Load exported weights into a freshly built PyTorch network (``model.init_from``)."""
    state = pretrained_state(directory, model_cfg, num_classes, image_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = set(missing) - _classifier_keys(model)
    if unexpected or left:
        raise ExportError(f"model.init_from={directory}: weights do not fit (missing {sorted(left)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]})")
    return model
