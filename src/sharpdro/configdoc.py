"""Every config key with its type, default, allowed values and help, from the schema (``sharpdro config``).

``docs/config.md`` is :func:`markdown` of the whole schema (a test keeps it in step).
"""
from __future__ import annotations

import json
from typing import Iterator

from sharpdro.config import SCHEMA, ConfigError, Field, RUNTIME_KEYS


def _type(f: Field) -> str:
    t = f.type
    names = [x.__name__ for x in t] if isinstance(t, tuple) else [t.__name__]
    text = "/".join("number" if n == "float" and isinstance(t, tuple) else n for n in names)
    if text == "int/number":
        text = "number"
    if f.item_type is not None:
        text = f"list of {f.item_type.__name__}"
    return text + (" or null" if f.nullable else "")


def _value(v) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _allowed(f: Field) -> str:
    if f.choices is not None:
        return ", ".join(_value(c) for c in f.choices) + (" (each)" if f.item_type is not None else "")
    def bound(x) -> str:  # an integer exactly (seed <= 2**64 - 1), a float short
        return str(x) if isinstance(x, int) else f"{x:g}"

    parts = []
    if f.min is not None:
        parts.append(f">= {bound(f.min)}")
    if f.max is not None:
        parts.append(f"<= {bound(f.max)}")
    return ", ".join(parts)


def fields(section: str | None = None) -> Iterator[tuple[str, Field]]:
    """(dotted key, Field) of every key, or of one section (or one top-level key)."""
    if section is not None and section not in SCHEMA:
        raise ConfigError(f"unknown config section {section!r}; sections: "
                          f"{', '.join(k for k, v in SCHEMA.items() if isinstance(v, dict))}; top-level keys: "
                          f"{', '.join(k for k, v in SCHEMA.items() if isinstance(v, Field))}")
    for name, node in SCHEMA.items():
        if section is not None and name != section:
            continue
        if isinstance(node, Field):
            yield name, node
        else:
            for key, f in node.items():
                yield f"{name}.{key}", f


def text(section: str | None = None) -> str:
    lines = []
    for key, f in fields(section):
        allowed = _allowed(f)
        runtime = "  [runtime: not in the job hash]" if key in RUNTIME_KEYS else ""
        lines.append(f"{key}  ({_type(f)}, default {_value(f.default)}{'; ' + allowed if allowed else ''}){runtime}")
        lines.append(f"    {f.help}")
    return "\n".join(lines)


def markdown(section: str | None = None) -> str:
    out = ["# Configuration keys", "",
           "Generated from the schema in `src/sharpdro/config.py` by `sharpdro config --markdown`; "
           "`sharpdro config [SECTION]` prints the same in the terminal. Every key can be set in a YAML file "
           "(`section: {key: value}`, optionally over a `base:` config) or with `--set section.key=value`. "
           "*Runtime* keys change where or how fast a run goes, not what it is: the sweep's job hash "
           "(unless the sweep's `grid` or `include` varies the key) and `--resume`'s same-config check ignore "
           "them, except that `--resume` keeps `train.threads` (the numbers differ in the last bits with "
           "another count).", ""]
    current = None
    for key, f in fields(section):
        sec = key.split(".")[0] if "." in key else "top level"
        if sec != current:
            current = sec
            out += ["", f"## {sec}", "", "| key | type | default | allowed | description |",
                    "| --- | --- | --- | --- | --- |"]
        desc = f.help + (" *(runtime)*" if key in RUNTIME_KEYS else "")
        cells = [f"`{key}`", _type(f), f"`{_value(f.default)}`", _allowed(f), desc]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out).replace("\n\n\n", "\n\n") + "\n"
