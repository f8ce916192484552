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
    import numpy as np

    from sharpdro.config import load_config
    from sharpdro.data import cache as cache_mod
    from sharpdro.data.corruptions import resolve_table
    from sharpdro.data.splits import cache_key_fields, load_source, plan_from_config, poisson_proportions

    cfg = load_config(args.config, args.overrides)
    d = cfg["data"]
    S = d["max_severity"]
    train, test = load_source(cfg, progress=cfg["train"]["progress"])
    classes = list(train.classes)
    plan = plan_from_config(cfg, train.labels, test.labels, len(classes))
    counts = plan.train_counts()
    table = resolve_table(d["table"], int(train.images.shape[1]))

    print(f"dataset {d['dataset']}: {len(train)} train / {len(test)} test images of "
          f"{'x'.join(map(str, train.images.shape[1:]))}, {len(classes)} classes")
    pmf = poisson_proportions(float(d["poisson_lambda"]), S)
    print(f"protocol {d['protocol']}, lambda {float(d['poisson_lambda']):g}, severities 0..{S}, Poisson pmf "
          + " ".join(f"{p:.4f}" for p in pmf) + f"; corruption {d['corruption']} (table {table}); seed {cfg['seed']}")
    width = max(5, max(len(c) for c in classes) if classes else 5)
    head = f"{'class':<{width}} " + "".join(f"{'s' + str(s):>7}" for s in range(S + 1)) + f"{'train':>8}{'val':>7}"
    print(head)
    val_pc = np.bincount(train.labels[plan.val_index], minlength=len(classes))
    for c, name in enumerate(classes):
        print(f"{name:<{width}} " + "".join(f"{n:>7}" for n in counts[c]) + f"{counts[c].sum():>8}{val_pc[c]:>7}")
    tot = counts.sum(axis=0)
    print(f"{'total':<{width}} " + "".join(f"{n:>7}" for n in tot) + f"{tot.sum():>8}{val_pc.sum():>7}")
    if len(plan.dropped_index):
        print(f"{len(plan.dropped_index)} picked images dropped by per_class_floor (n - sum of floors per class)")
    for split, index in (("val", plan.val_index), ("test", plan.test_index)):
        print(f"{split}: {len(index)} images at each of {S + 1} severities ({len(index) * (S + 1)} in all)")
    print(validation_cost_line(cfg, len(plan.val_index), len(plan.train_index)))
    key = cache_key_fields(cfg, train, test, table)
    path = cache_mod.entry_path(cache_mod.cache_root(d), key, prefix=f"{d['dataset']}-{d['corruption']}-")
    print(f"cache: {path} ({'present' if path.exists() else 'not built yet: run sharpdro prepare'})")
    return 0


def validation_cost_line(cfg: dict, n_val: int, n_train: int) -> str:
    """How long validation takes relative to training, from image counts: evaluating an image is one forward
    pass, about a third of a training step (forward + backward), which the SAM family runs twice."""
    S, every = cfg["data"]["max_severity"], cfg["eval"]["every"]
    passes = 2 if cfg["algorithm"]["name"] in ("sam", "sharpdro", "sharpdro_agnostic") else 1
    evals = n_val * (S + 1)
    ratio = evals / max(1, 3 * passes * n_train)
    return (f"validation: {evals} image evaluations every {every} epoch(s), about {100 * ratio:.0f}% of an epoch's "
            f"training time ({cfg['algorithm']['name']}); set data.val_per_class to change it")
