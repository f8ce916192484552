"""Tables of a sweep: per-severity test accuracy aggregated over seeds, as in the original README.

Each run's epoch is selected again from its per-epoch metrics with
:func:`sharpdro.metrics.select_epoch` (the run's summary holds the config's rule only),
and its accuracies at that epoch are summarised by :func:`sharpdro.metrics.summarize`:

- **Averaged accuracy**: the unweighted mean over severities 0..S of the per-severity
  test accuracies of a run (the README's column);
- **Worst severity**: the lowest per-severity test accuracy of a run;
- **Sev. s**: the test accuracy at severity s.

Runs are grouped by (dataset, corruption, method) plus every hyperparameter that differs
between the runs of the sweep (seed excepted; or the keys given by ``group_by``), and each
cell shows ``mean ± std`` over the group's finished runs, in percent, where std is the
**sample standard deviation (ddof=1)**; a cell of a single run shows its value alone.
Unfinished, failed and never-started runs are counted in the ``n`` column (e.g.
``2/3 seeds; 1 failed``) and failed runs are listed under the table.
The Data column names the severity constants when they are not those ``data.table: auto`` picks for
the images (:func:`constants_label`).  With ``--select-hparams`` the rows are one per method and one
"Selected" column replaces the per-key columns (:func:`sharpdro.experiments.tuning_report.label_selection`).

The averaged and worst-severity columns also get a 95% Student-t interval over seeds
(:mod:`sharpdro.experiments.stats`), and a second table compares each row with the reference
methods ERM, JTT and EIIL of its block seed by seed (:mod:`sharpdro.experiments.paired`).
:mod:`sharpdro.experiments.report_formats` renders the table as Markdown, CSV, LaTeX or JSON.

The table is deterministic: rows are sorted and nothing depends on paths, times or
file-system order.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sharpdro import methods
from sharpdro.config import CORRUPTIONS
from sharpdro.data.groups import group_label, group_names_of
from sharpdro.errors import SelectionError, SharpDROError
from sharpdro.experiments.paired import Paired, pair_rows
from sharpdro.experiments.stats import Interval, mean_std, t_interval
from sharpdro.metrics import SELECTION_RULES, select_epoch, summarize
from sharpdro.rundir import RunDir

DATASET_NAMES = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "imagenet30": "ImageNet30", "digits": "Digits",
                 "tinyimagenet": "TinyImageNet"}
CORRUPTION_NAMES = {"gaussian_noise": "Gaussian", "shot_noise": "Shot", "impulse_noise": "Impulse",
                    "speckle_noise": "Speckle", "jpeg_compression": "JPEG"}
# data.table -> the Data column's note when a run uses constants other than its images' own (constants_label)
TABLE_NAMES = {"cifar": "CIFAR-10-C constants", "imagenet": "ImageNet-C constants"}
# image side of each dataset when data.image_size is unset (digits: its loader's default size; ImageNet-30:
# ImageNet-sized, only "above 32 px" matters); folder and labelfile: FOLDER_SIDE (see constants_label)
NATIVE_SIDES = {"cifar10": 32, "cifar100": 32, "digits": 32, "tinyimagenet": 64, "imagenet30": 224}
FOLDER_SIDE = 32
# Row order: the README's datasets first; methods in their descriptions' order (sharpdro.methods).
_DATASET_ORDER = ("cifar10", "cifar100", "imagenet30", "tinyimagenet", "digits", "labelfile", "folder")

SELECTION_TEXT = {
    "worst": "model selected by worst-severity validation accuracy",
    "average": "model selected by averaged validation accuracy",
    "last": "model of the last evaluated epoch",
    "oracle_worst": "ORACLE selection by worst-severity TEST accuracy (an upper bound, not a valid model selection)",
    "oracle_average": "ORACLE selection by averaged TEST accuracy (an upper bound, not a valid model selection)",
}

STD_NOTE = ("mean ± std over seeds, in percent; std is the sample standard deviation (ddof=1); "
            "a cell of a single run shows its value alone")
DEFINITIONS_NOTE = ("Averaged accuracy: unweighted mean of the per-severity test accuracies over severities 0..S "
                    "at the selected epoch; Worst severity: each run's lowest per-severity test accuracy; "
                    "Sev. s: test accuracy at severity s")
GROUP_DEFINITIONS_NOTE = ("Averaged accuracy: unweighted mean of the per-group test accuracies at the selected epoch; "
                          "Worst group: each run's lowest per-group test accuracy; a named column: the test "
                          "accuracy of that group (groups from the data, data.corruption=none)")
CI_NOTE = ("95% CI: Student-t interval over seeds, mean ± t(0.975, n-1) · std / sqrt(n), in percent; "
           "– for a single run")
N_NOTE = "n: finished runs; an incomplete group shows finished/expected and what happened to the others"
SELECTED_NOTE = ("Selected: the selected configuration's keys that its method tunes in this sweep (or that its "
                 "candidates differ in), by the last part of their names, those at the base config's value left "
                 "out; defaults: all at the base config's (trial 0); –: the method has nothing to tune; a "
                 "variant's own settings follow +; the CSV and JSON outputs give every hyperparameter's value")

# Keys never used to split rows: the row identity itself, the seed, runtime-only keys, and the
# config's own selection rule (the report selects again).
_NOT_HYPERPARAMETERS = {
    "seed", "data.dataset", "data.corruption", "algorithm.name", "data.root", "data.name", "eval.selection",
    "train.threads", "train.progress", "train.device", "data.cache_dir", "data.download", "output.dir",
    "output.name", "output.loggers",
}


class ReportError(SharpDROError):
    """Nothing to report, or a report option that cannot work."""


# --------------------------------------------------------------------------- display names


def dataset_name(cfg: Mapping) -> str:
    """The Data column: the dataset, and the severity constants when they are not the dataset's own."""
    data = cfg.get("data", {})
    ds = data.get("dataset", "?")
    if ds == "folder":
        root = str(data.get("root") or "folder").rstrip("/\\")
        name = os.path.basename(root) or "folder"
    elif ds == "labelfile":
        name = str(data.get("name") or "labelfile")
    else:
        name = DATASET_NAMES.get(ds, str(ds))
    constants = constants_label(cfg)
    return f"{name} ({constants})" if constants else name


