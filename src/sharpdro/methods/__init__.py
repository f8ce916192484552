"""Every training method described once, framework-neutral (see :class:`MethodSpec`).

The config's ``algorithm`` section, the engine's checks and per-epoch records, the
report, the plots and the bench ask these descriptions; each backend adds only the
tensor step of a method (``@register_step(name)`` in ``backends/<b>/algorithms/``).

Adding a method: register a :class:`MethodSpec` (a module here, or any module imported
before the config is validated) and one step class per backend.
"""
from sharpdro.methods.registry import (Q_RECORD, SELECTED_RECORD, MethodSpec, Prestage, all_methods,
                                       display_order, find, get, group_agnostic, hparam_fields, label, names,
                                       on_change, rank, register, unregister)

# The built-in methods, registered in this order (the order of the config's choices).
from sharpdro.methods import erm, sam, groupdro, sharpdro, sharpdro_agnostic, jtt, eiil  # noqa: E402,F401

DEFAULT = erm.SPEC.name         # the config's default algorithm
BASELINE = erm.SPEC.name        # what the bench's ratios are relative to
FLAGSHIP = sharpdro.SPEC.name   # the paper's method (the bench's default)
# The baselines the report pairs every method against, seed by seed (the paper's table compares
# SharpDRO with JTT and EIIL; ERM is the floor every method must clear), in the order listed.
PAIRED_REFERENCES = (erm.SPEC.name, jtt.SPEC.name, eiil.SPEC.name)

__all__ = ["MethodSpec", "Prestage", "register", "unregister", "get", "find", "all_methods", "names",
           "hparam_fields", "display_order", "rank", "label", "group_agnostic", "on_change", "Q_RECORD",
           "SELECTED_RECORD", "DEFAULT", "BASELINE", "FLAGSHIP", "PAIRED_REFERENCES"]
