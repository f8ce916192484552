"""One YAML schema for every run: defaults, validation, ``--set`` overrides.

A config is a plain nested ``dict`` (sections -> keys -> values) so that it can be
dumped to YAML/JSON as-is and hashed.  The schema below is the single source of
truth for which keys exist, their types and their allowed values; an unknown key,
a wrong type or an out-of-range value raises :class:`ConfigError` naming the key.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


from sharpdro import methods
from sharpdro.methods.hparams import resolve_rho
from sharpdro.errors import ConfigError, SharpDROError, cut, shown  # noqa: F401  (ConfigError lives in errors; re-exported)
from sharpdro.fields import DEFAULT as IDENTITY_DEFAULT_UNSET  # noqa: E402
from sharpdro.fields import NUM, Field, _type_name  # noqa: F401  (re-exported)
from sharpdro.yaml_input import (MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES,  # noqa: F401  (re-exported)
                                 MAX_YAML_WEIGHT, TooMuchYAML, read_yaml, safe_load)

DATASETS = ("digits", "cifar10", "cifar100", "folder", "imagenet30", "labelfile", "tinyimagenet", "csv")
# "none": the groups come from the data (data.dataset=csv), no severity mixture
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "jpeg_compression", "none")
# The built-in methods (the live list, with methods registered later: sharpdro.methods.names()).
ALGORITHMS = methods.names()
MODELS = ("cnn", "cnn7", "resnet18", "resnet50", "wrn28_2", "wrn28_10")

SCHEMA: dict[str, Any] = {
    "backend": Field("torch", str, "training backend", choices=("torch", "mindspore")),
    "seed": Field(0, int, "seed of the data split, corruptions, init and shuffling", min=0,
                  max=2**64 - 1),  # torch.manual_seed's range
    "data": {
        "dataset": Field("digits", str, "image source", choices=DATASETS),
        "root": Field(None, str, "folder holding (or receiving) the dataset files (csv: the CSV file)", nullable=True),
        "download": Field(True, bool, "download CIFAR tarballs when missing (needs internet)"),
        "name": Field(None, str, "NAME of the <NAME>_train_img/ layout (labelfile)", nullable=True),
        "image_size": Field(None, int, "resize images to this square size (null: keep)", min=8, nullable=True),
        "corruption": Field("gaussian_noise", str, "photon-limited corruption (none: the groups come from the data, "
                            "data.dataset=csv)", choices=CORRUPTIONS),
        "table": Field("auto", str, "severity constants: cifar (32 px), imagenet (larger), auto by size",
                       choices=("auto", "cifar", "imagenet")),
        "max_severity": Field(5, int, "highest severity S; severities are 0..S", min=1, max=5),
        "protocol": Field("per_class_floor", str, "how training severities are drawn",
                          choices=("per_class_floor", "iid")),
        "poisson_lambda": Field(1.0, NUM, "lambda of the Poisson severity proportions", min=1e-6),
        "train_per_class": Field(4000, int, "training images per class (rest of the train split -> validation pool)",
                                 min=1),
        "val_per_class": Field(None, int, "validation images per class per severity (null: train_per_class/20, "
                               "at least 10: about a tenth of an epoch; a number above the pool takes it all)",
                               min=1, nullable=True),
        "test_per_class": Field(None, int, "test images per class (null: the whole test split)",
                                min=1, nullable=True),
        "cache_dir": Field(None, str, "cache of corrupted arrays (null: $SHARPDRO_CACHE or ~/.cache/sharpdro)",
                           nullable=True),
        "sampler": Field("auto", str, "training batches: uniform (a shuffle), group_balanced (group_DRO's weighted "
                         "sampling with replacement, every group equally likely; for the group-weighted methods "
                         "groupdro, sharpdro, eiil), or auto (group_balanced for those methods, uniform otherwise)",
                         choices=("auto", "uniform", "group_balanced"),
                         search=("choice", ("uniform", "group_balanced"))),
        "flip": Field(True, bool, "random horizontal flip in training"),
        "crop_padding": Field(0, int, "random crop after zero padding by this many pixels (0: off)", min=0),
        "extra_test": Field(None, str, "CIFAR-10-C / CIFAR-100-C folder evaluated as an extra test set",
                            nullable=True),
    },
    "model": {
        "name": Field("cnn", str, "network: one of " + ", ".join(MODELS) + "; or timm:NAME (a timm model, "
                      "pip install timm; PyTorch backend) or module.path:factory (any torch.nn.Module: "
                      "factory(num_classes=N) plus in_channels, image_size, width, dropout where its signature "
                      "names them; importing the module runs its code; PyTorch backend)"),
        "pretrained": Field(False, bool, "timm:NAME models: start from timm's pretrained weights "
                            "(downloads them: needs internet)"),
        "width": Field(32, int, "base width of the small cnns (cnn, cnn7)", min=4),
        "dropout": Field(0.0, NUM, "dropout before the classifier", min=0.0, max=0.99),
        "init_from": Field(None, str, "start from the weights of a `sharpdro export` folder (fine-tuning; "
                           "same model.name and width, a new classifier when the classes differ)", nullable=True),
    },
    "algorithm": {},  # built from the method descriptions: _sync_algorithm_section
    "train": {
        "epochs": Field(10, int, "training epochs", min=1),
        "batch_size": Field(100, int, "training batch size", min=1),
        "optimizer": Field("sgd", str, "base optimizer of every method (the SAM family's steps wrap it): sgd "
                           "(lr, momentum, nesterov, weight_decay) or adamw (lr, weight_decay as decoupled decay, "
                           "betas (0.9, 0.999), eps 1e-8; PyTorch backend)", choices=("sgd", "adamw")),
        "lr": Field(0.03, NUM, "learning rate", min=0.0),
        "momentum": Field(0.9, NUM, "SGD momentum (sgd only)", min=0.0, max=1.0),
        "weight_decay": Field(5e-4, NUM, "weight decay (sgd: L2 in the gradient; adamw: decoupled)", min=0.0),
        "nesterov": Field(False, bool, "Nesterov momentum (sgd only)"),
        "schedule": Field("step", str, "learning-rate schedule: x gamma at milestones (official) or cosine",
                          choices=("step", "cosine", "constant")),
        "milestones": Field([0.3, 0.6, 0.8], list, "step schedule milestones as fractions of train.epochs "
                            "(0.3: after 30% of the epochs), not epoch numbers", item_type=float, min=0.0, max=1.0),
        "gamma": Field(0.2, NUM, "step schedule factor", min=0.0, max=1.0),
        "warmup_epochs": Field(0, int, "linear learning-rate warm-up: epoch e < N runs at the schedule's lr x "
                               "(e+1)/(N+1), then the schedule alone (0: off)", min=0),
        "device": Field("auto", str, "cpu, cuda, cuda:N or auto", choices=None),
        "precision": Field("auto", str, "auto (bf16 where the device has fast bf16 kernels: AMX-BF16 or "
                           "AVX512-BF16 CPUs, CUDA GPUs with native bf16; fp32 elsewhere; the run records what it "
                           "resolved to), fp32, bf16 (autocast) or fp16 (autocast + dynamic loss scale; an "
                           "overflowed step is skipped), for every algorithm",
                           choices=("auto", "fp32", "bf16", "fp16"), identity_default="fp32"),
        "channels_last": Field(False, bool, "channels_last memory format"),
        "compile": Field(False, bool, "torch.compile the model's training forward"),
        "data_on_device": Field("auto", (str, bool), "keep the uint8 training set on the device and augment "
                                "there: true, false, or auto (on CUDA when it takes <= 1/4 of the GPU memory)",
                                choices=("auto", True, False)),
        "m_sharpness": Field(False, bool, "data-parallel SAM family: perturb each replica with its own "
                             "gradient (m-sharpness) instead of the all-reduced one"),
        "sync_bn": Field(False, bool, "data-parallel: SyncBatchNorm (batch statistics of the global batch)"),
        "threads": Field(None, int, "CPU threads (null: the library default); the numbers differ in the last "
                         "bits with another count, so --resume refuses another than the run's", min=1, nullable=True),
        "deterministic": Field(True, bool, "deterministic kernels (bitwise reproducible on CPU)"),
        "progress": Field(True, bool, "show progress bars"),
    },
    "eval": {
        "batch_size": Field(256, int, "evaluation batch size", min=1),
        "selection": Field("worst", str, "model selection on validation: worst severity, average, or last epoch",
                           choices=("worst", "average", "last")),
        "every": Field(1, int, "evaluate every N epochs (and always after the last)", min=1),
        "test": Field("every", str, "when the test set (and extra_test) is evaluated: at every validation epoch, "
                      "or once after training with the selected epoch's weights (its best checkpoint)",
                      choices=("every", "selected")),
    },
    "output": {
        "dir": Field("runs", str, "parent folder of run directories"),
        "name": Field(None, str, "run directory name (null: <dataset>-<corruption>-<algorithm>-s<seed>-<hash>)",
                      nullable=True),
        "save_best": Field(True, bool, "keep checkpoints/best.pt (MindSpore: best.npz) of the selected epoch"),
        "loggers": Field([], list, "mirror metrics.jsonl to these trackers (optional extras; offline by default)",
                         choices=("tensorboard", "mlflow", "wandb"), item_type=str),
    },
}


def _sync_algorithm_section() -> None:
    """``algorithm.name`` plus every registered method's hyperparameters (flat keys, first-declaration order)."""
    section = SCHEMA["algorithm"]
    section.clear()
    section["name"] = Field(methods.DEFAULT, str, "training method", choices=methods.names())
    section.update(methods.hparam_fields())


