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
import time
from pathlib import Path

import numpy as np
import pytest

from sharpdro.errors import SharpDROError
from test_reliability import TINY, _cli, _one_error_line, tiny

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ 1. CI installs into a fresh virtual environment
@pytest.mark.parametrize("beside", ["shared", None])
def test_ci_runs_the_readme_command_in_a_fresh_venv(tmp_path, beside):
    """.ci/run creates a venv and runs the README's test command with that venv's pip and python (here a
    command with the README's head that installs nothing and reports where it ran), then removes it."""
    pytest.importorskip("ensurepip")  # python -m venv needs it (Debian ships it apart, in python3-venv)
    if beside:  # the project's CI: ../shared beside the clone
        (tmp_path / beside).mkdir()
    tmp_path = tmp_path / "clone"
    (tmp_path / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    report = tmp_path / "where.json"
    probe = (f"import json, os, sys; json.dump({{'prefix': sys.prefix, 'base': sys.base_prefix, "
             f"'require': os.environ.get('SHARPDRO_REQUIRE_SHARED_DATA')}}, open({str(report)!r}, 'w'))")
    (tmp_path / "README.md").write_text(
        "# x\n\n```bash\n"
        f"pip install torch==2.13.0 -e \".[test]\" --help > /dev/null && python -c \"{probe}\"\n```\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SHARPDRO_REQUIRE_SHARED_DATA")}
    env["TMPDIR"] = str(tmp_path)
    res = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    where = json.loads(report.read_text())
    assert where["prefix"] != where["base"] and where["prefix"] != sys.prefix  # a venv, not this interpreter's
    assert Path(where["prefix"]).parent == tmp_path and not Path(where["prefix"]).exists()  # fresh, then removed
    assert where["require"] == ("1" if beside else None)  # beside ../shared its tests must run; elsewhere skip


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


# ------------------------------------------------------------------ shared: trained runs, real file systems
@pytest.fixture(scope="module")
def digits_splits():
    from sharpdro.data.splits import build_splits

    return build_splits(tiny(), progress=False)


def _train(out, *extra, splits=None, **kw):
    from sharpdro.engine import train

    return train(tiny(*extra), out_dir=out, splits=splits, **kw)


