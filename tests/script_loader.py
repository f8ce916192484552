"""Load a script that is not part of the package (docs/results/*.py, examples/*.py) as a module, by its path."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_script(path: Path, name: str | None = None):
    """The module at ``path``, executed once per call and registered under ``name`` (default: the file's stem)
    in ``sys.modules``, where dataclasses and pickling look their module up."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
