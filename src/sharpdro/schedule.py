"""Learning-rate schedules, framework-neutral so every backend steps the same way."""
from __future__ import annotations

import math


def lr_at(epoch: int, cfg: dict) -> float:
    """Learning rate of (0-based) ``epoch``.

    ``step``: the official schedule, lr x gamma once each milestone fraction of the
    epochs has passed (x0.2 at 30/60/80% by default; the official code's 80% decay
    never fired because of an operator-precedence bug, here it does).
    ``cosine``: half-cosine from lr to 0 over the epochs. ``constant``: lr.
    """
    t = cfg["train"]
    base, total = float(t["lr"]), int(t["epochs"])
    if t["schedule"] == "constant":
        return base
    if t["schedule"] == "cosine":
        return 0.5 * base * (1.0 + math.cos(math.pi * epoch / total))
    passed = sum(1 for m in t["milestones"] if epoch >= int(round(m * total)) and round(m * total) > 0)
    return base * (t["gamma"] ** passed)