_sync_algorithm_section()
methods.on_change(_sync_algorithm_section)

# Keys that change where or how fast a run goes, not what it is: ignored by the sweep's job hash (unless
# the sweep varies them: sweep_spec.identity_axes) and by the same-config check of --resume. data.root says
# where the data lies, not what it is: a run records its data's fingerprint instead (rundir.DATA), which
# --resume compares. The thread count changes the numbers bit for bit: --resume keeps it (RESUME_SAME).
RUNTIME_KEYS = (
    "train.threads",
    "train.progress",
    "train.device",
    "data.root",
    "data.cache_dir",
    "data.download",
    "output.dir",
    "output.name",
    "output.loggers",
)

# Keys a run's numbers depend on (bit for bit) that a sweep job's name leaves out or may hold unresolved:
# train.threads is a runtime key (finished jobs keep their names on another machine or launcher), and
# train.precision may resolve to another value elsewhere. --resume refuses another value than the run's,
# naming the key (engine._check_same_numerics, after train.precision: auto is resolved); a finished run
# read back under another value would show numbers it did not compute.
RESUME_SAME = ("train.threads", "train.precision")

# Keys whose default changed after sweeps were hashed: their former default, declared beside each key
# (``Field.identity_default``) and gathered here. A job at the former default keeps the name it had; a
# job at the new default gets a new name when its method reads the key (it computes something else), and
# keeps its name when its method does not read it (see sharpdro.experiments.sweep_spec.job_identity).
FORMER_DEFAULTS: dict[str, Any] = {}


