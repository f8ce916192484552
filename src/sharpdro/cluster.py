"""Clusters: GPUs for the parallel sweep launcher, and data-parallel ranks from Slurm's variables.

- :func:`parallel_devices`: ``--launcher parallel`` gives every worker one GPU of its own
  through ``CUDA_VISIBLE_DEVICES`` (as DomainBed's multi-GPU launcher does): the GPUs this
  process may use (its own ``CUDA_VISIBLE_DEVICES``, else all that CUDA counts), one per
  worker slot, round-robin when there are more workers than GPUs; nothing on a machine
  without GPUs.
- :func:`slurm_torch_env`: under ``srun`` with several tasks and without torchrun, the ranks
  come from Slurm: ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``,
  ``LOCAL_RANK`` = ``SLURM_LOCALID``, ``MASTER_ADDR`` = the first host of the job's node
  list, ``MASTER_PORT`` = 15000 + job id mod 20000 (an existing ``MASTER_ADDR`` /
  ``MASTER_PORT`` is kept).  torchrun's variables, when present, always win.

The torch backend's process-group setup calls :func:`apply_slurm_env` before it reads its
environment, so ``srun sharpdro train ...`` is data-parallel like ``torchrun``.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, Mapping, MutableMapping

_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE")


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    try:
        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return 0


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may hand out: its ``CUDA_VISIBLE_DEVICES`` entries, else ``0..count-1``."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        return [] if not ids or ids[0] in ("-1", "") else ids
    return [str(i) for i in range(_cuda_device_count())]


def parallel_devices(workers: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each of ``workers`` slots (one GPU each, round-robin); [] without GPUs."""
    gpus = visible_gpus(environ)
    if not gpus:
        return []
    return [gpus[i % len(gpus)] for i in range(max(1, int(workers)))]


def expand_hostlist(nodelist: str) -> Iterator[str]:
    """The hosts of a Slurm node list, in Slurm's order, lazily (``n[0-99999999]`` costs nothing until read).

    Slurm's grammar: host expressions separated by commas outside brackets; each is text with any number
    of bracket groups ``[1-3,7]`` of numbers and ranges, a range zero-padded to its first bound's width
    (``node[01-04]-ib`` -> ``node01-ib`` ... ``node04-ib``; ``a[1-2]b[3-4]`` -> ``a1b3``, ``a1b4``, ``a2b3``...).
    A malformed group raises ValueError.
    """
    for expr in _split_outside_brackets(nodelist.strip()):
        parts = re.split(r"(\[[^\]]*\])", expr)  # text, [group], text, [group], ...
        yield from _combine([_bracket_ranges(x) if x.startswith("[") else x for x in parts])


def _combine(parts: list, prefix: str = "") -> Iterator[str]:
    """Every host of text / range-list parts, the last group varying fastest (not itertools.product, which
    would hold every value of a group in memory)."""
    if not parts:
        yield prefix
        return
    head, rest = parts[0], parts[1:]
    if isinstance(head, str):
        yield from _combine(rest, prefix + head)
        return
    for lo, hi, width in head:
        for n in range(lo, hi + 1):
            yield from _combine(rest, prefix + str(n).zfill(width))


def _split_outside_brackets(text: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [x.strip() for x in out if x.strip()]


def _bracket_ranges(group: str) -> list[tuple[int, int, int]]:
    """``[01-04,7]`` -> [(1, 4, 2), (7, 7, 1)]: (first, last, zero-padded width)."""
    out = []
    for item in group[1:-1].split(","):
        lo, _, hi = item.strip().partition("-")
        hi = hi or lo
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ValueError(f"not a Slurm host range: {item!r} in {group!r}")
        out.append((int(lo), int(hi), len(lo)))
    return out


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``node[01-04,07],gpu5`` -> ``node01``; ``node[01-04]-ib`` ->
    ``node01-ib``; ``a[1-2]b[3-4]`` -> ``a1b3`` (:func:`expand_hostlist`); the text itself when it is not one."""
    try:
        return next(iter(expand_hostlist(nodelist)), nodelist.strip())
    except ValueError:
        return nodelist.strip()


def _first_int(text: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def slurm_torch_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The torch.distributed variables a Slurm task lacks (empty when torchrun's are set or there is one task)."""
    env = os.environ if environ is None else environ
    if any(k in env for k in _TORCHRUN_KEYS):
        return {}
    ntasks = _first_int(env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS"))
    rank = _first_int(env.get("SLURM_PROCID"))
    if ntasks is None or ntasks < 2 or rank is None:
        return {}
    out = {"RANK": str(rank), "WORLD_SIZE": str(ntasks), "LOCAL_RANK": str(_first_int(env.get("SLURM_LOCALID")) or 0)}
    per_node = _first_int(env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE"))
    if per_node:
        out["LOCAL_WORLD_SIZE"] = str(per_node)
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        out["MASTER_ADDR"] = first_host(nodes) if nodes else "127.0.0.1"
    if "MASTER_PORT" not in env:
        job = _first_int(env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")) or 0
        out["MASTER_PORT"] = str(15000 + job % 20000)
    return out


def apply_slurm_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :func:`slurm_torch_env`'s variables in ``environ`` (default ``os.environ``); returns them."""
    env = os.environ if environ is None else environ
    extra = slurm_torch_env(env)
    env.update(extra)
    return extra


def slurm_rank(environ: Mapping[str, str] | None = None) -> int:
    """This task's rank in a multi-task Slurm job (0 outside Slurm)."""
    env = os.environ if environ is None else environ
    return _first_int(env.get("SLURM_PROCID")) or 0 if (_first_int(env.get("SLURM_NTASKS")) or 1) > 1 else 0
