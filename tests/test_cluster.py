"""Clusters without a cluster: one GPU per parallel worker (seen through each worker's environment),
Slurm ranks from Slurm's variables, multi-GPU Slurm jobs as DDP tasks."""
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from sharpdro.cluster import apply_slurm_env, first_host, parallel_devices, slurm_rank, slurm_torch_env
from sharpdro.config import load_config
from sharpdro.experiments import sweep as sw


def record_env_train(cfg, out_dir=None, resume=False):
    """A train function for the parallel launcher: records the worker's CUDA_VISIBLE_DEVICES and its time span."""
    out = Path(out_dir)
    start = time.time()
    time.sleep(1.0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(),
                                              "start": start, "end": time.time()}))
    (out / "summary.json").write_text(json.dumps({"finished": True}))
    return {"finished": True}


def _jobs(n):
    return sw.expand(sw.build_spec(base="quickstart", grids=[f"seed={','.join(str(i) for i in range(n))}"]))


def test_parallel_devices():
    assert parallel_devices(4, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == ["0", "1", "2", "3"]
    assert parallel_devices(3, {"CUDA_VISIBLE_DEVICES": "2,7"}) == ["2", "7", "2"]  # more workers than GPUs
    assert parallel_devices(2, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert parallel_devices(2, {"CUDA_VISIBLE_DEVICES": "-1"}) == []
    if not torch.cuda.is_available():
        assert parallel_devices(2, {}) == []  # this machine: no GPU, nothing assigned


def test_parallel_launcher_gives_each_worker_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # a two-GPU machine, as the launcher sees it
    jobs = _jobs(4)
    out = sw.run_sweep(jobs, tmp_path, launcher="parallel", workers=2, train=f"{__name__}:record_env_train",
                       progress=False)
    assert out.ok and out.done == 4
    envs = [json.loads((tmp_path / j.hash / "env.json").read_text()) for j in jobs]
    assert all(e["cuda"] in ("4", "6") for e in envs)  # one GPU each, never the whole list
    assert {e["cuda"] for e in envs} == {"4", "6"}
    for a in envs:  # jobs that ran at the same time had different GPUs
        for b in envs:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["cuda"] != b["cuda"]
    assert any(a is not b and a["start"] < b["end"] and b["start"] < a["end"] for a in envs for b in envs)


def test_parallel_launcher_without_gpus_sets_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    jobs = _jobs(2)
    assert sw.run_sweep(jobs, tmp_path, launcher="parallel", workers=2, train=f"{__name__}:record_env_train",
                        progress=False).ok
    assert {json.loads((tmp_path / j.hash / "env.json").read_text())["cuda"] for j in jobs} == {""}


SLURM = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
         "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_ranks_from_slurm_variables():
    env = slurm_torch_env(SLURM)
    assert env == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "gpu07", "MASTER_PORT": str(15000 + 123456 % 20000)}
    assert slurm_torch_env({**SLURM, "RANK": "0", "WORLD_SIZE": "2"}) == {}  # torchrun's win
    assert slurm_torch_env({**SLURM, "SLURM_NTASKS": "1"}) == {}  # one task: one process
    assert slurm_torch_env({}) == {}
    kept = slurm_torch_env({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "29500"})
    assert "MASTER_ADDR" not in kept and "MASTER_PORT" not in kept
    assert first_host("node[01-04,07],gpu5") == "node01" and first_host("a1,b2") == "a1"
    assert first_host("gpu-[3,5]") == "gpu-3" and first_host("10.0.0.1") == "10.0.0.1"
    environ = dict(SLURM)
    apply_slurm_env(environ)
    assert environ["RANK"] == "5" and slurm_rank(environ) == 5 and slurm_rank({}) == 0


def test_first_host_follows_slurms_hostlist_grammar():
    from itertools import islice

    from sharpdro.cluster import expand_hostlist

    assert first_host("node[01-04]-ib") == "node01-ib"  # text after the brackets is part of the host
    assert first_host("a[1-2]b[3-4]") == "a1b3"  # several bracket groups
    assert list(expand_hostlist("a[1-2]b[3-4]")) == ["a1b3", "a1b4", "a2b3", "a2b4"]
    assert list(expand_hostlist("gpu[08-10,3],login")) == ["gpu08", "gpu09", "gpu10", "gpu3", "login"]
    assert first_host(" r[7]n[001-128] ") == "r7n001"
    assert list(islice(expand_hostlist("n[0-99999999999]"), 2)) == ["n0", "n1"]  # lazily: no giant list
    with pytest.raises(ValueError):
        list(expand_hostlist("n[b-a]"))
    assert first_host("n[b-a]") == "n[b-a]"  # not a host list: the text as given (MASTER_ADDR shows it)


def test_torch_backend_reads_slurm_ranks(monkeypatch):
    from sharpdro.backends.torch.distributed import env_world

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(k, "")  # recorded, so that what env_world sets is removed after the test
        monkeypatch.delenv(k)
    for k, v in SLURM.items():
        monkeypatch.setenv(k, v)
    assert env_world() == (5, 1, 8)
    assert os.environ["MASTER_ADDR"] == "gpu07"


def test_slurm_test_leaves_no_ranks_behind():
    assert "WORLD_SIZE" not in os.environ and "RANK" not in os.environ  # (tests after it run one process)


def test_slurm_gpus_start_one_task_per_gpu():
    p = sw.slurm_parameters(gpus=4)
    assert p["tasks_per_node"] == 4 and p["gpus_per_node"] == 4 and p["nodes"] == 1
    assert sw.slurm_parameters(gpus=1)["tasks_per_node"] == 1
    assert sw.slurm_parameters(gpus=0)["tasks_per_node"] == 1


def test_slurm_job_function_ranks(tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg, out_dir=None, resume=False):
        calls.append(resume)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "summary.json").write_text(json.dumps({"finished": True}))

    cfg = load_config("quickstart")
    fn = sw.SlurmJobFunction()
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    res = fn(cfg, str(tmp_path / "job"), "h", fake_train)
    assert res["status"] == "rank" and calls == [True]  # a follower rank: no lock, no done marker
    assert not (tmp_path / "job" / "done").exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert fn(cfg, str(tmp_path / "job2"), "h2", fake_train)["status"] == "done"
    assert (tmp_path / "job2" / "done").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_task(rank, port, cfg, run, out):
    """One `srun` task: Slurm's variables only, no torchrun variables."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        os.environ.pop(k, None)
    os.environ.update(SLURM_JOB_ID="42", SLURM_NTASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                      SLURM_JOB_NODELIST="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from sharpdro.engine import train

    summary = train(cfg, out_dir=run)
    Path(out, f"summary{rank}.json").write_text(json.dumps(summary))


def test_two_slurm_tasks_train_one_ddp_run(tmp_path):
    cfg = load_config("quickstart", ["data.train_per_class=20", "data.val_per_class=2", "data.test_per_class=4",
                                     "model.width=8", "train.epochs=1", "train.batch_size=40", "train.device=cpu",
                                     "train.progress=false", "train.threads=1", f"data.cache_dir={tmp_path / 'c'}"])
    torch.multiprocessing.spawn(_slurm_task, args=(_free_port(), cfg, str(tmp_path / "run"), str(tmp_path)),
                                nprocs=2, join=True)
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in (0, 1)]
    assert summaries[0]["processes"] == 2 and summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 alone wrote


def test_cache_arrays_are_memory_maps_shared_between_processes(tmp_path):
    """Every rank maps the cache file (one copy in the page cache) instead of reading it into its own memory."""
    import mmap

    import numpy as np

    from sharpdro.data import cache as cache_mod

    data = {"img": np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)}
    built = cache_mod.get_or_build(tmp_path, {"k": 1}, lambda: data)
    arr = cache_mod.load_entry(built.path, key={"k": 1}).arrays["img"]
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    assert isinstance(base, mmap.mmap) and not arr.flags.owndata
    arr[0, 0, 0, 0] = 255  # copy-on-write: this process's page only; the file is unchanged and still verifies
    again = cache_mod.load_entry(built.path, key={"k": 1}).arrays["img"]
    assert again[0, 0, 0, 0] == 0 and np.array_equal(again, data["img"])
