"""sharpdro convert SRC OUT [--to torch|mindspore|mindspore-ckpt]: checkpoints between backends."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between the PyTorch and MindSpore backends",
                       description="Convert a checkpoint (file or run directory) written by one backend into the "
                                   "other's format: weights, algorithm state (q, JTT weights, EIIL environments), "
                                   "SGD momentum and RNG states. --to mindspore-ckpt writes the network alone as a "
                                   "native MindSpore .ckpt.")
    p.add_argument("src", help="checkpoint file or run directory (its best checkpoint, else its last)")
    p.add_argument("out", help="output checkpoint file")
    p.add_argument("--to", choices=("auto", "torch", "mindspore", "mindspore-ckpt"), default="auto",
                   help="target format (default: the other backend)")
    p.set_defaults(func=run)


def run(args) -> int:
    # the conversion module imports no framework at module level
    from sharpdro.backends.mindspore import convert
    from pathlib import Path

    from sharpdro.errors import TrainingError
    from sharpdro.io import check_path_name
    from sharpdro.rundir import checkpoint_format, find_checkpoint

    out = Path(args.out)
    check_path_name(out, "OUT")
    if out.is_dir() or (out.exists() and checkpoint_format(out) is None):  # never replace a file it did not write
        raise TrainingError(f"{out} exists and is not a sharpdro checkpoint; nothing was written. Choose another "
                            f"OUT (or move that {'folder' if out.is_dir() else 'file'} away first)")
    src = find_checkpoint(args.src)
    kind = checkpoint_format(src)
    if kind is None:
        raise TrainingError(f"{src} is not a sharpdro checkpoint of either backend")
    to = args.to
    if to == "auto":
        to = "mindspore" if kind == "torch" else "torch"
    if to == kind:
        raise TrainingError(f"{src} is already a {kind} checkpoint")
    if to == "mindspore":
        out = convert.torch_to_mindspore(src, args.out)
    elif to == "torch":
        out = convert.mindspore_to_torch(src, args.out)
    else:
        out = convert.export_mindspore_ckpt(src, args.out)
    print(f"{src} ({kind}) -> {out} ({to})")
    return 0
