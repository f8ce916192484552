"""``sharpdro plot``: figures of a sweep or a run (PNG and SVG)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="figures of a sweep or run: accuracy vs severity, group weights q, training curves",
        description="Accuracy vs severity per method (mean ± std band over seeds), the group weights q over "
                    "training (per severity) and training curves (train loss; val/test averaged and worst "
                    "accuracy per epoch), as PNG and SVG.",
    )
    p.add_argument("path", metavar="SWEEP_DIR_OR_RUN_DIR")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: PATH/plots)")
    p.add_argument("--selection", default="worst",
                   choices=("worst", "average", "last", "oracle_worst", "oracle_average"),
                   help="epoch of each run in the accuracy-vs-severity figure (default worst)")
    p.add_argument("--format", default="png,svg", metavar="png,svg", help="image formats (default png,svg)")
    p.add_argument("--group-by", default="auto", metavar="KEY[,KEY...]",
                   help="as in sharpdro report: auto, none, or a comma list of config keys")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.commands.report import parse_group_by
    from sharpdro.experiments.plots import plot_dir
    from sharpdro.experiments.report import ReportError

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise ReportError(f"--format: unknown image format(s) {', '.join(bad) or '(none)'}; use png, svg, pdf")
    paths = plot_dir(args.path, args.out, args.selection, formats, parse_group_by(args.group_by))
    for p in paths:
        print(p)
    if not paths:
        print("no figure: no finished run with metrics under", args.path)
    return 0
