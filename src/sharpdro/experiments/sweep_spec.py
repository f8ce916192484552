"""What a sweep runs: job identity (the job hash), override text, the sweep file and its jobs.

A sweep file (format: :mod:`sharpdro.experiments.sweep`) expands, through :func:`expand`, into
:class:`Job` s: each a resolved config, the overrides that made it, and its hash
(:func:`job_hash`), the folder name of the job that stays the same across launchers,
worker counts and machines.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from sharpdro.config import FORMER_DEFAULTS, RUNTIME_KEYS, ConfigError, coerce_value, config_hash, default_config, load_config, read_yaml, \
    parse_override, safe_load, resolve_config_path, schema_field, shipped_file
from sharpdro.errors import SharpDROError

_SWEEP_KEYS = ("base", "set", "grid", "include", "jobs", "description", "tune")


class SweepError(SharpDROError):
    """A sweep file or sweep option that cannot work."""


# --------------------------------------------------------------------------- job identity


def job_identity(cfg: Mapping, axes: Sequence[str] = ()) -> dict:
    """What a job computes: the keys whose value differs from the schema default.

    Runtime-only keys (:data:`RUNTIME_KEYS`) are left out (but for ``axes``: those its sweep varies from
    job to job, :func:`identity_axes`), and so are keys at their
    default, so that adding a config key (with a default) to a later version does not
    rename every finished job of a long sweep.  A key whose default changed
    (``Field.identity_default``, gathered in :data:`~sharpdro.config.FORMER_DEFAULTS`) is left out at its former default, and at its
    new default only when the job's method does not read it.
    """
    out = _non_default(_runtime_reset(cfg, keep=axes), default_config())
    reads = _method_keys(cfg)
    for dotted, former in FORMER_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node, ident = cfg, out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, Mapping) else {}
            ident = ident.setdefault(p, {})
        if leaf not in node:
            continue
        value = node[leaf]
        if value == former:
            ident.pop(leaf, None)
        elif value == schema_field(dotted).default and dotted in reads:
            ident[leaf] = value
        for p in reversed(range(len(parents))):  # drop sections emptied above
            sec = out
            for q in parents[:p]:
                sec = sec[q]
            if not sec.get(parents[p]):
                sec.pop(parents[p], None)
    return out


def _method_keys(cfg: Mapping) -> set[str]:
    """The dotted ``algorithm.*`` keys the job's method reads."""
    from sharpdro import methods

    spec = methods.find(str((cfg.get("algorithm") or {}).get("name")))
    return {f"algorithm.{k}" for k in spec.hparams} if spec is not None else set()


def _non_default(node, default) -> dict:
    out = {}
    for key, value in node.items():
        ref = default.get(key) if isinstance(default, Mapping) else None
        if isinstance(value, Mapping):
            sub = _non_default(value, ref if isinstance(ref, Mapping) else {})
            if sub:
                out[key] = sub
        elif key not in (default or {}) or value != ref:
            out[key] = value
    return out


def _runtime_reset(cfg: Mapping, keep: Sequence[str] = ()) -> dict:
    """The resolved config with every :data:`RUNTIME_KEYS` entry but ``keep`` reset to its default."""
    out = copy.deepcopy(dict(cfg))
    for dotted in RUNTIME_KEYS:
        if dotted in keep:
            continue
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p)
            if not isinstance(node, dict):
                break
        else:
            if leaf in node:
                node[leaf] = copy.deepcopy(schema_field(dotted).default)
    return out


def resolve_precision(cfg: dict) -> dict:
    """A job's config with ``train.precision: auto`` made concrete where the sweep is expanded.

    Results depend on the precision, so a job's identity (its folder) holds the value it runs in: a sweep
    expanded on a CPU with fast bf16 gets bf16 jobs, elsewhere fp32 ones (named as before ``auto``
    existed).  Expand a Slurm sweep where its jobs will run, or set ``train.precision`` explicitly.
    """
    if cfg["train"]["precision"] != "auto":
        return cfg
    from sharpdro.backends.base import get_backend

    value = get_backend(cfg["backend"]).resolve_precision(cfg)
    return {**cfg, "train": {**cfg["train"], "precision": value}}


def job_hash(cfg: Mapping, axes: Sequence[str] = ()) -> str:
    """Folder name of a job: a stable hash of what the job computes (key order does not matter); ``axes``:
    the runtime keys its sweep varies (:func:`identity_axes`)."""
    return config_hash(job_identity(cfg, axes))


