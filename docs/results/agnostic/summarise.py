"""Summarise docs/results/agnostic/runs: the selection's diagnostics in the last epoch and the accuracy per severity.

Usage: python docs/results/agnostic/summarise.py docs/results/agnostic/runs > docs/results/agnostic/summary.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml


def main(root: str) -> None:
    rows = []
    for d in sorted(Path(root).iterdir()):
        if not (d / "metrics.jsonl").is_file() or not (d / "summary.json").is_file():
            continue
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line]
        last = recs[-1]
        summary = json.loads((d / "summary.json").read_text())
        a = cfg["algorithm"]
        arm = "ERM" if a["name"] == "erm" else f"agnostic ({a['score']}, {a['select']}, f={a['fraction']})"
        rows.append({"arm": arm, "seed": cfg["seed"], "job": d.name, "last": last, "summary": summary})
    print("| arm | seed | job | selected severity | batch severity | difference | AUROC train | AUROC val | "
          "selected share per severity 0..5 | test acc. last epoch, severity 0 / 5 (%) | gap 0-5 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    by_arm: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r["arm"], r["seed"])):
        last = r["last"]
        acc = last["test"]["accuracy"]
        gap = 100 * (acc["0"] - acc["5"])
        sel, batch = last.get("agnostic_selected_severity"), last.get("agnostic_batch_severity")
        diff = sel - batch if sel is not None else None
        share = last.get("agnostic_selected_fraction")
        fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        print(f"| {r['arm']} | {r['seed']} | `{r['job']}` | {fmt(sel)} | {fmt(batch)} | {fmt(diff)} | "
              f"{fmt(last.get('agnostic_auroc_train'), 3)} | {fmt(last.get('agnostic_auroc_val'), 3)} | "
              f"{'-' if share is None else ' / '.join(f'{s:.3f}' for s in share)} | "
              f"{100 * acc['0']:.1f} / {100 * acc['5']:.1f} | {gap:.1f} |")
        by_arm.setdefault(r["arm"], []).append((diff, last.get("agnostic_auroc_val"), gap, last["test"]["average"],
                                                last["test"]["worst"]))
    print()
    print("| arm | seeds | mean selected - batch severity | mean AUROC val | mean gap 0-5 (points) | "
          "test average / worst, last epoch (%) |")
    print("|---|---|---|---|---|---|")
    for arm, vals in by_arm.items():
        diffs = [v[0] for v in vals if v[0] is not None]
        aucs = [v[1] for v in vals if v[1] is not None]
        print(f"| {arm} | {len(vals)} | {np.mean(diffs):.2f} |" if diffs else f"| {arm} | {len(vals)} | - |",
              f"{np.mean(aucs):.3f} |" if aucs else "- |",
              f"{np.mean([v[2] for v in vals]):.1f} | {100 * np.mean([v[3] for v in vals]):.1f} / "
              f"{100 * np.mean([v[4] for v in vals]):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
