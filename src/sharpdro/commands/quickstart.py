"""sharpdro quickstart: ERM vs SharpDRO on the embedded digits with Gaussian noise, side by side.

One seed of a small setting, printed as it comes (whichever method wins): each method's per-severity test
accuracy as soon as it finishes, then the table. A comparison with intervals over seeds is the reproduction's.
"""
from __future__ import annotations

#: Where the statistically meaningful comparison lives (the quickstart's last line points there).
REPRODUCTION = "docs/results/cifar10_cpu/README.md"


def add_parser(sub) -> None:
    from sharpdro.cli import add_config_args

    p = sub.add_parser("quickstart", help="train ERM and SharpDRO on the embedded digits data (no download) and "
                                          "print their per-severity test accuracy side by side")
    add_config_args(p, required=False)
    p.add_argument("--algorithms", default="erm,sharpdro",
                   help="comma-separated algorithms to compare (default: erm,sharpdro)")
    p.add_argument("--out", default="runs/quickstart", help="parent folder of the runs (default: runs/quickstart)")
    p.set_defaults(func=run, config="quickstart")


def run(args) -> int:
    from pathlib import Path

    from sharpdro.config import load_config
    from sharpdro.data.splits import build_splits
    from sharpdro.engine import format_severity_table, train

    names = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    base = load_config(args.config or "quickstart", args.overrides)
    d, seed = base["data"], base["seed"]
    print(f"seed {seed} (one run per method, not a selection; another: --set seed=N)", flush=True)
    splits = build_splits(base, progress=base["train"]["progress"])  # shared by every algorithm
    columns = {}
    # Sequential on purpose: each method's result line comes before the next method starts training.
    for name in names:
        cfg = load_config(args.config or "quickstart", [*args.overrides, f"algorithm.name={name}"])
        # resume=True: a finished run is read back instead of retrained, an interrupted one continues; other
        # settings are another run, in their own folder (named by the hash of what the settings compute).
        summary = train(cfg, out_dir=Path(args.out) / run_name(cfg), resume=True, splits=splits)
        columns[name] = {"accuracy": summary["test_accuracy"], "average": summary["test_average"],
                         "worst": summary["test_worst"], "epoch": summary["selected_epoch"],
                         "epochs": summary["epochs"]}
        print(result_line(name, seed, columns[name]), flush=True)
    h, w = splits.image_shape[:2]
    print()
    print(format_severity_table(columns, gap=True,
                                title=f"test accuracy (%) per severity: {d['dataset']} {h}x{w}, {d['corruption']} "
                                      f"({d['table']} constants), seed {seed}, "
                                      f"model selected on the worst validation severity"))
    if len(columns) > 1:
        print("\n" + verdict_line(columns))
    print(f"\nruns: {args.out}/<algorithm>-<hash of the settings>  (metrics.jsonl, summary.json, checkpoints/)")
    print(f"This is one seed of a small setting; for a comparison with intervals over seeds, see {REPRODUCTION}.")
    return 0


def result_line(name: str, seed: int, block: dict) -> str:
    """``NAME (seed N): test accuracy (%) at severity 0..S: ... | average | worst | gap 0-S | epoch K of E``:
    the numbers are those of epoch K (counted from 1), the one selected on validation."""
    from sharpdro.engine import severity_gap

    acc = block["accuracy"]
    S = max(int(s) for s in acc)
    return (f"{name} (seed {seed}): test accuracy (%) at severity 0..{S}: "
            + " ".join(f"{100 * acc[str(s)]:.2f}" for s in range(S + 1))
            + f" | average {100 * block['average']:.2f} | worst {100 * block['worst']:.2f}"
            f" | gap 0-{S} {100 * severity_gap(block):.2f}"
            + (f" | epoch {block['epoch'] + 1} of {block['epochs']} (selected on validation)" if "epoch" in block
               else ""))


def verdict_line(columns: dict) -> str:
    """Which method is ahead at the worst severity, and by how much, said as what it is: one seed."""
    ranked = sorted(columns, key=lambda n: -columns[n]["worst"])
    best, rest = ranked[0], ranked[1:]
    gap = 100 * (columns[best]["worst"] - columns[rest[0]]["worst"])
    others = ", ".join(f"{n} {100 * columns[n]['worst']:.2f}%" for n in rest)
    if round(gap, 2) == 0:
        lead = f"at the worst severity {best} and {rest[0]} are even ({100 * columns[best]['worst']:.2f}%)"
    else:
        lead = (f"at the worst severity {best} is ahead: {100 * columns[best]['worst']:.2f}% against {others} "
                f"({gap:.2f} points)")
    return lead[0].upper() + lead[1:] + "; one seed decides nothing (another seed or thread count can reverse it)."


def run_name(cfg: dict) -> str:
    """``<algorithm>-<hash>``: the hash covers every key except the runtime ones (progress, device...); the
    thread count counts (another one computes other numbers: config.RESUME_SAME)."""
    from sharpdro.config import RESUME_SAME, RUNTIME_KEYS, config_hash

    ignored = set(RUNTIME_KEYS) - set(RESUME_SAME)
    kept = {s: ({k: v for k, v in cfg[s].items() if f"{s}.{k}" not in ignored} if isinstance(cfg[s], dict)
                else cfg[s]) for s in cfg}
    return f"{cfg['algorithm']['name']}-{config_hash(kept, 8)}"
