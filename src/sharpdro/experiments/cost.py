"""What a sweep cost: the compute of its finished runs per method, the tuning trials apart from the runs
its table reports.

A run's cost is the wall-clock time it recorded (``summary.json`` ``wall_seconds``: every session of a
resumed run, pre-stages included) times its ``train.threads`` and its number of data-parallel processes
(``processes``): CPU-hours on a machine where each run had its own threads.  A run without a fixed thread count (``threads: null``) or on an accelerator
counts its wall-clock hours once, and the table says so.  The runs of a sweep usually share a machine,
so the figures include the slowdown from sharing it: they are what the sweep cost there, not a
benchmark of each method (``sharpdro bench`` is that).

Roles, from the sweep's ``tune`` block (``sweep.json``): a run on a tuning seed is *tuning* when the
block has final seeds (it only served the selection); every other finished run is *reported* (final
seeds of the selected configurations and the variants).  Without a tune block every run is reported.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sharpdro import methods
from sharpdro.experiments.report import (_DATASET_ORDER, CORRUPTIONS, ReportError, _last_sweep, _order,
                                         corruption_name, dataset_name, load_runs)
from sharpdro.rundir import RunDir

ROLES = ("tuning", "reported")
FORMATS = ("md", "csv", "json")
TITLE = "Cost of the sweep's finished runs, in CPU-hours (wall-clock × train.threads)"
NOTES = (
    "A run's cost is the wall-clock time it recorded (every session of a resumed run, pre-stages included) "
    "times its train.threads and data-parallel processes; the runs shared the machine, so this includes the "
    "slowdown from sharing it",
    "Tuning: runs on the tune block's tuning seeds, which only served the selection; reported: the runs "
    "behind the table (final seeds of the selected configurations, and the variants)",
    "min/run: mean minutes (wall-clock) per finished run of the row, both roles",
)


@dataclass
class CostRow:
    dataset: str
    data: str
    corruption: str
    method_key: str
    label: str  # the method's label, or the variant's name
    variant: str | None = None
    n: dict = field(default_factory=lambda: {r: 0 for r in ROLES})
    cpu_hours: dict = field(default_factory=lambda: {r: 0.0 for r in ROLES})
    wall_seconds: list = field(default_factory=list)
    unfinished: int = 0
    wall_only: int = 0  # runs counted at wall-clock (threads not fixed, or an accelerator)
    pending: list = field(default_factory=list)  # per listed job not finished (partial or not started): its threads
    listed_final: int = 0  # listed jobs that are not tuning runs (final seeds, variants), finished or not
    threads: int = 1  # the row's train.threads (its last run's), for the jobs a tune block will still add
    machines: dict = field(default_factory=dict)  # machine kind -> finished runs (machine_kind)

    @property
    def type(self) -> str:
        return corruption_name(self.corruption)

    @property
    def minutes_per_run(self) -> float | None:
        return math.fsum(self.wall_seconds) / len(self.wall_seconds) / 60.0 if self.wall_seconds else None


def machine_kind(summary: dict) -> str:
    """What a run's minutes depend on, from its summary's ``hardware``: the GPU's name, else the CPU's vector
    extensions (PyTorch's kernel capability, e.g. ``CPU AVX512``)."""
    hw = summary.get("hardware") or {}
    if hw.get("cuda_device"):
        return str(hw["cuda_device"])
    isa = (hw.get("cpu_isa") or {}).get("capability")
    if isa:
        return f"CPU {isa}"
    return f"{hw['device']} (kind not recorded)" if hw.get("device") else "not recorded"


def _variant_names(index: dict) -> dict[str, str]:
    """run name -> variant name, for the runs that exist only as a variant (tuning_report.variant_only_runs)."""
    from sharpdro.experiments.tuning_report import variant_only_runs

    return {h: min(index[h]["variant_of"]) for h in variant_only_runs(index)}


def _threads(cfg: dict) -> int | None:
    train = cfg.get("train") or {}
    if str(train.get("device", "auto")).startswith("cuda"):
        return None
    t = train.get("threads")
    return int(t) if t else None


def collect_cost(path: str | Path) -> tuple[list[CostRow], dict]:
    """The rows (one per data, corruption and method or variant, in the report's order) and the sweep's
    tune block."""
    from sharpdro.experiments.sweep_jobs import read_index

    path = Path(path)
    runs = load_runs(path)
    if not runs:
        raise ReportError(f"no runs found under {path}: give a sweep folder (with sweep.json or run subfolders)")
    tune = dict(_last_sweep(path).get("tune") or {})
    tuning_seeds = set(tune.get("seeds") or ()) if tune.get("final_seeds") else set()
    variants = _variant_names(read_index(path))
    rank = {v.get("name"): i for i, v in enumerate(tune.get("variants") or ())}
    rows: dict[tuple, CostRow] = {}
    for run in runs:
        data = run.config.get("data") or {}
        method = (run.config.get("algorithm") or {}).get("name", "?")
        variant = variants.get(run.name)
        key = (data.get("dataset", "?"), dataset_name(run.config), data.get("corruption", "?"), method, variant)
        row = rows.setdefault(key, CostRow(key[0], key[1], key[2], method,
                                           variant if variant is not None else methods.label(method), variant))
        threads = _threads(run.config)
        row.threads = threads or 1
        role = "tuning" if run.seed in tuning_seeds and variant is None else "reported"
        row.listed_final += role == "reported"
        if run.status != "done":
            row.unfinished += run.status == "partial"
            row.pending.append(threads or 1)
            continue
        summary = RunDir(path / run.name).read_summary()
        seconds = float(summary.get("wall_seconds") or 0.0)
        processes = int(summary.get("processes") or 1)  # a data-parallel run: every process had its threads
        row.wall_only += threads is None
        row.n[role] += 1
        row.cpu_hours[role] += seconds * (threads or 1) * processes / 3600.0
        row.wall_seconds.append(seconds)
        kind = machine_kind(summary)
        row.machines[kind] = row.machines.get(kind, 0) + 1
    ordered = sorted(rows.values(), key=lambda r: (
        _order(_DATASET_ORDER, r.dataset), r.data, _order(CORRUPTIONS, r.corruption), r.corruption,
        methods.rank(r.method_key), r.method_key, r.variant is not None, rank.get(r.variant, len(rank)),
        str(r.variant)))
    return ordered, tune


def totals(rows: Sequence[CostRow]) -> dict:
    """{role: {"n", "cpu_hours"}} over ``rows``, and "all"."""
    out = {role: {"n": sum(r.n[role] for r in rows), "cpu_hours": math.fsum(r.cpu_hours[role] for r in rows)}
           for role in ROLES}
    out["all"] = {"n": sum(v["n"] for v in out.values()), "cpu_hours": math.fsum(v["cpu_hours"] for v in out.values())}
    return out


def to_go(rows: Sequence[CostRow], tune: dict) -> dict:
    """The compute still ahead, estimated: the listed jobs not finished (a partial run counted whole), and the
    final jobs a tune block adds once a method's trials are done (its final seeds, for the method and each
    of its variants), each at its row's mean minutes per finished run, else its method's (any data or
    corruption); jobs with neither are counted apart."""
    seconds: dict[str, list] = {}
    for r in rows:
        seconds.setdefault(r.method_key, []).extend(r.wall_seconds)
    finals = len(tune.get("final_seeds") or ())
    n_variants = {m: sum(v.get("method") == m for v in tune.get("variants") or ()) for m in tune.get("methods") or ()}
    jobs, waiting, unestimated, hours = 0, 0, 0, 0.0
    for r in rows:
        of_method = seconds.get(r.method_key) or []
        minutes = r.minutes_per_run or (math.fsum(of_method) / len(of_method) / 60.0 if of_method else None)
        ahead = list(r.pending)
        if finals and r.variant is None and r.method_key in n_variants and not r.listed_final:
            extra = finals * (1 + n_variants[r.method_key])  # not listed before the method's selection
            waiting += extra
            ahead += [r.threads] * extra
        jobs += len(ahead)
        if minutes is None:
            unestimated += len(ahead)
        else:
            hours += math.fsum(minutes * t / 60.0 for t in ahead)
    return {"jobs": jobs, "after_selection": waiting, "unestimated": unestimated, "cpu_hours": hours}


def _to_go_line(rows: Sequence[CostRow], tune: dict) -> str:
    g = to_go(rows, tune)
    if not g["jobs"]:
        return "To go: nothing; every job is finished."
    text = (f"To go: {g['jobs']} jobs, about {_h(g['cpu_hours'])} CPU-hours at the mean minutes per finished run "
            f"of each row (else of its method)")
    if g["after_selection"]:
        text += f"; {g['after_selection']} of them are final jobs the tune block adds after selection"
    if g["unestimated"]:
        text += f"; {g['unestimated']} have no finished run of their method to estimate from and are not in the hours"
    return text + "."


def _blocks(rows: Sequence[CostRow]) -> list[tuple[tuple, list[CostRow]]]:
    out: list[tuple[tuple, list[CostRow]]] = []
    for r in rows:
        key = (r.data, r.type)
        if not out or out[-1][0] != key:
            out.append((key, []))
        out[-1][1].append(r)
    return out


def _notes(rows: Sequence[CostRow]) -> list[str]:
    notes = list(NOTES)
    wall_only = sum(r.wall_only for r in rows)
    if wall_only:
        notes.append(f"{wall_only} run(s) had no fixed train.threads or ran on an accelerator: counted at their "
                     f"wall-clock hours")
    machines: dict[str, int] = {}
    for r in rows:
        for kind, n in r.machines.items():
            machines[kind] = machines.get(kind, 0) + n
    if len(machines) > 1:  # minutes from machines of different speeds are not one measurement
        notes.append("The finished runs ran on more than one kind of machine (summary.json's hardware): "
                     + ", ".join(f"{k} {n} run(s)" for k, n in sorted(machines.items()))
                     + "; a row's min/run mixes them")
    unfinished = sum(r.unfinished for r in rows)
    if unfinished:
        notes.append(f"{unfinished} unfinished run(s) are not counted")
    return notes


def _h(x: float) -> str:
    return f"{x:.2f}"


HEADER = ["Data", "Type", "Method", "Tuning runs", "Tuning CPU-h", "Reported runs", "Reported CPU-h", "min/run"]


def _line(data: str, type_: str, label: str, n: dict, hours: dict, minutes: float | None) -> list[str]:
    return [data, type_, label, str(n["tuning"]), _h(hours["tuning"]), str(n["reported"]), _h(hours["reported"]),
            "–" if minutes is None else f"{minutes:.1f}"]


def to_markdown(rows: Sequence[CostRow], tune: dict | None = None) -> str:
    lines = [f"**{TITLE}**", "", "| " + " | ".join(HEADER) + " |", "| :-- | :-: | :-- | " + " | ".join(["--:"] * 5) + " |"]
    for (data, type_), block in _blocks(rows):
        for r in block:
            lines.append("| " + " | ".join(_line(r.data, r.type, r.label, r.n, r.cpu_hours, r.minutes_per_run)) + " |")
        t = totals(block)
        lines.append("| " + " | ".join(_line(data, type_, "**all**", {k: v["n"] for k, v in t.items()},
                                             {k: v["cpu_hours"] for k, v in t.items()}, None)) + " |")
    t = totals(rows)
    lines += ["", f"Total: {_h(t['all']['cpu_hours'])} CPU-hours in {t['all']['n']} finished runs: "
                  f"{_h(t['tuning']['cpu_hours'])} for tuning ({t['tuning']['n']} runs), "
                  f"{_h(t['reported']['cpu_hours'])} for the reported runs ({t['reported']['n']}).", "",
              _to_go_line(rows, tune or {}), ""]
    lines += [f"- {n}." for n in _notes(rows)]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[CostRow], tune: dict | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["data", "type", "method", "dataset", "corruption", "algorithm", "variant", "tuning_runs",
                "tuning_cpu_hours", "reported_runs", "reported_cpu_hours", "minutes_per_run", "unfinished"])
    for r in rows:
        m = r.minutes_per_run
        w.writerow([r.data, r.type, r.label, r.dataset, r.corruption, r.method_key, r.variant or "", r.n["tuning"],
                    f"{r.cpu_hours['tuning']:.4f}", r.n["reported"], f"{r.cpu_hours['reported']:.4f}",
                    "" if m is None else f"{m:.3f}", r.unfinished])
    return buf.getvalue()


