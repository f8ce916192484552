"""sharpdro export-logs RUN_OR_SWEEP --to tensorboard|mlflow|wandb: finished runs' metrics to a tracker."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export-logs", help="write the metrics of finished runs (or a sweep) to TensorBoard, MLflow "
                                           "or W&B",
                       description="Mirror every run's metrics.jsonl under RUN_OR_SWEEP to a tracker, as "
                                   "output.loggers does while training: flattened names (test/acc/sev3), the epoch "
                                   "as the step, the resolved config as hyperparameters. TensorBoard event files go "
                                   "to <run>/tensorboard (or --out DIR/<run>); MLflow to $MLFLOW_TRACKING_URI or the "
                                   "SQLite database <parent>/mlruns/mlflow.db; W&B offline under <run>/wandb.")
    p.add_argument("path", metavar="RUN_OR_SWEEP", help="a run directory or a folder of runs (a sweep)")
    p.add_argument("--to", choices=("tensorboard", "mlflow", "wandb"), default="tensorboard",
                   help="tracker (default tensorboard)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="tensorboard: write DIR/<run name>/ instead of each run's tensorboard/ folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.loggers import export_logs

    done = export_logs(args.path, to=args.to, out=args.out)
    for d in done:
        print(d)
    print(f"{len(done)} run(s) -> {args.to}")
    return 0
