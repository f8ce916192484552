"""JPEG fidelity of the JPEG-q75 CIFAR-10 copy: what each JPEG severity does to a lossless image and to
its q75 copy (PSNR in dB against the lossless original, and against the image the network calls clean), and
what it does to the images' high-frequency energy (the agnostic selection's default score, `input_hf`, on the
[0, 1] scale, x1000), at each severity and along a sweep of qualities.
Usage: python jpeg_fidelity.py CIFAR10_JPEG_ROOT cifar10-lossless-train-first4000.npz > jpeg_fidelity.json"""
import json
import sys

import numpy as np
from PIL import Image

from sharpdro.data.corruptions import TABLES, corrupt, jpeg_round_trip
from sharpdro.data.match import CIFAR10_CLASSES
from sharpdro.methods.sharpdro_agnostic import input_high_frequency

root = sys.argv[1]
d = np.load(sys.argv[2]); x, y = d["x"], d["y"]
rank = np.zeros(len(y), int); seen = {}
for i, c in enumerate(y):
    rank[i] = seen.get(int(c), 0); seen[int(c)] = rank[i] + 1
q75 = np.stack([np.asarray(Image.open(f"{root}/train/{CIFAR10_CLASSES[c]}/{r:04d}.jpg").convert("RGB")) for c, r in zip(y, rank)])

def psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.median(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))))

def hf(a):
    """Mean input_hf score (x1000) of uint8 NHWC images."""
    return float(input_high_frequency(a.transpose(0, 3, 1, 2) / 255.0).mean() * 1000)

def recompress(a, quality):
    """The jpeg_compression corruption's round trip at any quality, not only its tables'."""
    return np.stack([jpeg_round_trip(img, quality) for img in a])

out = {"source_q75_vs_lossless": psnr(q75, x), "hf_lossless": hf(x), "hf_q75": hf(q75)}
for table in ("cifar", "imagenet"):
    rows = []
    for s in range(1, 6):
        a = corrupt(x, "jpeg_compression", s, seed=0, table=table)
        b = corrupt(q75, "jpeg_compression", s, seed=0, table=table)
        rows.append({"severity": s, "quality": TABLES[table]["jpeg_compression"][s - 1],
                     "lossless_corrupted_vs_lossless": psnr(a, x), "q75_corrupted_vs_lossless": psnr(b, x),
                     "q75_corrupted_vs_q75": psnr(b, q75), "hf_lossless_corrupted": hf(a),
                     "hf_q75_corrupted": hf(b)})
    out[table] = rows
# the sweep: a source already quantised at q75 re-quantised at quality q (steps scaling 5000/q below 50,
# 200 - 2q above; twice q75's at q = 50) against a lossless source
out["hf_by_quality"] = [{"quality": q, "hf_lossless_corrupted": hf(recompress(x, q)),
                         "hf_q75_corrupted": hf(recompress(q75, q))}
                        for q in (95, 90, 85, 80, 75, 70, 65, 60, 58, 55, 52, 51, 50, 49, 48, 45, 40, 35, 30, 25, 20, 15, 10, 7)]
print(json.dumps(out, indent=1))