def constants_label(cfg: Mapping) -> str:
    """``'ImageNet-C constants'`` / ``'CIFAR-10-C constants'`` for a ``data.table`` that is not what ``auto``
    resolves to for the run's images; '' for ``auto`` and for the table ``auto`` would pick.

    The image side is ``data.image_size``, else the dataset's (:data:`NATIVE_SIDES`); a folder or label
    file kept at its own size is not read here and counts as 32 px, as the project's are (the CIFAR-10
    JPEG copy, the MindSpore release's files), so only ``imagenet`` constants are named there."""
    from sharpdro.data.corruptions import resolve_table

    data = cfg.get("data", {})
    table = data.get("table", "auto")
    if table not in TABLE_NAMES or data.get("corruption") == "none":  # no corruption: no constants
        return ""
    side = data.get("image_size") or NATIVE_SIDES.get(data.get("dataset"), FOLDER_SIDE)
    if resolve_table("auto", int(side)) == table:
        return ""
    return TABLE_NAMES[table]


def corruption_name(key: str) -> str:
    return CORRUPTION_NAMES.get(key, str(key))


def method_name(key: str) -> str:
    return methods.label(key)


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    name: str  # folder name (the job hash in a sweep)
    config: dict
    status: str  # done | failed | partial | missing
    records: list = field(default_factory=list)
    selected: dict | None = None  # the selected epoch's record
    accuracy: dict | None = None  # {severity (int): accuracy in [0, 1]} on the test set
    average: float | None = None
    worst: float | None = None
    error: str | None = None
    prestage: dict | None = None  # a finished run's summary "prestage" (what its method's pre-stage found)
    group_names: dict | None = None  # {group id: name} when the groups come from the data (data.json)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def train_accuracy(self) -> float | None:
        """The running training accuracy over the selected epoch (summary.json's ``selected_train_accuracy``):
        whether the run fits its mixture, the premise of the comparison."""
        value = ((self.selected or {}).get("train") or {}).get("accuracy")
        return None if value is None else float(value)


