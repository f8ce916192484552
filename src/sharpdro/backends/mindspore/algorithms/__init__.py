"""MindSpore steps of the training methods, a port of the PyTorch steps (same names, same state).

    algo = build_algorithm(name, model, num_classes, num_groups, hparams, train_size)
    algo.configure(optimizer)
    algo.prepare(ctx)                           # pre-stage (JTT, EIIL; GroupDRO counts), once
    stats = algo.update(x, y, groups, idx)      # one step (PyNative); NumPy results
    logits = algo.predict(x)

What a method is lives in :mod:`sharpdro.methods`; a step is a ``@register_step(name)`` class.
"""
from __future__ import annotations

from sharpdro import methods
from sharpdro.backends.mindspore.algorithms.base import (STEPS, Algorithm, GroupWeighted, PrepareContext,
                                                         build_algorithm, group_mean, per_sample_losses,
                                                         register_step)
from sharpdro.backends.mindspore.algorithms.erm import ERM
from sharpdro.backends.mindspore.algorithms.sam import SAM
from sharpdro.backends.mindspore.algorithms.groupdro import GroupDRO
from sharpdro.backends.mindspore.algorithms.sharpdro import SharpDRO
from sharpdro.backends.mindspore.algorithms.agnostic import SharpDROAgnostic
from sharpdro.backends.mindspore.algorithms.jtt import JTT
from sharpdro.backends.mindspore.algorithms.eiil import EIIL

# The built-in methods' steps, in the methods' order (build_algorithm also finds steps registered later).
ALGORITHMS: dict[str, type[Algorithm]] = {name: STEPS[name] for name in methods.names() if name in STEPS}

__all__ = ["ALGORITHMS", "STEPS", "build_algorithm", "register_step", "Algorithm", "GroupWeighted",
           "PrepareContext", "group_mean", "per_sample_losses", "ERM", "SAM", "GroupDRO", "SharpDRO",
           "SharpDROAgnostic", "JTT", "EIIL"]
