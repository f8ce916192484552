"""What the fair-baselines changes did in the CPU reproduction's grid: each tune-block variant (JTT and EIIL
as the earlier reproduction ran them, SharpDRO's other readings) against its method's selected row, paired
by seed, with what the pre-stage found (JTT's error set, EIIL's inference) and SharpDRO's final q. Only the
combinations whose every row has finished all its seeds are shown.

Usage: python docs/baselines/grid_variants.py SWEEP [SWEEP ...] > docs/baselines/grid_variants.md
       (the committed table: docs/results/cifar10_cpu/imagenet_table docs/results/cifar10_cpu/cifar_table)
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from sharpdro.experiments import report as rp
from sharpdro.experiments.paired import compare
from sharpdro.rundir import RunDir


def _ms(values, fmt="{:.3f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _summaries(sweep: Path, row) -> list[dict]:
    return [RunDir(sweep / r.name).read_summary() for r in row.finished]


def _final_q(sweep: Path, row) -> list[list[float]]:
    out = []
    for r in row.finished:
        recs = [rec for rec in RunDir(sweep / r.name).epoch_records() if "q" in rec]
        if recs:
            out.append([float(x) for x in recs[-1]["q"]])
    return out


def _by_severity(pre: list[dict]) -> str:
    """The share of the clean and of the most severe training images in the selected set (JTT's error set,
    EIIL's minority environment): equal shares mean the selection does not see the severity."""
    shares = [p.get("members_fraction_by_severity") for p in pre]
    if not shares or not all(shares):  # no finished run yet, or a run that did not record them
        return ""
    top = max(int(k) for k in shares[0])
    return (f" (of severity 0: {_ms([s['0'] for s in shares], '{:.2f}')}, of severity {top}: "
            f"{_ms([s[str(top)] for s in shares], '{:.2f}')})")


def _facts(sweep: Path, row) -> str:
    """The pre-stage's findings (JTT, EIIL) or the final q (group-weighted methods), mean ± std over seeds."""
    sums = _summaries(sweep, row)
    if not sums:
        return "no finished run"
    pre = [s.get("prestage") or {} for s in sums]
    if row.method_key == "jtt":
        return (f"\\|E\\|/N {_ms([p.get('error_set_fraction') for p in pre])}{_by_severity(pre)}; "
                f"identification train acc. "
                f"{_ms([p.get('identification_train_accuracy') for p in pre])}; epoch samples / N "
                f"{_ms([p['epoch_samples'] / p['train_size'] if p.get('epoch_samples') else None for p in pre], '{:.2f}')}")
    if row.method_key == "eiil":
        conv = "/".join("yes" if p.get("converged") else "no" for p in pre) or "–"
        return (f"penalty {_ms([p.get('penalty') for p in pre], '{:.4f}')}; steps "
                f"{'/'.join(str(p.get('steps')) for p in pre)}; converged {conv}; environment sizes "
                f"{'; '.join(str(p.get('environment_sizes')) for p in pre)}{_by_severity(pre)}")
    qs = _final_q(sweep, row)
    if qs:
        cols = list(zip(*qs))
        return "final q " + " ".join(f"{statistics.mean(c):.3f}" for c in cols) + f" (mean over {len(qs)} seeds)"
    return ""


def _diff(pair, metric: str) -> str:
    iv = pair.intervals[metric]
    if iv.lo is None:
        return f"{iv.mean:+.2f}"
    return f"{iv.mean:+.2f} [{iv.lo:+.2f}, {iv.hi:+.2f}]"


def _rows(sweep: Path) -> list[str]:
    """The table lines of one sweep: each complete combination's variants and the methods they vary."""
    table = rp.collect(sweep, select_hparams="worst")
    own = {(r.data, r.corruption, r.method_key): r for r in table.rows if r.variant is None}
    blocks = {}
    for row in table.rows:
        blocks.setdefault((row.data, row.corruption), []).append(row)
    # a combination still running is left out, so the committed table changes only when one completes
    complete = {k for k, rows in blocks.items() if all(0 < r.count("done") == len(r.runs) for r in rows)}
    lines = []
    for row in table.rows:
        if (row.data, row.corruption) not in complete:
            continue
        if row.variant is None and not any(v.variant and v.method_key == row.method_key and v.data == row.data
                                           and v.corruption == row.corruption for v in table.rows):
            continue
        m, s, _ = row.stat("average")
        w, ws, _ = row.stat("worst")
        cells = [row.data, row.type, row.method, row.selected_text or "–", str(row.count("done")),
                 "–" if m is None else f"{m:.2f} ± {s or 0:.2f}", "–" if w is None else f"{w:.2f} ± {ws or 0:.2f}"]
        ref = own.get((row.data, row.corruption, row.method_key)) if row.variant else None
        pair = compare(row, ref) if ref is not None else None
        cells += [_diff(pair, "average"), _diff(pair, "worst")] if pair else ["", ""]
        cells.append(_facts(sweep, row))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> int:
    lines = [("| Data | Type | Row | Selected | n | Averaged (%) | Worst (%) | Δ avg. vs its method [95% CI] "
              "| Δ worst vs its method [95% CI] | What the pre-stage found / final q |"),
             "| :-- | :-: | :-- | :-- | --: | --: | --: | --: | --: | :-- |"]
    for sweep in map(Path, argv):
        lines += _rows(sweep)
    print("\n".join(lines))
    print("\nΔ: the variant minus its method's selected row, paired by seed (percentage points), with the "
          "95% t-interval over the seeds both finished.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
