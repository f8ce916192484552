"""PyTorch steps of the training methods, one small class each, registered against the method's name.

    algo = build_algorithm(name, model, num_classes, num_groups, hparams, train_size)
    algo.configure(optimizer)
    algo.prepare(ctx)                           # pre-stage (JTT, EIIL; GroupDRO counts), once
    stats = algo.update(x, y, groups, idx)      # one step; detached device tensors, no host sync
    logits = algo.predict(x)

What a method is lives in :mod:`sharpdro.methods`; a new one adds a ``@register_step(name)``
class (an ``update``), here or in any module imported before the run.
"""
from __future__ import annotations

from sharpdro import methods
from sharpdro.backends.torch.algorithms.base import (STEPS, Algorithm, GroupWeighted, PrepareContext,
                                                     build_algorithm, register_step)
from sharpdro.backends.torch.algorithms.functional import (bn_second_pass, eg_update_, group_mean,
                                                           per_sample_losses, restore_, sam_perturb_)
from sharpdro.backends.torch.algorithms.erm import ERM
from sharpdro.backends.torch.algorithms.sam import SAM
from sharpdro.backends.torch.algorithms.groupdro import GroupDRO
from sharpdro.backends.torch.algorithms.sharpdro import SharpDRO
from sharpdro.backends.torch.algorithms.agnostic import SharpDROAgnostic
from sharpdro.backends.torch.algorithms.jtt import JTT
from sharpdro.backends.torch.algorithms.eiil import EIIL

# The built-in methods' steps, in the methods' order (build_algorithm also finds steps registered later).
ALGORITHMS: dict[str, type[Algorithm]] = {name: STEPS[name] for name in methods.names() if name in STEPS}

__all__ = ["ALGORITHMS", "STEPS", "build_algorithm", "register_step", "Algorithm", "GroupWeighted",
           "PrepareContext", "group_mean", "eg_update_", "sam_perturb_", "restore_", "bn_second_pass",
           "per_sample_losses", "ERM", "SAM", "GroupDRO", "SharpDRO", "SharpDROAgnostic", "JTT", "EIIL"]
