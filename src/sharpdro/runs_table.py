"""``sharpdro.load_runs(DIR)``: every run under a folder as one long pandas DataFrame.

One row per run x split x severity x epoch, with these columns:

=================  ==========================================================================
``run``            the run folder's name (a sweep's job hash)
``run_dir``        its path
``status``         ``done`` (finished), ``failed`` (``error.txt``), ``partial``, or ``damaged`` (finished,
                   but its ``metrics.jsonl`` lacks epochs: a warning names them)
``split``          ``train``, ``val``, ``test`` or ``extra_test``
``severity``       0..S (int)
``epoch``          0-based epoch (int)
``selected``       True on the epoch the run's ``eval.selection`` rule picks (with ``eval.test=selected``
                   the only epoch with test / extra_test rows)
``accuracy``       accuracy on that split and severity (train: the epoch's running accuracy)
``loss``           mean cross-entropy (train: the first-pass training loss)
``ece``            expected calibration error, 15 bins (evaluation splits; NaN for train or old runs)
``nll``            mean negative log-likelihood (evaluation splits)
``brier``          multi-class Brier score (evaluation splits)
``count``          training images of that severity (train only)
=================  ==========================================================================

followed by every config key as a column, dotted (``data.corruption``, ``algorithm.name``,
``train.lr``, ``seed`` ...; lists become tuples).  pandas is an optional extra
(``pip install 'sharpdro[pandas]'``).

Example: the mean over seeds of the selected test accuracy per method and severity::

    df = sharpdro.load_runs("sweeps/cifar10")
    sel = df[(df.split == "test") & df.selected]
    sel.groupby(["algorithm.name", "severity"]).accuracy.mean().unstack()
"""
from __future__ import annotations

import os
from typing import Mapping

from sharpdro.errors import SharpDROError
from sharpdro.rundir import RunDir

COLUMNS = ("run", "run_dir", "status", "split", "severity", "epoch", "selected", "accuracy", "loss", "ece", "nll",
           "brier", "count")
SPLITS = ("train", "val", "test", "extra_test")
_NAN = float("nan")


def _flat_config(cfg: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out.update(_flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return _NAN


def run_rows(path) -> list[dict]:
    """The rows of one run directory (plain dicts, no pandas)."""
    from sharpdro.config import validate_or_raw
    from sharpdro.metrics import select_epoch

    run = RunDir(path)
    cfg = validate_or_raw(run.read_config() or {})
    flat = _flat_config(cfg)
    records = run.epoch_records()
    status = "done" if run.is_finished() else ("failed" if run.error.exists() else "partial")
    lost = run.lost_lines_note(records)
    if lost is not None:
        import warnings

        warnings.warn(lost, stacklevel=2)
        status = "damaged"
    try:
        selected = int(select_epoch(records, cfg.get("eval", {}).get("selection", "worst"))["epoch"])
    except (ValueError, KeyError):
        selected = None
    rows = []
    base = {"run": run.path.name, "run_dir": str(run.path), "status": status}
    for rec in records:
        epoch = int(rec["epoch"])
        head = {**base, "epoch": epoch, "selected": epoch == selected}
        tr = rec.get("train") or {}
        for s in sorted(tr.get("group_acc") or {}, key=int):
            rows.append({**head, "split": "train", "severity": int(s), "accuracy": _f(tr["group_acc"][s]),
                         "loss": _f((tr.get("group_loss") or {}).get(s)), "ece": _NAN, "nll": _NAN, "brier": _NAN,
                         "count": _f((tr.get("group_count") or {}).get(s)), **flat})
        for split in SPLITS[1:]:
            block = rec.get(split)
            if not isinstance(block, Mapping):
                continue
            for s in sorted(block.get("accuracy") or {}, key=int):
                rows.append({**head, "split": split, "severity": int(s), "accuracy": _f(block["accuracy"][s]),
                             **{k: _f((block.get(k) or {}).get(s)) for k in ("loss", "ece", "nll", "brier")},
                             "count": _NAN, **flat})
    return rows


def find_runs(path) -> list:
    """The run directories (those with a metrics file) at or under ``path``, sorted (nested sweeps included)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_dir():
        raise SharpDROError(f"{p} is not a folder")
    found = []
    for dirpath, dirnames, _ in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if RunDir(dirpath).metrics.exists():
            found.append(Path(dirpath))
            dirnames[:] = []
    return sorted(found)


def load_runs(path: str | os.PathLike):
    """Every run at or under ``path`` as a long DataFrame (see the module doc for the columns)."""
    try:
        import pandas as pd
    except ImportError:
        raise SharpDROError("sharpdro.load_runs needs pandas: pip install 'sharpdro[pandas]' (or pip install pandas)") \
            from None
    rows = [row for d in find_runs(path) for row in run_rows(d)]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    config_cols = sorted(c for c in df.columns if c not in COLUMNS)
    df = df[list(COLUMNS) + config_cols]
    return df.astype({"severity": "int64", "epoch": "int64", "selected": "bool"})
