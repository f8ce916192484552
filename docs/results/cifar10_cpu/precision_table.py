"""bf16 against fp32, paired by seed: the runs of precision/ against their fp32 partners in imagenet_table/.

Each bf16 run's partner is the job whose config is the same but for ``train.precision: fp32``: its folder
is that config's job hash (the partner is found by identity, never by a list of names).  Per method and
metric (clean = severity 0, averaged over severities 0..5, worst severity), the per-seed difference
bf16 - fp32 in percentage points and its 95% t-interval, the means and the minutes per run.

Writes precision_table.{md,csv,json} beside this file and prints the Markdown.
Usage: python docs/results/cifar10_cpu/precision_table.py [DIR]  (DIR: this folder)
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from sharpdro.config import read_yaml, validate
from sharpdro.experiments.stats import mean_std, paired_differences, t_interval
from sharpdro.experiments.sweep_spec import job_hash

METRICS = (("clean", "clean (severity 0)"), ("average", "averaged over severities"), ("worst", "worst severity"))
NAMES = {"erm": "ERM", "sharpdro": "SharpDRO"}
HARM = 1.0  # points: bf16 is "worse by more than this" when a paired interval's upper end lies below -HARM


def _metric(summary: dict, key: str) -> float:
    if key == "clean":
        return 100.0 * summary["test_accuracy"]["0"]
    return 100.0 * summary[f"test_{key}"]


def pairs(here: Path) -> list[dict]:
    """One entry per finished bf16 run: method, seed, the bf16 and fp32 summaries, the partner's folder."""
    out = []
    for d in sorted((here / "precision").iterdir()):
        if not (d / "done").exists():
            continue
        cfg = validate(read_yaml(d / "config.yaml"))
        assert cfg["train"]["precision"] == "bf16", d
        partner_cfg = {**cfg, "train": {**cfg["train"], "precision": "fp32"}}
        partner = here / "imagenet_table" / job_hash(partner_cfg)
        if not (partner / "done").exists():
            raise SystemExit(f"{d.name}: its fp32 partner {partner} is not a finished run")
        out.append({"method": cfg["algorithm"]["name"], "seed": cfg["seed"], "bf16_run": d.name,
                    "fp32_run": partner.name, "bf16": json.loads((d / "summary.json").read_text()),
                    "fp32": json.loads((partner / "summary.json").read_text())})
    return out


def rows(here: Path) -> list[dict]:
    found = pairs(here)
    table = []
    for method in NAMES:
        mine = sorted((p for p in found if p["method"] == method), key=lambda p: p["seed"])
        if not mine:
            continue
        for key, label in METRICS:
            b = {p["seed"]: _metric(p["bf16"], key) for p in mine}
            f = {p["seed"]: _metric(p["fp32"], key) for p in mine}
            seeds, diffs = paired_differences(b, f)
            ci = t_interval(diffs)
            table.append({
                "method": NAMES[method], "metric": label, "seeds": seeds,
                "fp32_mean": mean_std(list(f.values()))[0], "bf16_mean": mean_std(list(b.values()))[0],
                "differences": [round(x, 4) for x in diffs], "mean_difference": ci.mean,
                "low": ci.lo, "high": ci.hi,
                "bf16_minutes_per_run": sum(p["bf16"]["wall_seconds"] for p in mine) / 60 / len(mine),
                "fp32_minutes_per_run": sum(p["fp32"]["wall_seconds"] for p in mine) / 60 / len(mine),
                "bf16_runs": [p["bf16_run"] for p in mine], "fp32_runs": [p["fp32_run"] for p in mine],
                "bf16_hardware": [p["bf16"].get("hardware") or {} for p in mine],
            })
    return table


