"""The tables of docs/baselines.md from the committed sweep (sweep/) and pre-stage measurements (prestage.json).

Usage: python docs/baselines/tables.py docs/baselines > docs/baselines/tables.md
Every cell is mean ± sample std (ddof=1) over the seeds found, with n.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from sharpdro.experiments.report import load_runs


def ms(values, scale=1.0, d=2) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float) * scale
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{d}f} (n=1)"
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}"


def sweep_tables(folder: Path) -> list[str]:
    runs = [r for r in load_runs(folder / "sweep") if r.status == "done"]
    if not runs:
        return ["(the sweep has no finished run yet)"]
    cells = defaultdict(list)
    for r in runs:
        a = r.config["algorithm"]
        cells[(a["name"], a["q_absent"], r.config["data"]["sampler"])].append(r)
    order = sorted(cells, key=lambda k: (k[0] != "groupdro", k[2] != "uniform", k[1] != "zero"))
    out = ["### Final q per severity (last epoch)", "",
           "| method | q_absent | sampler | n | " + " | ".join(f"q{s}" for s in range(6)) + " |",
           "| --- | --- | --- | --: |" + " --: |" * 6]
    for key in order:
        rs = cells[key]
        qs = np.array([r.records[-1]["q"] for r in rs])
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} | "
                   + " | ".join(ms(qs[:, s], d=3) for s in range(qs.shape[1])) + " |")
    out += ["", "### Test accuracy (%) at the epoch selected on worst-severity validation accuracy", "",
            "| method | q_absent | sampler | n | average | worst | sev. 5 | Δ average vs zero+uniform | "
            "Δ worst vs zero+uniform |", "| --- | --- | --- | --: | --: | --: | --: | --: | --: |"]
    for key in order:
        rs = sorted(cells[key], key=lambda r: r.seed)
        ref = {r.seed: r for r in cells[(key[0], "zero", "uniform")]}
        da = [100 * (r.average - ref[r.seed].average) for r in rs if r.seed in ref]
        dw = [100 * (r.worst - ref[r.seed].worst) for r in rs if r.seed in ref]
        same = key[1:] == ("zero", "uniform")
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(rs)} | {ms([r.average for r in rs], 100)} | "
                   f"{ms([r.worst for r in rs], 100)} | {ms([r.accuracy.get(5) for r in rs], 100)} | "
                   f"{'–' if same else ms(da)} | {'–' if same else ms(dw)} |")
    out += ["", "Δ: paired by seed, mean ± std of the per-seed differences (percentage points)."]
    return out


def prestage_tables(folder: Path) -> list[str]:
    path = folder / "prestage.json"
    if not path.exists():
        return ["(prestage.json missing)"]
    data = json.loads(path.read_text())
    seeds = sorted(data, key=int)
    out = [f"### JTT error set after T identification epochs (constant lr), seeds {', '.join(seeds)}", "",
           "| T | \\|E\\|/N | identification train accuracy | \\|E\\|/N at sev. 0 | sev. 3 | sev. 5 |",
           "| --: | --: | --: | --: | --: | --: |"]
    for t in range(len(data[seeds[0]]["jtt"])):
        rows = [data[s]["jtt"][t] for s in seeds]
        out.append(f"| {rows[0]['T']} | {ms([r['error_set_fraction'] for r in rows], d=3)} | "
                   f"{ms([r['identification_train_accuracy'] for r in rows], d=3)} | "
                   + " | ".join(ms([r["error_set_fraction_by_severity"][k] for r in rows], d=3) for k in ("0", "3", "5"))
                   + " |")
    out += ["", f"### EIIL environment inference at lr 1e-3 on the reference model's logits, seeds {', '.join(seeds)}",
            "", "| steps | penalty (x1e3) | of the 10,000-step penalty | converged | agreement with 10,000 steps | "
            "env. 1 size | env. 1 share of sev. 0 / 5 |", "| --- | --: | --: | :-: | --: | --: | --: |"]
    for key in ("500", "2000", "10000", "default (stopping rule)"):
        rows = [data[s]["eiil"]["inference"][key] for s in seeds]
        conv = "/".join("yes" if r["converged"] else "no" for r in rows)
        steps = "/".join(str(r["steps"]) for r in rows)
        label = key if key != "default (stopping rule)" else f"default: stopped at {steps}"
        out.append(f"| {label} | {ms([r['penalty'] for r in rows], 1e3, 3)} | "
                   f"{ms([r['of_10000_step_penalty'] for r in rows], d=4)} | {conv} | "
                   f"{ms([r['agreement_with_10000_steps'] for r in rows], d=3)} | "
                   f"{ms([r['environment_sizes'][1] for r in rows], d=0)} | "
                   f"{ms([r['env1_share_by_severity']['0'] for r in rows], d=2)} / "
                   f"{ms([r['env1_share_by_severity']['5'] for r in rows], d=2)} |")
    kept = [data[s]["eiil"]["reference"]["kept_epoch"] for s in seeds]
    out += ["", f"Reference model: kept epoch (lowest validation loss) {kept} of "
                f"{data[seeds[0]]['eiil']['reference']['epochs']}."]
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    print("\n".join(sweep_tables(folder) + [""] + prestage_tables(folder)))


if __name__ == "__main__":
    main()
