"""sharpdro show [-c CONFIG] [--set k=v ...] [--corruption NAME] [--n 6] [--table auto] [--seed 0] --out grid.png"""
from __future__ import annotations

import os


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


def pick_images(labels, n: int):
    """Indices of ``n`` images, one per class in class order first (then the next image of each class...)."""
    import numpy as np

    labels = np.asarray(labels)
    n = min(n, len(labels))
    order = np.argsort(labels, kind="stable")
    # rank of each image within its class, in dataset order
    first = np.searchsorted(labels[order], labels[order], side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - first
    picked = np.lexsort((labels, rank))[:n]  # by rank, then by class
    return picked


_PARAM_LABEL = {
    "gaussian_noise": "\u03c3 =",
    "shot_noise": "c =",
    "impulse_noise": "p =",
    "speckle_noise": "\u03c3 =",
    "jpeg_compression": "quality",
}


def write_severity_grid(images, name: str, table: str, seed, path: str | os.PathLike,
                        row_labels=None, dpi: int = 100) -> str:
    """Write a PNG grid of ``images`` (uint8 [N,H,W,3]) corrupted by ``name`` at severities 0..5.

    Rows are the images, columns the severities; the column titles give the severity and its constant in
    the resolved ``table``. Returns the resolved table name. The file is written atomically.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sharpdro.data.corruptions import MAX_SEVERITY, corrupt, resolve_table, severity_parameter
    from sharpdro.errors import SharpDROError
    from sharpdro.io import atomic_save

    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise SharpDROError(f"need at least one image [N,H,W,3] to show, got shape {images.shape}")
    resolved = resolve_table(table, images.shape[1:3])
    columns = [corrupt(images, name, s, seed, table=resolved) for s in range(MAX_SEVERITY + 1)]
    n, ncol = len(images), MAX_SEVERITY + 1

    cell = 1.6
    fig = Figure(figsize=(cell * ncol + (0.6 if row_labels is not None else 0.2), cell * n + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, ncol, squeeze=False)
    for s in range(ncol):
        c = severity_parameter(name, s, resolved)
        axes[0, s].set_title("clean (0)" if s == 0 else f"severity {s}\n{_PARAM_LABEL[name]} {c:g}", fontsize=9)
        for i in range(n):
            ax = axes[i, s]
            ax.imshow(columns[s][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[i]), fontsize=8)
    fig.suptitle(f"{name} ({resolved} table, {images.shape[1]}x{images.shape[2]} px)", fontsize=11)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return resolved


def run(args) -> int:
    from sharpdro.config import load_config
    from sharpdro.data.corruptions import CORRUPTIONS, CorruptionError
    from sharpdro.data.sources import load_dataset

    cfg = load_config(args.config, args.overrides)
    name = args.corruption or cfg["data"]["corruption"]
    if name not in CORRUPTIONS:
        raise CorruptionError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if args.n < 1:
        raise CorruptionError(f"--n must be >= 1, got {args.n}")
    table = args.table or cfg["data"]["table"]
    seed = cfg["seed"] if args.seed is None else args.seed
    if seed < 0:
        raise CorruptionError(f"--seed must be >= 0, got {seed}")

    train, test = load_dataset(cfg["data"])
    source = test if args.split == "test" else train
    idx = pick_images(source.labels, args.n)
    images = source.images[idx]
    labels = [source.classes[int(k)] for k in source.labels[idx]]
    resolved = write_severity_grid(images, name, table, seed, args.out, row_labels=labels)
    print(f"wrote {args.out}: {len(idx)} {cfg['data']['dataset']} {args.split} images x severities 0..5 of "
          f"{name} ({resolved} table, seed {seed})")
    return 0
