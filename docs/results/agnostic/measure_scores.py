"""Which out-of-distribution score finds the severe images?  A cheap measurement before the sweep.

Trains plain ERM on the setting of ``agnostic.yaml`` (one seed) and, after some epochs,
scores every training image (eval mode, no augmentation) and every validation image
(every severity) with each candidate score; prints the AUROC of the score for severity >= 3
against severity 0, raw and normalised within each class (training statistics), and the mean
severity of the global top 5% / 10% of the training set by the score.  Writes
``scores.json`` beside ``--out``.

Usage: PYTHONPATH=src python docs/results/agnostic/measure_scores.py --data DIR --out FILE [--epochs 12]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from sharpdro.config import load_config
from sharpdro.data.splits import build_splits
from sharpdro.engine import _BatchFactory
from sharpdro.metrics import severity_auroc
from sharpdro.backends.torch.session import TorchSession


def scores_of(session, images, labels, stats=None):
    """Every candidate score of each image (higher = more out-of-distribution)."""
    model = session.algorithm.model.eval()
    feats = {}
    first_relu = next(m for m in model.modules() if isinstance(m, torch.nn.ReLU))
    h1 = first_relu.register_forward_hook(lambda m, i, o: feats.__setitem__("low", o.detach().clone()))
    h2 = model.head[-1].register_forward_hook(lambda m, i, o: feats.__setitem__("pen", i[0].detach()))
    out = {k: [] for k in ("msp", "energy", "entropy", "loss", "gradnorm", "feature_norm", "low_energy",
                           "input_hf")}
    low_means, pens = [], []
    with torch.no_grad():
        for s in range(0, len(images), 500):
            x, y = session.to_device(images[s:s + 500], labels[s:s + 500])
            logits = model(x).double()
            p = logits.softmax(1)
            C = p.shape[1]
            out["msp"].append(1 - p.amax(1))
            out["energy"].append(-logits.logsumexp(1))
            out["entropy"].append(-(p * p.clamp_min(1e-30).log()).sum(1))
            out["loss"].append(F.cross_entropy(logits, y, reduction="none"))
            pen = feats["pen"].double()
            out["gradnorm"].append(-((p - 1.0 / C).abs().sum(1) * pen.abs().sum(1)))  # GradNorm: low = OOD
            out["feature_norm"].append(-pen.norm(dim=1))  # small norm = OOD (scores.txt: +norm, see README)
            low = feats["low"].double()
            out["low_energy"].append((low ** 2).mean((1, 2, 3)))
            low_means.append(low.mean((2, 3)))
            pens.append(pen)
            raw = torch.from_numpy(images[s:s + 500]).double().permute(0, 3, 1, 2) / 255.0
            lap = 4 * raw[:, :, 1:-1, 1:-1] - raw[:, :, :-2, 1:-1] - raw[:, :, 2:, 1:-1] - raw[:, :, 1:-1, :-2] \
                - raw[:, :, 1:-1, 2:]
            out["input_hf"].append((lap ** 2).mean((1, 2, 3)))
    h1.remove(), h2.remove()
    res = {k: torch.cat(v).numpy() for k, v in out.items()}
    low_means, pens = torch.cat(low_means).numpy(), torch.cat(pens).numpy()
    if stats is None:  # Gaussians fitted on the training set
        mu = low_means.mean(0)
        prec = np.linalg.pinv(np.cov(low_means - mu, rowvar=False))
        cls_mu = np.stack([pens[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
        cen = pens - cls_mu[labels]
        pen_prec = np.linalg.pinv(cen.T @ cen / len(cen))
        stats = {"mu": mu, "prec": prec, "cls_mu": cls_mu, "pen_prec": pen_prec}
    d = low_means - stats["mu"]
    res["low_mahalanobis"] = np.einsum("ij,jk,ik->i", d, stats["prec"], d)
    dist = np.stack([np.einsum("ij,jk,ik->i", pens - m, stats["pen_prec"], pens - m) for m in stats["cls_mu"]], 1)
    res["mahalanobis"] = dist.min(1)
    return res, stats


def class_normalised(score, labels, train_score, train_labels):
    out = np.empty_like(score)
    for c in np.unique(train_labels):
        ref = train_score[train_labels == c]
        out[labels == c] = (score[labels == c] - ref.mean()) / (ref.std() + 1e-12)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--at", default="2,4,8,12")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    here = __file__.rsplit("/", 1)[0]
    import yaml

    spec = yaml.safe_load(open(f"{here}/agnostic.yaml"))
    cfg = load_config(spec["base"], spec["set"] + [f"data.root={args.data}", "algorithm.name=erm",
                                                   f"train.epochs={args.epochs}", f"seed={args.seed}",
                                                   "train.threads=1"])
    splits = build_splits(cfg, progress=False)
    session = TorchSession(cfg, splits)
    batches = _BatchFactory(cfg, splits.train)
    session.set_batch_factory(batches)
    from sharpdro.schedule import lr_at

    tr = splits.train
    val_images = np.concatenate([splits.val[s].images for s in sorted(splits.val)])
    val_labels = np.concatenate([splits.val[s].labels for s in sorted(splits.val)])
    val_sev = np.concatenate([splits.val[s].severity for s in sorted(splits.val)])
    at = {int(a) for a in args.at.split(",")}
    report, history = {}, []
    for epoch in range(args.epochs):
        t0 = time.time()
        st = session.train_epoch(epoch, batches(epoch), lr_at(epoch, cfg), len(batches))
        if epoch + 1 not in at:
            continue
        s_tr, stats = scores_of(session, tr.images, tr.labels)
        s_va, _ = scores_of(session, val_images, val_labels, stats)
        history.append(s_tr)
        rows = {}
        for k in s_tr:
            zt = class_normalised(s_tr[k], tr.labels, s_tr[k], tr.labels)
            zv = class_normalised(s_va[k], val_labels, s_tr[k], tr.labels)
            ema = np.mean([h[k] for h in history], 0)  # the mean over the scored epochs so far
            ze = class_normalised(ema, tr.labels, ema, tr.labels)
            row = {"train": severity_auroc(s_tr[k], tr.severity), "train_cls": severity_auroc(zt, tr.severity),
                   "val": severity_auroc(s_va[k], val_sev), "val_cls": severity_auroc(zv, val_sev),
                   "train_cls_mean_over_epochs": severity_auroc(ze, tr.severity)}
            for f in (0.05, 0.1):
                top = np.argsort(-zt)[:int(round(f * len(zt)))]
                row[f"top{int(f * 100)}_severity"] = float(tr.severity[top].mean())
            rows[k] = row
        report[epoch + 1] = {"train_accuracy": st["accuracy"], "batch_severity": float(tr.severity.mean()),
                             "scores": rows}
        print(f"epoch {epoch + 1} train acc {st['accuracy']:.3f} ({time.time() - t0:.0f}s)", flush=True)
        print(f"{'score':18s} {'train':>6s} {'tr_cls':>6s} {'tr_ema':>6s} {'val':>6s} {'va_cls':>6s} "
              f"{'top5':>5s} {'top10':>5s}")
        for k, r in rows.items():
            print(f"{k:18s} {r['train']:6.3f} {r['train_cls']:6.3f} {r['train_cls_mean_over_epochs']:6.3f} "
                  f"{r['val']:6.3f} {r['val_cls']:6.3f} {r['top5_severity']:5.2f} {r['top10_severity']:5.2f}",
                  flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
