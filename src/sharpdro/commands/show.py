"""sharpdro show [-c CONFIG] [--set k=v ...] [--corruption NAME] [--n 6] [--table auto] [--seed 0] --out grid.png"""
from __future__ import annotations


def add_parser(sub) -> None:
    from sharpdro.cli import add_config_args

    p = sub.add_parser("show", help="write a PNG grid of a few images at every corruption severity 0..5",
                       description="Load a few images of the config's dataset and write a PNG grid: one row per "
                                   "image, one column per severity 0 (clean) .. 5, each column titled with its "
                                   "severity constant. Without -c, the default config (embedded digits) is used.")
    add_config_args(p, required=False)
    p.add_argument("--corruption", default=None, metavar="NAME",
                   help="corruption to show (default: the config's data.corruption); one of gaussian_noise, "
                        "shot_noise, impulse_noise, speckle_noise, jpeg_compression")
    p.add_argument("--n", type=int, default=6, help="number of images (rows), default 6")
    p.add_argument("--table", default=None, choices=("auto", "cifar", "imagenet"),
                   help="severity constants (default: the config's data.table, auto = by image size)")
    p.add_argument("--seed", type=int, default=None, help="corruption seed (default: the config's seed)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="split the images come from")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.config import load_config
    from sharpdro.experiments.plots import show_severities

    cfg = load_config(args.config, args.overrides)
    shown = show_severities(cfg, args.out, corruption=args.corruption, n=args.n, table=args.table, seed=args.seed,
                            split=args.split)
    print(f"wrote {args.out}: {shown['images']} {cfg['data']['dataset']} {args.split} images x severities 0..5 of "
          f"{shown['corruption']} ({shown['table']} table, seed {shown['seed']})")
    return 0
