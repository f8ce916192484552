"""sharpdro info -c CONFIG [--set k=v ...]"""
from __future__ import annotations


def add_parser(sub) -> None:
    from sharpdro.cli import add_config_args

    p = sub.add_parser("info", help="print the split of a config: training images per class and severity, "
                                    "validation and test sizes",
                       description="Load the dataset and compute the split (no corruption, nothing written); "
                                   "says whether the cache already holds the corrupted arrays.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.config import load_config
    from sharpdro.data.splits import describe_split

    for line in describe_split(load_config(args.config, args.overrides)):
        print(line)
    return 0