@pytest.fixture(scope="module")
def erm_run(tmp_path_factory, digits_splits):
    out = tmp_path_factory.mktemp("runs") / "erm"
    _train(out, "train.epochs=2", splits=digits_splits)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes (the lock file aside: it names the process that holds it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _mount_tmpfs(where: Path, size: str = "2m") -> None:
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root only): {res.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    """A real 2 MiB tmpfs (mounting needs root; skipped where it is not allowed), unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    _mount_tmpfs(mnt)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> None:
    """Fill the file system of ``mnt`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(mnt).free
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


# ------------------------------------------------------------------ 3. --resume without the last checkpoint
def test_resume_without_the_last_checkpoint_is_refused_and_changes_nothing(tmp_path, erm_run, digits_splits):
    from sharpdro.engine import train

    run = tmp_path / "run"
    shutil.copytree(erm_run, run)
    (run / "checkpoints" / "last.pt").unlink()  # the best one is kept
    (run / "summary.json").unlink()  # as if killed before its summary
    before = _files(run)
    with pytest.raises(SharpDROError, match="last.pt is missing, but the run has trained") as err:
        train(tiny("train.epochs=2"), out_dir=run, resume=True, splits=digits_splits)
    assert "nothing was changed" in str(err.value)
    assert _files(run) == before  # was: retrained from scratch, metrics and best checkpoint replaced
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", run, "--resume",
                                *[f"--set={o}" for o in TINY], "--set=train.epochs=2"))
    assert "last.pt is missing" in line and _files(run) == before


def test_resume_of_a_finished_run_never_rewrites_it(tmp_path, erm_run, digits_splits):
    from sharpdro.engine import train

    run = tmp_path / "run"
    shutil.copytree(erm_run, run)
    (run / "checkpoints" / "last.pt").unlink()
    before = _files(run)
    summary = train(tiny("train.epochs=2"), out_dir=run, resume=True, splits=digits_splits)
    assert summary == json.loads((run / "summary.json").read_text())
    assert _files(run) == before  # was: a new run trained over it (summary, metrics, best checkpoint replaced)


# ------------------------------------------------------------------ 4. one process per run directory
_PAUSED_TRAIN = textwrap.dedent("""
    import os, sys, time
    import sharpdro.backends.torch.session as s
    real = s.TorchSession.train_epoch
    def paused(self, *a, **kw):  # hold the run here until the test says go
        open(sys.argv[1] + ".started", "w").close()
        while not os.path.exists(sys.argv[1] + ".go"):
            time.sleep(0.05)
        return real(self, *a, **kw)
    s.TorchSession.train_epoch = paused
    from sharpdro.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _start_paused(tmp_path, *args):
    flag = str(tmp_path / "flag")
    e = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_TRAIN, flag, *map(str, args)], env=e, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not os.path.exists(flag + ".started") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and os.path.exists(flag + ".started"), proc.communicate()
    return proc, lambda: Path(flag + ".go").touch()


def _refused_while_the_first_runs(tmp_path, out, first_args: list, second: list[list]) -> None:
    """Start ``sharpdro train *first_args`` paused after it took the run directory, run each ``second`` command
    while it holds it (each must be one line saying the folder is in use), let the first finish: it trains epochs
    0 and 1 alone."""
    sets = [f"--set={o}" for o in TINY] + ["--set=train.epochs=2"]
    first, go = _start_paused(tmp_path, "train", "-c", "quickstart", "--out", out, *first_args, *sets)
    try:
        for extra in second:
            line = _one_error_line(_cli("train", "-c", "quickstart", "--out", out, *extra, *sets))
            assert f"{out} is in use by another sharpdro process (pid {first.pid}" in line, line
    finally:
        go()
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_two_trains_on_one_out_at_once(tmp_path):
    _refused_while_the_first_runs(tmp_path, tmp_path / "run", [], [[], ["--resume"]])


def test_two_resumes_at_once_run_no_epoch_twice(tmp_path, erm_run):
    import torch

    out = tmp_path / "run"
    shutil.copytree(erm_run, out)
    (out / "summary.json").unlink()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    state["extra"]["epoch"] = 0  # as if killed after epoch 1 of 2: the resume trains epoch 2
    torch.save(state, out / "checkpoints" / "last.pt")
    _refused_while_the_first_runs(tmp_path, out, ["--resume"], [["--resume"]])


def test_train_inside_a_sweep_job_shares_its_lock(tmp_path, digits_splits):
    """A sweep job holds its folder's lock while it calls train in the same process: train takes it as its
    own; another holder (a second sweep in this process, another process) is still refused."""
    from sharpdro.experiments.sweep_jobs import job_lock
    from sharpdro.rundir import hold_lock, lock_held

    job = tmp_path / "job"
    with job_lock(job) as mine:
        assert mine
        summary = _train(job, splits=digits_splits)  # was: refused (or a deadlock) against its own job lock
        assert summary["finished"]
        with hold_lock(job) as again:
            assert not again  # not nested: another holder
        assert lock_held(job)
        res = subprocess.run([sys.executable, "-c", "import sys; from sharpdro.rundir import lock_held; "
                              f"sys.exit(0 if lock_held({str(job)!r}) else 1)"],
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        assert res.returncode == 0  # another process sees it held
    assert not lock_held(job)


# ------------------------------------------------------------------ 5. never write over a file the tool did not write
def test_export_never_replaces_a_users_config_json(tmp_path, erm_run):
    pytest.importorskip("safetensors")
    mine = tmp_path / "hf-repo"
    mine.mkdir()
    (mine / "config.json").write_text('{"model_type": "my own"}\n')
    before = _files(mine)
    line = _one_error_line(_cli("export", erm_run, "--out", mine))
    assert "config.json that sharpdro did not write" in line and str(mine) in line
    assert _files(mine) == before
    # an export of its own is replaced (exported again), into a new folder too
    res = _cli("export", erm_run, "--out", tmp_path / "exp")
    assert res.returncode == 0, res.stderr
    res = _cli("export", erm_run, "--out", tmp_path / "exp")
    assert res.returncode == 0, res.stderr


def test_train_never_replaces_a_users_config_yaml(tmp_path):
    mine = tmp_path / "experiment"
    mine.mkdir()
    text = "data: {dataset: digits}\nmodel: {width: 8}\nalgorithm: {name: erm}\ntrain: {epochs: 1}  # my notes\n"
    (mine / "config.yaml").write_text(text)
    for extra in ([], ["--resume"]):
        line = _one_error_line(_cli("train", "-c", "quickstart", "--out", mine, *extra, *[f"--set={o}" for o in TINY]))
        assert "not a sharpdro run directory" in line and "config.yaml" in line
        assert [p.name for p in mine.iterdir()] == ["config.yaml"] and (mine / "config.yaml").read_text() == text


def test_convert_never_replaces_an_unrelated_file(tmp_path, erm_run):
    pytest.importorskip("mindspore")
    thesis = tmp_path / "thesis.pdf"
    thesis.write_bytes(b"%PDF-1.7 my thesis")
    line = _one_error_line(_cli("convert", erm_run, thesis))
    assert f"{thesis} exists and is not a sharpdro checkpoint" in line
    assert thesis.read_bytes() == b"%PDF-1.7 my thesis"
    res = _cli("convert", erm_run, tmp_path / "ms.npz")
    assert res.returncode == 0, res.stderr
    res = _cli("convert", erm_run, tmp_path / "ms.npz")  # its own output is replaced
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------ 6. kill -9 during a checkpoint write
_KILLED_IN_SAVE = textwrap.dedent("""
    import os, signal, sys
    import torch
    real = torch.save
    calls = []
    def save(obj, f, *a, **kw):  # the second checkpoint: half written, then kill -9
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\\x03\\x04" + b"x" * 5000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real(obj, f, *a, **kw)
    torch.save = save
    from sharpdro.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_9_during_a_checkpoint_write_leaves_no_temp_file_after_the_next_start(tmp_path):
    out = tmp_path / "run"
    sets = [f"--set={o}" for o in TINY] + ["--set=train.epochs=3", "--set=output.save_best=false"]
    res = subprocess.run([sys.executable, "-c", _KILLED_IN_SAVE, "train", "-c", "quickstart", "--out", str(out),
                          *sets], env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == -9, res.stderr
    temps = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".last.pt.")]
    assert len(temps) == 1 and temps[0].endswith(".tmp")  # what a kill -9 leaves
    res = _cli("train", "-c", "quickstart", "--out", out, "--resume", *sets)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]  # was: the temp file forever


# ------------------------------------------------------------------ 7. a finished run's metrics.jsonl lost lines
def test_a_finished_run_whose_metrics_lost_a_line_is_not_reported_as_finished(tmp_path, erm_run):
    sweep = tmp_path / "sweep"
    run = sweep / "job0"
    shutil.copytree(erm_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n")  # the last line lost (a truncated copy)
    res = _cli("report", sweep)
    assert res.returncode == 0, res.stderr
    assert "1 failed" in res.stdout and "lacks the line(s) of epoch 2 of this finished run" in res.stdout
    pytest.importorskip("pandas")
    from sharpdro.runs_table import load_runs

    with pytest.warns(UserWarning, match="lacks the line"):
        df = load_runs(sweep)
    assert set(df.status) == {"damaged"}
    from sharpdro.rundir import RunDir

    shutil.copytree(erm_run, tmp_path / "whole")
    assert RunDir(tmp_path / "whole").lost_lines_note() is None  # a complete file says nothing


# ------------------------------------------------------------------ 11. non-finite weights and outputs; JSON
def _damaged_copy(erm_run, tmp_path, change) -> Path:
    import torch

    run = tmp_path / "damaged"
    shutil.copytree(erm_run, run)
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        change(state["algorithm"])
        torch.save(state, run / "checkpoints" / name)
    return run


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, erm_run):
    def flip(algo):  # flipped exponent bits: 0x7fc00000 is a NaN
        w = algo["model.features.0.weight"].view(-1)
        w[3] = float("nan")

    run = _damaged_copy(erm_run, tmp_path, flip)
    line = _one_error_line(_cli("evaluate", run))
    assert "non-finite weights" in line and "model.features.0.weight" in line  # was: 9.8 %, and NaN in JSON
    assert not list(run.glob("evaluation-*"))
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(img)
    line = _one_error_line(_cli("predict", run, img))  # was: "0 (nan%)"
    assert "non-finite weights" in line


def test_outputs_that_overflow_are_refused(tmp_path, erm_run):
    def huge(algo):  # finite weights whose logits overflow to infinity
        algo["model.head.3.weight"].fill_(3e38)

    run = _damaged_copy(erm_run, tmp_path, huge)
    line = _one_error_line(_cli("evaluate", run))
    assert "outputs are not finite" in line
    assert not list(run.glob("evaluation-*"))


def test_json_files_never_hold_bare_nan(tmp_path):
    from sharpdro.io import append_jsonl, atomic_write_json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    atomic_write_json(tmp_path / "a.json", {"ece": float("nan"), "x": [np.float32("inf"), 1.5], "n": np.int64(2)})
    assert strict((tmp_path / "a.json").read_text()) == {"ece": None, "x": [None, 1.5], "n": 2}
    append_jsonl(tmp_path / "m.jsonl", {"auroc": float("nan")})
    assert strict((tmp_path / "m.jsonl").read_text()) == {"auroc": None}


# ------------------------------------------------------------------ 12. a checkpoint of another method
def test_resume_from_a_checkpoint_of_another_method_names_it(tmp_path, erm_run, digits_splits):
    run = tmp_path / "sharpdro"
    _train(run, "train.epochs=2", "algorithm.name=sharpdro", splits=digits_splits)
    (run / "summary.json").unlink()
    shutil.copy(erm_run / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")  # hand-made
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", run, "--resume", *[f"--set={o}" for o in TINY],
                                "--set=train.epochs=2", "--set=algorithm.name=sharpdro"))
    assert "written by a run of method 'erm'" in line and "this run is 'sharpdro'" in line, line


# ------------------------------------------------------------------ 13. real full disk, read-only, long names, ...
def test_full_disk_during_a_checkpoint_write_on_a_real_tmpfs(tmp_path, tmpfs):
    import torch

    # width 16: tensors larger than a file object's 8 KiB buffer, whose failed writes torch.save swallows
    sets = [f"--set={o}" for o in TINY] + ["--set=model.width=16"]
    probe = tmp_path / "probe"
    assert _cli("train", "-c", "quickstart", "--out", probe, *sets).returncode == 0
    size = (probe / "checkpoints" / "last.pt").stat().st_size
    out = tmpfs / "run"
    _fill(tmpfs, leave=2 * size + 64 * 1024 + size // 2)  # the first last.pt and best.pt fit; the next one not
    res = _cli("train", "-c", "quickstart", "--out", out, *sets, "--set=train.epochs=4")
    line = _one_error_line(res)  # was: RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos
    assert "no space left" in line and "checkpoints/last.pt" in line and "needed" in line, line
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["extra"]["epoch"] >= 0  # the last good checkpoint is whole
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left


def test_export_to_a_full_disk_keeps_the_earlier_export(tmp_path, tmpfs, erm_run):
    pytest.importorskip("safetensors")
    out = tmpfs / "export"
    res = _cli("export", erm_run, "--out", out)
    assert res.returncode == 0, res.stderr
    before = _files(out)
    (out / "model.safetensors").rename(tmpfs / "elsewhere")  # so that the new weights must be written whole
    _fill(tmpfs, leave=8 * 1024)
    line = _one_error_line(_cli("export", erm_run, "--out", out))  # was: SafetensorError
    assert "no space left" in line and "model.safetensors" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no temp file; the config as it was
    assert (out / "config.json").read_bytes() == before["config.json"]


def test_evaluate_and_export_on_a_read_only_file_system(tmp_path, tmpfs, erm_run):
    run = tmpfs / "run"
    shutil.copytree(erm_run, run)
    res = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only: {res.stderr.strip()}")
    res = _cli("evaluate", run)
    line = _one_error_line(res)  # was: a traceback (OSError: Read-only file system)
    assert "read-only" in line and "--json PATH" in line and "worst" in res.stdout  # the result is shown
    res = _cli("evaluate", run, "--json", tmp_path / "result.json")  # what the line says to do works
    assert res.returncode == 0 and json.loads((tmp_path / "result.json").read_text())["test"], res.stderr
    if _has("safetensors"):
        line = _one_error_line(_cli("export", run, "--out", tmpfs / "export"))
        assert "read-only" in line and str(tmpfs / "export") in line, line


def test_over_long_out_names(tmp_path, erm_run):
    long = tmp_path / ("x" * 300) / "run"
    before = sorted(tmp_path.iterdir())
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", long, *[f"--set={o}" for o in TINY]))
    assert "too long" in line and "shorter name" in line  # was: OSError: [Errno 36] File name too long
    assert sorted(tmp_path.iterdir()) == before
    for cmd in (["export", erm_run, "--out", long], ["convert", erm_run, long]):
        if cmd[0] == "export" and not _has("safetensors"):
            continue
        line = _one_error_line(_cli(*cmd))
        assert "too long" in line, line
        assert sorted(tmp_path.iterdir()) == before


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("damage", ["model.safetensors", "config.json"])
def test_init_from_a_truncated_export(tmp_path, erm_run, damage):
    pytest.importorskip("safetensors")
    exp = tmp_path / "exp"
    assert _cli("export", erm_run, "--out", exp).returncode == 0
    data = (exp / damage).read_bytes()
    (exp / damage).write_bytes(data[: len(data) // 2])  # an interrupted copy
    out = tmp_path / "runs" / "ft"
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", out, *[f"--set={o}" for o in TINY],
                                f"--set=model.init_from={exp}"))
    assert f"{exp / damage} cannot be read" in line and "incomplete or damaged" in line, line
    assert not (tmp_path / "runs").exists()  # a failed start leaves no run folder


def test_seed_beyond_the_range_of_torch(tmp_path):
    out = tmp_path / "run"
    line = _one_error_line(_cli("train", "-c", "quickstart", "--out", out, *[f"--set={o}" for o in TINY],
                                f"--set=seed={2 ** 64}"))
    assert "'seed' = 18446744073709551616 is out of range" in line  # was: a crash in torch.manual_seed
    assert not out.exists()
    from sharpdro.config import load_config

    assert load_config("quickstart", [f"seed={2 ** 64 - 1}"])["seed"] == 2 ** 64 - 1


# ------------------------------------------------------------------ 19. a rename survives a power cut
def test_atomic_writes_fsync_the_folder_after_the_rename(tmp_path, monkeypatch):
    import stat

    from sharpdro import io

    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("replace", Path(dst).parent))

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    io.atomic_write_json(tmp_path / "summary.json", {"finished": True})
    i = events.index(("replace", tmp_path))
    assert ("fsync-dir", tmp_path.stat().st_ino) in events[i + 1:]  # was: no fsync of the folder


# ------------------------------------------------------------------ 23. check before writing; no run folder left
def test_a_folder_of_images_with_the_default_batch_size(tmp_path):
    from test_reliability import _class_folders

    root = _class_folders(tmp_path / "data", ["airplane", "automobile", "bird", "cat"], per_class=12)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{dataset: folder, root: {root}}}\ntrain: {{epochs: 1, progress: false}}\n")
    cache = tmp_path / "cache"
    out = tmp_path / "runs" / "mine"
    line = _one_error_line(_cli("train", "-c", cfg, "--out", out, env={"SHARPDRO_CACHE": str(cache)}))
    assert "train.batch_size=100 exceeds the" in line and "lower train.batch_size" in line
    assert not (tmp_path / "runs").exists()  # was: a run folder left behind
    assert not cache.exists() or not any(cache.iterdir())  # was: refused only after building the cache
