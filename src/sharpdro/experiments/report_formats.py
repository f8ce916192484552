"""The report's table (:mod:`sharpdro.experiments.report`) rendered as Markdown, CSV, LaTeX or JSON.

Every format shows the same rows and notes, and the second table of paired differences against the
reference methods ERM, JTT and EIIL (:mod:`sharpdro.experiments.paired`); CSV holds one table, so that
one is its own file, ``PREFIX_paired.csv``.  Floats have a fixed format, so the output of a table is
the same byte for byte on every machine.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from sharpdro.experiments.paired import Paired
from sharpdro.experiments.report import CALIBRATION_COLUMNS, ReportError, Row, Table, _fmt_value, is_method_setting
from sharpdro.experiments.stats import Interval
from sharpdro.io import atomic_write_text

FORMATS = ("md", "csv", "tex", "json")


def _cell(m: float | None, s: float | None, d: int, pm: str = "±", empty: str = "–") -> str:
    if m is None:
        return empty
    if s is None:
        return f"{m:.{d}f}"
    return f"{m:.{d}f} {pm} {s:.{d}f}"


def _ci_cell(iv: Interval, d: int, empty: str = "–") -> str:
    return empty if iv.lo is None else f"[{iv.lo:.{d}f}, {iv.hi:.{d}f}]"


CI_HEADERS = ["Avg. 95% CI", "Worst 95% CI"]
SELECTED_HEADER = "Selected"


def _hp_header(table: Table) -> list[str]:
    """The hyperparameter columns: one per key that splits rows, or one "Selected" with rows selected per method."""
    return [SELECTED_HEADER] if table.select_hparams else list(table.hparams)


def _hp_cells(table: Table, row: Row) -> list[str]:
    if table.select_hparams:
        return [row.selected_text or "–"]
    return [_fmt_value(v) for v in row.hparams]


def _header(table: Table) -> list[str]:
    worst = "Worst group (%)" if table.group_names else "Worst severity (%)"
    return (["Data", "Type", "Method"] + _hp_header(table) + ["Averaged accuracy (%)", worst]
            + [table.column_label(s) for s in table.severities] + ["n"] + CI_HEADERS
            + ([h for h, _ in CALIBRATION_COLUMNS.values()] if table.calibration else []))


def _cells(table: Table, row: Row, pm: str = "±", empty: str = "–", na: str = "n/a") -> list[str]:
    d = table.decimals
    out = [row.data, row.type, row.method] + _hp_cells(table, row)
    for what in ("average", "worst"):
        m, s, _ = row.stat(what)
        out.append(_cell(m, s, d, pm, empty))
    have = set(row.severities)
    for sev in table.severities:
        if sev not in have:
            out.append(na)
            continue
        m, s, _ = row.stat(sev)
        out.append(_cell(m, s, d, pm, empty))
    out.append(row.n_text())
    out += [_ci_cell(row.ci95(what), d, empty) for what in ("average", "worst")]
    if table.calibration:
        for key in CALIBRATION_COLUMNS:
            m, s, _ = row.stat(key)
            out.append(_cell(m, s, d if key == "ece" else d + 1, pm, empty))
    return out


PAIRED_TITLE = "Paired differences (method - reference), percentage points, 95% t-interval over n seeds"
PAIRED_NOTE = ("Per seed, the method's test accuracy minus the reference's at their selected epochs, over the "
               "seeds both rows finished (a seed with several finished runs in one row is left out); n: those "
               "seeds; diff: the mean difference; 95% CI: diff ± t(0.975, n-1) · std / sqrt(n) with std the "
               "sample std of the per-seed differences; excludes 0: whether that interval excludes zero "
               "(– for n = 1); each interval is for one comparison, not corrected for multiple comparisons")
REFERENCE_NOTE = ("References: ERM, JTT and EIIL, each against the other rows of the same data and corruption{group}; "
                  "a reference only against those listed before it (JTT - ERM, not ERM - JTT){variants}")
VARIANT_REFERENCE = "; a variant row also against its own method's row, listed first"


def _paired_hparams(table: Table) -> list[str]:
    """Hyperparameter columns of the paired table: only when they are part of the pairing."""
    return [] if table.select_hparams else list(table.hparams)


def paired_notes(table: Table) -> list[str]:
    shared = [k for k in table.hparams if not is_method_setting(k)]
    group = (" (the rows selected per method, whatever their hyperparameters)" if table.select_hparams
             else f" and {', '.join(shared)}, each method at its own hyperparameters" if shared
             else ", each method at its own hyperparameters" if table.hparams else "")
    variants = VARIANT_REFERENCE if any(getattr(r, "variant", None) is not None for r in table.rows) else ""
    return [PAIRED_NOTE + ".", REFERENCE_NOTE.format(group=group, variants=variants) + "."]


def _paired_header(table: Table) -> list[str]:
    metrics = [[f"{m} diff", f"{m} 95% CI", f"{m} excludes 0"] for m in ("Avg.", "Worst")]
    return ["Data", "Type", "Method", "Reference"] + _paired_hparams(table) + ["n"] + metrics[0] + metrics[1]


def _yes_no(flag: bool | None, empty: str) -> str:
    return empty if flag is None else ("yes" if flag else "no")


def _paired_cells(table: Table, pair: Paired, empty: str = "–") -> list[str]:
    d, row = table.decimals, pair.row
    out = [row.data, row.type, row.method, pair.reference.method]
    out += [_fmt_value(v) for v in row.hparams] if _paired_hparams(table) else []
    out.append(str(len(pair.seeds)))
    for metric in ("average", "worst"):
        iv = pair.intervals[metric]
        out += [f"{iv.mean:+.{d}f}", _ci_cell(iv, d, empty), _yes_no(iv.excludes_zero, empty)]
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(table: Table) -> str:
    head = _header(table)
    lines = [f"**{table.title}**", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
    nhp = len(_hp_header(table))
    aligns = [":--", ":-:", ":-:"] + [":-:"] * nhp + ["--:"] * (len(head) - 3 - nhp)
    lines.append("| " + " | ".join(aligns) + " |")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in _cells(table, row)) + " |")
    lines.append("")
    lines.extend(f"- {_md_escape(n)}" if n.startswith("Failed") else f"- {n}" for n in table.notes())
    return "\n".join(lines + _markdown_paired(table)) + "\n"


def _markdown_paired(table: Table) -> list[str]:
    """The paired table's lines (none when no row has a reference to be paired with)."""
    pairs = table.paired()
    if not pairs:
        return []
    head = _paired_header(table)
    nleft = 4 + len(_paired_hparams(table))
    lines = ["", f"**{PAIRED_TITLE}**", "", "| " + " | ".join(head) + " |",
             "| " + " | ".join([":--", ":-:", ":-:", ":-:"] + [":-:"] * (nleft - 4) + ["--:"] * (len(head) - nleft))
             + " |"]
    lines += ["| " + " | ".join(_md_escape(c) for c in _paired_cells(table, p)) + " |" for p in pairs]
    return lines + [""] + [f"- {n}" for n in paired_notes(table)]


