"""Training methods, one small class each, in a registry (adding one never touches the trainer).

    algo = build_algorithm(name, model, num_classes, num_groups, hparams, train_size)
    algo.configure(optimizer)
    algo.prepare(ctx)                      # pre-stage (JTT, EIIL; GroupDRO counts), once
    stats = algo.update(x, y, g, idx)      # one step; detached device tensors, no host sync
    logits = algo.predict(x)
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from sharpdro.backends.torch.algorithms.agnostic import SharpDROAgnostic
from sharpdro.backends.torch.algorithms.base import (Algorithm, GroupWeighted, PrepareContext, bn_second_pass,
                                                     eg_update_, group_mean, per_sample_losses, restore_,
                                                     sam_perturb_)
from sharpdro.backends.torch.algorithms.eiil import EIIL
from sharpdro.backends.torch.algorithms.erm import ERM
from sharpdro.backends.torch.algorithms.sam import SAM
from sharpdro.backends.torch.algorithms.groupdro import GroupDRO
from sharpdro.backends.torch.algorithms.jtt import JTT
from sharpdro.backends.torch.algorithms.sharpdro import SharpDRO
from sharpdro.config import ConfigError

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (ERM, SAM, GroupDRO, SharpDRO, SharpDROAgnostic, JTT, EIIL)
}


def build_algorithm(name: str, model: nn.Module, num_classes: int, num_groups: int,
                    hparams: Mapping[str, Any] | None = None, train_size: int = 0) -> Algorithm:
    """The algorithm ``name`` around ``model`` (``hparams``: the config's ``algorithm`` section)."""
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](model, num_classes, num_groups, hparams, train_size)


__all__ = ["ALGORITHMS", "build_algorithm", "Algorithm", "GroupWeighted", "PrepareContext", "group_mean",
           "eg_update_", "sam_perturb_", "restore_", "bn_second_pass", "per_sample_losses", "ERM", "SAM",
           "GroupDRO", "SharpDRO", "SharpDROAgnostic", "JTT", "EIIL"]