def _gather_former_defaults() -> None:
    FORMER_DEFAULTS.clear()

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif v.identity_default != IDENTITY_DEFAULT_UNSET:
                FORMER_DEFAULTS[f"{prefix}{k}"] = v.identity_default

    walk(SCHEMA, "")


_gather_former_defaults()
methods.on_change(_gather_former_defaults)

# Device strings are free-form (cuda:3), checked here rather than by choices.
_DEVICE_PREFIXES = ("auto", "cpu", "cuda", "mps")


def _is_field(x) -> bool:
    return isinstance(x, Field)


def default_config() -> dict:
    """The defaults of every key, as a fresh nested dict (dependent defaults resolved: ``rho``)."""

    def build(node):
        if _is_field(node):
            return copy.deepcopy(node.default)
        return {k: build(v) for k, v in node.items()}

    out = build(SCHEMA)
    resolve_rho(out["algorithm"])
    return out


def _check_value(path: str, field: Field, value):
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"config key '{path}' may not be null; allowed: {field.describe()}")
    t = field.type
    if isinstance(value, str) and t in (float, int, NUM):
        # YAML 1.1 reads "1e-3" as a string; accept any numeric spelling for numeric keys.
        value = _number_from_text(value, t)
    if t is float or t == NUM:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number, got {shown(value)}")
        value = float(value) if t is float else value
    elif t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"config key '{path}' must be an integer, got {shown(value)}")
    elif t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {shown(value)}")
    elif t is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' must be a string, got {shown(value)}")
    elif t is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list, got {shown(value)}")
        # min / max bound each item; an item's error quotes the key's help (e.g. milestones are fractions)
        item = Field(None, field.item_type or str, field.help, choices=field.choices, finite=field.finite,
                     min=field.min, max=field.max)
        return [_check_value(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
    _check_finite(path, field, value)
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"config key '{path}' = {shown(value)} is not allowed; allowed: {field.describe()}")
    if (field.min is not None and value < field.min) or (field.max is not None and value > field.max):
        what = f" ({field.help})" if path.endswith("]") and field.help else ""  # a list item: say what items are
        raise ConfigError(f"config key '{path}' = {shown(value)} is out of range; allowed: {field.describe()}{what}")
    return value


def _number_from_text(value: Any, t) -> Any:
    """A numeric spelling (``"1e-3"``, ``"10"``) as a number of type ``t``; anything else unchanged."""
    if not isinstance(value, str):
        return value
    if t is int:
        try:
            return int(value)
        except ValueError:
            pass
    try:
        x = float(value)
    except ValueError:
        return value
    if t is int and x.is_integer():
        return int(x)
    return x


def schema_field(dotted: str) -> Field | None:
    """The schema's :class:`Field` of a dotted key (``train.lr``), or None when it names no key."""
    node: Any = SCHEMA
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Field) else None


