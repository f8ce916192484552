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
    import numpy as np
    from PIL import Image

    from sharpdro.backends.base import get_backend
    from sharpdro.rundir import checkpoint_backend, find_checkpoint
    from sharpdro.errors import DataError

    ckpt = find_checkpoint(args.checkpoint)
    session, cfg = get_backend(checkpoint_backend(ckpt)).load_for_inference(ckpt, device=args.device)
    h, w = session.image_shape[:2]
    batch = []
    for path in args.images:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BICUBIC)
                batch.append(np.asarray(im, dtype=np.uint8))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    logits = session.predict_logits(np.stack(batch), cfg["eval"]["batch_size"])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = session.classes
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[: args.top]
        names = [classes[i] for i in top]
        print(f"{path}: " + ", ".join(f"{n} ({100 * p[i]:.1f}%)" for n, i in zip(names, top)))
    return 0
