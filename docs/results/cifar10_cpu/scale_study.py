"""Does the answer depend on scale? (issue 27): every method of the ImageNet-C Gaussian arm, at its selected
configuration, across four regimes (images per class, epochs): the committed (500, 20) and the scale sweeps
(2000, 20), (4000, 20), (500, 60).

Each run is found by identity, never by a list of names: a regime's jobs are its sweep file's jobs, and the
(500, 20) partner of a job is the job whose config is the same but for ``data.train_per_class: 500`` (its
folder in imagenet_table/ is that config's job hash). Per regime it pairs SharpDRO, agnostic SharpDRO and
GroupDRO with ERM, JTT and EIIL seed by seed (worst severity and averaged; percentage points, 95% t-interval),
and records SharpDRO's final q of severity 5 and every method's fit of its training mixture.

Fit: the scale runs evaluate their selected weights once on the training mixture (``train_accuracy_by_severity``).
The (500, 20) runs predate that evaluation; their fit is the selected epoch's running accuracy per severity,
weighted by the mixture, and is marked as such everywhere it appears.

Writes scale_study.{md,csv,json} and plots/scale_dose_response.png beside this file and prints the Markdown.
Usage: python docs/results/cifar10_cpu/scale_study.py [DIR]
       python docs/results/cifar10_cpu/scale_study.py --update-readme [DIR]   (the generated README blocks)
"""
from __future__ import annotations

import copy
import csv
import io
import json
import sys
from pathlib import Path
from typing import Iterator

from sharpdro.experiments.cost import machine_kind
from sharpdro.experiments.stats import mean_std, paired_differences, t_interval
from sharpdro.experiments.sweep_spec import expand, job_hash, load_sweep
from sharpdro.rundir import RunDir

# (key, images per class, epochs): the committed arm first, then the sweeps scale_<key>.yaml
REGIMES = (("n500_e20", 500, 20), ("n2000_e20", 2000, 20), ("n4000_e20", 4000, 20), ("n500_e60", 500, 60))
TARGET = "n4000_e20"  # the headline's regime (closest to the paper's data), fixed before any of its runs
ANCHOR = "n2000_e20"  # the sweep whose jobs, at 500 images per class, name the committed (500, 20) runs
METHODS = ("erm", "sam", "groupdro", "jtt", "eiil", "sharpdro", "sharpdro_agnostic")
NAMES = {"erm": "ERM", "sam": "SAM", "groupdro": "GroupDRO", "jtt": "JTT", "eiil": "EIIL", "sharpdro": "SharpDRO",
         "sharpdro_agnostic": "SharpDRO (agnostic)"}
QUESTION = ("sharpdro", "sharpdro_agnostic", "groupdro")
REFERENCES = ("erm", "jtt", "eiil")
METRICS = (("worst", "worst severity"), ("average", "averaged"))
SEEDS = 3  # final seeds per method and regime
COLLAPSED = 1e-3  # a final q of severity 5 below this is "collapsed" (uniform is 1/6)
SECTION = "<!-- scale_study.py: verdict -->"
HEADLINE = "<!-- scale_study.py: headline -->"
END = "<!-- end of generated table -->"


def regime_label(key: str) -> str:
    n, e = (int(x[1:]) for x in key.split("_"))
    return f"({n}, {e})"


def _counts(run: Path, summary: dict) -> dict[str, int]:
    if summary.get("train_count_by_severity"):
        return {k: int(v) for k, v in summary["train_count_by_severity"].items()}
    line = next(x for x in (run / "train.log").read_text().splitlines() if "counts per severity" in x)
    return {str(i): n for i, n in enumerate(json.loads(line.split("counts per severity ", 1)[1].split("]")[0] + "]"))}


