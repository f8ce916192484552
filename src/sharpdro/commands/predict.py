"""sharpdro predict CHECKPOINT IMAGE..."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained checkpoint")
    p.add_argument("checkpoint", help="run directory or checkpoint file")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--top", type=int, default=1, help="print the top-k classes")
    p.add_argument("--device", help="cpu, cuda, ...")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    import numpy as np

    from sharpdro.backends.base import finite_logits, get_backend
    from sharpdro.data.sources import decode_image
    from sharpdro.errors import DataError
    from sharpdro.rundir import checkpoint_backend, find_checkpoint

    ckpt = find_checkpoint(args.checkpoint)
    session, cfg = get_backend(checkpoint_backend(ckpt)).load_for_inference(ckpt, device=args.device)
    h, w = session.image_shape[:2]
    paths, batch, failed = [], [], []
    for path in args.images:
        try:
            batch.append(decode_image(path, (h, w)))  # the decoder training uses (16-bit, palette, alpha)
            paths.append(path)
        except DataError as exc:  # report it and go on with the others
            failed.append(path)
            print(f"sharpdro predict: error: {exc}", file=sys.stderr)
    if batch:
        _print_top(paths, finite_logits(session, np.stack(batch), cfg["eval"]["batch_size"]), session.classes,
                   args.top)
    if failed:
        print(f"sharpdro predict: {len(failed)} of {len(args.images)} image(s) could not be read "
              f"(listed above); the others are classified", file=sys.stderr)
        return 1
    return 0


def _print_top(paths, logits, classes, top: int) -> None:
    import numpy as np

    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for path, p in zip(paths, probs):
        best = np.argsort(-p)[:top]
        print(f"{path}: " + ", ".join(f"{classes[i]} ({100 * p[i]:.1f}%)" for i in best))