def _flatten(cfg: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        key = prefix + str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_run(d: Path, selection: str = "worst", config: dict | None = None, name: str | None = None) -> Run | None:
    """One run folder; ``config`` is used when the folder has no config file (a job that failed early)."""
    name = name or d.name
    run_dir = RunDir(d)
    cfg = run_dir.read_config()
    if cfg is None:
        cfg = config
    if cfg is None:
        return None
    if not d.is_dir():
        return Run(name, cfg, "missing")
    records = run_dir.epoch_records()
    if run_dir.is_finished():
        lost = run_dir.lost_lines_note(records)
        if lost is not None:  # selecting among the epochs left would report other numbers than the run's
            return Run(name, cfg, "failed", records, error=lost)
        run = Run(name, cfg, "done", records, group_names=group_names_of(run_dir.read_data()))
        try:
            rec = select_epoch(records, selection)
        except SelectionError as exc:  # an oracle rule on a run with test at its selected epoch only
            raise ReportError(f"{name}: {exc}") from None
        except ValueError as exc:
            return Run(name, cfg, "failed", records, error=f"finished but unusable {run_dir.metrics.name}: {exc}")
        run.selected, run.accuracy = rec, {}
        run.prestage = _read_prestage(run_dir)
        if "test" in rec:  # eval.test=selected: only at the epoch the run's own rule picked (see _check_tested)
            run.accuracy = {int(k): float(v) for k, v in rec["test"]["accuracy"].items()}
            s = summarize({str(k): v for k, v in run.accuracy.items()})
            run.average, run.worst = s["average"], s["worst"]
        return run
    if run_dir.error.exists():
        return Run(name, cfg, "failed", records, error=run_dir.last_error_line())
    return Run(name, cfg, "partial", records)


def _read_prestage(run_dir: RunDir) -> dict | None:
    try:
        pre = run_dir.read_summary().get("prestage")
    except (OSError, ValueError, AttributeError):
        return None
    return pre if isinstance(pre, dict) else None


def caveats(run: Run) -> str | None:
    """What a report must say about a finished run's numbers, from its method's pre-stage record
    (``Prestage.caveat``: EIIL's inference not converged, JTT's error set most of the data)."""
    if not run.prestage:
        return None
    spec = methods.find(str(run.config.get("algorithm", {}).get("name")))
    check = spec.prestage.caveat if spec is not None and spec.prestage is not None else None
    return check(run.prestage) if check is not None else None


def load_runs(path: str | os.PathLike, selection: str = "worst") -> list[Run]:
    """Every run of a sweep folder (its ``sweep.json`` jobs and run subfolders) or a single run folder."""
    if selection not in SELECTION_RULES:
        raise ReportError(f"unknown selection rule {selection!r}; allowed: {', '.join(SELECTION_RULES)}")
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path} is not a folder")
    if RunDir(path).config.exists():
        run = load_run(path, selection)
        return _check_tested([run] if run else [], selection)
    from sharpdro.experiments.sweep_jobs import read_index

    index = read_index(path)
    names = set(index)
    names.update(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and RunDir(p).looks_like_run())
    runs = []
    for name in sorted(names):
        run = load_run(path / name, selection, config=(index.get(name) or {}).get("config"), name=name)
        if run is not None:
            runs.append(run)
    return _check_tested(runs, selection)


def _check_tested(runs: list[Run], selection: str) -> list[Run]:
    """Refuse a ``selection`` that picks, in a finished run, an epoch without a test block: the run evaluated
    the test set only at the epoch its own ``eval.selection`` picked (``eval.test=selected``)."""
    for run in runs:
        if run.status == "done" and "test" not in run.selected:
            own = (run.config.get("eval") or {}).get("selection", "worst")
            raise ReportError(f"{run.name}: --selection {selection} picks epoch {int(run.selected['epoch']) + 1}, "
                              f"but the run evaluated the test set only at the epoch its own eval.selection={own} "
                              f"picked (eval.test=selected); report with --selection {own}")
    return runs


# --------------------------------------------------------------------------- aggregation


# Optional columns (``sharpdro report --calibration``): key -> (header, scale).
CALIBRATION_COLUMNS = {"ece": ("ECE (%)", 100.0), "nll": ("NLL", 1.0), "brier": ("Brier", 1.0)}