def run_record(run: Path, regime: str, method: str, seed: int) -> dict | None:
    """What the study needs of one finished run (None when it is not finished)."""
    if not (run / "done").is_file():
        return None
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    records = RunDir(run).epoch_records()
    counts = _counts(run, s)
    if s.get("train_accuracy_by_severity"):
        fit, source = s["train_accuracy_by_severity"], "evaluated"
    else:
        fit, source = next(r for r in records if r["epoch"] == s["selected_epoch"])["train"]["group_acc"], "stream"
    total = sum(counts.values())
    q = records[-1].get("q")  # over severities for SharpDRO and GroupDRO; EIIL's is over inferred environments
    top = str(max(int(k) for k in counts))
    return {"regime": regime, "method": method, "seed": seed, "run": f"{run.parent.name}/{run.name}",
            "worst": 100 * s["test_worst"], "average": 100 * s["test_average"],
            "fit": {k: 100 * float(v) for k, v in fit.items()}, "fit_source": source,
            "fit_mixture": 100 * sum(float(fit[k]) * n for k, n in counts.items()) / total,
            "counts": counts, "q_top": float(q[int(top)]) if q and len(q) == len(counts) else None,
            "minutes": s["wall_seconds"] / 60, "machine": machine_kind(s)}


def jobs(here: Path) -> list[tuple[str, str, int, Path]]:
    """(regime, method, seed, run folder) of every job of the study, finished or not."""
    out = []
    for key, _, _ in REGIMES[1:]:
        for job in expand(load_sweep(here / f"scale_{key}.yaml")):
            cfg = job.config
            out.append((key, cfg["algorithm"]["name"], cfg["seed"], here / "scale" / f"scale_{key}" / job.hash))
            if key == ANCHOR:
                partner = copy.deepcopy(cfg)
                partner["data"]["train_per_class"], partner["train"]["epochs"] = REGIMES[0][1], REGIMES[0][2]
                out.append((REGIMES[0][0], cfg["algorithm"]["name"], cfg["seed"],
                            here / "imagenet_table" / job_hash(partner)))
    return out


def collect(here: Path) -> dict:
    runs, expected, pending = [], {}, []
    for regime, method, seed, folder in jobs(here):
        expected[regime] = expected.get(regime, 0) + 1
        rec = run_record(folder, regime, method, seed)
        if rec:
            runs.append(rec)
        else:
            pending.append([regime, method, seed])
    runs.sort(key=lambda r: ([k for k, _, _ in REGIMES].index(r["regime"]), METHODS.index(r["method"]), r["seed"]))
    return {"runs": runs, "expected": expected, "pending": pending}


def _by(runs: list[dict], regime: str, method: str) -> dict[int, dict]:
    return {r["seed"]: r for r in runs if r["regime"] == regime and r["method"] == method}


def paired(runs: list[dict]) -> list[dict]:
    """Every question method against every reference, per regime and metric, seed by seed."""
    out = []
    for key, _, _ in REGIMES:
        for m in QUESTION:
            for ref in REFERENCES:
                a, b = _by(runs, key, m), _by(runs, key, ref)
                for metric, _ in METRICS:
                    seeds, diffs = paired_differences({s: r[metric] for s, r in a.items()},
                                                      {s: r[metric] for s, r in b.items()})
                    ci = t_interval(diffs)
                    out.append({"regime": key, "method": m, "reference": ref, "metric": metric, "seeds": seeds,
                                "differences": [round(d, 4) for d in diffs], "mean": ci.mean, "low": ci.lo,
                                "high": ci.hi, "excludes_zero": ci.excludes_zero})
    return out


def cells(runs: list[dict]) -> list[dict]:
    """Per regime and method: the means over seeds (accuracy, fit, q of severity 5) and the minutes per run."""
    out = []
    for key, _, _ in REGIMES:
        for m in METHODS:
            mine = list(_by(runs, key, m).values())
            if not mine:
                continue
            row = {"regime": key, "method": m, "n": len(mine), "seeds": [r["seed"] for r in mine]}
            for metric in ("worst", "average", "fit_mixture", "minutes"):
                ci = t_interval([r[metric] for r in mine])
                row[metric] = {"mean": ci.mean, "low": ci.lo, "high": ci.hi}
            sev = sorted(mine[0]["fit"], key=int)
            row["fit_by_severity"] = {k: mean_std([r["fit"][k] for r in mine])[0] for k in sev}
            row["fit_source"] = sorted({r["fit_source"] for r in mine})
            row["top_count"] = mine[0]["counts"][sev[-1]]
            qs = [r["q_top"] for r in mine if r["q_top"] is not None]
            row["q_top"] = qs or None
            out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- words

