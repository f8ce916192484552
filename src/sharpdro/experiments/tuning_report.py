"""What a tuning sweep's ``tune`` block adds to ``sharpdro report --select-hparams``: a row per variant
after its method's row, the "Selected" text of each row (the values its method's selection chose,
not every key the sweep varies), and notes on the deviations (narrowed spaces, untuned variants,
methods without hyperparameters).

A variant's runs are found through ``sweep.json``: each variant job's entry says which selected
final job it reruns (``variant_of``, written by the sweep), so the report never has to rebuild a
config.  Rows are copied with :func:`dataclasses.replace`, not built, so that this module does not
import the report (which imports it).
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from sharpdro import methods
from sharpdro.config import schema_field
from sharpdro.experiments.tune_block import describe_dist, tuned_keys


def variant_only_runs(index: Mapping[str, dict]) -> set[str]:
    """Run names (job hashes) that exist only as a variant: not a trial's own job, so not a candidate
    of the selection (a variant that coincides with its selected trial is that trial's job)."""
    return {h for h, e in index.items() if e.get("variant_of") and h not in e["variant_of"].values()}


def without_runs(rows: Sequence, names: set[str]) -> list:
    """``rows`` without the runs named in ``names`` (rows left empty dropped)."""
    out = []
    for row in rows:
        kept = [r for r in row.runs if r.name not in names]
        if kept:
            out.append(row if len(kept) == len(row.runs) else replace(row, runs=kept))
    return out


def add_variant_rows(selected: Sequence, runs: Mapping[str, object], index: Mapping[str, dict],
                     variants: Sequence[Mapping], hparams_of: Callable) -> tuple[list, list[str]]:
    """The selected rows with, right after each, one row per variant of its method (in the tune block's
    order): the runs whose ``variant_of`` names one of the selected row's runs; and notes.

    ``runs``: every loaded run by name; ``hparams_of(run)``: the table's hyperparameter values of a run.
    """
    out, notes = [], []
    for row in selected:
        out.append(row)
        finals = {r.name for r in row.runs}
        for v in variants:
            if v["method"] != row.method_key:
                continue
            name = v["name"]
            label = f"{row.data} {row.type} {name}"
            hashes = sorted(h for h, e in index.items() if (e.get("variant_of") or {}).get(name) in finals)
            vruns = sorted((runs[h] for h in hashes if h in runs), key=lambda r: (r.seed, r.name))
            if not vruns:
                notes.append(f"{label}: no run yet (a variant runs once its method's trials are done and "
                             f"selected)")
                continue
            out.append(replace(row, hparams=hparams_of(vruns[0]), runs=vruns, trials=None, variant=name))
            if any(index[r.name]["variant_of"][name] == r.name for r in vruns):
                notes.append(f"{label}: the selected {methods.label(row.method_key)} trial already has this "
                             f"variant's settings, so the variant's jobs are the selected trial's final jobs "
                             f"(the same runs, reported in both rows)")
    return out, notes


# --------------------------------------------------------------------------- the Selected column


def shown_keys(method: str, sweep: Mapping, varying: Sequence[str] = ()) -> list[str]:
    """The keys a row of ``method`` shows: those it tunes in this sweep (``tuned_keys`` of a method of the
    tune block, less the keys the sweep's ``set`` or ``grid`` fixes), then the ``varying`` keys (those its
    candidate configurations differ in) that the method reads: an ``algorithm.*`` key only if it is its own."""
    tune = sweep.get("tune") or {}
    fixed = {str(o).split("=", 1)[0].strip() for o in sweep.get("set") or ()} | set(sweep.get("grid") or {})
    keys = [k for k in tuned_keys(method) if k not in fixed] if method in (tune.get("methods") or ()) else []
    own = methods.get(method).hparams
    return keys + [k for k in varying if k not in keys
                   and (not k.startswith("algorithm.") or k.split(".", 1)[1] in own)]


def label_selection(rows: Sequence, candidates: Sequence, hparams: Sequence[str], sweep: Mapping,
                    index: Mapping[str, dict]) -> None:
    """Set each selected or variant row's ``selected_text``: its :func:`shown_keys` with their values, a tuned
    key at the base config's value left out (``defaults`` when all are: trial 0), ``–`` with none; a variant's
    own settings after `` + ``.  Names are the last dotted part unless two shown keys share it.

    ``candidates``: the rows the selection chose from (their differing keys are shown too); ``index``: the
    sweep's jobs, whose overrides tell a key's base value (that of a job that does not override it)."""
    groups: dict[tuple, list] = {}
    for row in candidates:
        groups.setdefault(_group(row), []).append(row)
    variants = {v["name"]: dict(v["set"]) for v in (sweep.get("tune") or {}).get("variants") or ()}
    parts = []
    for row in rows:
        cands = groups.get(_group(row), [row])
        varying = [k for i, k in enumerate(hparams) if len({_key(r.hparams[i]) for r in cands}) > 1]
        tuned = shown_keys(row.method_key, sweep)
        own = variants.get(row.variant, {}) if row.variant is not None else {}
        keys = [k for k in shown_keys(row.method_key, sweep, varying) if k not in own]
        base = _base_values(index, tuned)
        cfg = row.runs[0].config
        chosen = [(k, _get(cfg, k)) for k in keys
                  if not (k in tuned and k in base and _key(_get(cfg, k)) == _key(base[k]))]
        parts.append((row, keys, chosen, list(own.items())))
    names = _short_names({k for _, _, chosen, own in parts for k, _ in chosen + own})
    for row, keys, chosen, own in parts:
        head = ", ".join(sorted(f"{names[k]}={_text(v)}" for k, v in chosen)) or ("defaults" if keys else "")
        if row.variant is None:
            row.selected_text = head or "–"
        else:
            tail = ", ".join(f"{names[k]}={_text(v)}" for k, v in own)
            row.selected_text = f"{head} + {tail}" if head else f"+ {tail}"


def _group(row) -> tuple:
    return (row.dataset, row.data, row.corruption, row.method_key)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _base_values(index: Mapping[str, dict], keys: Sequence[str]) -> dict:
    """``{key: value}`` in the sweep's base config: a key's value in a job that does not override it."""
    out = {}
    for k in keys:
        for _, entry in sorted(index.items()):
            named = {str(o).split("=", 1)[0].strip() for o in entry.get("overrides") or ()}
            if k not in named and isinstance(entry.get("config"), Mapping):
                out[k] = _get(entry["config"], k)
                break
    return out


def _short_names(keys) -> dict[str, str]:
    """Each dotted key's last part, or the key itself where two keys share their last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (k if last.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1]) for k in keys}


# --------------------------------------------------------------------------- notes


def tune_notes(tune: Mapping, selected: Sequence) -> list[str]:
    """Notes on the deviations the tune block declares, and on methods that have nothing to tune."""
    notes = []
    space = tune.get("space") or {}
    if space:
        parts = []
        for key, dist in sorted(space.items()):
            declared = getattr(schema_field(key), "search", None)
            parts.append(f"{key}: {describe_dist(dist)}"
                         + (f" (declared: {describe_dist(declared)})" if declared else ""))
        notes.append("Search space narrowed for this sweep: " + "; ".join(parts))
    variants = tune.get("variants") or []
    if variants:
        parts = [f"{v['name']} = {methods.label(v['method'])} with "
                 + ", ".join(f"{k}={_text(x)}" for k, x in v["set"].items()) for v in variants]
        notes.append("Variants (not tuned: each reruns its method's selected trial, with the selected "
                     "hyperparameters, on the final seeds with its settings on top; n says 'variant of the "
                     "selected trial'): " + "; ".join(parts))
    fixed = sorted({row.method_key for row in selected if row.trials == 1 and not tuned_keys(row.method_key)},
                   key=methods.rank)
    for m in fixed:
        notes.append(f"{methods.label(m)} has no method hyperparameters: its trials are all its defaults, one "
                     f"configuration run once")
    return notes


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)
