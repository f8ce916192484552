"""Sweeps: job hashes, resume after an interruption, failures, launchers, Slurm parameters (no cluster)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sharpdro.cli import main
from sharpdro.config import FORMER_DEFAULTS, SCHEMA, Field, load_config, validate
from sharpdro.experiments import sweep as sw

# --------------------------------------------------------------------------- a fake trainer


def _write_fake_run(cfg: dict, out_dir, epochs: int = 2) -> dict:
    """Write what sharpdro.engine.train writes, with synthetic numbers derived from the config."""
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    base = 0.5 + 0.01 * cfg["seed"]
    acc = {str(s): base - 0.02 * s for s in range(cfg["data"]["max_severity"] + 1)}
    block = {"accuracy": acc, "average": sum(acc.values()) / len(acc), "worst": min(acc.values()),
             "worst_severity": max(int(k) for k in acc)}
    with open(out / "metrics.jsonl", "w") as f:
        for e in range(epochs):
            f.write(json.dumps({"epoch": e, "lr": 0.1, "seconds": 0.0, "train": {"loss": 1.0 / (e + 1)},
                                "val": block, "test": block}) + "\n")
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    summary = {"algorithm": cfg["algorithm"]["name"], "seed": cfg["seed"], "finished": True,
               "test_accuracy": acc, "selected_epoch": epochs - 1}
    (out / "summary.json").write_text(json.dumps(summary))
    return summary


def fake_train_parallel(cfg, out_dir=None, resume=False):
    """Used by the parallel launcher (imported by name in the spawned worker)."""
    summary = _write_fake_run(cfg, out_dir)
    (Path(out_dir) / "worker.json").write_text(json.dumps({"pid": os.getpid(), "threads": cfg["train"]["threads"],
                                                           "progress": cfg["train"]["progress"]}))
    return summary


def fake_train_fail_on_seed1(cfg, out_dir=None, resume=False):
    if cfg["seed"] == 1:
        raise RuntimeError("synthetic failure for seed 1")
    return _write_fake_run(cfg, out_dir)


class CountingTrain:
    """Counts calls; optionally raises (KeyboardInterrupt = a killed sweep) on one call after writing a partial run."""

    def __init__(self, interrupt_on: int | None = None, exc=KeyboardInterrupt):
        self.calls: list[tuple[int, bool]] = []
        self.interrupt_on = interrupt_on
        self.exc = exc

    def __call__(self, cfg, out_dir=None, resume=False):
        self.calls.append((cfg["seed"], resume))
        if self.interrupt_on is not None and len(self.calls) == self.interrupt_on:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "config.yaml").write_text(yaml.safe_dump(cfg))
            (Path(out_dir) / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n")
            raise self.exc("killed mid-run")
        return _write_fake_run(cfg, out_dir)


def _spec(seeds=(0, 1, 2, 3)) -> sw.SweepSpec:
    return sw.build_spec(None, sets=["data.dataset=digits", "train.epochs=2"],
                         grids=["seed=" + ",".join(map(str, seeds))])


# --------------------------------------------------------------------------- hashes


def test_job_hash_stable_across_processes_and_key_order():
    cfg = load_config(None, ["train.lr=0.1", "seed=3"])
    shuffled = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v)
                for k, v in reversed(list(cfg.items()))}
    assert list(shuffled) != list(cfg)
    h = sw.job_hash(cfg)
    assert sw.job_hash(shuffled) == h
    code = textwrap.dedent("""
        import json, sys
        from sharpdro.experiments.sweep import job_hash
        print(job_hash(json.loads(sys.stdin.read())))
    """)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(shuffled), capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == h


# keys whose free-form values are checked beyond their type (model.name: a built-in, timm:NAME or module.path:factory)
OTHER_NAMES = {"model.name": ("cnn7",)}
# keys valid only beside another key's value: both the base and the changed config get it
CONTEXT = {"model.pretrained": {"model": {"name": "timm:resnet18"}}}


def _other_value(path: str, f: Field, value):
    if f.type is list and f.choices is not None:  # a list of choices (output.loggers)
        return [[c] for c in f.choices]
    if f.choices is not None:
        return [c for c in f.choices if c != value]
    if f.type is bool:
        return [not value]
    if f.type is list:
        return [list(value) + [0.9]]
    if value is None:
        return [f.min if f.min is not None else 7, 7, "x"]
    if f.type is str:
        return [value + "x", *OTHER_NAMES.get(path, ())]
    if f.type is int:
        return [value + 1, value - 1]
    lo = f.min if f.min is not None else -1e9
    hi = f.max if f.max is not None else 1e9
    return [x for x in (value * 0.5 + 0.001, (value + hi) / 2 if hi < 1e9 else value + 1.0, lo) if lo <= x <= hi]


def _leaves(node=SCHEMA, prefix=""):
    for k, v in node.items():
        if isinstance(v, Field):
            yield prefix + k, v
        else:
            yield from _leaves(v, prefix + k + ".")


def test_job_hash_changes_with_every_config_key_but_runtime_ones():
    checked = 0
    for path, f in _leaves():
        base = validate({"data": {"root": "/data/x"}, **CONTEXT.get(path, {})})
        h0 = sw.job_hash(base)
        section, _, key = path.rpartition(".")
        current = base[section][key] if section else base[key]
        for candidate in _other_value(path, f, current):
            if path in FORMER_DEFAULTS and candidate == FORMER_DEFAULTS[path]:
                continue  # a key at its former default keeps the job's name (see job_identity)
            cfg = json.loads(json.dumps(base))
            (cfg[section] if section else cfg)[key] = candidate
            try:
                cfg = validate(cfg)
            except Exception:
                continue
            break
        else:
            pytest.fail(f"no other valid value found for {path}")
        if path in sw.RUNTIME_KEYS:
            assert sw.job_hash(cfg) == h0, path
        else:
            assert sw.job_hash(cfg) != h0, f"changing {path} did not change the job hash"
            checked += 1
    assert checked > 40


def test_format_value_round_trips_through_overrides():
    from sharpdro.config import parse_override

    for v in (0.001, 1e-05, 3e20, 0.1, 2, True, None, "gaussian_noise", [0.3, 0.6, 0.8], "a,b", "1e-3", "null"):
        _, back = parse_override("x=" + sw.format_value(v))
        assert back == v and type(back) is type(v), (v, sw.format_value(v), back)
    assert sw.normalize_override("train.lr=1e-3") == "train.lr=0.001"


# --------------------------------------------------------------------------- sweep files and flags


def test_sweep_file_grid_set_include_and_cli_flags(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {dataset: digits}\ntrain: {epochs: 3, lr: 0.05}\n")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        base: base.yaml
        set: [train.epochs=2]
        grid:
          algorithm.name: [erm, sharpdro]
          train.lr: [1e-3, 0.01]
          seed: 0
        include:
          - {algorithm.name: jtt, train.lr: 0.1}
          - [algorithm.name=eiil]
    """))
    spec = sw.build_spec(tmp_path / "s.yaml", sets=["train.batch_size=64"], grids=["seed=0,1"])
    jobs = sw.expand(spec)
    assert len(jobs) == 2 * 2 * 2 + 2
    assert all(j.config["train"]["epochs"] == 2 and j.config["train"]["batch_size"] == 64 for j in jobs)
    assert {j.config["train"]["lr"] for j in jobs[:8]} == {0.001, 0.01}
    assert jobs[8].config["algorithm"]["name"] == "jtt" and jobs[8].config["train"]["lr"] == 0.1
    assert jobs[9].config["train"]["lr"] == 0.05  # base value
    assert jobs[0].varying == ("algorithm.name=erm", "train.lr=0.001", "seed=0")
    assert len({j.hash for j in jobs}) == len(jobs)
    # the shipped example resolves (base: quickstart)
    ex = sw.expand(sw.build_spec("example"))
    assert len(ex) >= 12 and all(j.config["data"]["dataset"] == "digits" for j in ex)


