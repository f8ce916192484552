"""The final-seed jobs of a tuning sweep (the ``tune`` block's ``final_seeds``): the selected trial of each method.

Kept apart from :mod:`sharpdro.experiments.tuning` (which the sweep file reader and the report
import) because it reads runs through the report and builds jobs through the sweep.
"""
from __future__ import annotations

from typing import Sequence

from sharpdro.experiments.tuning import select_rows


def final_jobs(spec, out, jobs: Sequence) -> list:
    """The final-seed jobs of every method whose trials (on one grid point) are all done: the selected
    trial's overrides with each of ``tune.final_seeds`` in place of the tuning seed."""
    from pathlib import Path

    from sharpdro.config import load_config
    from sharpdro.experiments.report import build_table, load_run
    from sharpdro.experiments.sweep_spec import Job, _base_path, job_hash, make_override

    tune = spec.tune or {}
    if not tune.get("final_seeds"):
        return []
    out = Path(out)
    by_hash = {j.hash: j for j in jobs}
    runs = [r for r in (load_run(out / j.hash, "worst", config=j.config, name=j.hash) for j in jobs) if r]
    if not runs:
        return []
    table = build_table(runs, "worst")
    groups: dict[tuple, list] = {}
    for row in table.rows:
        groups.setdefault((row.dataset, row.data, row.corruption, row.method_key), []).append(row)
    complete = [row for key, rows in groups.items() if all(r.status == "done" for row in rows for r in row.runs)
                for row in rows]
    selected, _ = select_rows(complete, "worst", tune["seeds"])
    base = _base_path(spec)
    finals = []
    for row in selected:
        job = by_hash[sorted(r.name for r in row.runs)[0]]
        kept = [o for o in job.overrides if not o.startswith("seed=")]
        for s in tune["final_seeds"]:
            overrides = tuple(kept) + (make_override("seed", s),)
            cfg = load_config(base, overrides)
            finals.append(Job(hash=job_hash(cfg), config=cfg, overrides=overrides,
                              varying=tuple(o for o in job.varying if not o.startswith("seed=")) + (f"seed={s}",)))
    return finals
