"""The method description (:class:`MethodSpec`) and the registry every other module asks.

Nothing here imports a framework or ``sharpdro.config`` (``config`` builds its
``algorithm`` section from this registry, so the arrow points one way only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sharpdro.errors import ConfigError
from sharpdro.fields import Field

# Per-epoch statistics an algorithm's steps give the engine (names in metrics.jsonl).
Q_RECORD = ("q",)  # the group weights at the end of the epoch
SELECTED_RECORD = ("agnostic_selected_severity", "agnostic_batch_severity")  # from a step's ``selected`` mask


@dataclass(frozen=True)
class Prestage:
    """What a method does once before training, and the buffer it fills."""

    summary: str
    records: str                               # the checkpointed buffer holding the result
    stand_in: Callable[[int], np.ndarray]      # a plausible record for n training points (the bench skips the stage)
    # what a report must say about a run's results given its pre-stage record (summary.json "prestage"), or None
    caveat: Callable[[Mapping[str, Any]], str | None] | None = None


@dataclass(frozen=True, eq=False)
class MethodSpec:
    """Everything about a method that is not a tensor step; one per method, registered by name.

    - ``hparams``: the flat ``algorithm.<key>`` fields the method reads (a key shared by
      several methods is one :class:`~sharpdro.fields.Field` object, declared once);
    - ``check(hparams)``: cross-key checks, raising :class:`ConfigError`;
    - ``buffers``: the algorithm state a checkpoint holds besides the model (``prepared_flag``
      is everyone's; ``robust.*`` a component's);
    - ``record_keys``: the per-epoch statistics the engine copies into ``metrics.jsonl``;
    - ``order``: position in tables and plots (baselines before SharpDRO);
    - ``group_sampling``: ``data.sampler=group_balanced`` applies (it balances the groups the
      method weights: the severities, or the environments its pre-stage infers);
    - ``tune``: the dotted config keys a tuning sweep draws for the method (from their fields'
      ``search``); None: every hyperparameter of the method that has a ``search``.
    """

    name: str
    label: str
    summary: str = ""
    needs_groups: bool = False
    hparams: Mapping[str, Field] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    buffers: tuple[str, ...] = ()
    record_keys: tuple[str, ...] = ()
    prestage: Prestage | None = None
    order: int = 100
    passes: int = 1  # forward-backward passes per step (the SAM family: 2), for cost estimates
    group_sampling: bool = False
    tune: tuple[str, ...] | None = None

    def validate(self, hparams: Mapping[str, Any]) -> None:
        if self.check is not None:
            self.check(hparams)


_REGISTRY: dict[str, MethodSpec] = {}
_LISTENERS: list[Callable[[], None]] = []


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; its hyperparameters join the config's ``algorithm`` section."""
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    known = hparam_fields()
    for key, f in spec.hparams.items():
        if key == "name":
            raise ValueError(f"method {spec.name!r}: 'name' is not a hyperparameter")
        if key in known and known[key] != f:
            raise ValueError(f"method {spec.name!r} redeclares algorithm.{key} differently; share the Field")
    _REGISTRY[spec.name] = spec
    _notify()
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy one)."""
    _REGISTRY.pop(name, None)
    _notify()


def on_change(fn: Callable[[], None]) -> None:
    """Call ``fn()`` after every (un)registration (the config schema keeps its algorithm section in step)."""
    _LISTENERS.append(fn)


def _notify() -> None:
    for fn in _LISTENERS:
        fn()


def get(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(_REGISTRY)}") from None


def find(name: str) -> MethodSpec | None:
    return _REGISTRY.get(name)


def all_methods() -> tuple[MethodSpec, ...]:
    """Every registered method, in registration order."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def hparam_fields() -> dict[str, Field]:
    """The union of every method's hyperparameters, in first-declaration order."""
    out: dict[str, Field] = {}
    for spec in _REGISTRY.values():
        for key, f in spec.hparams.items():
            out.setdefault(key, f)
    return out


def display_order() -> tuple[str, ...]:
    """Method names in table / plot order."""
    specs = list(_REGISTRY.values())
    return tuple(s.name for s in sorted(specs, key=lambda s: (s.order, specs.index(s))))


def rank(name: str) -> int:
    """Position of ``name`` in :func:`display_order`; an unknown name comes after every method."""
    order = display_order()
    return order.index(name) if name in order else len(order)


def label(name: str) -> str:
    """Display label (the name itself for a method not registered, e.g. from an old results folder)."""
    spec = _REGISTRY.get(name)
    return spec.label if spec is not None else str(name)


def group_agnostic() -> tuple[str, ...]:
    """Methods that train without severity labels."""
    return tuple(s.name for s in _REGISTRY.values() if not s.needs_groups)
