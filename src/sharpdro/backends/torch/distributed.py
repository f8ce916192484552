"""torch.distributed for the torch backend: process group, DDP wrapping, and what the algorithms need.

Launch with torchrun (one process per GPU, or several CPU processes)::

    torchrun --nproc_per_node 4 -m sharpdro train -c cifar10
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m sharpdro train -c cifar10

``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by torchrun) switch it on; the process group
is NCCL on CUDA and Gloo on the CPU.  What each piece does (see docs/distributed.md):

- :class:`TorchProcesses` is the engine's framework-neutral handle (rank, world size,
  barrier, sums of NumPy arrays, broadcast of small Python objects), so the engine can
  write files on rank 0 only, shard batches and evaluation, and agree on resume.
- :class:`Replicas` is what an algorithm sees: the world size, a sum all-reduce, the
  module to call for training forwards (the DDP wrapper) and the perturbation mode.
  Group losses and counts are summed over ranks, so every rank holds the same ``q``;
  the SAM perturbation uses the globally averaged gradient (DDP reduces the first pass),
  or with ``train.m_sharpness`` each replica's own gradient (the first pass runs under
  ``no_sync``); either way every gradient is all-reduced exactly once per step.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, ContextManager

import numpy as np
import torch
from torch import nn

from sharpdro.errors import SharpDROError


def env_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 when absent).

    Under ``srun`` with several tasks and no torchrun, Slurm's variables give them (sharpdro.cluster).
    """
    from sharpdro.cluster import apply_slurm_env

    apply_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return rank, local, world


def is_distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


# ------------------------------------------------------------------------------ engine handle
class TorchProcesses:
    """The engine's handle on the process group (also a single-process no-op when world_size == 1)."""

    def __init__(self, rank: int = 0, local_rank: int = 0, world_size: int = 1, owns_group: bool = False,
                 device: torch.device | None = None):
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.owns_group = owns_group
        # Collectives of NumPy data travel as tensors on this device (NCCL needs CUDA tensors).
        self.device = device or torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_reduce_sum(self, array) -> np.ndarray:
        """Element-wise sum over ranks of a float array (float64)."""
        a = np.asarray(array, dtype=np.float64)
        if self.world_size == 1:
            return a
        t = torch.from_numpy(a.copy()).to(self.device)
        torch.distributed.all_reduce(t)
        return t.cpu().numpy()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (small picklable objects)."""
        if self.world_size == 1:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src, device=self.device)
        return box[0]

    def close(self) -> None:
        if self.owns_group and is_distributed():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def init_processes(cfg: dict) -> TorchProcesses:
    """Initialise the process group from torchrun's environment (or adopt an existing one)."""
    device = cfg["train"]["device"]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        rank = torch.distributed.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        owns = False
    else:
        rank, local, world = env_world()
        owns = world > 1
        if world > 1:
            if not torch.distributed.is_available():
                raise SharpDROError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            cuda = _wants_cuda(device)
            if cuda:
                if not torch.cuda.is_available():
                    raise SharpDROError(f"train.device={device!r} under torchrun, but CUDA is not available; "
                                        f"use train.device=cpu (Gloo)")
                torch.cuda.set_device(local)
            extra = {}
            if cuda and "device_id" in inspect.signature(torch.distributed.init_process_group).parameters:
                extra["device_id"] = torch.device("cuda", local)  # binds the communicator to this GPU
            torch.distributed.init_process_group(backend="nccl" if cuda else "gloo",
                                                 timeout=datetime.timedelta(minutes=30), **extra)
    if world > 1 and (cfg["train"]["batch_size"] % world or cfg["train"]["batch_size"] // world < 2):
        raise SharpDROError(f"train.batch_size={cfg['train']['batch_size']} is the global batch: it must be "
                            f"divisible by the {world} processes, with at least 2 images per process")
    coll = torch.device("cuda", local) if world > 1 and _backend_is_nccl() else torch.device("cpu")
    return TorchProcesses(rank, local, world, owns_group=owns, device=coll)


def _backend_is_nccl() -> bool:
    return is_distributed() and torch.distributed.get_backend() == "nccl"


# ------------------------------------------------------------------------------ algorithm view
@dataclass
class Replicas:
    """What an algorithm needs to know about data parallelism (single process by default).

    - ``world_size``: number of replicas; each holds B / world_size samples of the global batch;
    - ``net``: the module training forwards call (the DDP wrapper, possibly compiled);
    - ``ddp``: the DDP wrapper (for ``no_sync``), None in a single process;
    - ``per_replica_perturbation``: m-sharpness (``train.m_sharpness``): each replica perturbs
      with its own first-pass gradient (computed under ``no_sync``); default: the globally
      averaged gradient.
    """

    world_size: int = 1
    rank: int = 0
    net: nn.Module | None = None
    ddp: nn.Module | None = None
    per_replica_perturbation: bool = False
    _group: Any = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over replicas (no host synchronisation)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor, group=self._group)
        return tensor

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """In-place average over replicas of a list of tensors (one flat all-reduce)."""
        if self.world_size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat, group=self._group)
        flat.div_(self.world_size)
        torch._foreach_copy_(tensors, [f.view_as(t) for f, t in zip(flat.split([t.numel() for t in tensors]),
                                                                   tensors)])

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks (rank order) of equally shaped tensors."""
        if self.world_size == 1:
            return tensor
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, tensor.contiguous(), group=self._group)
        return torch.cat(out)

    def first_pass(self) -> ContextManager:
        """Context of the SAM first forward + backward: ``no_sync`` for a per-replica perturbation."""
        if self.per_replica_perturbation and self.ddp is not None:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    @property
    def first_pass_reduced(self) -> bool:
        """Does the first pass's gradient arrive averaged over replicas?"""
        return self.world_size == 1 or not self.per_replica_perturbation

    def broadcast_module_(self, module: nn.Module, src: int = 0, buffers_only: bool = False) -> None:
        """Rank ``src``'s parameters and buffers on every replica (after a pre-stage, or buffers after an epoch)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for t in ([] if buffers_only else list(module.parameters())) + list(module.buffers()):
                if t.dtype == torch.bool:  # not every backend broadcasts bool
                    u = t.to(torch.uint8)
                    torch.distributed.broadcast(u, src=src, group=self._group)
                    t.copy_(u.bool())
                else:
                    torch.distributed.broadcast(t.data, src=src, group=self._group)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (rank 0's weights and buffers broadcast to all)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # Buffers (BatchNorm running statistics) follow rank 0 at every forward: DDP's default.
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def broadcast_state(state: Any, processes_device: torch.device, src: int = 0) -> Any:
    """A checkpoint dict read on rank ``src`` sent to every rank (no shared filesystem needed)."""
    if not is_distributed():
        return state
    box = [state if torch.distributed.get_rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src, device=processes_device)
    return box[0]


def rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The torch RNG seed of a replica (dropout masks differ between ranks, reproducibly)."""
    ss = np.random.SeedSequence([int(seed), 7919, int(rank), int(epoch)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2 ** 63))