def verdict(table: list[dict]) -> str:
    """The rule set before the runs (a paired interval whose upper end lies below -HARM keeps fp32), and what
    the intervals leave open: the largest harm each method's intervals do not rule out."""
    harmed = [r for r in table if r["high"] is not None and r["high"] < -HARM]
    if harmed:
        which = "; ".join(f"{r['method']}, {r['metric']}: {r['mean_difference']:+.1f} "
                          f"[{r['low']:+.1f}, {r['high']:+.1f}]" for r in harmed)
        return (f"bf16 is worse than fp32 by more than {HARM:g} point with an interval that excludes it in: "
                f"{which}. The reproductions keep fp32.")
    n = min(len(r["seeds"]) for r in table)
    lows = {}
    for r in table:
        lows[r["method"]] = min(lows.get(r["method"], r["low"]), r["low"])
    reach = ", ".join(f"{m} {lo:+.1f}" for m, lo in lows.items())
    negative = sum(r["mean_difference"] < 0 for r in table)
    return (f"No paired interval puts bf16 more than {HARM:g} point below fp32 (every upper end is above "
            f"-{HARM:g}), so by the rule set before the runs the reproductions may train in bf16 where it is fast "
            f"(train.precision: auto). With {n} seeds per method this does not show the two equivalent, nor rule "
            f"out a large harm: the intervals reach down to {reach} points, and {negative} of the {len(table)} "
            f"mean differences are below zero.")


def hardware(table: list[dict]) -> str:
    """Where the bf16 runs ran (their summaries' ``hardware``): the minutes per run depend on it."""
    seen = sorted({json.dumps(h, sort_keys=True) for r in table for h in r["bf16_hardware"]})
    said = []
    for text in seen:
        h = json.loads(text)
        isa = h.get("cpu_isa") or {}
        said.append(f"{h.get('device', '?')}, CPU capability {isa.get('capability', '?')}, AMX-BF16 "
                    f"{'yes' if isa.get('amx_bf16') else 'no'}, AVX512-BF16 {'yes' if isa.get('avx512_bf16') else 'no'}")
    fast = any(json.loads(t).get("fast_bf16") for t in seen)
    return (f"The bf16 runs ran on: {'; '.join(said) or 'unrecorded hardware'}. The minutes per run are "
            f"wall-clock under whatever else shared the machine at the time (the fp32 runs' and the bf16 runs' "
            f"loads differed); benchmarks/README.md compares the two precisions step by step, interleaved. " +
            ("" if fast else "Without those instructions bf16 is emulated (converted to fp32 around each kernel), "
                             "so its minutes per run say nothing of a CPU that has them. The arithmetic is the "
                             "same (bf16 operands, whose products fp32 holds exactly, summed in fp32) up to the "
                             "order of summation."))


def _fmt(x: float | None, sign: bool = False) -> str:
    return "-" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def markdown(table: list[dict]) -> str:
    lines = ["| method | metric | fp32 mean | bf16 mean | bf16 - fp32 per seed | mean [95% interval] | "
             "min/run fp32 | min/run bf16 |", "| --- | --- | ---: | ---: | --- | --- | ---: | ---: |"]
    for r in table:
        per_seed = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(r["seeds"], r["differences"]))
        lines.append(f"| {r['method']} | {r['metric']} | {_fmt(r['fp32_mean'])} | {_fmt(r['bf16_mean'])} | "
                     f"{per_seed} | {_fmt(r['mean_difference'], True)} [{_fmt(r['low'], True)}, "
                     f"{_fmt(r['high'], True)}] | {r['fp32_minutes_per_run']:.1f} | {r['bf16_minutes_per_run']:.1f} |")
    return "\n".join(lines) + "\n\n" + hardware(table) + "\n\n" + verdict(table) + "\n"


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    keys = ["method", "metric", "seeds", "fp32_mean", "bf16_mean", "differences", "mean_difference", "low", "high",
            "fp32_minutes_per_run", "bf16_minutes_per_run"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in table:
        w.writerow([" ".join(map(str, r[k])) if isinstance(r[k], list) else
                    (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in keys])
    return buf.getvalue()


def write(here: Path, out: Path | None = None) -> str:
    """The three files from the runs under ``here``, written to ``out`` (default ``here``)."""
    table = rows(here)
    md = markdown(table)
    out = out or here
    (out / "precision_table.md").write_text(md)
    (out / "precision_table.csv").write_text(to_csv(table))
    (out / "precision_table.json").write_text(json.dumps({"rows": table, "verdict": verdict(table),
                                                           "harm_threshold_points": HARM}, indent=1) + "\n")
    return md


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent), end="")
