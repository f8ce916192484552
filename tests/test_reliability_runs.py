"""Reliability II (issue 25): run directories, CI and faults (docs/reliability.md, its last section).

Each test reproduces one case of that section on real files, real processes and, where the machine allows
it, a real full file system (a 2 MiB tmpfs) or a real read-only one.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_reliability import TINY, _cli, _one_error_line, tiny

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ 1. CI installs into a fresh virtual environment
def test_ci_runs_the_readme_command_in_a_fresh_venv(tmp_path):
    """.ci/run creates a venv and runs the README's test command with that venv's pip and python (here a
    command with the README's head that installs nothing and reports where it ran), then removes it."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    report = tmp_path / "where.json"
    probe = (f"import json, os, sys; json.dump({{'prefix': sys.prefix, 'base': sys.base_prefix, "
             f"'require': os.environ.get('SHARPDRO_REQUIRE_SHARED_DATA')}}, open({str(report)!r}, 'w'))")
    (tmp_path / "README.md").write_text(
        "# x\n\n```bash\n"
        f"pip install torch==2.13.0 -e \".[test]\" --help > /dev/null && python -c \"{probe}\"\n```\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["TMPDIR"] = str(tmp_path)
    res = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    where = json.loads(report.read_text())
    assert where["prefix"] != where["base"] and where["prefix"] != sys.prefix  # a venv, not this interpreter's
    assert Path(where["prefix"]).parent == tmp_path and not Path(where["prefix"]).exists()  # fresh, then removed
    assert where["require"] == "1"


# ------------------------------------------------------------------ 2. CI=true without ../shared
def _pytest_with_the_conftest(tmp_path, env):
    """Run pytest on a copy of tests/conftest.py with one test that needs ../shared/data, in a folder beside
    which there is no shared/ (a user's checkout)."""
    tests = tmp_path / "checkout" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_needs_data.py").write_text("def test_real(shared_data):\n    assert shared_data.is_dir()\n")
    e = {k: v for k, v in os.environ.items()
         if k not in ("CI", "SHARPDRO_SHARED_DATA", "SHARPDRO_REQUIRE_SHARED_DATA")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tests)],
                          capture_output=True, text=True, env={**e, **env}, cwd=tests.parent, timeout=300)


def test_ci_without_shared_data_skips_the_real_data_tests(tmp_path):
    res = _pytest_with_the_conftest(tmp_path, {"CI": "true"})
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout + res.stderr
    assert "../shared/data not present" in res.stdout
    # the project's own CI (.ci/run) requires them: there a missing ../shared/data is an error
    res = _pytest_with_the_conftest(tmp_path / "again", {"CI": "true", "SHARPDRO_REQUIRE_SHARED_DATA": "1"})
    assert res.returncode == 1 and "SHARPDRO_REQUIRE_SHARED_DATA=1 requires it" in res.stdout, res.stdout
    assert "export SHARPDRO_REQUIRE_SHARED_DATA=1" in (REPO / ".ci" / "run").read_text()
