"""Reading and packing PyTorch-backend checkpoint files safely.

A checkpoint holds only tensors and plain Python values (dicts, lists, tuples, str, int,
float, bool, None) and is read with ``torch.load(weights_only=True)``: a file from someone
else cannot run code when ``predict``, ``evaluate``, ``--resume`` or ``convert`` reads it.
NumPy's RNG state is stored as ``[name, keys (int64 tensor), pos, has_gauss, cached]``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sharpdro.errors import TrainingError
from sharpdro.io import atomic_write_stream
from sharpdro.rundir import unreadable_checkpoint_message


def numpy_rng_to_plain(state) -> list:
    """NumPy's legacy RNG state tuple as tensors and plain values."""
    name, keys, pos, has_gauss, cached = state
    return [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def numpy_rng_from_plain(data) -> tuple:
    """The inverse of :func:`numpy_rng_to_plain` (also accepts the tuple of older checkpoints)."""
    name, keys, pos, has_gauss, cached = data
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return (name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached))


def _numpy_globals() -> list:
    """What a NumPy array in a checkpoint of sharpdro <= 0.1 (RNG state as an ndarray) needs to unpickle."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct
    out = [_reconstruct, np.ndarray, np.dtype]
    if hasattr(np, "dtypes"):
        out.append(type(np.dtype(np.uint32)))
    return out


def read_checkpoint(path) -> dict:
    """A PyTorch-backend checkpoint as a dict, loaded with ``weights_only=True``; one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            if "numpy" not in str(exc):
                raise
            # Files written before RNG states were stored as tensors hold one uint32 ndarray; allow exactly
            # NumPy's array reconstruction (no other global), still under the weights-only unpickler.
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign, or holding objects other than tensors
        raise TrainingError(unreadable_checkpoint_message(path, exc)) from None


def write_checkpoint(path, state: dict) -> None:
    """``torch.save`` into an atomic temp file: a full disk is a DiskFullError naming the path and the size
    (torch.save itself says "unexpected pos", to a path and to a file object alike)."""
    atomic_write_stream(path, lambda f: torch.save(state, f), need=state_bytes(state))


def state_bytes(obj) -> int:
    """The bytes of the tensors in a nested state (about the size of its checkpoint file)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0
