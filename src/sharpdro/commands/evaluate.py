"""sharpdro evaluate RUN_DIR_OR_CHECKPOINT [--set data.corruption=...] [--severity 0 3 5] [--cifar-c DIR]"""
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
    p.add_argument("--cifar-c", help="CIFAR-10-C style folder (<corruption>.npy + labels.npy)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    p.add_argument("--json", dest="json_out", help="write the result here (default: a file in the run directory named after the data)")
    p.set_defaults(func=run)


def run(args) -> int:

    from sharpdro.engine import evaluate_run, evaluation_tag, format_severity_table
    from sharpdro.io import atomic_write_json
    from sharpdro.rundir import run_of_checkpoint

    res = evaluate_run(args.path, args.overrides, severities=args.severity, cifar_c=args.cifar_c,
                       device=args.device)
    label = f"{res['algorithm']} ({res['model']})"
    print(format_severity_table({label: res["test"]},
                                title=f"test accuracy (%) on {res['dataset']} / {res['corruption']}"))
    out = args.json_out
    if out is None:
        out = run_of_checkpoint(res["checkpoint"]).evaluation(evaluation_tag(res))  # one file per data config
    atomic_write_json(out, res)
    print(f"-> {out}")
    return 0