def _calibration_mean(run: Run, key: str) -> float | None:
    """The mean over severities of a calibration metric at the run's selected epoch (None if not recorded)."""
    block = (run.selected or {}).get("test", {}).get(key)
    if not block:
        return None
    return CALIBRATION_COLUMNS[key][1] * math.fsum(float(v) for v in block.values()) / len(block)


def mean_std_n(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    m, s = mean_std(values)
    return m, s, len(values)


@dataclass
class Row:
    dataset: str  # config key
    data: str  # display name
    corruption: str
    method_key: str
    hparams: tuple  # values of Table.hparams, in order
    runs: list = field(default_factory=list)
    # the values of Table.hparams that are no method setting (METHOD_SETTINGS): what two methods must share to be
    # paired, each at its own hyperparameters (ERM is paired with every SAM rho of a block)
    shared: tuple = ()
    trials: int | None = None  # --select-hparams: the number of configurations the row was chosen from
    variant: str | None = None  # a tune block variant's name: the selected trial of method_key rerun with its settings
    selected_text: str | None = None  # --select-hparams: what was selected (tuning_report.label_selection)

    @property
    def type(self) -> str:
        return corruption_name(self.corruption)

    @property
    def method(self) -> str:
        """The method's label, or the variant's name on a variant row."""
        return self.variant if self.variant is not None else method_name(self.method_key)

    @property
    def finished(self) -> list:
        return sorted((r for r in self.runs if r.status == "done"), key=lambda r: (r.seed, r.name))

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs if r.status == status)

    @property
    def severities(self) -> list[int]:
        sev = set()
        for r in self.finished:
            sev.update(r.accuracy)
        if not sev:
            for r in self.runs:
                sev.update(range(int(r.config.get("data", {}).get("max_severity", 5)) + 1))
        return sorted(sev)

    def values(self, what: str | int) -> list[float]:
        """The finished runs' 'average', 'worst', 'train_accuracy' or severity accuracy in percent, or a
        calibration column ('ece' in percent, 'nll', 'brier': each run's mean over severities at its selected
        epoch)."""
        if what in CALIBRATION_COLUMNS:
            return [v for v in (_calibration_mean(r, what) for r in self.finished) if v is not None]
        vals = (getattr(r, what) if isinstance(what, str) else r.accuracy.get(what) for r in self.finished)
        return [100.0 * v for v in vals if v is not None]

    def stat(self, what: str | int) -> tuple[float | None, float | None, int]:
        """(mean, std, n) of :meth:`values`."""
        return mean_std_n(self.values(what))

    def ci95(self, what: str) -> Interval:
        """The 95% t-interval over seeds of :meth:`values`."""
        return t_interval(self.values(what))

    def n_text(self) -> str:
        text = self._n_text()
        if self.variant is not None:
            return f"{text}; variant of the selected trial"
        if self.trials is None:
            return text
        return f"{text}; 1 configuration" if self.trials == 1 else f"{text}; best of {self.trials} trials"

    def _n_text(self) -> str:
        done, total = self.count("done"), len(self.runs)
        if done == total:
            return str(done)
        parts = [f"{done}/{total} seeds"]
        for status, label in (("failed", "failed"), ("partial", "unfinished"), ("missing", "not started")):
            c = self.count(status)
            if c:
                parts.append(f"{c} {label}")
        return "; ".join(parts)

    def seeds_duplicated(self) -> bool:
        seeds = [r.seed for r in self.runs]
        return len(seeds) != len(set(seeds))


