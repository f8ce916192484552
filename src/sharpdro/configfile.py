"""Config files that build on others: ``base: NAME_OR_PATH``.

A run config may name a base config (a path, relative to the file first, or the name of a
shipped config such as ``cifar10``); the file's keys override the base's, section by section
(a list replaces the base's list).  A base may have a base of its own (a chain); a file that
reaches itself again is an error that prints the cycle.  Sweeps use the same ``base:`` key
for their base config (and ``include:`` for extra jobs).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Mapping

import yaml

from sharpdro.config import ConfigError, resolve_config_path

BASE_KEY = "base"


def deep_merge(base: Mapping, child: Mapping) -> dict:
    """``child`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in child.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _base_path(name, relative_to: Path) -> Path:
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise ConfigError(f"{relative_to}: 'base' must name a config file or a shipped config, got {name!r}")
    for cand in (relative_to.parent / str(name), relative_to.parent / f"{name}.yaml"):
        if cand.is_file():
            return cand
    return resolve_config_path(name)


def read_config_file(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its ``base`` chain applied (not validated)."""
    p = Path(path)
    key = p.resolve()
    if key in _chain:
        cycle = " -> ".join(str(x) for x in (*_chain[_chain.index(key):], key))
        raise ConfigError(f"config 'base' cycle: {cycle}")
    try:
        with open(p, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: a config file must be a YAML mapping of sections")
    if BASE_KEY not in loaded:
        return loaded
    child = {k: v for k, v in loaded.items() if k != BASE_KEY}
    parent = read_config_file(_base_path(loaded[BASE_KEY], p), (*_chain, key))
    return deep_merge(parent, child)
