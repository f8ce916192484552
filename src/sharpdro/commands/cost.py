"""``sharpdro cost``: what a sweep's finished runs cost, per method, tuning apart from the reported runs."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cost",
        help="CPU-hours of a sweep's finished runs per data, corruption and method; tuning trials apart",
        description="Sum, per data, corruption and method (and tune-block variant), the compute of the "
                    "finished runs under SWEEP_DIR: each run's recorded wall-clock time times its "
                    "train.threads, split into tuning runs (the tune block's tuning seeds) and the runs the "
                    "report shows (final seeds, variants), with block and overall totals, and an estimate of the "
                    "compute still ahead (unfinished jobs, and the final jobs a tune block adds after selection). "
                    "The figures include any slowdown from runs sharing the machine.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument("--format", default=None, metavar="md,csv,json",
                   help="output formats (default: md printed; all three with --out)")
    p.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.md, PREFIX.csv, PREFIX.json")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from sharpdro.experiments import cost
    from sharpdro.io import atomic_write_text

    formats = [f.strip().lower() for f in (args.format or "").split(",") if f.strip()]
    formats = formats or (list(cost.FORMATS) if args.out else ["md"])
    rows, tune = cost.collect_cost(args.sweep_dir)
    texts = {fmt: cost.render(rows, fmt, tune) for fmt in formats}  # every format checked before anything is written
    if not args.out:
        for fmt in formats:
            print(texts[fmt], end="")
        return 0
    prefix = Path(args.out)
    for fmt, text in texts.items():
        path = prefix.with_name(prefix.name + "." + fmt)
        atomic_write_text(path, text)
        print(path)
    return 0
