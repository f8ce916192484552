"""What the agnostic selection's default score sees, without a model: for each finished agnostic run of the grid,
rebuild its training mixture, score every image as `score: input_hf` does (mean squared 4-neighbour Laplacian of
the normalised input), normalise within each class and select the top fraction f as `select: global` does, then
print the share of each severity selected beside the share the run logged at its last epoch (and the AUROC of
severity >= 3 against clean, on the class-normalised score, beside the run's `agnostic_auroc_train`).

If the two agree, the selection is a property of the images (how a corruption changes their high frequencies),
not of what the network learned. Writes agnostic_input_score.json beside this file.

Usage: python docs/results/cifar10_cpu/agnostic_input_score.py [--data-root DIR]
(DIR: the extracted CIFAR-10 copy the runs used; default: the root in each run's config.yaml)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from sharpdro.data.normalize import channel_mean_std
from sharpdro.data.splits import build_splits
from sharpdro.methods.sharpdro_agnostic import (
    input_high_frequency,
    normalised,
    selection_statistics,
)
from sharpdro.metrics import severity_auroc

HERE = Path(__file__).resolve().parent


def image_scores(images: np.ndarray, mean, std) -> np.ndarray:
    """The input_hf score of uint8 NHWC ``images`` on the per-channel normalised input the network sees."""
    x = (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return input_high_frequency(x.transpose(0, 3, 1, 2))


def measure(run: Path, data_root: str | None) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    if data_root:
        cfg["data"]["root"] = data_root
    train = build_splits(cfg, progress=False).train
    mean, std = channel_mean_std(train.images)
    score = image_scores(train.images, mean, std)
    h = cfg["algorithm"]
    classes = int(train.labels.max()) + 1
    stats, threshold = selection_statistics(score, train.labels, classes, h["fraction"], h["class_normalize"])
    z = normalised(score, train.labels, stats)  # what the selection compares with its threshold
    selected = z >= threshold  # the step selects at or above the threshold
    severities = range(int(train.severity.max()) + 1)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]
    return {
        "run": run.name, "corruption": cfg["data"]["corruption"], "table": cfg["data"]["table"], "seed": cfg["seed"],
        "fraction": h["fraction"],
        "mean_score": [round(float(score[train.severity == k].mean()), 4) for k in severities],
        "selected_share": [round(float(selected[train.severity == k].mean()), 3) for k in severities],
        "logged_selected_share": [round(v, 3) for v in last["agnostic_selected_fraction"]],
        "auroc": round(severity_auroc(z, train.severity), 3),
        "logged_auroc_train": round(last["agnostic_auroc_train"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    rows = []
    for arm in ("imagenet_table", "cifar_table"):
        final_seeds = yaml.safe_load((HERE / f"{arm}.yaml").read_text())["tune"]["final_seeds"]
        for cfg_path in sorted((HERE / arm).glob("*/config.yaml")):
            run = cfg_path.parent
            cfg = yaml.safe_load(cfg_path.read_text())
            if cfg["algorithm"]["name"] != "sharpdro_agnostic" or not (run / "done").exists():
                continue
            if cfg["seed"] not in final_seeds:  # tuning trials: the table's rows are the final seeds
                continue
            if cfg["algorithm"].get("score", "input_hf") != "input_hf":
                continue
            r = measure(run, args.data_root)
            r["arm"] = arm
            rows.append(r)
            print(f"{arm:15s} {r['corruption']:17s} seed {r['seed']} f={r['fraction']:.3f}  selected by the images' "
                  f"score {r['selected_share']}  logged {r['logged_selected_share']}  AUROC {r['auroc']} "
                  f"(logged {r['logged_auroc_train']})", flush=True)
    (HERE / "agnostic_input_score.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