def _num(x: float | None, decimals: int) -> str:
    return "" if x is None else f"{x:.{decimals}f}"


def to_csv(table: Table) -> str:
    """One row per group; numbers in percent with ``decimals + 2`` digits; empty where undefined."""
    d = table.decimals + 2
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    selected = ["selected"] if table.select_hparams else []  # beside every key's own column
    head = (["data", "type", "method", "dataset", "corruption", "algorithm"] + list(table.hparams) + selected
            + ["selection", "n", "n_expected", "n_failed", "n_unfinished", "n_not_started",
               "average_mean", "average_std", "worst_mean", "worst_std"])
    for s in table.severities:
        head += [f"sev{s}_mean", f"sev{s}_std"]
    head += [f"{what}_ci95_{end}" for what in ("average", "worst") for end in ("lo", "hi")]
    if table.calibration:
        for key in CALIBRATION_COLUMNS:
            head += [f"{key}_mean", f"{key}_std"]
    w.writerow(head)
    for row in table.rows:
        line = [row.data, row.type, row.method, row.dataset, row.corruption, row.method_key]
        line += [_fmt_value(v) for v in row.hparams] + ([row.selected_text or "–"] if selected else [])
        line += [table.selection, row.count("done"), len(row.runs), row.count("failed"), row.count("partial"),
                 row.count("missing")]
        for what in ("average", "worst"):
            m, s, _ = row.stat(what)
            line += [_num(m, d), _num(s, d)]
        have = set(row.severities)
        for sev in table.severities:
            m, s, _ = row.stat(sev) if sev in have else (None, None, 0)
            line += [_num(m, d), _num(s, d)]
        for what in ("average", "worst"):
            iv = row.ci95(what)
            line += [_num(iv.lo, d), _num(iv.hi, d)]
        if table.calibration:
            for key in CALIBRATION_COLUMNS:
                m, s, _ = row.stat(key)
                line += [_num(m, d), _num(s, d)]
        w.writerow(line)
    return buf.getvalue()


