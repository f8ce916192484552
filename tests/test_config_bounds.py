"""Issue 25, case 14: reading a config takes bounded time and memory whatever the file holds, its errors have a
bounded length, and loading never runs code. Each hostile file is read by ``sharpdro info -c FILE`` in a
fresh interpreter under a memory limit and a timeout, as a user would meet it."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sharpdro.config import MAX_BASE_CHAIN, MAX_CONFIG_BYTES, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
MEMORY = 3 << 30  # address space of the reading process: far above what a config needs


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _read(path: Path) -> tuple[str, float]:
    """``sharpdro info -c path``: one error line (exit code 2, no traceback) and the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.time()
    res = subprocess.run([sys.executable, "-m", "sharpdro.cli", "info", "-c", str(path)], capture_output=True,
                         text=True, env=env, timeout=120, preexec_fn=_limit_memory)
    seconds = time.time() - start
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sharpdro info: error: "), res.stderr[-2000:]
    assert len(lines[0]) <= 2100, len(lines[0])  # bounded, whatever the file holds
    return lines[0], seconds


def test_billion_laughs_is_refused_quickly(tmp_path):
    # 10 ** 9 integers once expanded (a few KB of text): printing the value in an error used to expand it
    levels = ["&l0 [" + ", ".join(["1"] * 10) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("seed: [" + ", ".join(levels) + "]\n")
    line, seconds = _read(path)
    assert f"{path}:" in line and "aliases expanded" in line and seconds < 60


def test_an_alias_inside_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("train:\n  milestones: &m [0.5, *m]\n")
    line, _ = _read(path)
    assert f"{path}:2:" in line and "itself" in line


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("seed: " + "[" * 100_000 + "]" * 100_000 + "\n")  # was a RecursionError traceback
    line, _ = _read(path)
    assert f"{path}:1:" in line and "nested more than" in line


def test_a_file_of_many_values_is_refused_while_read(tmp_path):
    path = tmp_path / "many.yaml"  # 1 MiB of one-digit values: 40 s of PyYAML on this machine, now about 3 s
    path.write_text("seed: [" + ",".join(["1"] * ((MAX_CONFIG_BYTES >> 1) - 8)) + "]\n")
    line, seconds = _read(path)
    assert "more than 100000 values" in line and seconds < 30


def test_a_huge_file_is_not_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:  # 8 GiB, sparse: no disk used; reading it whole needs 8 GiB of memory
        f.write(b"seed: 0\n# ")
        f.truncate(8 << 30)
    line, seconds = _read(path)
    assert str(path) in line and "larger than 1 MiB" in line and seconds < 60
    path.unlink()


def test_a_long_base_chain_and_a_long_cycle_are_refused(tmp_path):
    n = 2000  # was a RecursionError traceback
    for i in range(n):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i + 1}.yaml\n" if i < n - 1 else "seed: 1\n")
    line, _ = _read(tmp_path / "c0.yaml")
    assert f"more than {MAX_BASE_CHAIN} files" in line and "c0.yaml" in line
    for i in range(MAX_BASE_CHAIN):  # a cycle through every file the chain may hold
        (tmp_path / f"r{i}.yaml").write_text(f"base: r{(i + 1) % MAX_BASE_CHAIN}.yaml\n")
    line, _ = _read(tmp_path / "r0.yaml")
    assert "'base' cycle" in line
    (tmp_path / "ok.yaml").write_text("base: c1990.yaml\n")  # 10 files: fine
    assert load_config(tmp_path / "ok.yaml")["seed"] == 1


def test_giant_keys_and_values_make_short_messages(tmp_path):
    key = tmp_path / "key.yaml"
    key.write_text("train:\n  ? " + "k" * 900_000 + "\n  : 1\n")  # an explicit key: any length
    line, _ = _read(key)
    assert "unknown config key 'train.kkkk" in line and "characters" in line
    key.write_text("train:\n  " + "k" * 900_000 + ": 1\n")  # a plain key that long is a YAML error, on one line
    line, _ = _read(key)
    assert f"{key}:2:" in line and "not valid YAML" in line
    value = tmp_path / "value.yaml"
    value.write_text("train:\n  lr: " + "x" * 900_000 + "\n")
    line, _ = _read(value)
    assert "config key 'train.lr' must be a number, got 'xxxx" in line
    with pytest.raises(ConfigError) as exc:  # the library's message is short too, not only the CLI's line
        load_config(value)
    assert len(str(exc.value)) < 400
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.lr=[" + ", ".join(["[1, 2]"] * 50_000) + "]"])
    assert len(str(exc.value)) < 400


def test_yaml_tags_never_run_code(tmp_path):
    marker = tmp_path / "ran"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system"):
        path = tmp_path / "code.yaml"
        path.write_text(f"seed: {tag} ['touch {marker}']\n")
        line, _ = _read(path)
        assert "could not determine a constructor" in line and f"{path}:1:" in line
        with pytest.raises(ConfigError):
            load_config(None, [f"seed={tag} ['touch {marker}']"])
    assert not marker.exists()


def test_limits_leave_real_configs_alone():
    assert MAX_CONFIG_BYTES == 1 << 20
    for name in ("quickstart", "cifar10", "cifar100", "imagenet30"):
        load_config(name)