def coerce_value(dotted: str, value: Any) -> Any:
    """Numbers that YAML 1.1 left as strings (``1e-3``) become numbers for numeric keys (and number lists)."""
    f = schema_field(dotted)
    if f is None:
        return value
    if isinstance(value, list) and f.item_type in (float, int):
        return [_number_from_text(v, f.item_type) for v in value]
    if isinstance(value, str) and (f.type is int or f.type is float or f.type == NUM):
        return _number_from_text(value, f.type)
    return value


def check_value(dotted: str, value: Any) -> Any:
    """One key's value checked against its schema entry (type, range, choices) and coerced as a config holds it."""
    f = schema_field(dotted)
    if f is None:
        raise ConfigError(f"unknown config key {shown(dotted)}")
    return _check_value(dotted, f, coerce_value(dotted, value))


def _check_finite(path: str, field: Field, value) -> None:
    """NaN and infinity pass every range check (``nan < 0`` is False): refuse them unless the schema allows."""
    import math

    if field.finite and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{path}' = {shown(value)} is not a finite number; allowed: {field.describe()}")


def validate_or_raw(cfg: Mapping) -> dict:
    """A stored run's config filled with today's defaults; as written when it no longer validates (a run
    of an older version is still read, never refused)."""
    try:
        return validate(cfg)
    except SharpDROError:
        return dict(cfg)