def test_grid_values_split_outside_brackets_and_bad_keys_fail():
    assert sw.parse_grid_arg("train.milestones=[0.5, 0.8],[0.3]") == ("train.milestones", [[0.5, 0.8], [0.3]])
    assert sw.parse_grid_arg("algorithm.name=erm, sam") == ("algorithm.name", ["erm", "sam"])
    with pytest.raises(Exception, match="train.nope"):
        sw.expand(sw.build_spec(None, grids=["train.nope=1,2"]))
    with pytest.raises(Exception, match="algorithm.name"):
        sw.expand(sw.build_spec(None, grids=["algorithm.name=erm,magic"]))


def record_root_train(cfg, out_dir=None, resume=False):
    summary = _write_fake_run(cfg, out_dir)
    (Path(out_dir) / "root.txt").write_text(str(cfg["data"]["root"]))
    return summary


def test_a_grid_over_data_root_runs_every_data_set(tmp_path):
    """Issue 25, case 9: a grid over data.root (a runtime key, out of the job hash) collapsed to one job per
    seed: the second data set never ran. A runtime key the sweep varies is part of the job's identity."""
    a, b, c = (str(tmp_path / "data" / n) for n in ("A", "B", "C"))
    sweep_file = tmp_path / "roots.yaml"
    sweep_file.write_text(yaml.safe_dump({"set": ["data.dataset=folder", "train.epochs=2"],
                                          "grid": {"data.root": [a, b], "seed": [0, 1]},
                                          "include": [{"data.root": c, "seed": 0}]}))
    jobs = sw.expand(sw.build_spec(sweep_file))
    assert len({j.hash for j in jobs}) == len(jobs) == 5
    out = sw.run_sweep(jobs, tmp_path / "sweep", train=record_root_train, progress=False)
    assert out.done == 5
    roots = sorted((tmp_path / "sweep" / j.hash / "root.txt").read_text() for j in jobs)
    assert roots == [a, a, b, b, c]
    # the data given once for every job (--set, as the committed sweeps do) still names no job: moving it
    # renames nothing, and the jobs keep the names they had without it
    common = ["data.dataset=folder", "train.epochs=2"]
    given = sw.expand(sw.build_spec(None, sets=common + [f"data.root={a}"], grids=["seed=0,1"]))
    moved = sw.expand(sw.build_spec(None, sets=common + [f"data.root={b}"], grids=["seed=0,1"]))
    plain = sw.expand(sw.build_spec(None, sets=common, grids=["seed=0,1"]))
    assert [j.hash for j in given] == [j.hash for j in moved] == [j.hash for j in plain]
    assert [j.hash for j in plain] == [sw.job_hash(j.config) for j in plain]