def to_dict(rows: Sequence[CostRow], tune: dict | None = None) -> dict[str, Any]:
    def r4(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "title": TITLE,
        "units": "CPU-hours: wall-clock hours x train.threads",
        "rows": [{"data": r.data, "type": r.type, "method": r.label, "dataset": r.dataset, "corruption": r.corruption,
                  "algorithm": r.method_key, **({"variant": r.variant} if r.variant else {}),
                  "runs": dict(r.n), "cpu_hours": {k: r4(v) for k, v in r.cpu_hours.items()},
                  "minutes_per_run": r4(r.minutes_per_run), "unfinished": r.unfinished,
                  "machines": dict(sorted(r.machines.items()))} for r in rows],
        "totals": {k: {"n": v["n"], "cpu_hours": r4(v["cpu_hours"])} for k, v in totals(rows).items()},
        "to_go": {k: (r4(v) if k == "cpu_hours" else v) for k, v in to_go(rows, tune or {}).items()},
        "notes": _notes(rows),
    }


RENDERERS = {"md": to_markdown, "csv": to_csv,
             "json": lambda rows, tune=None: json.dumps(to_dict(rows, tune), indent=2, ensure_ascii=False) + "\n"}


def render(rows: Sequence[CostRow], fmt: str, tune: dict | None = None) -> str:
    if fmt not in RENDERERS:
        raise ReportError(f"unknown format {fmt!r} for the cost table; allowed: {', '.join(FORMATS)}")
    return RENDERERS[fmt](rows, tune)
