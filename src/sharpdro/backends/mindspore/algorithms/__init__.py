"""MindSpore training methods, one class each, as the PyTorch registry (same names, same state).

    algo = build_algorithm(name, model, num_classes, num_groups, hparams, train_size)
    algo.configure(optimizer)
    algo.prepare(ctx)                      # pre-stage (JTT, EIIL; GroupDRO counts), once
    stats = algo.update(x, y, g, idx)      # one step (PyNative); NumPy results
    logits = algo.predict(x)
"""
from __future__ import annotations

from typing import Any, Mapping

from mindspore import nn

from sharpdro.backends.mindspore.algorithms.agnostic import SharpDROAgnostic
from sharpdro.backends.mindspore.algorithms.base import (Algorithm, GroupWeighted, PrepareContext, group_mean,
                                                         per_sample_losses)
from sharpdro.backends.mindspore.algorithms.eiil import EIIL
from sharpdro.backends.mindspore.algorithms.erm import ERM
from sharpdro.backends.mindspore.algorithms.groupdro import GroupDRO
from sharpdro.backends.mindspore.algorithms.jtt import JTT
from sharpdro.backends.mindspore.algorithms.sam import SAM
from sharpdro.backends.mindspore.algorithms.sharpdro import SharpDRO
from sharpdro.config import ConfigError

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (ERM, SAM, GroupDRO, SharpDRO, SharpDROAgnostic, JTT, EIIL)
}


def build_algorithm(name: str, model: nn.Cell, num_classes: int, num_groups: int,
                    hparams: Mapping[str, Any] | None = None, train_size: int = 0) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](model, num_classes, num_groups, hparams, train_size)


__all__ = ["ALGORITHMS", "build_algorithm", "Algorithm", "GroupWeighted", "PrepareContext", "group_mean",
           "per_sample_losses", "ERM", "SAM", "GroupDRO", "SharpDRO", "SharpDROAgnostic", "JTT", "EIIL"]
