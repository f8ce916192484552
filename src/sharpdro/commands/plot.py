"""``sharpdro plot``: figures of a sweep or a run (PNG and SVG)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="figures of a sweep or run: accuracy vs severity, group weights q, training curves",
        description="Accuracy vs severity per method (the mean and a 95% Student-t interval over seeds per "
                    "severity), the group weights q over training (per severity, mean and 95% interval, log axis "
                    "when they span more than a factor 20, 0.02 marked), training curves (train loss; val/test "
                    "averaged and worst accuracy per epoch, ± std) and the agnostic selection's diagnostics, as "
                    "PNG and SVG. With --select-hparams, the rows of `sharpdro report --select-hparams`: one "
                    "line per method (its selected trial on the final seeds) and per tune-block variant.",
    )
    p.add_argument("path", metavar="SWEEP_DIR_OR_RUN_DIR")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: PATH/plots)")
    p.add_argument("--selection", default="worst",
                   choices=("worst", "average", "last", "oracle_worst", "oracle_average"),
                   help="epoch of each run in the accuracy-vs-severity figure (default worst)")
    p.add_argument("--format", default="png,svg", metavar="png,svg", help="image formats (default png,svg)")
    p.add_argument("--group-by", default="auto", metavar="KEY[,KEY...]",
                   help="as in sharpdro report: auto, none, or a comma list of config keys")
    p.add_argument("--select-hparams", default=None, choices=("worst", "average"),
                   help="as in sharpdro report: per dataset, corruption and method only the configuration of "
                        "the best mean worst-severity (or averaged) validation accuracy over the tuning seeds, "
                        "drawn from its runs on the final seeds, and the tune block's variants (labelled with "
                        "their names, their method's colour, their own line style); figures by method, not by "
                        "hyperparameters")
    p.add_argument("--tuning-seeds", default=None, metavar="S[,S...]",
                   help="with --select-hparams, as in sharpdro report (default: the sweep's tune.seeds when it "
                        "has final_seeds, else every seed)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.commands.report import parse_group_by, parse_seeds
    from sharpdro.experiments.plots import plot_dir
    from sharpdro.experiments.report import ReportError

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise ReportError(f"--format: unknown image format(s) {', '.join(bad) or '(none)'}; use png, svg, pdf")
    paths = plot_dir(args.path, args.out, args.selection, formats, parse_group_by(args.group_by),
                     select_hparams=args.select_hparams, tuning_seeds=parse_seeds(args.tuning_seeds))
    for p in paths:
        print(p)
    if not paths:
        print("no figure: no finished run with metrics under", args.path)
    return 0
