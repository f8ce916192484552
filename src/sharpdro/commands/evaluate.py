"""sharpdro evaluate RUN_DIR_OR_CHECKPOINT [--set data.corruption=...] [--severity 0 3 5] [--cifar-c DIR | --imagenet-c DIR]"""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run per severity on any dataset / corruption",
                       description="Evaluate a run directory (its best checkpoint) or a checkpoint file per "
                                   "severity. --set changes the data config (dataset, corruption, table, ...); "
                                   "--cifar-c evaluates on a CIFAR-10-C / CIFAR-100-C folder.")
    p.add_argument("path", help="run directory or checkpoint file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override the run's config for evaluation, e.g. --set data.corruption=jpeg_compression")
    p.add_argument("--severity", type=int, nargs="+", help="only these severities")
    p.add_argument("--cifar-c", metavar="DIR",
                   help="the standard benchmark on a CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy + labels.npy): "
                        "every corruption found (15 standard + 4 extra types) at severities 1-5, clean accuracy, "
                        "mean corruption accuracy")
    p.add_argument("--imagenet-c", metavar="DIR",
                   help="the same on an ImageNet-C folder (<corruption>/<severity>/<class>/<image>)")
    p.add_argument("--reference", metavar="RUN_OR_JSON",
                   help="with --cifar-c / --imagenet-c: a run (or an earlier result JSON) to compute mCE against")
    p.add_argument("--corruptions", nargs="+", metavar="NAME",
                   help="with --cifar-c / --imagenet-c: only these corruption types")
    p.add_argument("--no-clean", action="store_true",
                   help="with --cifar-c / --imagenet-c: skip the clean accuracy (the run's own test split, severity 0)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    p.add_argument("--json", dest="json_out", help="write the result here (default: a file in the run directory named after the data)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.io import WriteError

    try:
        return _run(args)
    except WriteError as exc:  # e.g. a run on a read-only file system: the result was printed already
        raise WriteError(exc.errno, f"{exc} with --json PATH (the result is printed above)") from None


def _run(args) -> int:
    if args.cifar_c or args.imagenet_c:  # the standard corruption benchmark: sharpdro.robustness
        from sharpdro.robustness import run_command

        return run_command(args)
    from sharpdro.calibration import format_calibration
    from sharpdro.engine import evaluate_run, format_severity_table, write_evaluation

    res = evaluate_run(args.path, args.overrides, severities=args.severity, cifar_c=args.cifar_c,
                       device=args.device)
    label = f"{res['algorithm']} ({res['model']})"
    from sharpdro.data.groups import group_names_of

    print(format_severity_table({label: res["test"]},
                                title=f"test accuracy (%) on {res['dataset']} / {res['corruption']}",
                                group_names=group_names_of(res)))
    print(format_calibration(res["test"], group_names_of(res)))
    print(f"-> {write_evaluation(res, args.json_out)}")
    return 0
