"""The Slurm side of the sweep's slurm launcher (through submitit): time limits, executor
parameters, the executor, and the function each Slurm job runs.

The launcher itself (submit, mark, wait) is :func:`sharpdro.experiments.sweep._run_slurm`.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Any, Callable, Mapping, Sequence

from sharpdro.experiments.sweep_jobs import resolve_train, run_job
from sharpdro.experiments.sweep_spec import SweepError


def parse_slurm_time(text: str | int) -> int:
    """Slurm time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) or ``90m``/``4h``/``2d``
    -> whole minutes (seconds rounded up)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 1:
            raise SweepError(f"--slurm-time must be at least 1 minute, got {text}")
        return text
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhd])", s)
    if m:
        minutes = float(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)]
        return max(1, int(-(-minutes // 1)))
    days = 0
    if "-" in s:
        d, _, s = s.partition("-")
        if not d.isdigit():
            raise SweepError(f"--slurm-time {text!r}: bad day count")
        days = int(d)
    parts = s.split(":") if s else []
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise SweepError(f"--slurm-time {text!r} is not a Slurm time: use minutes, MM:SS, HH:MM:SS, D-HH:MM:SS "
                         f"or 90m / 4h / 2d")
    nums = [int(p) for p in parts]
    if days:
        h, mi, sec = (nums + [0, 0])[:3]  # D-HH, D-HH:MM, D-HH:MM:SS
    elif len(nums) == 1:
        h, mi, sec = 0, nums[0], 0
    elif len(nums) == 2:
        h, mi, sec = 0, nums[0], nums[1]
    else:
        h, mi, sec = nums
    minutes = days * 1440 + h * 60 + mi + (1 if sec > 0 else 0)
    if minutes < 1:
        raise SweepError(f"--slurm-time {text!r} is shorter than a minute")
    return minutes


def slurm_parameters(partition: str | None = None, time: str | int = "4:00:00", gpus: int = 1,
                     cpus: int | None = None, mem_gb: float | None = None, account: str | None = None,
                     qos: str | None = None, constraint: str | None = None, exclude: str | None = None,
                     array_parallelism: int | None = None, name: str = "sharpdro",
                     extra: Mapping[str, Any] | Sequence[str] | None = None) -> dict:
    """Keyword arguments for ``submitit.AutoExecutor.update_parameters`` (no submitit needed).

    Generic keys (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``name``)
    apply to any submitit cluster; ``slurm_*`` keys only to Slurm.  ``extra`` adds raw
    ``#SBATCH`` options (``{"mail-type": "END"}`` or ``["mail-type=END"]``).
    """
    if gpus is not None and gpus < 0:
        raise SweepError(f"--slurm-gpus must be >= 0, got {gpus}")
    if cpus is not None and cpus < 1:
        raise SweepError(f"--slurm-cpus must be >= 1, got {cpus}")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": parse_slurm_time(time),
        "nodes": 1,
        "tasks_per_node": max(1, int(gpus or 0)),  # one task per GPU: the tasks are the ranks of one DDP run
        "gpus_per_node": int(gpus or 0),
    }
    if cpus is not None:
        params["cpus_per_task"] = int(cpus)
    if mem_gb is not None:
        params["mem_gb"] = float(mem_gb)
    for key, value in (("partition", partition), ("account", account), ("qos", qos),
                       ("constraint", constraint), ("exclude", exclude)):
        if value:
            params[f"slurm_{key}"] = str(value)
    if array_parallelism is not None:
        params["slurm_array_parallelism"] = int(array_parallelism)
    if extra:
        items = extra.items() if isinstance(extra, Mapping) else [
            e.split("=", 1) if "=" in e else (e, None) for e in extra]
        add = {}
        for k, v in items:
            k = str(k).strip().lstrip("-")
            if not k:
                raise SweepError(f"--slurm-extra {extra!r}: empty option name")
            add[k.replace("-", "_")] = True if v is None else v
        params["slurm_additional_parameters"] = add
    return params


def _require_submitit():
    try:
        import submitit  # type: ignore
    except ImportError:
        raise SweepError("the slurm launcher needs submitit, which is not installed: "
                         "pip install 'sharpdro[slurm]' (or pip install submitit), "
                         "or use --launcher local / parallel") from None
    return submitit


class SlurmJobFunction:
    """What each Slurm job runs: :func:`run_job`.  On preemption or time-out submitit calls
    :meth:`checkpoint`, which requeues the same job; it resumes from its last checkpoint."""

    def __call__(self, cfg: dict, job_dir: str, h: str, train: Callable | str | None = None) -> dict:
        from sharpdro.cluster import slurm_rank

        if slurm_rank() > 0:  # --slurm-gpus N > 1: tasks 1..N-1 are DDP ranks of task 0's run (ranks from Slurm)
            resolve_train(train)(cfg, out_dir=job_dir, resume=True)  # rank 0 decides resume; only it writes
            return {"hash": h, "status": "rank", "seconds": 0.0, "error": None}
        return run_job(cfg, job_dir, h, train)

    def checkpoint(self, *args, **kwargs):
        import submitit  # type: ignore

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def make_slurm_executor(folder: str | os.PathLike, params: Mapping, cluster: str = "slurm"):
    """A submitit executor (``cluster``: slurm; local or debug run the jobs on this machine)."""
    submitit = _require_submitit()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SweepError("sbatch is not on the PATH: run the slurm launcher on a Slurm login node, "
                         "or use --launcher parallel")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**dict(params))
    return executor
