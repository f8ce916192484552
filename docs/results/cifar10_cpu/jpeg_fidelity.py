"""JPEG fidelity of the JPEG-q75 CIFAR-10 copy: what each JPEG severity does to a lossless image and to
its q75 copy (PSNR in dB against the lossless original, and against the image the network calls clean)."""
import json, sys
import numpy as np
from PIL import Image
from sharpdro.data.corruptions import TABLES, corrupt
from sharpdro.data.match import CIFAR10_CLASSES

root = sys.argv[1]
d = np.load(sys.argv[2]); x, y = d["x"], d["y"]
rank = np.zeros(len(y), int); seen = {}
for i, c in enumerate(y):
    rank[i] = seen.get(int(c), 0); seen[int(c)] = rank[i] + 1
q75 = np.stack([np.asarray(Image.open(f"{root}/train/{CIFAR10_CLASSES[c]}/{r:04d}.jpg").convert("RGB")) for c, r in zip(y, rank)])

def psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.median(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))))

out = {"source_q75_vs_lossless": psnr(q75, x)}
for table in ("cifar", "imagenet"):
    rows = []
    for s in range(1, 6):
        a = corrupt(x, "jpeg_compression", s, seed=0, table=table)
        b = corrupt(q75, "jpeg_compression", s, seed=0, table=table)
        rows.append({"severity": s, "quality": TABLES[table]["jpeg_compression"][s - 1],
                     "lossless_corrupted_vs_lossless": psnr(a, x), "q75_corrupted_vs_lossless": psnr(b, x),
                     "q75_corrupted_vs_q75": psnr(b, q75)})
    out[table] = rows
print(json.dumps(out, indent=1))