def validate(cfg: Mapping) -> dict:
    """Check every key against the schema and fill missing keys with defaults.

    Returns a new, complete config. Raises ConfigError on the first problem.
    """

    def walk(schema_node, node, prefix):
        if not isinstance(node, Mapping):
            raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {shown(node)}")
        out = {}
        for key in node:
            if key not in schema_node:
                allowed = ", ".join(sorted(schema_node))
                where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
                raise ConfigError(f"unknown config key '{prefix}{cut(key, 80)}' in {where}; allowed keys: {allowed}")
        for key, sub in schema_node.items():
            path = prefix + key
            if _is_field(sub):
                out[key] = _check_value(path, sub, copy.deepcopy(node[key]) if key in node else copy.deepcopy(sub.default))
            else:
                out[key] = walk(sub, node.get(key, {}) or {}, path + ".")
        return out

    out = walk(SCHEMA, cfg, "")
    resolve_rho(out["algorithm"])  # rho: null -> SAM's or ASAM's radius
    _check_model_and_optimizer(out)
    dev = out["train"]["device"]
    if not dev.startswith(_DEVICE_PREFIXES):
        raise ConfigError(f"config key 'train.device' = {shown(dev)} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    return out


def is_external_model(name: str) -> bool:
    """``timm:NAME`` or ``module.path:factory`` rather than a built-in network."""
    return ":" in str(name)


def _check_model_name(name: str) -> None:
    import re

    if name in MODELS:
        return
    ident = r"[A-Za-z_][A-Za-z0-9_]*"
    if name.startswith("timm:"):
        if re.fullmatch(r"timm:[A-Za-z0-9_.\-]+", name):
            return
    elif re.fullmatch(rf"{ident}(\.{ident})*:{ident}(\.{ident})*", name):
        return
    raise ConfigError(f"config key 'model.name' = {name!r} is not allowed; allowed: one of {', '.join(MODELS)}, "
                      f"timm:NAME (e.g. timm:resnet18) or module.path:factory (e.g. my_models:make_net)")


def _check_model_and_optimizer(cfg: dict) -> None:
    m, t = cfg["model"], cfg["train"]
    _check_model_name(m["name"])
    if m["pretrained"] and not m["name"].startswith("timm:"):
        raise ConfigError(f"config key 'model.pretrained' = true is for timm:NAME models only; "
                          f"model.name = {m['name']!r}")
    if m["pretrained"] and m["init_from"]:
        raise ConfigError("model.pretrained=true and model.init_from both set the starting weights; choose one")
    if t["optimizer"] == "adamw" and t["nesterov"]:
        raise ConfigError("train.nesterov=true is an SGD setting; train.optimizer=adamw has no Nesterov momentum")
    if cfg["backend"] == "mindspore":
        if is_external_model(m["name"]):
            raise ConfigError(f"model.name={m['name']!r} is a PyTorch module; the MindSpore backend builds only "
                              f"its own networks ({', '.join(MODELS)}); use backend=torch")
        if t["optimizer"] != "sgd":
            raise ConfigError(f"train.optimizer={t['optimizer']!r}: the MindSpore backend has SGD only; "
                              f"use backend=torch or train.optimizer=sgd")


def algorithm_hparams(hparams: Mapping[str, Any] | None) -> dict:
    """The ``algorithm`` section's defaults overridden by ``hparams`` (used by every backend); unknown keys raise."""
    out = {k: copy.deepcopy(f.default) for k, f in SCHEMA["algorithm"].items()}
    unknown = sorted(set(hparams or {}) - set(out))
    if unknown:
        raise ConfigError(f"unknown algorithm hyperparameter(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(out))}")
    out.update(hparams or {})
    return resolve_rho(out)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (['section', 'key'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)} must be written section.key=value (e.g. train.lr=0.1)")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {shown(text)} has an empty key")
    try:
        value = safe_load(raw) if raw.strip() != "" else None
    except TooMuchYAML as exc:
        raise ConfigError(f"override {shown(text)}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {shown(text)}: value is not valid YAML ({cut(exc, 300)})") from None
    return path, value


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for text in overrides or ():
        path, value = parse_override(text)
        node, schema_node = cfg, SCHEMA
        for i, part in enumerate(path):
            if not isinstance(schema_node, dict) or part not in schema_node:
                where = ".".join(path[:i]) or "the top level"
                allowed = ", ".join(sorted(schema_node)) if isinstance(schema_node, dict) else "(none)"
                raise ConfigError(f"unknown config key {shown('.'.join(path))} in override {shown(text)}; "
                                  f"keys under {where}: {allowed}")
            schema_node = schema_node[part]
            if i == len(path) - 1:
                if not _is_field(schema_node):
                    raise ConfigError(f"override {shown(text)} names a section; name a key under it, "
                                      f"one of: {', '.join(sorted(schema_node))}")
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return cfg


