"""A sweep file's ``tune`` block, checked: its budget and seeds, and the two deviations a sweep may declare.

- ``space: {dotted key: distribution}`` replaces a key's declared ``search`` distribution for this
  sweep only, in the same syntax written as a YAML list (``[choice, [4, 5, 6]]``,
  ``[int_uniform, 1, 8]``, ``[log_uniform, 0.01, 0.5]``, ``[uniform, 0.0, 0.9]``).  The report
  lists every narrowed space, so that a deviation from the authors' grid is visible.
- ``variants: [{name, method, set}]``: once ``method`` is selected on a grid point, its selected
  trial runs again on the final seeds with ``set`` on top (not tuned: it inherits the selected
  hyperparameters).  The report gives each variant its own row after its method's.

Kept apart from :mod:`sharpdro.experiments.tuning` (the draws and the selection) so each stays small.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from sharpdro import methods
from sharpdro.config import ConfigError, check_value, schema_field
from sharpdro.errors import SharpDROError

TUNE_KEYS = ("trials", "seed", "methods", "seeds", "final_seeds", "space", "variants")
# distribution kind -> the number of entries of its list, kind included
DIST_ARITY = {"log_uniform": 3, "uniform": 3, "int_uniform": 3, "choice": 2}
VARIANT_KEYS = ("name", "method", "set")
# keys a variant may not set: they say which job it is, not how it trains
_NOT_VARIANT_KEYS = ("seed", "algorithm.name")


class TuningError(SharpDROError):
    """A ``tune`` block or a selection that cannot work."""


def tuned_keys(method: str) -> list[str]:
    """The dotted config keys a tuning sweep draws for ``method``."""
    spec = methods.get(method)
    if spec.tune is not None:
        return list(spec.tune)
    return [f"algorithm.{k}" for k, f in spec.hparams.items() if f.search is not None]


def check_tune(raw: Any, where: str = "tune") -> dict:
    """The ``tune`` block, checked and completed with its defaults."""
    if not isinstance(raw, Mapping):
        raise TuningError(f"{where} must be a mapping with keys {', '.join(TUNE_KEYS)}")
    unknown = sorted(set(raw) - set(TUNE_KEYS))
    if unknown:
        raise TuningError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TUNE_KEYS)}")
    trials = raw.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise TuningError(f"{where}.trials must be a positive integer, got {trials!r}")
    names = list(raw.get("methods") or methods.names())
    for name in names:
        methods.get(str(name))  # ConfigError naming the valid methods
    names = [str(n) for n in names]
    seeds = [int(s) for s in (raw.get("seeds") or [0])]
    final = [int(s) for s in (raw.get("final_seeds") or [])]
    if set(seeds) & set(final):
        raise TuningError(f"{where}: tuning seeds {seeds} and final seeds {final} must be disjoint")
    out = {"trials": trials, "seed": int(raw.get("seed", 0)), "methods": names, "seeds": seeds,
           "final_seeds": final}
    if raw.get("space"):
        out["space"] = check_space(raw["space"], names, f"{where}.space")
    if raw.get("variants"):
        if not final:
            raise TuningError(f"{where}.variants run on the final seeds: give final_seeds too")
        out["variants"] = check_variants(raw["variants"], names, f"{where}.variants")
    return out


# --------------------------------------------------------------------------- space


def check_space(raw: Any, names: Sequence[str], where: str = "tune.space") -> dict[str, tuple]:
    """``{dotted key: distribution tuple}``: each key tuned by a method of the sweep, each distribution
    of a known kind and arity whose values the key accepts."""
    if not isinstance(raw, Mapping):
        raise TuningError(f"{where} must map config keys to distributions, e.g. "
                          f"algorithm.jtt_lambda_up: [choice, [4, 5, 6]]")
    tuned = {m: set(tuned_keys(m)) for m in names}
    out = {}
    for key, dist in raw.items():
        key = str(key)
        if schema_field(key) is None:
            raise TuningError(f"{where}: {key!r} is no config key")
        if not any(key in keys for keys in tuned.values()):
            tuners = [m for m in methods.names() if key in tuned_keys(m)]
            raise TuningError(f"{where}: no method of this sweep ({', '.join(names)}) tunes {key!r}"
                              + (f"; it is tuned by {', '.join(tuners)}" if tuners else ""))
        out[key] = _check_dist(key, dist, f"{where}: {key}")
    return out


def _check_dist(key: str, dist: Any, where: str) -> tuple:
    kinds = ", ".join(DIST_ARITY)
    if not isinstance(dist, (list, tuple)) or not dist or dist[0] not in DIST_ARITY:
        raise TuningError(f"{where}: {dist!r} is no distribution; write [kind, ...] with kind one of {kinds}")
    kind = dist[0]
    if len(dist) != DIST_ARITY[kind]:
        form = "[choice, [v1, v2, ...]]" if kind == "choice" else f"[{kind}, low, high]"
        raise TuningError(f"{where}: {kind} takes {DIST_ARITY[kind] - 1} value(s), written {form}; got {list(dist)!r}")
    field = schema_field(key)
    if kind == "choice":
        if not isinstance(dist[1], (list, tuple)) or not dist[1]:
            raise TuningError(f"{where}: choice takes a non-empty list of values, got {dist[1]!r}")
        return ("choice", tuple(_in_range(key, v, where) for v in dist[1]))
    lo, hi = dist[1], dist[2]
    numeric = (int, float) if kind != "int_uniform" else (int,)
    if any(isinstance(v, bool) or not isinstance(v, numeric) for v in (lo, hi)):
        what = "integers" if kind == "int_uniform" else "numbers"
        raise TuningError(f"{where}: {kind} takes two {what}, got {lo!r} and {hi!r}")
    if field.type is int and kind != "int_uniform":
        raise TuningError(f"{where}: {key} is an integer key and {kind} draws real numbers; "
                          f"use int_uniform or choice")
    if field.type not in (int, float) and field.type != (int, float):
        raise TuningError(f"{where}: {key} is not a number; use choice")
    if lo > hi:
        raise TuningError(f"{where}: low {lo!r} is above high {hi!r}")
    if kind == "log_uniform" and lo <= 0:
        raise TuningError(f"{where}: log_uniform needs a positive low, got {lo!r}")
    return (kind, _in_range(key, lo, where), _in_range(key, hi, where))


def _in_range(key: str, value: Any, where: str) -> Any:
    try:
        return check_value(key, value)
    except ConfigError as exc:
        raise TuningError(f"{where}: {exc}") from None


def describe_dist(dist: Sequence) -> str:
    """``choice {4, 5, 6}``, ``int_uniform [1, 8]``, ``log_uniform [0.01, 0.5]``."""
    if dist[0] == "choice":
        return "choice {" + ", ".join(str(v) for v in dist[1]) + "}"
    return f"{dist[0]} [{dist[1]}, {dist[2]}]"


# --------------------------------------------------------------------------- variants


def check_variants(raw: Any, names: Sequence[str], where: str = "tune.variants") -> list[dict]:
    """``[{name, method, set: {dotted key: value}}]``: unique names, a method of the sweep, known keys with
    values they accept (each value checked alone; the whole config is checked when the sweep expands)."""
    if not isinstance(raw, (list, tuple)):
        raise TuningError(f"{where} must be a list of {{name, method, set}} mappings")
    out, seen = [], set()
    for i, entry in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != set(VARIANT_KEYS):
            raise TuningError(f"{at} must be a mapping with exactly the keys {', '.join(VARIANT_KEYS)}, "
                              f"got {entry!r}")
        name, method, values = entry["name"], entry["method"], entry["set"]
        if not isinstance(name, str) or not name.strip():
            raise TuningError(f"{at}.name must be a non-empty string, got {name!r}")
        if name in seen:
            raise TuningError(f"{at}: the name {name!r} is given twice")
        seen.add(name)
        if method not in names:
            raise TuningError(f"{at} ({name!r}): method {method!r} is not tuned by this sweep "
                              f"(methods: {', '.join(names)})")
        if not isinstance(values, Mapping) or not values:
            raise TuningError(f"{at} ({name!r}).set must map config keys to values, e.g. {{data.sampler: uniform}}")
        checked = {}
        for key, value in values.items():
            key = str(key)
            if key in _NOT_VARIANT_KEYS:
                raise TuningError(f"{at} ({name!r}).set: {key} is not a variant's to set (the method and the "
                                  f"final seeds come from the tune block)")
            checked[key] = _in_range(key, value, f"{at} ({name!r}).set")
        out.append({"name": name, "method": method, "set": checked})
    return out
