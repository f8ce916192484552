"""The final-seed jobs of a tuning sweep (the ``tune`` block's ``final_seeds``): the selected trial of each
method, and its ``variants`` (the selected trial with the variant's settings on top).

Kept apart from :mod:`sharpdro.experiments.tuning` (which the sweep file reader and the report
import) because it reads runs through the report and builds jobs through the sweep.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from sharpdro import methods
from sharpdro.experiments.tuning import select_rows


def final_jobs(spec, out, jobs: Sequence) -> list:
    """The final-seed jobs of every method whose trials (on one grid point) are all done: the selected
    trial's overrides with each of ``tune.final_seeds`` in place of the tuning seed, then each of the
    method's variants on the same seeds (a job shared by several is listed once)."""
    return final_plan(spec, out, jobs)[0]


def final_plan(spec, out, jobs: Sequence) -> tuple[list, list[str]]:
    """(:func:`final_jobs`, one ``sharpdro sweep --dry-run`` line per grid point and method whose final
    jobs wait for its trials)."""
    from pathlib import Path

    from sharpdro.experiments.report import build_table, corruption_name, load_run
    from sharpdro.experiments.sweep_spec import make_override

    tune = spec.tune or {}
    if not tune.get("final_seeds"):
        return [], []
    out = Path(out)
    by_hash = {j.hash: j for j in jobs}
    runs = [r for r in (load_run(out / j.hash, "worst", config=j.config, name=j.hash) for j in jobs) if r]
    if not runs:
        return [], []
    table = build_table(runs, "worst")
    groups: dict[tuple, list] = {}
    for row in table.rows:
        groups.setdefault((row.dataset, row.data, row.corruption, row.method_key), []).append(row)
    variants = {m: [v for v in tune.get("variants") or () if v["method"] == m] for m in tune["methods"]}
    complete, pending, waiting = [], [], 0
    for (_, data, corruption, method), rows in groups.items():
        trial_runs = [r for row in rows for r in row.runs]
        done = sum(r.status == "done" for r in trial_runs)
        if done == len(trial_runs):
            complete += rows
            continue
        names = variants.get(method) or []
        what = "the selected trial" + (f" and its variant{'s' if len(names) > 1 else ''} "
                                       + ", ".join(repr(v["name"]) for v in names) if names else "")
        n = len(tune["final_seeds"]) * (1 + len(names))
        waiting += n
        pending.append(f"{'-' * 10}  {'pending':<9}  after selection ({done}/{len(trial_runs)} trial runs done): "
                       f"{data} {corruption_name(corruption)} {methods.label(method)}: {what} on seeds "
                       f"{', '.join(map(str, tune['final_seeds']))} (up to {n} jobs)")
    if pending:
        pending.append(f"up to {waiting} more jobs after selection (final seeds and variants)")
    selected, _ = select_rows(complete, "worst", tune["seeds"])
    finals: dict[str, object] = {}

    def add(job, variant_of=()):
        old = finals.get(job.hash, job)
        finals[job.hash] = replace(old, variant_of=old.variant_of + variant_of)

    for row in selected:
        job = by_hash[sorted(r.name for r in row.runs)[0]]
        kept = tuple(o for o in job.overrides if not o.startswith("seed="))
        shown = tuple(o for o in job.varying if not o.startswith("seed="))
        for s in tune["final_seeds"]:
            final = _job(spec, kept, shown, s)
            add(final)
            for v in variants.get(row.method_key) or ():
                extra = tuple(make_override(k, x) for k, x in v["set"].items())
                add(_job(spec, kept + extra, shown + extra, s), ((v["name"], final.hash),))
    return list(finals.values()), pending


def _job(spec, overrides: tuple, shown: tuple, seed: int):
    from sharpdro.config import load_config
    from sharpdro.experiments.sweep_spec import (Job, _base_path, identity_axes, job_hash, make_override,
                                                 resolve_precision)

    overrides = overrides + (make_override("seed", seed),)
    cfg = resolve_precision(load_config(_base_path(spec), overrides))
    return Job(hash=job_hash(cfg, identity_axes(spec)), config=cfg, overrides=overrides, varying=shown + (f"seed={seed}",))
