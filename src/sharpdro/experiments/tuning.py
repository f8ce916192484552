"""Equal tuning for every method: seeded random trials drawn from each key's search space, and their selection.

A sweep file's ``tune`` block (format: :mod:`sharpdro.experiments.sweep`)::

    tune:
      trials: 8              # configurations per method (the same budget for every method)
      seed: 0                # the hyperparameter seed of the draws
      methods: [erm, sam, groupdro, jtt, eiil, sharpdro]
      seeds: [0]             # tuning seeds: the run seeds of the trials
      final_seeds: [1, 2, 3] # optional: once a method's trials are done, its best trial runs on these
      space:                 # optional: this sweep's own distribution of a key (reported in the notes)
        algorithm.jtt_lambda_up: [choice, [4, 5, 6]]
      variants:              # optional: the selected trial again on the final seeds, with these settings
        - {name: "SharpDRO, released reading", method: sharpdro,
           set: {data.sampler: uniform, algorithm.q_absent: zero}}

The block is checked by :mod:`sharpdro.experiments.tune_block` (``space`` and ``variants`` there).

Trial 0 of every method is its defaults; trial t >= 1 draws every key the method tunes
(:func:`tuned_keys`: the method's ``MethodSpec.tune``, else its hyperparameters with a
``search``) from that field's ``search`` distribution, with a generator seeded by
hash(seed, method, trial, key), as DomainBed does: adding a key or a method does not
reshuffle the others' draws, and narrowing one key's ``space`` moves that key's draws only.
A key fixed by the sweep's ``set`` or ``grid`` is not drawn.

Selection (:func:`select_rows`, ``sharpdro report --select-hparams worst``): per
(dataset, corruption, method), the configuration whose runs on the tuning seeds have the
best mean validation criterion (worst-severity accuracy, or averaged) at their selected
epochs; its test numbers are reported from the runs on the other (final) seeds when there
are some, else from the tuning runs (said in the table's notes).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

from sharpdro import methods
from sharpdro.config import ConfigError, schema_field
from sharpdro.experiments.tune_block import TUNE_KEYS, TuningError, check_tune, tuned_keys  # noqa: F401
from sharpdro.methods.hparams import search_space

def _seed(*parts) -> int:
    text = json.dumps([str(p) for p in parts])
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def draw(dist: tuple, rng: np.random.Generator) -> Any:
    """One value from a ``search`` distribution (4 significant digits for the continuous ones)."""
    kind = dist[0]
    if kind == "log_uniform":
        lo, hi = float(dist[1]), float(dist[2])
        return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}")
    if kind == "uniform":
        return float(f"{rng.uniform(float(dist[1]), float(dist[2])):.4g}")
    if kind == "int_uniform":
        return int(rng.integers(int(dist[1]), int(dist[2]) + 1))
    if kind == "choice":
        values = list(dist[1])
        return values[int(rng.integers(len(values)))]
    raise TuningError(f"unknown search distribution {kind!r}")


def trial_values(method: str, trial: int, seed: int, fixed: Mapping[str, Any] = (),
                 algorithm: Mapping[str, Any] | None = None, space: Mapping[str, tuple] | None = None
                 ) -> dict[str, Any]:
    """The drawn ``{dotted key: value}`` of one trial (trial 0: none, the defaults).

    ``fixed``: dotted keys the sweep sets (not drawn); ``algorithm``: the base config's
    ``algorithm`` section (a key's search space may depend on it: ASAM's rho); ``space``: the
    tune block's distributions that replace the declared ones.
    """
    if trial == 0:
        return {}
    out = {}
    for dotted in tuned_keys(method):
        if dotted in fixed:
            continue
        field = schema_field(dotted)
        if field is None:
            raise ConfigError(f"method {method!r} tunes {dotted!r}, which is no config key")
        section, _, key = dotted.rpartition(".")
        if space and dotted in space:
            dist = space[dotted]
        elif section == "algorithm":
            dist = search_space(key, field, dict(algorithm or {}))
        else:
            dist = field.search
        if dist is None:
            continue
        out[dotted] = draw(dist, np.random.default_rng(_seed(seed, method, trial, dotted)))
    return out


def trial_points(tune: Mapping, fixed: Sequence[str] = (), algorithm: Mapping | None = None) -> list[list[tuple]]:
    """Every trial job's (key, value) pairs: method x trial x tuning seed (trial 0 first)."""
    points = []
    for method in tune["methods"]:
        for t in range(tune["trials"]):
            values = trial_values(method, t, tune["seed"], set(fixed), algorithm, tune.get("space"))
            for s in tune["seeds"]:
                points.append([("algorithm.name", method), *values.items(), ("seed", s)])
    return points


# --------------------------------------------------------------------------- selection


def _criterion(run, criterion: str) -> float | None:
    if run.status != "done" or run.selected is None or "val" not in run.selected:
        return None
    return float(run.selected["val"][criterion])


def select_rows(rows: Sequence, criterion: str = "worst", tuning_seeds: Sequence[int] | None = None
                ) -> tuple[list, list[str]]:
    """Per (dataset, data, corruption, method), the row of the best mean validation ``criterion``.

    Returns the selected rows (each with ``trials``, the number of configurations it was
    chosen from: those with a run on a tuning seed, so a method without hyperparameters,
    whose trials are one job, counts 1; and its ``runs`` narrowed to the final seeds when
    ``tuning_seeds`` is given and the selected configuration has runs on other seeds) and
    notes for the table.
    """
    if criterion not in ("worst", "average"):
        raise TuningError(f"--select-hparams must be worst or average, got {criterion!r}")
    tuning = None if tuning_seeds is None else {int(s) for s in tuning_seeds}
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row.dataset, row.data, row.corruption, row.method_key), []).append(row)
    out, notes = [], []
    for key, cands in groups.items():
        scored = []
        for row in cands:
            vals = [_criterion(r, criterion) for r in row.runs if tuning is None or r.seed in tuning]
            vals = [v for v in vals if v is not None]
            if vals:
                scored.append((-sum(vals) / len(vals), len(scored), row))
        if not scored:
            notes.append(f"{key[1]} {key[2]} {methods.label(key[3])}: no finished tuning run; not reported")
            continue
        scored.sort(key=lambda x: (x[0], x[1]))
        best = scored[0][2]
        best.trials = sum(1 for row in cands if any(tuning is None or r.seed in tuning for r in row.runs))
        if tuning is not None:
            final = [r for r in best.runs if r.seed not in tuning]
            if final:
                best.runs = final
            else:
                notes.append(f"{key[1]} {key[2]} {methods.label(key[3])}: the selected configuration has no run "
                             f"on a final seed yet; its numbers are from the tuning seeds")
        out.append(best)
    return out, notes

