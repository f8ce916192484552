"""sharpdro prepare -c CONFIG [--set k=v ...] [--rebuild]"""
from __future__ import annotations


def add_parser(sub) -> None:
    from sharpdro.cli import add_config_args

    p = sub.add_parser("prepare", help="build (or verify) the cached corrupted train/val/test arrays of a config",
                       description="Load the dataset, split it by the Poisson severity protocol, corrupt every set "
                                   "and store the arrays in the cache (data.cache_dir, $SHARPDRO_CACHE or "
                                   "~/.cache/sharpdro). An existing entry is verified file by file (SHA-256).")
    add_config_args(p)
    p.add_argument("--rebuild", action="store_true", help="delete this config's cache entry and build it again")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    import numpy as np

    from sharpdro.config import load_config
    from sharpdro.data.splits import build_splits

    t0 = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    splits = build_splits(cfg, progress=cfg["train"]["progress"], cache=True, rebuild=args.rebuild)
    m = splits.meta
    c = m["counts"]
    cache = m["cache"]
    state = "verified" if cache["hit"] else "built"
    print(f"cache entry ({state}): {cache['dir']}")
    print(f"dataset {m['dataset']}, corruption {m['corruption']} (table {m['table']}), protocol {m['protocol']} "
          f"(lambda {m['poisson_lambda']:g}), seed {m['seed']}, images {'x'.join(map(str, splits.image_shape))}")
    counts = np.asarray(c["train"])
    print("train per severity: " + "  ".join(f"{s}:{n}" for s, n in enumerate(counts.tolist()))
          + f"  (total {int(counts.sum())}" + (f", {c['dropped']} dropped by per_class_floor" if c["dropped"] else "")
          + ")")
    print(f"val: {c['val']} images x {splits.num_groups} severities; test: {c['test']} images x "
          f"{splits.num_groups} severities" + (f"; extra test: {c['extra_test']}" if "extra_test" in c else ""))
    if m.get("source_jpeg"):
        j = m["source_jpeg"]
        print(f"source: JPEG files, quality about {j['quality']} (range {j['quality_range'][0]}-{j['quality_range'][1]}, "
              f"{j['jpeg']} of {j['sampled']} sampled files)")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0