# --------------------------------------------------------------------------- running


def test_interrupted_sweep_finishes_on_rerun_without_redoing_jobs(tmp_path):
    jobs = sw.expand(_spec())
    first = CountingTrain(interrupt_on=3)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(jobs, tmp_path, train=first, progress=False)
    assert [s for s, _ in first.calls] == [0, 1, 2]
    assert [sw.job_status(tmp_path / j.hash) for j in jobs] == ["done", "done", "partial", "new"]

    second = CountingTrain()
    out = sw.run_sweep(jobs, tmp_path, train=second, progress=False)
    assert second.calls == [(2, True), (3, False)]  # the partial job resumes, the new one starts
    assert (out.done, out.failed, out.skipped) == (2, 0, 2) and out.ok
    assert all(sw.job_status(tmp_path / j.hash) == "done" for j in jobs)

    third = CountingTrain()
    out = sw.run_sweep(jobs, tmp_path, train=third, progress=False)
    assert third.calls == [] and out.skipped == 4


def test_a_resumed_job_keeps_the_thread_count_it_began_with(tmp_path):
    """A job begun by the parallel launcher (threads = cores / workers) and resumed by another launcher or
    worker count continues with its own thread count: --resume refuses another (issue 25, case 9)."""
    jobs = sw.expand(_spec(seeds=(0, 1)))
    begun = tmp_path / jobs[0].hash
    begun.mkdir()
    (begun / "config.yaml").write_text(yaml.safe_dump({**jobs[0].config, "train": {**jobs[0].config["train"],
                                                                                   "threads": 3}}))
    (begun / "metrics.jsonl").write_text(json.dumps({"epoch": 0}) + "\n")
    seen = {}

    def train(cfg, out_dir=None, resume=False):
        seen[cfg["seed"]] = (cfg["train"]["threads"], resume)
        return _write_fake_run(cfg, out_dir)

    assert sw.run_sweep(jobs, tmp_path, train=train, progress=False).ok
    assert seen == {0: (3, True), 1: (None, False)}  # the new job: the library default, as before


