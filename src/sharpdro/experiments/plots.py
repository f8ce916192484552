"""Figures of a sweep or a run (matplotlib ``Figure`` objects, no pyplot state; each figure as PNG and SVG).

- accuracy vs severity: one figure per (dataset, corruption, swept hyperparameters), a line
  per method, the mean and a 95% Student-t interval over seeds per severity (``band="std"``:
  ± the sample std), at the epoch chosen by the selection rule;
- group weights q over training: one figure per row with ``q`` in its metrics, a line per
  severity (mean and 95% interval over seeds), on a log axis when the weights span more than
  a factor 20, with the 0.02 mark of a group that is not starved;
- training curves: train loss, averaged and worst-severity accuracy (validation dashed,
  test solid) against the epoch, a line per method (± std bands);
- the agnostic selection's diagnostics, one figure per row that logged them (± std bands);
- :func:`plot_sharpness`: loss increase against the perturbation radius per severity, and
  the worst-case increase per severity, a line per method.

With ``select_hparams`` (``sharpdro plot --select-hparams worst``) the rows are those of
``sharpdro report --select-hparams``: one per method, the selected trial's runs on the final
seeds, and a row per tune-block variant (its name as label, its method's colour, its own line
style); a block is then a (dataset, corruption) pair whatever the rows' hyperparameters.

Every function returns the paths it wrote.  Aggregation over seeds uses the rows of
:mod:`sharpdro.experiments.report`, so the figures and the tables agree.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

from sharpdro.experiments.plot_series import (BAND_TEXT, draw, epoch_series, log_floor, log_scale, row_styles,
                                              severity_series, spread_text, summarize_values)
from sharpdro.experiments.report import Row, Table, _fmt_value, collect
from sharpdro.methods import display_order, label as method_label, rank as method_rank
from sharpdro.version import PACKAGE

FORMATS = ("png", "svg")


def _figure(nrows: int = 1, ncols: int = 1, figsize=None, **kw):
    """A figure of its own and its axes: a ``matplotlib.figure.Figure``, never pyplot, so that plotting from a
    notebook or a program neither switches its backend nor touches its rcParams or its open figures."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _color(method_key: str, i: int = 0):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    rank = method_rank(method_key)
    idx = rank if rank < len(display_order()) else rank + i
    return cmap(idx % 10)


LEGEND_FILE = "legend.tsv"  # short file names -> the settings they stand for
_MAX_NAME = 100  # file names stay far below the 255 bytes file systems allow (a Data label with its constants fits)
_MAX_TITLE = 70


def slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    text = re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")
    text = text or "plot"
    if len(text) > _MAX_NAME:  # many differing keys: a readable head and a hash of the whole
        text = text[:_MAX_NAME - 11].rstrip("_") + "_" + hashlib.sha256(text.encode()).hexdigest()[:10]
    return text


def _settings_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _figure_path(out_dir, kind: str, table: Table, data, corruption, hp, *extra) -> Path:
    """The figure's path; when its settings do not fit a file name, the legend file says what they are."""
    parts = _hp_parts(table, hp)
    name = slug(kind, data, corruption, *extra, *parts)
    title_hp = ", ".join(parts)
    if parts and (len(title_hp) > _MAX_TITLE or len(name) >= _MAX_NAME):
        _add_legend(Path(out_dir), name, f"settings {_settings_id(_title_hp(table, hp))}: {title_hp}")
    return Path(out_dir) / name


