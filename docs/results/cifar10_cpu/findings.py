"""The cifar10_cpu tables in plain words: the comparison beside the original README's table, and every paired
difference said as distinguishable from zero or not.  Reads the report JSON that report.sh writes.

Usage: python docs/results/cifar10_cpu/findings.py docs/results/cifar10_cpu > docs/results/cifar10_cpu/findings.md
       python docs/results/cifar10_cpu/findings.py --update-readme [DIR]   (the README's generated tables, from
       DIR's report JSON; a table's combination must be complete)
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


def _cell(entry: dict, metric: str, std: bool = True) -> str:
    """'mean ± std [95% CI]' of a report row (without the std: 'mean [95% CI]')."""
    m, s = entry[metric]["mean"], entry[metric]["std"]
    if m is None:
        return "–"
    ci = entry["ci95"][metric]
    text = f"{m:.1f} ± {s:.1f}" if std and s is not None else f"{m:.1f}"
    return text + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def beside_original(report: dict, arm: str) -> list[str]:
    lines = [(f"**Beside the original README's table** ({ARMS.get(arm, arm)}; ours: mean ± std [95% CI] over "
              "the final seeds, in %; the original's CIFAR10 rows are at 4,000 images per class, WRN-28-2, "
              "200 epochs)"), "",
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
COMBINATION = "<!-- findings.py: {arm} {corruption} -->"  # README markers around a generated table
HEADLINE = "<!-- findings.py: headline -->"
ORIGINAL_MARKER = "<!-- findings.py: beside the original -->"
END = "<!-- end of generated table -->"


MIN_SEEDS = 3  # the final seeds; a tuning block without them reports its tuning seed alone (n = 1)


def _complete(rows: list[dict]) -> bool:
    """Every row has all its final seeds finished."""
    return bool(rows) and all(e["n"] == e["n_expected"] >= MIN_SEEDS for e in rows)


def complete_combinations(reports: dict) -> list[tuple[str, str, list[dict]]]:
    """(arm, corruption, rows) of every combination whose rows have all their final seeds, in report order."""
    out = []
    for arm, report in reports.items():
        for corruption in dict.fromkeys(e["corruption"] for e in report["rows"]):
            rows = [e for e in report["rows"] if e["corruption"] == corruption]
            if _complete(rows):
                out.append((arm, corruption, rows))
    return out


def combination_table(report: dict, corruption: str) -> list[str]:
    """One combination's rows as the README shows them: the intervals, where the accuracy is lost (clean,
    the most severe level, the gap between them) and how well each method fits its training mixture."""
    rows = [e for e in report["rows"] if e["corruption"] == corruption]
    top = str(max(report["severities"]))
    lines = [(f"| method | selected | averaged | worst severity | clean | severity {top} | gap 0→{top} | "
              "train acc. | n |"), "| --- | --- | --: | --: | --: | --: | --: | --: | --: |"]
    for e in rows:
        clean, severe = e["severity"].get("0", {}).get("mean"), e["severity"].get(top, {}).get("mean")
        gap = "–" if clean is None or severe is None else f"{clean - severe:.1f}"
        train = e.get("train_accuracy", {}).get("mean")
        lines.append(f"| {e['method']} | {e.get('selected_text', '–')} | {_cell(e, 'average', std=False)} | "
                     f"{_cell(e, 'worst', std=False)} | {'–' if clean is None else f'{clean:.1f}'} | "
                     f"{'–' if severe is None else f'{severe:.1f}'} | {gap} | "
                     f"{'–' if train is None else f'{train:.1f}'} | {e['n']} |")
    return lines


def headline_table(reports: dict) -> list[str]:
    """Every method's worst-severity accuracy in every complete combination: the question, on one screen."""
    columns = [(f"{ARMS[arm].split(' (')[0]}, {rows[0]['type']}", {e["method"]: e for e in rows})
               for arm, _, rows in complete_combinations(reports)]
    if not columns:
        return ["no complete combination yet"]
    methods = list(dict.fromkeys(m for _, by in columns for m in by))
    lines = ["| method | " + " | ".join(c for c, _ in columns) + " |", "| --- |" + " --: |" * len(columns)]
    for m in methods:
        cells = (_cell(by[m], "worst", std=False) if m in by else "–" for _, by in columns)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def original_table(reports: dict) -> list[str]:
    """The original README's CIFAR10 rows (averaged accuracy) beside ours in each arm, for every method the
    grid runs as such (variants left out): averaged accuracy, mean [95% CI] over the final seeds."""
    done = {(arm, corruption): {e["method"]: e for e in rows} for arm, corruption, rows in complete_combinations(reports)}
    arms = list(dict.fromkeys(arm for arm, _ in done))
    if not arms:
        return ["no complete combination yet"]
    lines = ["| Type | Method | original README (paper's scale) | "
             + " | ".join(f"ours, {ARMS[a].split(' (')[0]}" for a in arms) + " |",
             "| :-: | :-- | --: |" + " --: |" * len(arms)]
    for corruption in dict.fromkeys(c for _, c in done):
        by_arm = [done.get((a, corruption), {}) for a in arms]
        methods = dict.fromkeys(m for by in by_arm for m, e in by.items() if not e.get("variant"))
        for m in methods:
            e0 = next(by[m] for by in by_arm if m in by)
            cells = (_cell(by[m], "average", std=False) if m in by else "–" for by in by_arm)
            lines.append(f"| {e0['type']} | {m} | {ORIGINAL.get((e0['type'], m), '–')} | " + " | ".join(cells) + " |")
    return lines


def render_readme(text: str, reports: dict) -> tuple[str, list[str]]:
    """``text`` with every generated block (between its marker and END) rebuilt from ``reports``; a block
    whose combination is not complete is left as it is. Returns the text and the markers rebuilt."""
    blocks = {HEADLINE: headline_table(reports), ORIGINAL_MARKER: original_table(reports)}
    for arm, corruption, _ in complete_combinations(reports):
        blocks[COMBINATION.format(arm=arm, corruption=corruption)] = combination_table(reports[arm], corruption)
    done = []
    for marker, lines in blocks.items():
        start = text.find(marker)
        if start < 0:
            continue
        stop = text.index(END, start)
        text = text[:start] + "\n".join([marker, *lines]) + "\n" + text[stop:]
        done.append(marker)
    return text, done


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


def read_reports(here: Path) -> dict:
    """The report JSON of each arm that has one, in ARMS order."""
    return {arm: json.loads((here / f"{arm}_table.json").read_text(encoding="utf-8"))
            for arm in ARMS if (here / f"{arm}_table.json").is_file()}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--update-readme"]:
        here = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
        readme = Path(__file__).resolve().parent / "README.md"
        text, done = render_readme(readme.read_text(encoding="utf-8"), read_reports(here))
        readme.write_text(text, encoding="utf-8")
        print(f"README: {len(done)} generated table(s) rewritten")
        return 0
    here = Path(argv[0]) if argv else Path(__file__).resolve().parent
    out = []
    for arm, report in read_reports(here).items():
        out += [f"## {ARMS[arm]}", ""] + beside_original(report, arm) + summary(report)
        out += [("**Every paired difference, in words** (each method against ERM, JTT and EIIL; each variant "
                 "against its own method first; per-seed differences, 95% t-interval, not corrected for multiple "
                 "comparisons)"), ""]
        out += [in_words(p) for p in report["paired"]] + [""]
    print("\n".join(out) if out else "no report JSON yet: run report.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
