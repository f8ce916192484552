"""``sharpdro report``: tables of a sweep (mean ± std and 95% CI over seeds per dataset, corruption and method;
paired differences against the reference methods)."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="tables of a sweep: averaged, worst and per-severity test accuracy, mean ± std and 95%% CI over seeds, "
             "paired differences against ERM, JTT and EIIL",
        description="Read every run under SWEEP_DIR (config.yaml + metrics.jsonl), select each run's epoch with "
                    "--selection, group runs by dataset, corruption, method and every swept hyperparameter but "
                    "the seed, and print mean ± sample std (ddof=1) over seeds with a 95% Student-t interval of "
                    "the averaged and worst-severity accuracy. A second table pairs every method with the "
                    "reference methods ERM, JTT and EIIL of its block seed by seed: the mean difference in "
                    "percentage points, its 95% t-interval and whether it excludes zero (with --out, CSV "
                    "writes it to PREFIX_paired.csv). Missing, unfinished and failed runs are counted in the n "
                    "column. Output is deterministic.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="sweep folder (or one run folder)")
    p.add_argument("--selection", default="worst",
                   choices=("worst", "average", "last", "oracle_worst", "oracle_average"),
                   help="model selection (default worst): worst / average validation accuracy, last epoch, or "
                        "oracle_* (on the test set; labelled as oracle). Runs trained with eval.test=selected "
                        "hold test at their own selection's epoch only: report them with that rule")
    p.add_argument("--format", default=None, metavar="md,csv,tex,json",
                   help="output formats (default: md printed; all four with --out)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="write PREFIX.md, PREFIX.csv (and PREFIX_paired.csv), ... instead of printing")
    p.add_argument("--group-by", default="auto", metavar="KEY[,KEY...]",
                   help="config keys that split rows besides dataset/corruption/method: 'auto' (every key that "
                        "differs between runs, seed excepted; the default), 'none', or a comma list such as train.lr")
    p.add_argument("--decimals", type=int, default=2, help="decimals of the percentages (default 2)")
    p.add_argument("--calibration", action="store_true",
                   help="add ECE (%%), NLL and Brier columns: each run's mean over severities at its selected "
                        "epoch, mean ± std over seeds (runs trained before calibration was recorded show –)")
    p.add_argument("--select-hparams", default=None, choices=("worst", "average"),
                   help="one row per dataset, corruption and method: the configuration (of the sweep's tuning "
                        "trials) with the best mean worst-severity (or averaged) validation accuracy; the n column "
                        "says how many trials it was chosen from, one Selected column what was chosen (the "
                        "method's own tuned keys; CSV and JSON keep every key's value too); the tune block's "
                        "variants follow their method's row, and the notes list its narrowed search spaces")
    p.add_argument("--tuning-seeds", default=None, metavar="S[,S...]",
                   help="with --select-hparams: select on the runs of these seeds and report the selected "
                        "configuration's runs on the other seeds (default: the sweep's tune.seeds when it has "
                        "final_seeds, else select and report on every seed)")
    p.set_defaults(func=run)


def parse_group_by(text: str):
    text = (text or "auto").strip()
    if text == "auto":
        return None
    if text == "none":
        return []
    return [k.strip() for k in text.split(",") if k.strip()]


def parse_seeds(text: str | None):
    """``--tuning-seeds 0,1`` -> [0, 1]; None when not given."""
    from sharpdro.experiments.report import ReportError

    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ReportError(f"--tuning-seeds: expected integers separated by commas, got {text!r}") from None


def run(args) -> int:
    from sharpdro.experiments import report as rp
    from sharpdro.experiments import report_formats as rf

    formats = rf.parse_formats(args.format) if args.format else (list(rf.FORMATS) if args.out else ["md"])
    if args.decimals < 0:
        raise rp.ReportError(f"--decimals must be >= 0, got {args.decimals}")
    table = rp.collect(args.sweep_dir, args.selection, parse_group_by(args.group_by), args.decimals,
                       calibration=args.calibration, select_hparams=args.select_hparams,
                       tuning_seeds=parse_seeds(args.tuning_seeds))
    if args.out:
        for path in rf.write_report(table, args.out, formats):
            print(path)
    else:
        print("\n".join(rf.render(table, f) for f in formats), end="")
    return 0