@dataclass
class Table:
    selection: str
    hparams: list  # dotted config keys that split rows
    rows: list
    severities: list
    decimals: int = 2
    calibration: bool = False  # ECE / NLL / Brier columns after n (off by default)
    extra_notes: list = field(default_factory=list)
    select_hparams: str | None = None  # rows selected per method: paired regardless of hyperparameters
    group_names: dict | None = None  # {group id: name}: the runs' groups come from their data, not severities

    def paired(self) -> list[Paired]:
        """Each row against the reference methods of its block (:mod:`sharpdro.experiments.paired`)."""
        return pair_rows(self.rows, by_hparams=self.select_hparams is None)

    @property
    def oracle(self) -> bool:
        return self.selection.startswith("oracle")

    @property
    def title(self) -> str:
        if self.group_names:
            return f"Test accuracy (%) per group; {SELECTION_TEXT[self.selection].replace('severity', 'group')}"
        return f"Test accuracy (%) per severity; {SELECTION_TEXT[self.selection]}"

    def column_label(self, key) -> str:
        """The header of a per-group column: ``Sev. s``, or the group's name."""
        return group_label(key, self.group_names) if self.group_names else f"Sev. {key}"

    def notes(self) -> list[str]:
        definitions = GROUP_DEFINITIONS_NOTE if self.group_names else DEFINITIONS_NOTE
        notes = [definitions + ".", STD_NOTE + ".", CI_NOTE + ".", N_NOTE + "."] + list(self.extra_notes)
        for row in self.rows:
            if row.seeds_duplicated():
                notes.append(f"{_row_label(self, row)}: several runs share a seed; n counts runs.")
        for row in self.rows:
            said = [f"seed {r.seed}: {c}" for r in row.finished if (c := caveats(r))]
            if said:
                notes.append(f"Caveat: {_row_label(self, row)}: {'; '.join(said)}")
        for row in self.rows:
            for r in sorted(row.runs, key=lambda r: (r.seed, r.name)):
                if r.status == "failed":
                    notes.append(f"Failed: {r.name} ({_row_label(self, row)}, seed {r.seed}): {r.error}")
        return notes


def _row_label(table: Table, row: Row) -> str:
    if table.select_hparams:
        return f"{row.data} {row.type} {row.method} [{row.selected_text}]"
    hp = ", ".join(f"{k}={_fmt_value(v)}" for k, v in zip(table.hparams, row.hparams))
    return f"{row.data} {row.type} {row.method}" + (f" [{hp}]" if hp else "")


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


NOT_READ = "–"  # a swept algorithm.* key's cell on a row whose method does not read it


def is_method_setting(key: str) -> bool:
    """A method's own setting: its hyperparameters, and the sampler (the authors' sampling, which methods tune)."""
    return key.startswith("algorithm.") or key == "data.sampler"


def _value_sort_key(v: Any):
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, bool):
        return (1, float(v), "")
    if isinstance(v, (int, float)):
        return (2, float(v), "")
    if isinstance(v, str):
        return (3, 0.0, v)
    return (4, 0.0, json.dumps(v, sort_keys=True))


def _order(seq: Sequence[str], key: str) -> int:
    return seq.index(key) if key in seq else len(seq)


def detect_hyperparameters(runs: Iterable[Run]) -> list[str]:
    """Config keys (other than seed and the row identity) whose values differ between runs."""
    seen: dict[str, set] = {}
    for r in runs:
        for k, v in _flatten(r.config).items():
            seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    keys = [k for k, vals in seen.items() if len(vals) > 1 and k not in _NOT_HYPERPARAMETERS]
    # keys missing from some configs also differ
    all_keys = set(seen)
    for r in runs:
        missing = all_keys - set(_flatten(r.config))
        keys.extend(k for k in missing if k not in keys and k not in _NOT_HYPERPARAMETERS)
    return sorted(set(keys))


