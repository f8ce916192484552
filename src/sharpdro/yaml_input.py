"""Reading YAML from files and ``--set`` values: safe (plain data only: a ``!!python/...`` tag is an error,
never code) and bounded in time, memory and message length whatever the text holds (config.py's ``base``
chains are bounded there). Only the standard library, PyYAML and ``errors``: config and rundir both read
through it.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from sharpdro.errors import ConfigError, cut, shown

# What a config or sweep file may hold (real ones are a few KB, a few hundred values): reading one takes
# bounded time and memory whatever it holds. Its values, aliases expanded (each use counted, so "billion
# laughs" is refused while being read), hold at most MAX_YAML_NODES values and MAX_YAML_WEIGHT characters
# (about 3 s of PyYAML at most); nesting is at most MAX_YAML_DEPTH deep (the composer recurses).
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_WEIGHT = 4 << 20
MAX_YAML_DEPTH = 64


class TooMuchYAML(yaml.YAMLError):
    """A YAML text beyond the limits (a YAMLError, so that any caller of :func:`safe_load` handles it)."""

    def __init__(self, reason: str, mark=None):
        super().__init__(reason)
        self.reason, self.mark = reason, mark


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: a ``!!python/...`` tag is an error, never code) within the limits
    above: the values and characters are added up while the document is composed (an alias counting what it
    stands for), before anything is built from it."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth, self._nodes, self._weight, self._sizes = 0, 0, 0, {}

    def _add(self, nodes: int, weight: int, mark) -> None:
        self._nodes += nodes
        self._weight += weight
        if self._nodes > MAX_YAML_NODES or self._weight > MAX_YAML_WEIGHT:
            raise TooMuchYAML(f"it holds more than {MAX_YAML_NODES} values or {MAX_YAML_WEIGHT >> 20} MiB of text, "
                           f"aliases expanded (a config holds a few hundred); is it the right file?", mark)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self._sizes:  # its anchor's node is still being read
                    raise TooMuchYAML(f"the alias *{cut(event.anchor, 40)} is used inside the node it names (a structure "
                                   f"that holds itself)", event.start_mark)
                self._add(*self._sizes[id(target)], event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise TooMuchYAML(f"values nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
        nodes, weight = self._nodes, self._weight
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._add(1, 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else 0), node.start_mark)
        self._sizes[id(node)] = (self._nodes - nodes, self._weight - weight)
        return node


def safe_load(text: str):
    """``yaml.safe_load`` within the limits of :class:`_BoundedLoader` (raises its errors)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike):
    """A YAML file's content (safe loader: never runs code; bounded: :data:`MAX_CONFIG_BYTES` and the
    loader's limits); a syntax error names the file, line and column."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # never more than the limit read, whatever the file (or device) is
            data = f.read(MAX_CONFIG_BYTES + 1)
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config or sweep file is a few KB: "
                          f"is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    try:
        return safe_load(text)
    except TooMuchYAML as exc:
        where = f":{exc.mark.line + 1}:{exc.mark.column + 1}" if exc.mark is not None else ""
        raise ConfigError(f"{path}{where}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_message(path, text, exc)) from None


def _yaml_error_message(path: Path, text: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"{path}: not valid YAML ({problem})"
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    hint = ""
    if "\t" in line[:max(mark.column, 0) + 1] or "\t" in problem or "tab" in problem:
        hint = "; YAML indents with spaces, not tabs: replace the tab by spaces"
    return (f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {cut(problem, 300)}{hint}"
            + (f" (line {mark.line + 1}: {shown(line.strip(), 100)})" if line.strip() else ""))