def to_paired_csv(table: Table) -> str:
    """The paired differences, one line per (row, reference, metric), in percentage points; the CI and
    ``excludes_zero`` are empty for a single paired seed."""
    d = table.decimals + 2
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["data", "type", "method", "reference", "dataset", "corruption", "algorithm", "reference_algorithm"]
               + _paired_hparams(table) + ["selection", "metric", "n", "seeds", "mean_diff", "std_diff", "ci95_lo",
                                           "ci95_hi", "excludes_zero"])
    for p in table.paired():
        row, ref = p.row, p.reference
        hp = [_fmt_value(v) for v in row.hparams] if _paired_hparams(table) else []
        for metric in ("average", "worst"):
            iv = p.intervals[metric]
            flag = "" if iv.excludes_zero is None else str(iv.excludes_zero).lower()
            w.writerow([row.data, row.type, row.method, ref.method, row.dataset, row.corruption, row.method_key,
                        ref.method_key] + hp + [table.selection, metric, len(p.seeds), " ".join(map(str, p.seeds)),
                                                _num(iv.mean, d), _num(iv.std, d), _num(iv.lo, d), _num(iv.hi, d),
                                                flag])
    return buf.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("±", r"$\pm$").replace("–", "--")


def to_latex(table: Table) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``), notes under the tabular."""
    head = _header(table)
    ncols = len(head)
    nleft = 3 + len(_hp_header(table))
    spec = "l" * nleft + "r" * (ncols - nleft)
    tex_head = [_tex(h) for h in head[:nleft]] + ["Avg. (\\%)", "Worst (\\%)"] + \
        [str(s) for s in table.severities] + ["$n$"] + [_tex(h) for h in head[nleft + 3 + len(table.severities):]]
    lines = [
        f"% Generated by `sharpdro report --selection {table.selection}`; needs \\usepackage{{booktabs}}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{_tex(table.title)}.}}",
        f"\\label{{tab:sharpdro-{table.selection.replace('_', '-')}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
    ]
    if table.severities:
        first_sev = nleft + 3
        lines.append(" & " * (first_sev - 1) + f"\\multicolumn{{{len(table.severities)}}}{{c}}{{Severity (\\%)}}"
                     + " & " * 1 + "\\\\")
        lines.append(f"\\cmidrule(lr){{{first_sev}-{first_sev + len(table.severities) - 1}}}")
    lines.append(" & ".join(tex_head) + " \\\\")
    lines.append("\\midrule")
    prev = None
    for row in table.rows:
        block = (row.data, row.corruption)
        if prev is not None and block != prev:
            lines.append("\\midrule")
        prev = block
        lines.append(" & ".join(_tex(c) for c in _cells(table, row, empty="–")) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "", "\\par\\smallskip\\footnotesize"]
    lines.append(" \\\\\n".join(_tex(n) for n in table.notes()))
    lines += ["\\end{table}"]
    return "\n".join(lines + _latex_paired(table)) + "\n"


def _latex_paired(table: Table) -> list[str]:
    """The paired table as a second booktabs float (none when nothing is paired)."""
    pairs = table.paired()
    if not pairs:
        return []
    head = _paired_header(table)
    nleft = 4 + len(_paired_hparams(table))
    lines = ["", "\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{_tex(PAIRED_TITLE)}.}}",
             f"\\label{{tab:sharpdro-{table.selection.replace('_', '-')}-paired}}",
             f"\\begin{{tabular}}{{{'l' * nleft + 'r' * (len(head) - nleft)}}}", "\\toprule",
             " & ".join(_tex(h) for h in head[:nleft]) + " & $n$ & "
             + " & ".join(_tex(h) for h in head[nleft + 1:]) + " \\\\", "\\midrule"]
    prev = None
    for p in pairs:
        block = (p.row.data, p.row.corruption)
        if prev is not None and block != prev:
            lines.append("\\midrule")
        prev = block
        lines.append(" & ".join(_tex(c) for c in _paired_cells(table, p)) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "", "\\par\\smallskip\\footnotesize"]
    lines.append(" \\\\\n".join(_tex(n) for n in paired_notes(table)))
    return lines + ["\\end{table}"]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def to_dict(table: Table) -> dict:
    rows = []
    for row in table.rows:
        entry: dict[str, Any] = {
            "data": row.data, "type": row.type, "method": row.method,
            "dataset": row.dataset, "corruption": row.corruption, "algorithm": row.method_key,
            **({"variant": row.variant} if row.variant is not None else {}),
            "hyperparameters": {k: v for k, v in zip(table.hparams, row.hparams)},
            **({"selected_text": row.selected_text or "–"} if table.select_hparams else {}),
            "n": row.count("done"), "n_expected": len(row.runs), "n_failed": row.count("failed"),
            "n_unfinished": row.count("partial"), "n_not_started": row.count("missing"),
        }
        for what in ("average", "worst"):
            m, s, _ = row.stat(what)
            entry[what] = {"mean": _r(m), "std": _r(s)}
        entry["ci95"] = {what: _r_interval(row.ci95(what)) for what in ("average", "worst")}
        if table.calibration:
            for key in CALIBRATION_COLUMNS:
                m, s, _ = row.stat(key)
                entry[key] = {"mean": _r(m), "std": _r(s)}
        m, s, _ = row.stat("train_accuracy")
        entry["train_accuracy"] = {"mean": _r(m), "std": _r(s)}
        entry["severity"] = {}
        have = set(row.severities)
        for sev in table.severities:
            if sev in have:
                m, s, _ = row.stat(sev)
                entry["severity"][str(sev)] = {"mean": _r(m), "std": _r(s)}
        entry["runs"] = [{
            "run": r.name, "seed": r.seed, "status": r.status,
            "selected_epoch": None if r.selected is None else int(r.selected["epoch"]),
            "average": None if r.average is None else _r(100.0 * r.average),
            "worst": None if r.worst is None else _r(100.0 * r.worst),
            "train_accuracy": None if r.train_accuracy is None else _r(100.0 * r.train_accuracy),
            "accuracy": None if r.accuracy is None else {str(k): _r(100.0 * v) for k, v in sorted(r.accuracy.items())},
            "error": r.error,
        } for r in sorted(row.runs, key=lambda r: (r.seed, r.name))]
        rows.append(entry)
    return {
        "title": table.title,
        "selection": table.selection,
        "oracle": table.oracle,
        "units": "percent",
        "std": "sample standard deviation (ddof=1) over seeds; null for a single run",
        "ci95": "[lo, hi]: mean ± t(0.975, n-1) · std / sqrt(n) over seeds (Student t); null for a single run",
        "train_accuracy": "the running training accuracy over each run's selected epoch, in percent (the run's "
                          "summary.json has it as a fraction, selected_train_accuracy)",
        "hyperparameters": list(table.hparams),
        "severities": list(table.severities),
        "rows": rows,
        "notes": table.notes(),
        "paired": [entry for p in table.paired() for entry in _paired_dicts(table, p)],
        "paired_notes": paired_notes(table),
    }


def _r_interval(iv: Interval) -> list | None:
    return None if iv.lo is None else [_r(iv.lo), _r(iv.hi)]


def _paired_dicts(table: Table, p: Paired) -> list[dict]:
    """One entry per metric; differences in percentage points."""
    row, ref = p.row, p.reference
    base = {"data": row.data, "type": row.type, "method": row.method, "reference": ref.method,
            "dataset": row.dataset, "corruption": row.corruption, "algorithm": row.method_key,
            "reference_algorithm": ref.method_key,
            "hyperparameters": {k: v for k, v in zip(table.hparams, row.hparams)},
            "reference_hyperparameters": {k: v for k, v in zip(table.hparams, ref.hparams)}}
    out = []
    for metric in ("average", "worst"):
        iv = p.intervals[metric]
        out.append({**base, "metric": metric, "n": iv.n, "seeds": list(p.seeds), "mean_diff": _r(iv.mean),
                    "std_diff": _r(iv.std), "ci95": _r_interval(iv), "excludes_zero": iv.excludes_zero})
    return out


def to_json(table: Table) -> str:
    return json.dumps(to_dict(table), indent=2, ensure_ascii=False) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "json": to_json}


def render(table: Table, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ReportError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return RENDERERS[fmt](table)


def parse_formats(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for f in (x.strip().lower() for x in items):
        f = {"markdown": "md", "latex": "tex"}.get(f, f)
        if f and f not in FORMATS:
            raise ReportError(f"unknown format {f!r}; allowed: {', '.join(FORMATS)}")
        if f and f not in out:
            out.append(f)
    return out


def write_report(table: Table, prefix: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``PREFIX.md`` / ``.csv`` / ``.tex`` / ``.json`` (atomically); returns the paths.

    CSV holds one table, so the paired differences go to ``PREFIX_paired.csv`` beside ``PREFIX.csv``
    (written whenever CSV is, with its header only when nothing is paired)."""
    prefix = Path(prefix)
    paths = []
    for fmt in formats:
        p = prefix.with_name(prefix.name + "." + fmt)
        atomic_write_text(p, render(table, fmt))
        paths.append(p)
        if fmt == "csv":
            p = prefix.with_name(prefix.name + "_paired.csv")
            atomic_write_text(p, to_paired_csv(table))
            paths.append(p)
    return paths
