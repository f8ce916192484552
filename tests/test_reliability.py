"""Reliability: bad input and faults give one clear error, never a silently wrong result, never lost work.

Each test reproduces one fault of docs/reliability.md on real files the test writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpdro.config import ConfigError, load_config
from sharpdro.errors import DataError, SharpDROError

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=None, env=None):
    """Run ``sharpdro ARGS`` in a fresh interpreter (so the exit code and stderr are what a user sees)."""
    e = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sharpdro.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=600)


def _one_error_line(res) -> str:
    """The CLI failed with exit code 2 and printed exactly one error line (no traceback)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.stderr
    return lines[0]


# ------------------------------------------------------------------ 4. NaN and infinity in configs
@pytest.mark.parametrize("override", ["train.lr=.nan", "train.lr=.inf", "model.dropout=.nan",
                                      "data.poisson_lambda=.nan", "algorithm.rho=-.inf", "train.lr=nan",
                                      "train.milestones=[0.3, .nan]"])
def test_nan_and_infinity_in_config_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}(\\[1\\])?' = .*not a finite number"):
        load_config("quickstart", [override])


# ------------------------------------------------------------------ 10. malformed YAML
@pytest.mark.parametrize("text, where", [
    ("data:\n  dataset: digits\n\ttrain_per_class: 10\n", ":3:1:"),  # a tab
    ("train:\n  lr: [0.1, 0.2\n", ":3:1:"),  # unclosed list
    ("train:\n  lr: 0.1\n    epochs: 2\n", ":3:11:"),  # bad indentation
])
def test_malformed_yaml_names_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}{where}" in str(err.value)
    if "\t" in text:
        assert "tab" in str(err.value)
    line = _one_error_line(_cli("info", "-c", path))
    assert f"{path}{where}" in line


def test_config_path_that_is_a_folder(tmp_path):
    line = _one_error_line(_cli("info", "-c", tmp_path))
    assert str(tmp_path) in line and "folder" in line
