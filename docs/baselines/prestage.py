"""Pre-stage measurements for docs/baselines.md (JTT's error set, EIIL's inference), on the protocol of
baselines.yaml (its `set` keys), seeds 0, 1, 2. Only the pre-stages run: no second stage.

JTT: an identification ERM model at the constant learning rate train.lr, its error set E after
T = 1..4 epochs (|E|/N, and per severity).
EIIL: the reference ERM model as the new default trains it (train.epochs with the run's schedule, the
epoch of lowest validation loss kept), then the environment inference at the authors' lr 1e-3 for
500 / 2,000 / 10,000 steps without early stopping, and with the default stopping rule: the penalty of
the hard split, its fraction of the 10,000-step penalty, the stopping rule's verdict, the sizes of the
environments and the share of each severity in environment 1.

Usage: python docs/baselines/prestage.py --data PATH/TO/cifar10-jpeg --out docs/baselines/prestage.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sharpdro.backends.torch.algorithms.base import collect_logits, per_sample_losses, set_lr, train_reference_erm
from sharpdro.backends.torch.session import TorchSession
from sharpdro.config import load_config
from sharpdro.data.splits import build_splits
from sharpdro.engine import _BatchFactory
from sharpdro.methods.eiil import run_inference

HERE = Path(__file__).resolve().parent


def config(data: str, seed: int) -> dict:
    sweep = yaml.safe_load((HERE / "baselines.yaml").read_text())
    return load_config(sweep["base"], list(sweep["set"]) + [f"data.root={data}", f"seed={seed}",
                                                             "train.threads=1", "train.progress=false"])


def by_severity(mask: np.ndarray, sev: np.ndarray) -> dict:
    return {str(int(s)): round(float(mask[sev == s].mean()), 4) for s in np.unique(sev)}


def jtt(ctx, sev, epochs: int, lr: float) -> list[dict]:
    model = ctx.make_model()
    opt = ctx.make_optimizer(model.parameters())
    out = []
    for epoch in range(epochs):
        set_lr(opt, lr)
        model.train()
        for x, y, _g, _i in ctx.epochs_batches(epoch):
            opt.zero_grad(set_to_none=True)
            _, per = per_sample_losses(model, x, y)
            per.mean().backward()
            opt.step()
        logits, labels = collect_logits(model, ctx, "")
        errors = (logits.argmax(1) != labels).numpy()
        out.append({"T": epoch + 1, "error_set_fraction": round(float(errors.mean()), 4),
                    "identification_train_accuracy": round(1 - float(errors.mean()), 4),
                    "error_set_fraction_by_severity": by_severity(errors, sev)})
    return out


def eiil(ctx, sev, seed: int) -> dict:
    report: dict = {}
    torch.manual_seed(seed)
    ref = train_reference_erm(ctx, ctx.run_epochs, "", select="val_loss", report=report)
    logits, labels = collect_logits(ref, ctx, "")
    z, y = logits.float().numpy(), labels.numpy()
    init = np.random.default_rng(seed).standard_normal(len(y)).astype(np.float32)
    rows = {}
    for steps in (500, 2000, 10000):
        r = run_inference(z, y, steps, 1e-3, init=init, stop=False)
        rows[str(steps)] = r
    r = run_inference(z, y, 10000, 1e-3, init=init)  # the default: stopping rule on
    rows["default (stopping rule)"] = r
    ref_pen = rows["10000"].penalty
    return {"reference": {k: report[k] for k in ("epochs", "kept_epoch", "val_loss_by_epoch")},
            "inference": {k: {"steps": v.steps, "penalty": v.penalty, "of_10000_step_penalty": v.penalty / ref_pen,
                              "converged": v.converged, "environment_sizes": v.summary()["environment_sizes"],
                              "env1_share_by_severity": by_severity(v.env == 1, sev),
                              "agreement_with_10000_steps": float(np.mean(v.env == rows["10000"].env))}
                          for k, v in rows.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for seed in (int(s) for s in args.seeds.split(",")):
        if str(seed) in results:
            continue  # resumable
        t0 = time.time()
        cfg = config(args.data, seed)
        splits = build_splits(cfg, progress=False)
        session = TorchSession(cfg, splits)
        factory = _BatchFactory(cfg, splits.train, val=splits.val)
        session.set_batch_factory(factory)
        ctx = session._prepare_context()
        sev = splits.train.severity
        torch.manual_seed(seed)
        res = {"jtt": jtt(ctx, sev, 4, float(cfg["train"]["lr"])), "eiil": eiil(ctx, sev, seed)}
        res["seconds"] = round(time.time() - t0, 1)
        results[str(seed)] = res
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"seed {seed}: {res['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
