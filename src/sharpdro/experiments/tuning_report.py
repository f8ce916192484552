"""What a tuning sweep's ``tune`` block adds to ``sharpdro report --select-hparams``: a row per variant
after its method's row, and notes on the deviations (narrowed spaces, untuned variants, methods
without hyperparameters).

A variant's runs are found through ``sweep.json``: each variant job's entry says which selected
final job it reruns (``variant_of``, written by the sweep), so the report never has to rebuild a
config.  Rows are copied with :func:`dataclasses.replace`, not built, so that this module does not
import the report (which imports it).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping, Sequence

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
