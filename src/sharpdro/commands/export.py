"""sharpdro export RUN --out DIR: the selected model as model.safetensors + config.json."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="a run's model as model.safetensors + config.json (load_pretrained reads it)",
                       description="Write the run's selected model (its best checkpoint, else its last; or a "
                                   "checkpoint file of either backend) to DIR: model.safetensors (weights only) and "
                                   "config.json (architecture, classes, normalisation, the run's config hash and "
                                   "selected epoch). sharpdro.load_pretrained(DIR) returns a torch.nn.Module taking "
                                   "[0, 1] NCHW images; model.init_from=DIR starts a run from it.")
    p.add_argument("path", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (created)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.export import CONFIG_FILE, MODEL_FILE, export_run, read_export_config

    out = export_run(args.path, args.out)
    meta = read_export_config(out)
    arch = meta["architecture"]
    index = meta["selected_epoch"]  # 0-based in the file; a person reads epochs from 1
    epoch = "epoch unknown" if index is None else f"epoch {index + 1}"
    print(f"{args.path} -> {out}/{MODEL_FILE} + {CONFIG_FILE}: {arch['name']} ({arch['num_classes']} classes, "
          f"{arch['image_size']} px), {epoch}, config {meta['config_hash']}")
    return 0
