"""sharpdro train -c CONFIG [--set k=v ...] [--out DIR] [--resume]"""
from __future__ import annotations


def add_parser(sub) -> None:
    from sharpdro.cli import add_config_args

    p = sub.add_parser("train", help="train one run (SharpDRO or a baseline) and evaluate it per severity",
                       description="Train one run. The run directory receives config.yaml, metrics.jsonl, "
                                   "summary.json, train.log and checkpoints/{last,best}.pt.")
    add_config_args(p)
    p.add_argument("--out", help="run directory (default: output.dir/<dataset>-<corruption>-<algorithm>-...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.add_argument("--allow-optimizer-changes", action="store_true",
                   help="with --resume: continue with a changed train.lr, train.schedule, train.milestones, "
                        "train.gamma or algorithm.rho (e.g. a lower learning rate after a NaN); the change is "
                        "recorded in the run")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.config import load_config
    from sharpdro.engine import run_dir_for, train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, out_dir=args.out, resume=args.resume, allow_changes=args.allow_optimizer_changes)
    from sharpdro.data.groups import group_label, group_names_of, group_word

    acc, names = summary["test_accuracy"], group_names_of(summary)
    word = group_word(names)
    print(f"selected epoch {summary['selected_epoch'] + 1} ({summary['selection']} validation {word}); test "
          f"accuracy per {word}: " + " ".join(f"{group_label(k, names)}:{100 * v:.2f}" for k, v in acc.items()))
    print(f"test average {100 * summary['test_average']:.2f}  worst {100 * summary['test_worst']:.2f}  "
          f"-> {run_dir_for(cfg, args.out)}")
    return 0