def shipped_file(name: str | os.PathLike, folder: str = "") -> Path | None:
    """The shipped YAML file ``configs/[folder/]NAME[.yaml]`` of the package, or None."""
    p = Path(name)
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    root = resources.files("sharpdro") / "configs"
    shipped = (root / folder if folder else root) / name
    return Path(str(shipped)) if shipped.is_file() else None


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the bare name of a shipped config (``quickstart``)."""
    p = Path(path)
    if p.is_dir():
        from sharpdro.rundir import RunDir  # a run directory's config file, the likeliest meaning

        raise ConfigError(f"config path {str(path)!r} is a folder; give a YAML file (e.g. {RunDir(p).config})")
    if p.exists():
        return p
    shipped = shipped_file(p)
    if shipped is not None:
        return shipped
    available = ", ".join(sorted(x.name[:-5] for x in (resources.files("sharpdro") / "configs").iterdir()
                                 if x.name.endswith(".yaml")))
    raise ConfigError(f"config file {str(path)!r} not found; give a path or a shipped config: {available}")


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults <- YAML file (over its ``base:`` chain) <- ``--set`` overrides, validated."""
    cfg: dict = {}
    if path is not None:
        cfg = read_config_file(resolve_config_path(path))
    cfg = apply_overrides(cfg, overrides)
    return validate(cfg)


# ------------------------------------------------------------------ config files that build on others
MAX_BASE_CHAIN = 32  # files in one ``base`` chain (a config builds on a few)
# ``base: NAME_OR_PATH`` names a base config (a path, relative to the file first, or a shipped config such
# as ``cifar10``); the file's keys override the base's section by section (a list replaces the base's
# list). A base may have its own base (a chain); a file that reaches itself again is a cycle, an error.
BASE_KEY = "base"


def deep_merge(base: Mapping, child: Mapping) -> dict:
    """``child`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in child.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _base_path(name, relative_to: Path) -> Path:
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ConfigError(f"{relative_to}: 'base' must name a config file or a shipped config, got {shown(name)}")
    for cand in (relative_to.parent / str(name), relative_to.parent / f"{name}.yaml"):
        if cand.is_file():
            return cand
    return resolve_config_path(name)


def read_config_file(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its ``base`` chain applied (not validated); a chain holds at most
    :data:`MAX_BASE_CHAIN` files."""
    p = Path(path)
    key = p.resolve()
    if key in _chain:
        cycle = " -> ".join(cut(x, 120) for x in (*_chain[_chain.index(key):], key))
        raise ConfigError(f"config 'base' cycle: {cut(cycle, 1500)}")
    if len(_chain) >= MAX_BASE_CHAIN:
        raise ConfigError(f"config 'base' chain of more than {MAX_BASE_CHAIN} files: {cut(_chain[0], 200)} -> ... -> "
                          f"{cut(p, 200)}; a config builds on a few, is a 'base' wrong?")
    loaded = read_yaml(p) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: a config file must be a YAML mapping of sections")
    if BASE_KEY not in loaded:
        return loaded
    child = {k: v for k, v in loaded.items() if k != BASE_KEY}
    parent = read_config_file(_base_path(loaded[BASE_KEY], p), (*_chain, key))
    return deep_merge(parent, child)


def config_hash(cfg: Mapping, length: int = 10) -> str:
    """Stable short hash of a resolved config (key order does not matter)."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def dump_config(cfg: Mapping, path: str | os.PathLike) -> None:
    from sharpdro.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


def get(cfg: Mapping, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