def build_table(runs: Sequence[Run], selection: str = "worst", group_by: Sequence[str] | None = None,
                decimals: int = 2, calibration: bool = False, blank_unread: bool = True) -> Table:
    """Group runs into rows. ``group_by``: None detects swept keys; a list names them ([] for none).
    ``blank_unread``: with detected keys, an ``algorithm.*`` key the row's method does not read is NOT_READ
    (``--select-hparams`` keeps every value: its CSV and JSON list each configuration whole)."""
    if not runs:
        raise ReportError("no runs found: give a sweep folder (with sweep.json or run subfolders) or a run folder")
    hparams = detect_hyperparameters(runs) if group_by is None else list(group_by)
    groups: dict[tuple, Row] = {}
    for r in runs:
        flat = _flatten(r.config)
        missing = [k for k in hparams if k not in flat and group_by is not None]
        if missing:
            raise ReportError(f"--group-by: unknown config key(s) {', '.join(missing)}")
        hp = tuple(flat.get(k) for k in hparams)
        if group_by is None and blank_unread:  # a detected method key its method does not read says nothing
            spec = methods.find(str(r.config.get("algorithm", {}).get("name")))
            own = {f"algorithm.{k}" for k in spec.hparams} if spec is not None else set()
            hp = tuple(NOT_READ if k.startswith("algorithm.") and k not in own else v for k, v in zip(hparams, hp))
        ds = r.config.get("data", {}).get("dataset", "?")
        key = (ds, dataset_name(r.config), r.config.get("data", {}).get("corruption", "?"),
               r.config.get("algorithm", {}).get("name", "?"), json.dumps(hp, sort_keys=True, default=str))
        if key not in groups:
            shared = tuple(v for k, v in zip(hparams, hp) if not is_method_setting(k))
            groups[key] = Row(ds, key[1], key[2], key[3], hp, shared=shared)
        groups[key].runs.append(r)
    rows = sorted(groups.values(), key=lambda row: (
        _order(_DATASET_ORDER, row.dataset), row.data, _order(CORRUPTIONS, row.corruption), row.corruption,
        methods.rank(row.method_key), row.method_key, tuple(_value_sort_key(v) for v in row.hparams)))
    severities = sorted({s for row in rows for s in row.severities})
    named = [r.group_names for r in runs if r.group_names]
    group_names = {k: v for names in named for k, v in names.items()} if named else None
    return Table(selection, hparams, rows, severities, decimals, calibration, group_names=group_names)


def collect(path: str | os.PathLike, selection: str = "worst", group_by: Sequence[str] | None = None,
            decimals: int = 2, calibration: bool = False, select_hparams: str | None = None,
            tuning_seeds: Sequence[int] | None = None) -> Table:
    """Load the runs under ``path`` and build the table.

    ``select_hparams`` (``worst`` | ``average``): one row per (dataset, corruption, method), the
    configuration of the best mean validation criterion on the ``tuning_seeds`` (default: the
    sweep's ``tune.seeds``, else every seed), see :func:`sharpdro.experiments.tuning.select_rows`.
    The tune block's variants (``tune.variants``) are rows of their own right after their method's,
    and are no candidates of the selection (:mod:`sharpdro.experiments.tuning_report`).
    """
    runs = load_runs(path, selection)
    table = build_table(runs, selection, group_by, decimals, calibration, blank_unread=select_hparams is None)
    if select_hparams is None:
        return table
    from sharpdro.experiments import tuning_report as tr
    from sharpdro.experiments.sweep_jobs import read_index
    from sharpdro.experiments.tuning import select_rows

    sweep = _last_sweep(path)
    tune = dict(sweep.get("tune") or {})
    if tuning_seeds is None and tune.get("seeds") and tune.get("final_seeds"):
        tuning_seeds = list(tune["seeds"])
    index = read_index(path)
    candidates = tr.without_runs(table.rows, tr.variant_only_runs(index))
    rows, notes = select_rows(candidates, select_hparams, tuning_seeds)
    rows, variant_notes = tr.add_variant_rows(
        rows, {r.name: r for r in runs}, index, tune.get("variants") or [],
        lambda run: tuple(_flatten(run.config).get(k) for k in table.hparams))
    seeds = "every seed" if tuning_seeds is None else f"seeds {', '.join(map(str, sorted(tuning_seeds)))}"
    notes.insert(0, f"Hyperparameters selected per method by the best mean {select_hparams}-severity validation "
                    f"accuracy over the tuning runs ({seeds}); n counts the reported runs, 'best of k trials' the "
                    f"configurations compared")
    tr.label_selection(rows, candidates, table.hparams, sweep, index)
    notes[1:1] = [SELECTED_NOTE] + tr.tune_notes(tune, rows)
    table.rows, table.extra_notes, table.select_hparams = rows, notes + variant_notes, select_hparams
    return table


def _last_sweep(path) -> dict:
    """The last ``sharpdro sweep`` on ``path`` as ``sweep.json`` records it (base, set, grid, tune; empty when
    there is none)."""
    from sharpdro.experiments.sweep_jobs import INDEX

    index = Path(path) / INDEX
    if not index.is_file():
        return {}
    try:
        return dict(json.loads(index.read_text(encoding="utf-8")).get("last_sweep") or {})
    except (ValueError, AttributeError, TypeError):
        return {}
