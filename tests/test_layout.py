"""The package's layout: no import cycle between sharpdro modules, deferred imports inside functions counted."""
from __future__ import annotations

import ast
from pathlib import Path

import sharpdro

PACKAGE = Path(sharpdro.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The sharpdro module an import names: itself, else its longest importable prefix (``from pkg import x``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the sharpdro modules it imports anywhere in its source (top level, functions, TYPE_CHECKING)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .y import z
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                dep = _resolve(t, modules)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_sees_deferred_and_relative_imports():
    graph = import_graph()
    assert "sharpdro.backends.base" in graph["sharpdro.experiments.bench"]  # inside run_bench
    assert "sharpdro.backends.torch.session" in graph["sharpdro.backends.torch"]  # from .session import
    assert "sharpdro.experiments.sweep_spec" in graph["sharpdro.experiments.sweep"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_run_directory_file_names_only_in_rundir():
    """Code names a run directory's files through sharpdro.rundir; a string constant that IS such a name (not
    prose mentioning it: help texts and docstrings may) anywhere else is a second owner of the layout."""
    from sharpdro import rundir

    names = {rundir.CONFIG, rundir.METRICS, rundir.SUMMARY, rundir.LOG, rundir.CHECKPOINTS, rundir.LAST,
             rundir.BEST, rundir.DONE, rundir.ERROR, rundir.LOCK, rundir.SLURM_MARKER}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names - {"done"}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not found, "run-directory file names spelled outside rundir.py:\n" + "\n".join(found)
