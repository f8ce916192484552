"""Learning-rate schedules, framework-neutral so every backend steps the same way."""
from __future__ import annotations

import math


def lr_at(epoch: int, cfg: dict) -> float:
    """Learning rate of (0-based) ``epoch``.

    ``step``: the official schedule, lr x gamma once each milestone fraction of the
    epochs has passed (x0.2 at 30/60/80% by default; the official code's 80% decay
    never fired because of an operator-precedence bug, here it does).
    ``cosine``: half-cosine from lr to 0 over the epochs. ``constant``: lr.

    ``train.warmup_epochs`` = W > 0: epoch e < W runs at that lr x (e+1)/(W+1) (a linear ramp from
    lr/(W+1) that reaches the schedule at epoch W); the schedule itself still counts from epoch 0
    (cosine over all the epochs, milestones as fractions of all of them). Per epoch, a function of
    the epoch alone, so a resumed run continues on the same curve.
    """
    t = cfg["train"]
    warmup = int(t.get("warmup_epochs", 0) or 0)
    lr = _schedule_lr(epoch, t)
    return lr * (epoch + 1) / (warmup + 1) if epoch < warmup else lr


def _schedule_lr(epoch: int, t: dict) -> float:
    base, total = float(t["lr"]), int(t["epochs"])
    if t["schedule"] == "constant":
        return base
    if t["schedule"] == "cosine":
        return 0.5 * base * (1.0 + math.cos(math.pi * epoch / total))
    passed = sum(1 for m in t["milestones"] if epoch >= int(round(m * total)) and round(m * total) > 0)
    return base * (t["gamma"] ** passed)