def identity_axes(spec: "SweepSpec") -> tuple[str, ...]:
    """The runtime keys a sweep varies from job to job (a ``grid`` axis, an ``include`` entry): they enter
    the jobs' identity. ``grid: {data.root: [A, B]}`` trains on two data sets, two jobs per point; without
    this both hashed alike and the second never ran. A runtime key set for every job (``set``, ``--set``:
    how the committed sweeps give ``data.root``) stays out, so moving the data renames nothing."""
    varied = set(spec.grid) | {o.split("=", 1)[0] for entry in spec.include for o in entry}
    return tuple(sorted(k for k in varied if k in RUNTIME_KEYS))


# --------------------------------------------------------------------------- overrides


def format_value(value: Any) -> str:
    """A value written so that ``parse_override`` (YAML) reads back exactly the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if text in ("inf", "-inf", "nan"):
            return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
        mantissa, e, exponent = text.partition("e")
        if e:  # PyYAML reads 1e-05 as a string; 1.0e-05 as a float
            if "." not in mantissa:
                mantissa += ".0"
            if exponent[0] not in "+-":
                exponent = "+" + exponent
            text = f"{mantissa}e{exponent}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            plain = safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        if plain and value and not re.search(r"[,\[\]{}#:&*!|>'\"%@`]", value) and value.strip() == value:
            return value
        return json.dumps(value)
    raise SweepError(f"cannot write {value!r} ({type(value).__name__}) as an override value")


def make_override(key: str, value: Any) -> str:
    key = str(key).strip()
    return f"{key}={format_value(coerce_value(key, value))}"


def normalize_override(text: str) -> str:
    """``k=v`` with the value re-written canonically (``train.lr=1e-3`` -> ``train.lr=0.001``)."""
    path, value = parse_override(text)
    return make_override(".".join(path), value)


def _overrides_from(obj: Any, where: str) -> list[str]:
    if obj is None:
        return []
    if isinstance(obj, str):
        return [normalize_override(obj)]
    if isinstance(obj, Mapping):
        return [make_override(k, v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        out: list[str] = []
        for item in obj:
            if isinstance(item, Mapping):
                out.extend(make_override(k, v) for k, v in item.items())
            elif isinstance(item, str):
                out.append(normalize_override(item))
            else:
                raise SweepError(f"{where}: {item!r} is not an override; write key=value or a mapping")
        return out
    raise SweepError(f"{where} must be a list of key=value or a mapping, got {obj!r}")


def split_values(text: str) -> list[str]:
    """Split ``a,b,[1, 2]`` at the commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p != ""]


def parse_grid_arg(text: str) -> tuple[str, list]:
    """``--grid key=v1,v2`` -> (key, [v1, v2]) with each value read as YAML."""
    if "=" not in text:
        raise SweepError(f"--grid {text!r} must be written key=v1,v2,... (e.g. seed=0,1,2)")
    key, raw = text.split("=", 1)
    values = []
    for part in split_values(raw):
        _, v = parse_override(f"{key}={part}")
        values.append(v)
    if not values:
        raise SweepError(f"--grid {text!r} lists no value")
    return key.strip(), values


# --------------------------------------------------------------------------- sweep spec and jobs


@dataclass
class SweepSpec:
    base: str | None = None
    set: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    include: list[list[str]] = field(default_factory=list)
    source: str | None = None  # folder the base path is relative to
    tune: dict | None = None  # equal tuning: sharpdro.experiments.tuning

    def to_dict(self) -> dict:
        out = {"base": self.base, "set": list(self.set), "grid": {k: list(v) for k, v in self.grid.items()},
               "include": [list(x) for x in self.include]}
        if self.tune is not None:
            out["tune"] = dict(self.tune)
        return out


