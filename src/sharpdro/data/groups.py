"""Group ids (framework-neutral): the one check every backend and the data pipeline run.

A group id outside ``[0, num_groups)`` would drop out of every group statistic (q, the
per-group losses and accuracies) without a word; :func:`check_group_array` refuses it with
one error that names the id and ``num_groups``.
"""
from __future__ import annotations

import numpy as np

from sharpdro.errors import ConfigError


class GroupIdError(ConfigError):
    """A group id outside ``[0, num_groups)`` (it would silently drop out of every group statistic)."""


def group_id_message(ids: np.ndarray, num_groups: int, where: str = "this batch") -> str:
    """The error text for the ids ``ids`` (any integer array holding at least one bad id)."""
    ids = np.asarray(ids).reshape(-1)
    bad = ids[(ids < 0) | (ids >= num_groups)]
    first = int(bad[0]) if bad.size else None
    return (f"group id {first} is outside [0, {num_groups}) (num_groups={num_groups}; {bad.size} of {ids.size} ids "
            f"in {where} are): give every sample a group id in 0..{num_groups - 1}, or raise num_groups")


def check_group_array(groups, num_groups: int, where: str = "this batch") -> None:
    """Raise :class:`GroupIdError` unless ``groups`` (NumPy-convertible integers) all lie in ``[0, num_groups)``."""
    ids = np.asarray(groups)
    if ids.dtype.kind not in "iu":
        raise GroupIdError(f"group ids must be integers (int64), got {ids.dtype} in {where}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_groups):
        raise GroupIdError(group_id_message(ids, num_groups, where))


def group_names_of(record) -> dict[int, str] | None:
    """``{group id: name}`` of a run whose groups come from its data (``group_names`` in its data.json,
    summary or splits meta); None for a run whose groups are corruption severities."""
    names = (record or {}).get("group_names")
    if not names:
        return None
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return {i: str(v) for i, v in enumerate(names)}


def group_word(names) -> str:
    """What the per-group columns are called: ``group`` (groups from the data) or ``severity``."""
    return "group" if names else "severity"


def group_label(key, names) -> str:
    """A group's name (groups from the data) or its severity number."""
    return names.get(int(key), str(key)) if names else str(key)
