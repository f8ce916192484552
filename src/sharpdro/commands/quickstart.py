"""sharpdro quickstart: ERM vs SharpDRO on the embedded digits with Gaussian noise, side by side."""
from __future__ import annotations


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
    splits = build_splits(base, progress=base["train"]["progress"])  # shared by every algorithm
    columns = {}
    for name in names:
        cfg = load_config(args.config or "quickstart", [*args.overrides, f"algorithm.name={name}"])
        # resume=True: a finished run is read back instead of retrained, an interrupted one continues; other
        # settings are another run, in their own folder (named by the hash of what the settings compute).
        summary = train(cfg, out_dir=Path(args.out) / run_name(cfg), resume=True, splits=splits)
        columns[name] = {"accuracy": summary["test_accuracy"], "average": summary["test_average"],
                         "worst": summary["test_worst"]}
    d = base["data"]
    print()
    print(format_severity_table(columns, title=f"test accuracy (%) per severity: {d['dataset']}, {d['corruption']} "
                                               f"({d['table']} constants), model selected on the worst "
                                               f"validation severity"))
    print(f"\nruns: {args.out}/<algorithm>-<hash of the settings>  (metrics.jsonl, summary.json, checkpoints/)")
    return 0


def run_name(cfg: dict) -> str:
    """``<algorithm>-<hash>``: the hash covers every key except the runtime ones (threads, progress, device...)."""
    from sharpdro.config import RUNTIME_KEYS, config_hash

    kept = {s: ({k: v for k, v in cfg[s].items() if f"{s}.{k}" not in RUNTIME_KEYS} if isinstance(cfg[s], dict)
                else cfg[s]) for s in cfg}
    return f"{cfg['algorithm']['name']}-{config_hash(kept, 8)}"