def _comparisons(table: list[dict], regimes) -> Iterator[tuple[str, str, str, list[dict]]]:
    """Each (question method, reference, metric words) with its paired rows in ``regimes``, in the table's order."""
    for m in QUESTION:
        for ref in REFERENCES:
            for metric, words in METRICS:
                yield m, ref, words, [p for p in table if p["method"] == m and p["reference"] == ref
                                      and p["metric"] == metric and p["regime"] in regimes]


def _changes_sign(ps: list[dict]) -> bool:
    return len({p["mean"] > 0 for p in ps}) > 1


def _iv(p: dict) -> str:
    if p["mean"] is None:
        return "–"
    if p["low"] is None:
        return f"{p['mean']:+.1f} (n = 1)"
    return f"{p['mean']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}]"


def _complete(runs: list[dict], key: str) -> bool:
    return all(len(_by(runs, key, m)) >= SEEDS for m in METHODS)


def status(study: dict) -> str:
    runs = study["runs"]
    parts = []
    for key, _, _ in REGIMES:
        done = sum(1 for r in runs if r["regime"] == key)
        parts.append(f"{regime_label(key)} {done}/{study['expected'][key]}")
    hours = sum(r["minutes"] for r in runs if r["regime"] != REGIMES[0][0]) / 60
    text = (f"Finished runs per regime (images per class, epochs): {', '.join(parts)}. The scale runs so far took "
            f"{hours:.1f} CPU-hours (one thread each; `sharpdro cost` per regime in scale/).")
    machines: dict[str, int] = {}
    for r in runs:
        if r["regime"] != REGIMES[0][0]:
            kind = r.get("machine", "not recorded")
            machines[kind] = machines.get(kind, 0) + 1
    if len(machines) > 1:  # machines of another speed: the minutes per run mix them
        kinds = ", ".join(f"{k} {v} run{'s' * (v != 1)}" for k, v in sorted(machines.items()))
        text += (f" They ran on more than one kind of machine (summary.json's hardware): {kinds}; a run's minutes "
                 "depend on its machine.")
    if study["pending"]:
        text += (f" The {len(study['pending'])} runs to go would take about {to_go_hours(study):.0f} more, at the "
                 "minutes per run each method took in that regime, else at its (500, 20) minutes scaled by images "
                 "× epochs.")
    return text


def to_go_hours(study: dict) -> float:
    """CPU-hours of the unfinished jobs, estimated from the finished runs' minutes."""
    runs, scale = study["runs"], {k: n * e for k, n, e in REGIMES}
    minutes = 0.0
    for regime, method, _ in study["pending"]:
        same = [r["minutes"] for r in runs if r["regime"] == regime and r["method"] == method]
        if same:
            minutes += sum(same) / len(same)
        else:
            base = [r["minutes"] for r in runs if r["regime"] == REGIMES[0][0] and r["method"] == method]
            minutes += sum(base) / len(base) * scale[regime] / scale[REGIMES[0][0]]
    return minutes / 60


