"""One config key's schema entry (:class:`Field`); imported by ``config`` and by the method descriptions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NUM = (int, float)
DEFAULT = "<default>"  # ``Field.identity_default``: the field's own default


@dataclass(frozen=True)
class Field:
    default: Any
    type: type | tuple[type, ...]
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    item_type: type | None = None  # for list fields
    # what a tuning sweep draws: ("log_uniform", lo, hi), ("uniform", lo, hi), ("int_uniform", lo, hi),
    # ("choice", (a, b, ...)); None: not tuned. Metadata only: not part of a config or its hash.
    search: tuple | None = None
    finite: bool = True  # numbers must be finite (no NaN, no infinity)
    # the value a sweep job's identity (its folder hash) compares against: the default the key had when
    # finished sweeps were written, so that changing a default later renames no finished job (a job that
    # relied on the old default keeps its name; one on the new default gets a new one)
    identity_default: Any = DEFAULT

    def describe(self) -> str:
        if self.choices is not None and self.item_type is not None:  # a list of choices
            return "list, each one of " + ", ".join(repr(c) for c in self.choices)
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = [_type_name(self.type)]
        if self.item_type is not None:
            parts = [f"list of {_type_name(self.item_type)}"]
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts)


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return "/".join(x.__name__ for x in t)
    return t.__name__