@dataclass(frozen=True)
class Job:
    hash: str
    config: dict
    overrides: tuple[str, ...]  # every override on top of the base file
    varying: tuple[str, ...]  # the grid point or include entry alone (for display)
    # a tune block's variant job: (variant name, hash of the selected trial's final job it reruns) per
    # variant it serves (several when their settings coincide; its own hash when the selected trial
    # already has the variant's settings); recorded in sweep.json for the report
    variant_of: tuple[tuple[str, str], ...] = ()


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep YAML file (a path, or the name of a shipped ``configs/sweeps`` file)."""
    p = Path(path)
    if not p.exists():
        shipped = shipped_file(p, "sweeps")
        if shipped is None:
            raise SweepError(f"sweep file {str(path)!r} not found")
        p = shipped
    raw = read_yaml(p) or {}  # a syntax error names the file, line and column
    if not isinstance(raw, dict):
        raise SweepError(f"{p}: a sweep file must be a mapping with keys {', '.join(_SWEEP_KEYS)}")
    unknown = sorted(set(raw) - set(_SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{p}: unknown sweep key(s) {', '.join(unknown)}; allowed: {', '.join(_SWEEP_KEYS)}")
    if "include" in raw and "jobs" in raw:
        raise SweepError(f"{p}: give 'include' or 'jobs' (the same thing), not both")
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, Mapping):
        raise SweepError(f"{p}: 'grid' must map config keys to lists of values")
    grid = {}
    for k, v in grid_raw.items():
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if not vals:
            raise SweepError(f"{p}: grid key {k!r} has no value")
        grid[str(k)] = [coerce_value(str(k), x) for x in vals]
    include_raw = raw.get("include", raw.get("jobs")) or []
    if not isinstance(include_raw, list):
        raise SweepError(f"{p}: 'include' must be a list of jobs (each a mapping or a list of key=value)")
    include = [_overrides_from(entry if not isinstance(entry, str) else [entry], f"{p}: include[{i}]")
               for i, entry in enumerate(include_raw)]
    base = raw.get("base")
    tune = None
    if raw.get("tune") is not None:
        from sharpdro.experiments.tuning import check_tune

        tune = check_tune(raw["tune"], f"{p}: tune")
        clash = sorted({"algorithm.name", "seed"} & set(grid))
        if clash:
            raise SweepError(f"{p}: with 'tune', the methods and seeds come from the tune block; remove "
                             f"{', '.join(clash)} from the grid")
    return SweepSpec(base=None if base is None else str(base), set=_overrides_from(raw.get("set"), f"{p}: set"),
                     grid=grid, include=include, source=str(p.resolve().parent), tune=tune)


def build_spec(path: str | os.PathLike | None = None, base: str | None = None, sets: Sequence[str] = (),
               grids: Sequence[str] = ()) -> SweepSpec:
    """A sweep from a YAML file and/or command-line flags (``--base``, ``--set``, ``--grid``)."""
    spec = load_sweep(path) if path is not None else SweepSpec()
    if base is not None:
        spec.base, spec.source = base, None
    spec.set = spec.set + [normalize_override(s) for s in sets]
    for g in grids:
        key, values = parse_grid_arg(g)
        spec.grid[key] = [coerce_value(key, v) for v in values]
    return spec


def _base_path(spec: SweepSpec) -> str | None:
    if spec.base is None:
        return None
    if spec.source is not None:
        rel = Path(spec.source) / spec.base
        if rel.exists():
            return str(rel)
    return str(resolve_config_path(spec.base))


def _check_tune_against(spec: SweepSpec, base: str | None, fixed: Sequence[str]) -> None:
    """What the tune block alone cannot check: a narrowed key the sweep fixes (never drawn), and each
    variant's settings as a whole config (so that a bad one fails now, not after the trials)."""
    clash = sorted(set(spec.tune.get("space") or {}) & set(fixed))
    if clash:
        raise SweepError(f"tune.space narrows {', '.join(clash)}, which the sweep fixes (set or grid), so it is "
                         f"never drawn: remove it from one of them")
    for v in spec.tune.get("variants") or ():
        overrides = tuple(spec.set) + (make_override("algorithm.name", v["method"]),) + \
            tuple(make_override(k, x) for k, x in v["set"].items())
        try:
            load_config(base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"tune.variants {v['name']!r}: {exc}") from None


def expand(spec: SweepSpec) -> list[Job]:
    """Every job of a sweep, resolved and validated, in grid order (first key slowest), then ``include``.

    Jobs whose resolved configs are identical are kept once.
    """
    base = _base_path(spec)
    points: list[list[str]] = []
    if spec.grid or not spec.include:
        keys = list(spec.grid)
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            points.append([make_override(k, v) for k, v in zip(keys, combo)])
    if spec.tune is not None:  # every grid point x every method's trials x the tuning seeds
        from sharpdro.experiments.tuning import trial_points

        fixed = [o.split("=", 1)[0] for o in spec.set] + list(spec.grid)
        try:
            algorithm = load_config(base, tuple(spec.set))["algorithm"]
        except ConfigError as exc:
            raise ConfigError(f"sweep base + set: {exc}") from None
        _check_tune_against(spec, base, fixed)
        trials = [[make_override(k, v) for k, v in pairs] for pairs in trial_points(spec.tune, fixed, algorithm)]
        points = [p + t for p in points for t in trials]
    points.extend(list(x) for x in spec.include)
    axes = identity_axes(spec)
    jobs, seen = [], set()
    for point in points:
        overrides = tuple(spec.set) + tuple(point)
        try:
            cfg = resolve_precision(load_config(base, overrides))
        except ConfigError as exc:
            raise ConfigError(f"sweep job [{' '.join(point) or 'base'}]: {exc}") from None
        h = job_hash(cfg, axes)
        if h in seen:
            continue
        seen.add(h)
        jobs.append(Job(hash=h, config=cfg, overrides=overrides, varying=tuple(point)))
    return jobs