def verdict(study: dict, table: list[dict]) -> list[str]:
    """Per question method and reference: does the difference change sign across regimes, and does an interval
    exclude zero anywhere; then whether q of severity 5 still collapses with more severity-5 images."""
    runs = study["runs"]
    complete = [k for k, _, _ in REGIMES if _complete(runs, k)]
    lines = []
    if len(complete) < 2:
        lines.append(f"**No verdict yet**: a verdict compares complete regimes (all {len(METHODS)} methods on "
                     f"{SEEDS} seeds), and {len(complete)} regime is complete "
                     f"({', '.join(map(regime_label, complete)) or 'none'}). The numbers above are partial and "
                     "decide nothing yet: one seed gives no interval, two a half-width of 12.7 standard errors.")
    else:
        lines.append(summary(table, complete))
        for m, ref, words, ps in _comparisons(table, complete):
            told = [p for p in ps if p["excludes_zero"]]
            lines.append(
                f"- {NAMES[m]} − {NAMES[ref]}, {words}: "
                + "; ".join(f"{regime_label(p['regime'])} {_iv(p)}" for p in ps) + ": "
                + ("changes sign" if _changes_sign(ps) else "keeps its sign") + "; "
                + (("excludes zero at " + ", ".join(
                    f"{regime_label(p['regime'])} ({NAMES[m if p['mean'] > 0 else ref]} better)"
                    for p in told)) if told else "no interval excludes zero") + ".")
    sharp = [c for c in cells(runs) if c["method"] == "sharpdro" and c["q_top"]]
    if sharp:
        said = []
        for c in sharp:
            low = sum(q < COLLAPSED for q in c["q_top"])
            said.append(f"{regime_label(c['regime'])}, {c['top_count']} severity-5 images: "
                        f"{_qtext(c['q_top'])}, below {COLLAPSED:g} in {low} of {len(c['q_top'])}")
        lines.append(f"- SharpDRO's final q of severity 5 (uniform would be {1 / 6:.3f}): " + "; ".join(said) + ".")
    return lines


def summary(table: list[dict], complete: list[str]) -> str:
    """The verdict in one line: which differences change sign (and which of those are reversals, an interval on
    each side of zero), which start to exclude zero in the method's favour beyond the committed arm, and how many
    would exclude zero by chance alone."""
    base = REGIMES[0][0]
    changed, reversed_, started = [], [], []
    per = 0
    for m, ref, words, ps in _comparisons(table, complete):
        per += 1
        name = f"{NAMES[m]} − {NAMES[ref]} {words}"
        if _changes_sign(ps):
            changed.append(name)
        if _changes_sign([p for p in ps if p["excludes_zero"]]):
            reversed_.append(name)
        ahead = {p["regime"] for p in ps if p["excludes_zero"] and p["mean"] > 0}
        if ahead and base not in ahead:
            started.append(name)

    def listed(names: list[str]) -> str:
        return f" ({'; '.join(names)})" if names else ""

    return (f"- **In short** (complete regimes: {', '.join(map(regime_label, complete))}): {len(changed)} of the "
            f"{per} differences change sign, {len(reversed_)} of them with an interval on each side of zero"
            f"{listed(reversed_)}; {len(started)} start to exclude zero in the method's favour beyond "
            f"{regime_label(base)}{listed(started)}. The intervals are per comparison: with {per} comparisons per "
            f"regime at 95%, about {per * 0.05:.1f} per regime would exclude zero by chance if no method differed "
            "(they share runs, so not independently), and no correction for multiplicity is applied.")


def _qtext(qs: list[float]) -> str:
    return "q = " + ", ".join(f"{q:.1e}" for q in qs)


def markdown(study: dict, table: list[dict]) -> str:
    runs = study["runs"]
    keys = [k for k, _, _ in REGIMES]
    head = "| method | reference | metric | " + " | ".join(regime_label(k) for k in keys) + " |"
    lines = [status(study), "", "**Paired differences (method − reference), percentage points, mean [95% "
             "t-interval] over seeds; regime = (images per class, epochs)**", "", head,
             "| --- | --- | --- |" + " --: |" * len(keys)]
    for m, ref, words, ps in _comparisons(table, keys):
        row = {p["regime"]: p for p in ps}
        lines.append(f"| {NAMES[m]} | {NAMES[ref]} | {words} | " + " | ".join(_iv(row[k]) for k in keys) + " |")
    lines += ["", "**Each method per regime: worst-severity and averaged test accuracy, fit of its training "
              "mixture (%), mean over n seeds; minutes per run**", "",
              "| regime | method | n | worst | averaged | fit | min/run |", "| --- | --- | --: | --: | --: | --: | --: |"]
    for c in cells(runs):
        stream = "*" if "stream" in c["fit_source"] else ""
        lines.append(f"| {regime_label(c['regime'])} | {NAMES[c['method']]} | {c['n']} | {c['worst']['mean']:.1f} | "
                     f"{c['average']['mean']:.1f} | {c['fit_mixture']['mean']:.1f}{stream} | "
                     f"{c['minutes']['mean']:.1f} |")
    lines += ["", "fit: the selected weights evaluated on the training mixture; * the selected epoch's running "
              "accuracy per severity weighted by the mixture (those runs predate the evaluation).", "",
              "**Verdict**", "", *verdict(study, table), ""]
    return "\n".join(lines) + "\n"