def test_failed_job_is_recorded_and_sweep_goes_on(tmp_path):
    jobs = sw.expand(_spec(seeds=(0, 1, 2)))
    train = CountingTrain(interrupt_on=2, exc=RuntimeError)
    out = sw.run_sweep(jobs, tmp_path, train=train, progress=False, log=lambda m: None)
    assert [s for s, _ in train.calls] == [0, 1, 2]
    assert (out.done, out.failed) == (2, 1) and not out.ok
    err = (tmp_path / jobs[1].hash / "error.txt").read_text()
    assert "Traceback" in err and "RuntimeError: killed mid-run" in err
    assert sw.job_status(tmp_path / jobs[1].hash) == "failed"
    # a re-run retries the failed job (resuming) and clears its error
    retry = CountingTrain()
    out = sw.run_sweep(jobs, tmp_path, train=retry, progress=False)
    assert retry.calls == [(1, True)] and out.ok
    assert not (tmp_path / jobs[1].hash / "error.txt").exists()


def test_job_held_by_another_process_is_not_run_twice(tmp_path):
    jobs = sw.expand(_spec(seeds=(0, 1)))
    train = CountingTrain()
    with sw.job_lock(tmp_path / jobs[0].hash) as mine:  # as if a second sweep were running job 0
        assert mine
        assert sw.job_status(tmp_path / jobs[0].hash) == "running"
        out = sw.run_sweep(jobs, tmp_path, train=train, progress=False)
    assert train.calls == [(1, False)] and out.busy == 1 and out.done == 1 and out.ok
    assert sw.job_status(tmp_path / jobs[0].hash) == "new"  # the lock left with its holder
    out = sw.run_sweep(jobs, tmp_path, train=train, progress=False)
    assert train.calls[-1] == (0, False) and out.done == 1 and out.skipped == 1


def test_summary_without_done_marker_is_recovered(tmp_path):
    job = sw.expand(_spec(seeds=(0,)))[0]
    _write_fake_run(job.config, tmp_path / job.hash)
    train = CountingTrain()
    out = sw.run_sweep([job], tmp_path, train=train, progress=False)
    assert train.calls == [] and out.done == 1 and (tmp_path / job.hash / "done").exists()