def _add_legend(out_dir: Path, name: str, settings: str) -> None:
    from sharpdro.io import atomic_write_text

    path = out_dir / LEGEND_FILE
    rows = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            k, _, v = line.partition("\t")
            rows[k] = v
    rows[name] = settings
    atomic_write_text(path, "file\tsettings\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(rows.items())))


def _readable_accuracy_axis(ax, min_span: float = 10.0) -> None:
    """Show at least ``min_span`` points of accuracy, so that a 0.6-point spread does not fill the plot."""
    lo, hi = ax.get_ylim()
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = max(0.0, mid - min_span / 2), min(100.0, mid + min_span / 2)
        if hi - lo < min_span:
            lo, hi = (0.0, min_span) if lo <= 0.0 else (100.0 - min_span, 100.0)
        ax.set_ylim(lo, hi)


def save_figure(fig, path: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Save ``fig`` as ``path`` (its suffix picks the format) or, without a suffix, once per format."""
    import matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if path.suffix.lower().lstrip(".") in ("png", "svg", "pdf") else \
        [path.with_name(path.name + "." + f) for f in formats]
    out = []
    for t in targets:
        fmt = t.suffix.lower().lstrip(".")
        metadata = {"Date": None} if fmt in ("svg", "pdf") else {"Software": None}
        with matplotlib.rc_context({"svg.hashsalt": PACKAGE}):  # stable SVG ids, for this save only
            fig.savefig(t, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        out.append(t)
    return out


def _title_hp(table: Table, hp: tuple) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in zip(table.hparams, hp))


def _block_hp(table: Table, row: Row) -> tuple:
    """The hyperparameters that split blocks: none when the rows were selected per method."""
    return () if table.select_hparams else row.hparams


def _block_title(table: Table, row: Row) -> str:
    hp = _title_hp(table, _block_hp(table, row))
    if len(hp) > _MAX_TITLE:  # a list of many keys is not a title: name the settings, the legend lists them
        hp = f"settings {_settings_id(hp)}, see {LEGEND_FILE}"
    return f"{row.data} / {row.type}" + (f" ({hp})" if hp else "")


def _blocks(table: Table) -> list:
    """Rows grouped by (dataset, corruption, hyperparameters): ``[((data, corruption, hp), rows), ...]``
    (one row per method, and its variants).  Hyperparameter values can be lists (``train.milestones``),
    which cannot key a dict: rows are grouped by their JSON form."""
    groups: dict = {}
    for row in table.rows:
        hp = _block_hp(table, row)
        key = (row.data, row.corruption, json.dumps(hp, sort_keys=True, default=str))
        groups.setdefault(key, (hp, []))[1].append(row)
    return [((data, corruption, hp), rows) for (data, corruption, _), (hp, rows) in groups.items()]


def _row_path(out_dir, kind: str, table: Table, row: Row) -> Path:
    """A per-row figure's path: by method (and variant) when rows were selected, else by hyperparameters."""
    if table.select_hparams:
        return Path(out_dir) / slug(kind, row.data, row.corruption, row.method_key, row.variant)
    return _figure_path(out_dir, kind, table, row.data, row.corruption, row.hparams, row.method_key)


def _selected_settings(table: Table, row: Row) -> str:
    """With selected rows, what was selected: the report's "Selected" text ('' without a selection)."""
    if not table.select_hparams:
        return ""
    what = "variant of the selected trial" if row.variant is not None else (
        f"selected of {row.trials} trial{'s' if row.trials != 1 else ''}" if row.trials else "selected")
    text = row.selected_text
    return f"{what}: " + ("nothing tuned" if text in (None, "–") else text)


def _footer(fig, text: str, y: float = -0.02) -> None:
    if text:
        fig.text(0.01, y, textwrap.fill(text, 120), fontsize=7, color="0.4", va="top")


def _row_color(row: Row, i: int):
    return _color(row.method_key, i)


# --------------------------------------------------------------------------- accuracy vs severity


def _variant_panels(rows: list) -> list[list]:
    """The rows of each panel: the methods; then, when there are variants, each variant beside its own
    method's row (a dozen lines in one panel cannot be read, and a variant is compared with its method)."""
    methods = [r for r in rows if r.variant is None]
    variants = [r for r in rows if r.variant is not None]
    if not variants:
        return [methods]
    owners = {r.method_key for r in variants}
    return [methods, [r for r in rows if r.method_key in owners]]


def plot_accuracy_vs_severity(table: Table, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS,
                              band: str = "ci95") -> list[Path]:
    """A figure per block, a line per row: mean test accuracy per severity over seeds, with the 95%
    t-interval of each severity (``band="ci95"``, as the report's CI columns) or ± the sample std
    (``band="std"``).  With variants, a second panel holds each variant beside its own method's row."""
    paths = []
    for (data, corruption, hp), rows in _blocks(table):
        rows = [r for r in rows if r.finished]
        if not rows:
            continue
        style = dict(zip(map(id, rows), row_styles(rows, _row_color)))
        panels = [p for p in _variant_panels(rows) if p]
        fig, axes = _figure(1, len(panels), figsize=(5.5 * len(panels), 3.8), sharey=True, squeeze=False)
        what = "mean and 95% interval" if band == "ci95" else "mean ± std"
        title = _block_title(table, rows[0]) + (" [ORACLE selection]" if table.oracle else "")
        legend_rows = 0
        for k, (ax, panel) in enumerate(zip(axes[0], panels)):
            for row in panel:
                color, line, marker = style[id(row)]
                draw(ax, severity_series(row, band), color, alpha=0.2, linestyle=line, marker=marker,
                     label=f"{row.method} (n={len(row.finished)})")
            ax.set_xlabel("group" if table.group_names else "severity")
            ax.set_xticks(table.severities)
            if table.group_names:  # groups from the data: their names
                ax.set_xticklabels([table.column_label(s) for s in table.severities], rotation=30, fontsize=8)
            ax.grid(alpha=0.3)
            # below the axes: with many rows a legend inside covers the lines it names
            ncol = 2 if max(len(r.method) for r in panel) <= 24 else 1
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)
            legend_rows = max(legend_rows, -(-len(panel) // ncol))
            head = title if k == 0 else "variants, each beside its method"
            ax.set_title(f"{head}\n{spread_text(what, [len(r.finished) for r in panel])}", fontsize=10)
        axes[0][0].set_ylabel("test accuracy (%)")
        hps = (f"; hyperparameters: per method, the trial of the best mean {table.select_hparams}-severity "
               f"validation accuracy (variants: its settings changed)" if table.select_hparams else "")
        _footer(fig, f"epoch selection: {table.selection}{hps}; band: {BAND_TEXT[band]}",
                y=-0.1 - 0.045 * legend_rows)
        ax = axes[0][0]
        _readable_accuracy_axis(ax)
        lo, hi = ax.get_ylim()  # an interval of few seeds can reach past what an accuracy can be
        ax.set_ylim(max(lo, 0.0), min(hi, 100.0))
        paths += save_figure(fig, _figure_path(out_dir, "accuracy_vs_severity", table, data, corruption, hp),
                             formats)
    return paths


def _hp_parts(table: Table, hp: tuple) -> list[str]:
    return [f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in zip(table.hparams, hp)]


# --------------------------------------------------------------------------- per-epoch series


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _runs_with_records(row: Row) -> list:
    return [r for r in sorted(row.runs, key=lambda r: (r.seed, r.name)) if r.records]


def plot_training_curves(table: Table, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Train loss; averaged and worst-severity accuracy (val dashed, test solid) per epoch, a line per row
    (a star per run at its selected epoch for runs that evaluated the test set there only); a variant
    row has its own marker (and its line style in the train loss)."""
    paths = []
    for (data, corruption, hp), rows in _blocks(table):
        rows = [r for r in rows if _runs_with_records(r)]
        if not rows:
            continue
        fig, axes = _figure(1, 3, figsize=(13, 3.6))
        for row, (color, line, mark) in zip(rows, row_styles(rows, _row_color)):
            runs = _runs_with_records(row)
            point = "." if row.variant is None else mark
            s = epoch_series(runs, lambda r: r["train"]["loss"])
            if s.x:
                draw(axes[0], s, color, linestyle=line, label=row.method)
            # eval.test=selected: a run's test block is at its selected epoch only, a point rather than a curve
            curves = [r for r in runs if all("test" in rec for rec in r.records if "val" in rec)]
            points = [r for r in runs if r not in curves]
            for ax, key in ((axes[1], "average"), (axes[2], "worst")):
                for split, style, of in (("val", "--", runs), ("test", "-", curves)):
                    s = epoch_series(of, lambda r, sp=split, k=key: 100.0 * r[sp][k])
                    if s.x:
                        draw(ax, s, color, linestyle=style, marker=point, label=f"{row.method} ({split})")
                tested = [(int(rec["epoch"]) + 1, 100.0 * rec["test"][key]) for r in points for rec in r.records
                          if "test" in rec]
                if tested:
                    ax.plot(*zip(*tested), color=color, linestyle="none", marker="*", markersize=8,
                            label=f"{row.method} (test, selected epoch)")
        axes[0].set_ylabel("train loss")
        axes[1].set_ylabel("averaged accuracy (%)")
        axes[2].set_ylabel("worst-severity accuracy (%)")
        for ax in axes:
            _epoch_axis(ax)
        # one legend, of the rows (their colour and style), under the panels: a legend per panel covered the
        # curves once a block had a dozen rows; the splits' styles are in the title
        fig.suptitle(_block_title(table, rows[0]) + "  (mean ± std over seeds; val dashed, test solid; "
                     "\u2605 test at a run's selected epoch)", fontsize=10)
        fig.tight_layout()
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=4 if max(map(len, labels)) <= 24 else 3, frameon=False)
        for ax in axes[1:]:
            _readable_accuracy_axis(ax)
        paths += save_figure(fig, _figure_path(out_dir, "curves", table, data, corruption, hp), formats)
    return paths


Q_MARK = 0.02  # the reproduction's threshold: a severity group whose weight stays above it is not starved


def plot_group_weights(table: Table, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS,
                       band: str = "ci95") -> list[Path]:
    """q (the weight of each severity group) against the epoch, one figure per row that logged q: a line
    per severity, the mean and 95% t-interval over seeds, with 0.02 marked. When the means span more than
    :data:`~sharpdro.experiments.plot_series.LOG_RATIO` (a rare severity's q near 1e-3) the axis is log and
    the line and band are those of log q (the geometric mean), so that seeds decades apart give a band
    that says so rather than one reaching below zero."""
    paths = []
    for row in table.rows:
        runs = [r for r in _runs_with_records(row) if any(isinstance(rec.get("q"), list) for rec in r.records)]
        if not runs:
            continue
        groups = max(len(rec["q"]) for r in runs for rec in r.records if isinstance(rec.get("q"), list))
        series = [epoch_series(runs, lambda r, g=g: r["q"][g], band) for g in range(groups)]
        log = log_scale([m for s in series for m in s.mean])
        if log:
            series = [epoch_series(runs, lambda r, g=g: r["q"][g], band, log=True) for g in range(groups)]
        means = [m for s in series for m in s.mean]
        floor = log_floor(means, Q_MARK) if log else None
        cmap = _cmap("viridis")
        fig, ax = _figure(figsize=(5.5, 3.8))
        for g, s in enumerate(series):
            if s.x:
                label = f"group {table.column_label(g)}" if table.group_names else f"severity {g}"
                draw(ax, s, cmap(g / max(1, groups - 1)), floor=floor, marker=".", label=label)
        ax.axhline(Q_MARK, color="0.3", linestyle=":", linewidth=0.9, label=f"q = {Q_MARK} (not starved above)")
        _epoch_axis(ax)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(floor, 1.0)
        else:
            ax.set_ylim(0.0, min(ax.get_ylim()[1], 1.0))
        ax.set_ylabel(f"group weight q ({'log' if log else 'linear'} scale)")
        what = "mean and 95% interval" if band == "ci95" else "mean ± std"
        if log:
            what = ("geometric mean and 95% interval (of log q)" if band == "ci95"
                    else "geometric mean ×/÷ geometric std")
        ax.set_title(f"{_block_title(table, row)}: {row.method}\n{spread_text(what, [len(runs)])}", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        _footer(fig, _selected_settings(table, row))
        paths += save_figure(fig, _row_path(out_dir, "q", table, row), formats)
    return paths


def _prestage_members(run) -> list[float] | None:
    """The share of each severity's training samples that a pre-stage put in its selected set (JTT's error
    set, EIIL's minority environment), from the run's summary; None when it recorded none."""
    shares = (run.prestage or {}).get("members_fraction_by_severity")
    if not isinstance(shares, Mapping) or not shares:
        return None
    return [float(shares[k]) for k in sorted(shares, key=int)]


def _draw_keys(ax, runs, keys) -> None:
    """One per-epoch series (mean ± std over runs) per (record key, label, colour, line style)."""
    for key, label, color, style in keys:
        s = epoch_series(runs, lambda r, k=key: r[k])
        if s.x:
            draw(ax, s, color, linestyle=style, marker=".", label=label)


def plot_agnostic_selection(table: Table, out_dir: str | os.PathLike,
                            formats: Sequence[str] = FORMATS) -> list[Path]:
    """What a severity-agnostic method selects, one figure per row that logged it, a panel per diagnostic the
    runs have: the mean severity of the selected samples against the batch's per epoch; the AUROC of the
    score (severity >= 3 against 0) on the training memory and on the validation set; the share of each
    severity's samples selected per epoch; and, for a pre-stage (JTT, EIIL), the share of each severity's
    samples in the set it selected once, as bars with their 95% interval over seeds."""
    paths = []
    for row in table.rows:
        records = _runs_with_records(row)
        epoch = [r for r in records if any("agnostic_auroc_val" in rec or "agnostic_selected_severity" in rec
                                            for rec in r.records)]
        members = [m for m in map(_prestage_members, sorted(row.runs, key=lambda r: (r.seed, r.name))) if m]
        fractions = [rec["agnostic_selected_fraction"] for r in epoch for rec in r.records
                     if isinstance(rec.get("agnostic_selected_fraction"), list)]
        has_auroc = any("agnostic_auroc_train" in rec or "agnostic_auroc_val" in rec for r in epoch
                        for rec in r.records)
        kinds = [k for k, present in (("severity", epoch), ("auroc", has_auroc), ("fraction", fractions),
                                      ("prestage", members)) if present]
        if not kinds:
            continue
        fig, axes = _figure(1, len(kinds), figsize=(4.7 * len(kinds), 3.8), squeeze=False)
        panel = dict(zip(kinds, axes[0]))
        if "severity" in panel:
            ax = panel["severity"]
            _draw_keys(ax, epoch, (("agnostic_selected_severity", "selected", "C3", "-"),
                                   ("agnostic_batch_severity", "batch", "C7", "--")))
            ax.set_ylabel("mean severity")
        if "auroc" in panel:
            ax = panel["auroc"]
            _draw_keys(ax, epoch, (("agnostic_auroc_train", "train (memory)", "C0", "-"),
                                   ("agnostic_auroc_val", "validation", "C1", "-")))
            ax.axhline(0.5, color="0.6", linewidth=0.8)
            ax.set_ylabel("AUROC, severity >= 3 vs 0")
            ax.set_ylim(0, 1)
        if "fraction" in panel:
            ax = panel["fraction"]
            groups = max(len(f) for f in fractions)
            cmap = _cmap("viridis")
            for g in range(groups):
                s = epoch_series(epoch, lambda r, g=g: r["agnostic_selected_fraction"][g])
                if s.x:
                    draw(ax, s, cmap(g / max(1, groups - 1)), marker=".", label=f"severity {g}")
            ax.set_ylabel("share of the severity's samples selected")
            ax.set_ylim(bottom=0)
        for kind, ax in panel.items():
            if kind != "prestage":
                _epoch_axis(ax)
        if "prestage" in panel:
            ax = panel["prestage"]
            groups = min(map(len, members))
            stats = [summarize_values([m[g] for m in members]) for g in range(groups)]
            means = [m for m, _, _ in stats]
            err = ([0.0 if lo is None else m - lo for m, lo, _ in stats],
                   [0.0 if hi is None else hi - m for m, _, hi in stats])
            ax.bar(range(groups), means, yerr=err, color=[_cmap("viridis")(g / max(1, groups - 1))
                                                         for g in range(groups)], capsize=3)
            ax.set_xlabel("severity")
            ax.set_xticks(range(groups))
            ax.set_ylabel("share of the severity's samples in the set")
            ax.set_title(f"the pre-stage's selection ({spread_text('mean and 95% interval', [len(members)])})",
                         fontsize=9)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3, axis="y")
        for ax in panel.values():
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        n = max(len(epoch), len(members))
        fig.suptitle(f"{_block_title(table, row)}: {row.method} (n={n}; per epoch mean ± std over seeds)",
                     fontsize=10)
        fig.tight_layout()
        _footer(fig, _selected_settings(table, row))
        paths += save_figure(fig, _row_path(out_dir, "agnostic", table, row), formats)
    return paths


# --------------------------------------------------------------------------- sharpness


_RUN_STYLES = ("-", "--", ":", "-.")


def _sharpness_styles(methods: Sequence, algorithms: Mapping[str, str] | None) -> dict:
    """(colour, line style) per label: a colour per algorithm (several seeds of one method share it, each
    with its own line style) when ``algorithms`` maps the labels to their algorithm keys; else per label."""
    out, seen = {}, {}
    for j, m in enumerate(methods):
        key = (algorithms or {}).get(m)
        if key is None:
            out[m] = (_color(str(m), j), "-")
            continue
        k = seen.setdefault(key, [len(seen), 0])
        out[m] = (_color(key, k[0]), _RUN_STYLES[k[1] % len(_RUN_STYLES)])
        k[1] += 1
    return out


def plot_sharpness(results: Mapping[str, Mapping], path: str | os.PathLike,
                   formats: Sequence[str] = FORMATS, algorithms: Mapping[str, str] | None = None) -> list[Path]:
    """Sharpness per severity and method.

    ``results``: ``{method: {severity: {"radii": [...], "mean_increase": [...], "worst_increase": float}}}``
    (method: an algorithm key such as ``sharpdro`` or any label; severity: int or str); an optional
    ``std_increase`` list (same length as ``radii``) is drawn as a ± band.
    One panel per severity with the mean loss increase against the radius, and a last panel
    with the worst-case increase against the severity.  ``path`` with a suffix writes that
    format; without one, every format in ``formats``.  ``algorithms`` (label -> algorithm key): runs of
    one algorithm share its colour, with a line style each.
    """
    if not results:
        raise ValueError("plot_sharpness: results is empty")
    rank = lambda m: method_rank((algorithms or {}).get(m, m))  # noqa: E731
    methods = sorted(results, key=lambda m: (rank(m), str(m)))
    styles = _sharpness_styles(methods, algorithms)
    severities = sorted({int(s) for m in methods for s in results[m]})
    n = len(severities) + 1
    cols = min(4, n)
    nrows = -(-n // cols)
    fig, axes = _figure(nrows, cols, figsize=(3.4 * cols, 2.9 * nrows), squeeze=False)
    flat = [ax for r in axes for ax in r]
    for i, sev in enumerate(severities):
        ax = flat[i]
        for m in methods:
            entry = _sev_entry(results[m], sev)
            if not entry or not entry.get("radii"):
                continue
            color, line = styles[m]
            x, y = _floats(entry["radii"]), _floats(entry["mean_increase"])
            ax.plot(x, y, marker=".", color=color, linestyle=line, label=method_label(m))
            std = entry.get("std_increase")
            if std is not None and len(std) == len(y):
                sd = [0.0 if v != v else v for v in _floats(std)]
                ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], color=color,
                                alpha=0.15, linewidth=0)
        ax.set_title(f"severity {sev}", fontsize=9)
        ax.set_xlabel("radius")
        ax.set_ylabel("mean loss increase")
        ax.grid(alpha=0.3)
    ax = flat[len(severities)]
    for m in methods:
        xs, ys = [], []
        for sev in severities:
            entry = _sev_entry(results[m], sev)
            if entry and entry.get("worst_increase") is not None:
                xs.append(sev)
                ys.append(float(entry["worst_increase"]))
        if xs:
            ax.plot(xs, ys, marker="o", color=styles[m][0], linestyle=styles[m][1], label=method_label(m))
    ax.set_title("worst-case loss increase", fontsize=9)
    ax.set_xlabel("severity")
    ax.set_xticks(severities)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for extra in flat[len(severities) + 1:]:
        extra.axis("off")
    fig.tight_layout()
    return save_figure(fig, path, formats)


def _floats(values) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _sev_entry(by_sev: Mapping, sev: int):
    if sev in by_sev:
        return by_sev[sev]
    return by_sev.get(str(sev))


# --------------------------------------------------------------------------- everything for a folder


def plot_dir(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, selection: str = "worst",
             formats: Sequence[str] = FORMATS, group_by: Sequence[str] | None = None,
             select_hparams: str | None = None, tuning_seeds: Sequence[int] | None = None,
             band: str = "ci95") -> list[Path]:
    """Every figure of a sweep folder or a run folder; ``out_dir`` defaults to ``PATH/plots``.

    ``select_hparams`` / ``tuning_seeds``: as in :func:`sharpdro.experiments.report.collect` (``sharpdro
    report --select-hparams``): the figures draw the selected rows and the variants only, the table's rows.
    ``band``: ``ci95`` (a 95% t-interval over seeds) or ``std`` for accuracy vs severity and q."""
    table = collect(path, selection, group_by, select_hparams=select_hparams, tuning_seeds=tuning_seeds)
    out = Path(out_dir) if out_dir is not None else Path(path) / "plots"
    paths = plot_accuracy_vs_severity(table, out, formats, band)
    paths += plot_group_weights(table, out, formats, band)
    paths += plot_agnostic_selection(table, out, formats)
    paths += plot_training_curves(table, out, formats)
    return paths


# --------------------------------------------------------------------------- severities of a few images (show)
def pick_images(labels, n: int):
    """Indices of ``n`` images, one per class in class order first (then the next image of each class...)."""
    import numpy as np

    labels = np.asarray(labels)
    n = min(n, len(labels))
    order = np.argsort(labels, kind="stable")
    # rank of each image within its class, in dataset order
    first = np.searchsorted(labels[order], labels[order], side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - first
    picked = np.lexsort((labels, rank))[:n]  # by rank, then by class
    return picked


_PARAM_LABEL = {
    "gaussian_noise": "\u03c3 =",
    "shot_noise": "c =",
    "impulse_noise": "p =",
    "speckle_noise": "\u03c3 =",
    "jpeg_compression": "quality",
}


def write_severity_grid(images, name: str, table: str, seed, path: str | os.PathLike,
                        row_labels=None, dpi: int = 100) -> str:
    """Write a PNG grid of ``images`` (uint8 [N,H,W,3]) corrupted by ``name`` at severities 0..5.

    Rows are the images, columns the severities; the column titles give the severity and its constant in
    the resolved ``table``. Returns the resolved table name. The file is written atomically.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sharpdro.data.corruptions import MAX_SEVERITY, corrupt, resolve_table, severity_parameter
    from sharpdro.errors import SharpDROError
    from sharpdro.io import atomic_save

    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise SharpDROError(f"need at least one image [N,H,W,3] to show, got shape {images.shape}")
    resolved = resolve_table(table, images.shape[1:3])
    columns = [corrupt(images, name, s, seed, table=resolved) for s in range(MAX_SEVERITY + 1)]
    n, ncol = len(images), MAX_SEVERITY + 1

    cell = 1.6
    fig = Figure(figsize=(cell * ncol + (0.6 if row_labels is not None else 0.2), cell * n + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, ncol, squeeze=False)
    for s in range(ncol):
        c = severity_parameter(name, s, resolved)
        axes[0, s].set_title("clean (0)" if s == 0 else f"severity {s}\n{_PARAM_LABEL[name]} {c:g}", fontsize=9)
        for i in range(n):
            ax = axes[i, s]
            ax.imshow(columns[s][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[i]), fontsize=8)
    fig.suptitle(f"{name} ({resolved} table, {images.shape[1]}x{images.shape[2]} px)", fontsize=11)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return resolved


def show_severities(cfg: dict, path: str | os.PathLike, corruption: str | None = None, n: int = 6,
                    table: str | None = None, seed: int | None = None, split: str = "test") -> dict:
    """``sharpdro show``: :func:`write_severity_grid` of ``n`` images of the config's dataset (one per class first).

    ``corruption``, ``table`` and ``seed`` default to the config's.  Returns what was shown
    (``images``, ``corruption``, ``table`` resolved, ``seed``).
    """
    from sharpdro.data.corruptions import CORRUPTIONS, CorruptionError
    from sharpdro.data.sources import load_dataset

    name = corruption or cfg["data"]["corruption"]
    if name not in CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if n < 1:
        raise CorruptionError(f"--n must be >= 1, got {n}")
    table = table or cfg["data"]["table"]
    seed = cfg["seed"] if seed is None else seed
    if seed < 0:
        raise CorruptionError(f"--seed must be >= 0, got {seed}")

    train, test = load_dataset(cfg["data"])
    source = test if split == "test" else train
    idx = pick_images(source.labels, n)
    labels = [source.classes[int(k)] for k in source.labels[idx]]
    resolved = write_severity_grid(source.images[idx], name, table, seed, path, row_labels=labels)
    return {"images": len(idx), "corruption": name, "table": resolved, "seed": seed}
