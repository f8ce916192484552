"""The cifar10_cpu tables in plain words: the comparison beside the original README's table, and every paired
difference said as distinguishable from zero or not.  Reads the report JSON that report.sh writes.

Usage: python docs/results/cifar10_cpu/findings.py docs/results/cifar10_cpu > docs/results/cifar10_cpu/findings.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ARMS = {"imagenet_table": "ImageNet-C constants", "cifar_table": "CIFAR-10-C constants (the faithful arm)"}
# The original README's table (MindSpore release), CIFAR10 rows: averaged accuracy (%), "± 0.02" as printed.
ORIGINAL = {("Gaussian", "JTT"): "86.1 ± 0.02", ("Gaussian", "EIIL"): "85.4 ± 0.02",
            ("Gaussian", "SharpDRO"): "87.3 ± 0.02", ("JPEG", "JTT"): "83.5 ± 0.03",
            ("JPEG", "EIIL"): "83.2 ± 0.03", ("JPEG", "SharpDRO"): "85.3 ± 0.02"}
METRIC_WORDS = {"average": "averaged accuracy", "worst": "worst-severity accuracy"}


def _cell(entry: dict, metric: str) -> str:
    m, s = entry[metric]["mean"], entry[metric]["std"]
    if m is None:
        return "–"
    ci = entry["ci95"][metric]
    text = f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"
    return text + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def beside_original(report: dict, arm: str) -> list[str]:
    lines = [f"**Beside the original README's table** ({ARMS.get(arm, arm)}; ours: mean ± std [95% CI] over "
             "the final seeds, in %; the original's CIFAR10 rows are at 4,000 images per class, WRN-28-2, "
             "200 epochs)", "",
             "| Type | Method | original: averaged | ours: averaged | ours: worst severity | n |",
             "| :-: | :-- | --: | --: | --: | --: |"]
    for e in report["rows"]:
        if e.get("variant"):
            continue
        lines.append(f"| {e['type']} | {e['method']} | {ORIGINAL.get((e['type'], e['method']), '')} | "
                     f"{_cell(e, 'average')} | {_cell(e, 'worst')} | {e['n']} |")
    return lines + [""]


def in_words(p: dict) -> str:
    """One paired difference as a sentence: which is better, by how much, and whether the interval says so."""
    what = f"{p['method']} − {p['reference']}, {METRIC_WORDS[p['metric']]} ({p['type']})"
    d = p["mean_diff"]
    if p["ci95"] is None:
        return f"- {what}: {d:+.2f} points on {p['n']} seed; no interval."
    lo, hi = p["ci95"]
    if p["excludes_zero"]:
        better = p["method"] if d > 0 else p["reference"]
        verdict = f"**{better} is better**: the interval excludes zero"
    else:
        verdict = "cannot be told from zero"
    return f"- {what}: {d:+.2f} points [{lo:+.2f}, {hi:+.2f}], n = {p['n']}: {verdict}."


QUESTION = ("SharpDRO", "SharpDRO (agnostic)")


def summary(report: dict) -> list[str]:
    """The question first (SharpDRO against the baselines on the worst severity), then every difference whose
    interval excludes zero: the few lines a reader needs before the full list."""
    paired = report["paired"]
    ask = [p for p in paired if p["method"] in QUESTION and p["metric"] == "worst"]
    lines = ["**The question: SharpDRO's worst-severity accuracy against the baselines** (paired by seed)", ""]
    lines += [in_words(p) for p in ask] or ["- no finished SharpDRO row yet"]
    told = [p for p in paired if p["excludes_zero"]]
    chance = 0.05 * len(paired)  # each interval at 95%, uncorrected: this many exclude zero by chance alone
    lines += ["", f"**Distinguishable from zero: {len(told)} of {len(paired)} paired differences**"
              + (" (none)" if not told else "")
              + f" (each interval is at 95% and uncorrected: about {chance:.1f} would exclude zero by chance alone)",
              ""]
    return lines + [in_words(p) for p in told] + [""]


def main(argv: list[str]) -> int:
    here = Path(argv[0]) if argv else Path(__file__).resolve().parent
    out = []
    for arm in ARMS:
        path = here / f"{arm}_table.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        out += [f"## {ARMS[arm]}", ""] + beside_original(report, arm) + summary(report)
        out += ["**Every paired difference, in words** (each method against ERM, JTT and EIIL; each variant against "
                "its own method first; per-seed differences, 95% t-interval, not corrected for multiple "
                "comparisons)", ""]
        out += [in_words(p) for p in report["paired"]] + [""]
    print("\n".join(out) if out else "no report JSON yet: run report.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