def test_sweep_index_and_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sw, "DEFAULT_TRAIN", f"{__name__}:fake_train_fail_on_seed1")
    argv = ["sweep", "--out", str(tmp_path), "--set", "data.dataset=digits", "--grid", "seed=0,1,2",
            "--grid", "algorithm.name=erm", "--no-progress"]
    assert main(argv + ["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(" new " in ln for ln in lines[:3]) and lines[-1] == "3 jobs: 3 new"
    assert main(argv) == 1  # seed 1 fails -> non-zero exit
    captured = capsys.readouterr()
    assert "2 done, 1 failed, 0 skipped" in captured.out
    assert main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") == 2 and out.count(" failed ") == 1
    index = json.loads((tmp_path / "sweep.json").read_text())
    assert len(index["jobs"]) == 3
    for h, entry in index["jobs"].items():
        assert sw.job_hash(entry["config"]) == h
        assert "data.dataset=digits" in entry["overrides"]


def test_two_sweeps_writing_the_index_keep_each_others_jobs(tmp_path, monkeypatch):
    """Issue 25, case 17: sweep.json was read, merged and written back without a lock, so a second sweep
    that read it while the first was writing lost the first one's entries. The first writer here is held
    between its read and its write (as a slow disk would hold it) while the second one runs."""
    import threading

    from sharpdro.experiments import sweep_jobs

    first, second = sw.expand(_spec(seeds=(0, 1))), sw.expand(_spec(seeds=(2, 3)))
    merged, release = threading.Event(), threading.Event()
    real = sweep_jobs.atomic_write_json

    def slow_write(path, obj, *a, **k):
        if threading.current_thread().name == "first":
            merged.set()  # the first sweep has read and merged the index
            release.wait(10)
        return real(path, obj, *a, **k)

    monkeypatch.setattr(sweep_jobs, "atomic_write_json", slow_write)
    a = threading.Thread(target=sw.write_index, args=(tmp_path, first), name="first")
    a.start()
    assert merged.wait(10)
    b = threading.Thread(target=sw.write_index, args=(tmp_path, second), name="second")
    b.start()
    b.join(1.0)  # with the lock, the second sweep waits here for the first
    release.set()
    a.join(10)
    b.join(10)
    jobs = json.loads((tmp_path / "sweep.json").read_text())["jobs"]
    assert sorted(jobs) == sorted(j.hash for j in first + second)


def test_parallel_launcher_runs_jobs_in_worker_processes(tmp_path):
    jobs = sw.expand(_spec(seeds=(0, 1)))
    out = sw.run_sweep(jobs, tmp_path, launcher="parallel", workers=2, train=f"{__name__}:fake_train_parallel",
                       progress=False)
    assert out.ok and out.done == 2
    infos = [json.loads((tmp_path / j.hash / "worker.json").read_text()) for j in jobs]
    assert all(i["pid"] != os.getpid() for i in infos)
    assert infos[0]["pid"] != infos[1]["pid"]
    assert all(i["threads"] == max(1, sw.available_cores() // 2) and i["progress"] is False for i in infos)
    # the runtime threads setting does not change the job folders: everything is skipped now
    again = sw.run_sweep(jobs, tmp_path, launcher="local", train=CountingTrain(), progress=False)
    assert again.skipped == 2


def train_or_die_on_seed1(cfg, out_dir=None, resume=False):
    """Seed 1's process is killed (as the OOM killer would) while the others run; each job's span is recorded."""
    import signal
    import time

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))  # started: a partial run from here on
    start = time.time()
    if cfg["seed"] == 1:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(2.0)
    summary = _write_fake_run(cfg, out_dir)
    (out / "span.json").write_text(json.dumps({"pid": os.getpid(), "start": start, "end": time.time()}))
    return summary


def test_parallel_launcher_runs_one_process_per_job_and_a_dead_one_fails_alone(tmp_path):
    """Issue 25, case 16: the launcher used ProcessPoolExecutor(max_tasks_per_child=1), a TypeError on Python
    3.10 and the submit-everything pattern of CPython gh-115634; and a killed worker broke the pool, failing
    the job running beside it. Now each job has a process of its own, at most --workers alive."""
    jobs = sw.expand(_spec(seeds=(0, 1, 2, 3)))
    out = sw.run_sweep(jobs, tmp_path, launcher="parallel", workers=2, train=f"{__name__}:train_or_die_on_seed1",
                       progress=False, log=lambda m: None)
    status = {j.config["seed"]: sw.job_status(tmp_path / j.hash) for j in jobs}
    assert status == {0: "done", 1: "failed", 2: "done", 3: "done"}  # seed 0 ran beside the killed seed 1
    assert (out.done, out.failed) == (3, 1)
    assert "killed by signal 9" in (tmp_path / jobs[1].hash / "error.txt").read_text()
    spans = [json.loads((tmp_path / jobs[i].hash / "span.json").read_text()) for i in (0, 2, 3)]
    assert len({s["pid"] for s in spans}) == 3 and all(s["pid"] != os.getpid() for s in spans)
    for t in [s["start"] for s in spans]:  # never more than --workers jobs at once (the killed one aside)
        assert sum(s["start"] <= t < s["end"] for s in spans) <= 2
    again = sw.run_sweep(jobs, tmp_path, launcher="parallel", workers=2, train=f"{__name__}:fake_train_parallel",
                         progress=False)
    assert (again.done, again.skipped) == (1, 3)  # the killed job resumes on the next run


# --------------------------------------------------------------------------- slurm without a cluster


def test_slurm_parameters_without_submitit(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    p = sw.slurm_parameters(partition="gpu", time="1-02:30:00", gpus=2, cpus=8, mem_gb=32, account="lab",
                            array_parallelism=4, extra=["mail-type=END", "requeue"])
    assert p == {"name": "sharpdro", "timeout_min": 1590, "nodes": 1, "tasks_per_node": 2, "gpus_per_node": 2,
                 "cpus_per_task": 8, "mem_gb": 32.0, "slurm_partition": "gpu", "slurm_account": "lab",
                 "slurm_array_parallelism": 4,
                 "slurm_additional_parameters": {"mail_type": "END", "requeue": True}}
    assert sw.slurm_parameters()["timeout_min"] == 240 and "slurm_partition" not in sw.slurm_parameters()
    assert [sw.parse_slurm_time(t) for t in ("90", "10:30", "2:00:00", "1-0", "90m", "4h", "1.5h", 30)] == \
        [90, 11, 120, 1440, 90, 240, 90, 30]
    with pytest.raises(sw.SweepError, match="Slurm time"):
        sw.parse_slurm_time("soon")
    with pytest.raises(sw.SweepError, match="pip install"):
        sw.make_slurm_executor("/tmp/x", p)


def test_slurm_launcher_reports_missing_submitit(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    rc = main(["sweep", "--out", str(tmp_path), "--grid", "seed=0", "--launcher", "slurm", "--no-progress"])
    assert rc == 2
    assert "submitit" in capsys.readouterr().err


def test_job_hash_survives_a_new_config_key(monkeypatch):
    """A key added later (with its default) must not rename finished jobs of a long sweep."""
    from sharpdro import config as config_mod
    from sharpdro.config import Field, load_config
    from sharpdro.experiments.sweep import job_hash

    cfg = load_config("quickstart", ["algorithm.name=sharpdro", "seed=2"])
    before = job_hash(cfg)
    train_schema = dict(config_mod.SCHEMA["train"])
    train_schema["brand_new_knob"] = Field(7, int, "added in a later version")
    monkeypatch.setitem(config_mod.SCHEMA, "train", train_schema)
    extended = config_mod.validate(cfg)
    assert extended["train"]["brand_new_knob"] == 7
    assert job_hash(extended) == before
    changed = config_mod.apply_overrides(extended, ["train.brand_new_knob=8"])
    assert job_hash(config_mod.validate(changed)) != before


def test_only_runs_the_named_jobs_and_indexes_the_whole_sweep(tmp_path, capsys, monkeypatch):
    """`--only HASH` (or a unique prefix) runs that job alone; the index still lists every job of the sweep,
    and a name that matches no job, or several, is one clear error."""
    monkeypatch.setattr(sw, "DEFAULT_TRAIN", f"{__name__}:fake_train_parallel")
    argv = ["sweep", "--out", str(tmp_path), "--set", "data.dataset=digits", "--grid", "seed=0,1,2", "--no-progress"]
    hashes = [j.hash for j in sw.expand(sw.build_spec(None, sets=["data.dataset=digits"], grids=["seed=0,1,2"]))]
    assert main(argv + ["--only", hashes[1][:6], "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{hashes[1]}  new        seed=1", "1 jobs: 1 new"]
    assert main(argv + ["--only", f"{hashes[2]},{hashes[1][:5]}"]) == 0
    assert [(tmp_path / h / "done").exists() for h in hashes] == [False, True, True]
    assert sorted(json.loads((tmp_path / "sweep.json").read_text())["jobs"]) == sorted(hashes)
    capsys.readouterr()
    assert main(argv + ["--only", "ffffffffff"]) == 2
    err = capsys.readouterr().err
    assert "no job of this sweep has that hash" in err and "Traceback" not in err
    assert main(argv + ["--only", "abc"]) == 2
    assert "at least 4 characters" in capsys.readouterr().err
    with pytest.raises(sw.SweepError, match="give more characters"):
        sw.select_jobs([type("J", (), {"hash": "abcd12"})(), type("J", (), {"hash": "abcd34"})()], ["abcd"])
    assert not (tmp_path / hashes[0] / "done").exists()