def headline(study: dict, table: list[dict]) -> str:
    """One sentence for the top-level README."""
    runs = study["runs"]
    complete = [k for k, _, _ in REGIMES if _complete(runs, k)]
    done = len(runs) - sum(1 for r in runs if r["regime"] == REGIMES[0][0])
    total = sum(v for k, v in study["expected"].items() if k != REGIMES[0][0])
    if len(complete) < len(REGIMES):
        return (f"The scale study (does the answer change toward the paper's 4,000 images per class, or with 60 "
                f"epochs?) is under way: {done} of its {total} runs are finished, too few for a verdict "
                "(docs/results/cifar10_cpu/README.md, \"Does the answer depend on scale?\").")
    # The regime named in advance (the paper's 4,000 images per class) decides; never the most favourable one.
    ours = {p["regime"]: p for p in table if p["method"] == "sharpdro" and p["reference"] == "erm"
            and p["metric"] == "worst"}
    target, base = ours[TARGET], ours[REGIMES[0][0]]
    better = [k for k, _, _ in REGIMES if ours[k]["excludes_zero"] and ours[k]["mean"] > 0]
    where = f" ({', '.join(map(regime_label, better))})" if better else ""
    return (f"Toward the paper's data size the answer {'changes' if TARGET in better else 'does not change'}: "
            "SharpDRO − "
            f"ERM at the worst severity is {_iv(target)} points at {regime_label(TARGET)} against {_iv(base)} at "
            f"{regime_label(REGIMES[0][0])}, and its interval excludes zero in SharpDRO's favour in "
            f"{len(better)} of the {len(REGIMES)} regimes{where} "
            "(docs/results/cifar10_cpu/README.md, \"Does the answer depend on scale?\").")


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    keys = ["regime", "method", "reference", "metric", "seeds", "differences", "mean", "low", "high", "excludes_zero"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for p in table:
        w.writerow([" ".join(map(str, p[k])) if isinstance(p[k], list) else
                    (f"{p[k]:.4f}" if isinstance(p[k], float) else ("" if p[k] is None else p[k])) for k in keys])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- figure

def figure(study: dict, table: list[dict], path: Path) -> Path:
    """Dose-response: the paired difference against ERM (worst, averaged) per method across 500 -> 2000 -> 4000
    images per class at 20 epochs, the 60-epoch point beside it; SharpDRO's final q of severity 5 and its fit
    per severity in each regime."""
    from sharpdro.experiments.plots import _cmap, _color, _figure, save_figure

    fig, axes = _figure(2, 2, figsize=(12, 8.5))
    x = {"n500_e20": 0, "n2000_e20": 1, "n4000_e20": 2, "n500_e60": 3.2}
    ticks = [regime_label(k) for k, _, _ in REGIMES]
    for ax, (metric, words) in zip(axes[0], METRICS):
        ax.axhline(0, color="0.5", lw=0.8)
        for i, m in enumerate(QUESTION):
            ps = [p for p in table if p["method"] == m and p["reference"] == "erm" and p["metric"] == metric
                  and p["mean"] is not None]
            dx = (i - 1) * 0.08
            line = [p for p in ps if p["regime"] != "n500_e60"]
            ax.plot([x[p["regime"]] + dx for p in line], [p["mean"] for p in line], "-o", color=_color(m),
                    label=NAMES[m])
            for p in ps:
                if p["low"] is not None:
                    ax.errorbar(x[p["regime"]] + dx, p["mean"], yerr=[[p["mean"] - p["low"]], [p["high"] - p["mean"]]],
                                fmt="o", color=_color(m), capsize=3)
                else:  # one seed: drawn hollow, no interval
                    ax.plot(x[p["regime"]] + dx, p["mean"], "o", mfc="white", color=_color(m))
        ax.set_xticks(list(x.values()), ticks)
        ax.axvline(2.6, color="0.8", ls=":")
        ax.set_title(f"method − ERM, {words} (points)\n95% interval over seeds; hollow: one seed", fontsize=9)
        ax.set_xlabel("regime (images per class, epochs)")
    ax = axes[1][0]
    for c in cells(study["runs"]):
        if c["method"] == "sharpdro" and c["q_top"]:
            ax.plot([x[c["regime"]] + 0.06 * (i - 1) for i in range(len(c["q_top"]))], c["q_top"], "o",
                    color=_color("sharpdro"))
    ax.axhline(1 / 6, color="0.5", ls="--", lw=0.8, label="uniform (1/6)")
    ax.set_yscale("log")
    ax.set_xticks(list(x.values()), ticks)
    ax.set_title("SharpDRO: final q of severity 5, one dot per seed", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1][1]
    shade = {k: _cmap("viridis")(i / (len(REGIMES) - 1) * 0.85) for i, (k, _, _) in enumerate(REGIMES)}
    for c in cells(study["runs"]):
        if c["method"] in ("sharpdro", "erm"):
            sev = sorted(c["fit_by_severity"], key=int)
            ax.plot([int(s) for s in sev], [c["fit_by_severity"][s] for s in sev],
                    "-o" if c["method"] == "sharpdro" else "--x", color=shade[c["regime"]],
                    label=f"{NAMES[c['method']]} {regime_label(c['regime'])}"
                          + (" *" if "stream" in c["fit_source"] else ""))
    ax.set_xlabel("severity")
    ax.set_ylabel("training accuracy (%)")
    ax.set_title("fit per severity, SharpDRO (solid) and ERM (dashed)\n* running accuracy; others evaluated",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Does the answer depend on scale? ImageNet-C constants, Gaussian noise, cnn7\n"
                 + status(study).split(". ")[0], fontsize=9)
    fig.subplots_adjust(hspace=0.35)
    return save_figure(fig, path)[0]


# ----------------------------------------------------------------------------------------------- files

def build(here: Path) -> tuple[dict, list[dict]]:
    study = collect(here)
    return study, paired(study["runs"])


def write(here: Path, out: Path | None = None, plot: bool = True) -> str:
    study, table = build(here)
    md = markdown(study, table)
    out = out or here
    (out / "scale_study.md").write_text(md, encoding="utf-8")
    (out / "scale_study.csv").write_text(to_csv(table), encoding="utf-8")
    (out / "scale_study.json").write_text(json.dumps(
        {"runs": study["runs"], "expected": study["expected"], "pending": study["pending"], "paired": table, "cells": cells(study["runs"]),
         "verdict": verdict(study, table), "headline": headline(study, table)}, indent=1) + "\n", encoding="utf-8")
    if plot:
        figure(study, table, out / "plots" / "scale_dose_response.png")
    return md


def render(text: str, study: dict, table: list[dict]) -> str:
    """``text`` with the generated blocks (section, headline) rebuilt; a marker absent from it is skipped."""
    blocks = {SECTION: markdown(study, table).rstrip("\n"), HEADLINE: headline(study, table)}
    for marker, body in blocks.items():
        start = text.find(marker)
        if start >= 0:
            stop = text.index(END, start)
            text = text[:start] + marker + "\n" + body + "\n" + text[stop:]
    return text


def main(argv: list[str]) -> int:
    if argv[:1] == ["--update-readme"]:
        here = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
        study, table = build(here)
        for readme in (Path(__file__).resolve().parent / "README.md", Path(__file__).resolve().parents[3] / "README.md"):
            readme.write_text(render(readme.read_text(encoding="utf-8"), study, table), encoding="utf-8")
        print("README blocks rewritten")
        return 0
    print(write(Path(argv[0]) if argv else Path(__file__).resolve().parent), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
