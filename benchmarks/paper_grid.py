"""Time per epoch and GPU-hours of the paper sweeps (configs/sweeps/paper_*.yaml).

    python benchmarks/paper_grid.py                     # the figures of docs/paper_protocol.md
    python benchmarks/paper_grid.py --gpu-tflops 20     # another assumed GPU throughput

Inputs: ``benchmarks/results/paper-<dataset>-cpu.json``, written by ``sharpdro bench --json`` on
this CPU (ERM and SharpDRO steps at the recipe's batch, 1 thread; evaluation; the network's
forward multiply-accumulates), and the sweep files themselves: their trial jobs (``expand``)
and their final jobs (``tune.final_seeds`` per method and grid point).

What one run computes, in passes over images (read from the methods' code):

- an epoch: ceil(N / B) steps, each image one forward+backward (ERM, GroupDRO, JTT, EIIL's
  learner, agnostic SharpDRO's warm-up epochs) or two (SAM, SharpDRO, agnostic SharpDRO);
- JTT: T identification epochs and a forward over the training set, then epochs of
  N + lambda |E| images; |E| / N is not known before the run: ``--jtt-error-fraction``;
- EIIL: ``eiil_epochs`` reference epochs (null: ``train.epochs``), each with a validation
  forward, a forward over the training set, then the learner's epochs; the inference's Adam
  steps on N assignment logits are left out (tiny next to a pass of the network);
- every epoch: validation and test at every severity (forward only).

CPU (measured): step CPU time (median) x steps + evaluated images x the measured forward time
per image.  GPU (an ESTIMATE, nothing was run on a GPU): FLOPs = 2 x MACs x (3 per image
trained with one forward+backward, 1 per image only forwarded) / ``--gpu-tflops``.  A final
job's method is known but not its selected trial: it is costed as the mean of that method's trials.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sharpdro.data.splits import per_class_floor_counts, val_per_class
from sharpdro.experiments.sweep_spec import expand, load_sweep

ROOT = Path(__file__).resolve().parent
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet30": 30}
TEST_IMAGES = {"cifar10": 10000, "cifar100": 10000, "imagenet30": 3000}  # ImageNet-30: 100 test images per class
TWO_PASS = {"sam", "sharpdro", "sharpdro_agnostic"}


def sizes(cfg: dict) -> dict:
    """Training images (per_class_floor), evaluated images per epoch (validation + test, every severity)."""
    d, name = cfg["data"], cfg["data"]["dataset"]
    k = CLASSES[name]
    n = k * int(per_class_floor_counts(d["train_per_class"], d["poisson_lambda"], d["max_severity"]).sum())
    val = k * val_per_class(d) * (d["max_severity"] + 1)
    return {"train": n, "val": val, "eval": val + TEST_IMAGES[name] * (d["max_severity"] + 1)}


def run_cost(cfg: dict, jtt_error_fraction: float) -> dict:
    """Steps of one-pass and two-pass training, images forwarded only, over the whole run."""
    a, t, size = cfg["algorithm"], cfg["train"], sizes(cfg)
    steps = math.ceil(size["train"] / t["batch_size"])
    epochs, name = t["epochs"], a["name"]
    one = two = 0
    forward = epochs * size["eval"]
    if name in TWO_PASS:
        warm = a["warmup_epochs"] if name == "sharpdro_agnostic" and a["select"] == "global" else 0
        one, two = warm * steps, (epochs - warm) * steps
    elif name == "jtt":
        grown = size["train"] * (1 + a["jtt_lambda_up"] * jtt_error_fraction)
        one = a["jtt_epochs"] * steps + epochs * math.ceil(grown / t["batch_size"])
        forward += size["train"]
    elif name == "eiil":
        ref = a["eiil_epochs"] or epochs
        one = (ref + epochs) * steps
        forward += ref * size["val"] + size["train"]
    else:
        one = epochs * steps
    return {"one": one, "two": two, "forward": forward, "batch": t["batch_size"]}


def cpu_hours(c: dict, bench: dict) -> float:
    r = bench["results"]
    per_image = bench["eval_cpu_seconds"] / bench["eval_images"]
    sec = (c["one"] * r["erm"]["step_cpu_seconds_median"] + c["two"] * r["sharpdro"]["step_cpu_seconds_median"]
           + c["forward"] * per_image)
    return sec / 3600


def gpu_hours(c: dict, macs: int, tflops: float) -> float:
    flops = 2 * macs * (3 * c["batch"] * (c["one"] + 2 * c["two"]) + c["forward"])
    return flops / (tflops * 1e12) / 3600


def sweep_groups(name: str) -> tuple[dict, int]:
    """The trial configs of each (grid point, method), and the final seeds each of them gets."""
    spec = load_sweep(ROOT.parent / "configs" / "sweeps" / f"{name}.yaml")
    groups: dict[tuple, list] = {}
    for job in expand(spec):
        point = tuple(o for o in job.varying if o.split("=", 1)[0] in spec.grid)
        groups.setdefault((point, job.config["algorithm"]["name"]), []).append(job.config)
    return groups, len(spec.tune["final_seeds"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-tflops", type=float, default=8.0,
                   help="assumed sustained throughput of one GPU in TFLOP/s (default 8: an A100 in fp32 with "
                        "TF32 convolutions)")
    p.add_argument("--jtt-error-fraction", type=float, default=0.5, help="assumed |E| / N of JTT's error set")
    args = p.parse_args()
    for dataset in ("cifar10", "cifar100", "imagenet30"):
        bench = json.loads((ROOT / "results" / f"paper-{dataset}-cpu.json").read_text())
        groups, n_seeds = sweep_groups(f"paper_{dataset}")
        cfg0 = next(iter(groups.values()))[0]
        macs, batch = bench["forward_macs_per_image"], cfg0["train"]["batch_size"]
        if bench["batch_size"] != batch:
            raise SystemExit(f"{dataset}: the bench ran at batch {bench['batch_size']}, the recipe's is {batch}")
        size = sizes(cfg0)
        steps = math.ceil(size["train"] / batch)
        evals = size["eval"] * bench["eval_cpu_seconds"] / bench["eval_images"]
        n_trials = sum(len(v) for v in groups.values())
        print(f"## {dataset}: {cfg0['model']['name']}, {size['train']} training images ({steps} steps of {batch}), "
              f"{size['eval']} evaluated images per epoch, {macs / 1e6:.1f} M MACs per image; "
              f"{n_trials} trial + {len(groups) * n_seeds} final jobs")
        for m in ("erm", "sharpdro"):
            r = bench["results"][m]
            c = run_cost(dict(cfg0, algorithm=dict(cfg0["algorithm"], name=m), train=dict(cfg0["train"], epochs=1)),
                         args.jtt_error_fraction)
            print(f"  {m}: CPU step {r['step_cpu_seconds_median']:.2f} s CPU time ({r['step_seconds_median']:.2f} s "
                  f"wall, shared machine): {steps * r['step_cpu_seconds_median'] / 60:.1f} min training + "
                  f"{evals / 60:.1f} min evaluation per epoch = {cpu_hours(c, bench) * 60:.1f} min; "
                  f"GPU estimate {gpu_hours(c, macs, args.gpu_tflops) * 3600:.0f} s per epoch, "
                  f"{gpu_hours(c, macs, args.gpu_tflops) * cfg0['train']['epochs']:.2f} h per run")
        per_method: dict[str, list] = {}
        cpu_total = 0.0
        for (_, m), cfgs in groups.items():
            costs = [run_cost(c, args.jtt_error_fraction) for c in cfgs]
            hours = [gpu_hours(c, macs, args.gpu_tflops) for c in costs]
            per_method.setdefault(m, []).append((hours, sum(hours) + n_seeds * sum(hours) / len(hours)))
            cpu = [cpu_hours(c, bench) for c in costs]
            cpu_total += sum(cpu) + n_seeds * sum(cpu) / len(cpu)
        total = 0.0
        for m, rows in per_method.items():
            runs = [h for hours, _ in rows for h in hours]
            grid = sum(g for _, g in rows)
            total += grid
            print(f"  {m}: {len(runs)} trial runs of {min(runs):.1f}-{max(runs):.1f} GPU-h, "
                  f"{len(rows) * n_seeds} finals; {grid:.0f} GPU-h")
        print(f"  grid: {total:.0f} GPU-hours at {args.gpu_tflops:g} TFLOP/s (JTT's |E|/N = "
              f"{args.jtt_error_fraction:g}); on one core of this CPU: {cpu_total:.0f} core-hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
