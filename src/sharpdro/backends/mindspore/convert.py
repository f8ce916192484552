"""Checkpoints between the backends, and the MindSpore backend's checkpoint file.

No MindSpore import at module level: a MindSpore checkpoint converts to PyTorch on a
machine without MindSpore, and back (only :func:`export_mindspore_ckpt` needs it).

Names and layouts.  The MindSpore networks mirror the PyTorch ones attribute for
attribute, so a parameter keeps its name except BatchNorm's::

    <bn>.weight        <->  <bn>.gamma
    <bn>.bias          <->  <bn>.beta
    <bn>.running_mean  <->  <bn>.moving_mean
    <bn>.running_var   <->  <bn>.moving_variance
    <bn>.num_batches_tracked  (PyTorch only: dropped, or restored as 0 / the recorded count)

Layouts are identical: convolution weights OIHW in both, dense/linear weights
``[out, in]`` in both, BatchNorm vectors ``[C]``.  Algorithm state (``q``,
``group_counts``, ``adjustment``, ``prepared_flag``, JTT's ``error_set``/``weights``,
EIIL's ``env`` and ``robust.*``, ``score_memory``) has the same names and dtypes in both
backends; SGD momentum buffers map by parameter.

The MindSpore backend's checkpoint is a NumPy ``.npz`` archive (read with
``allow_pickle=False``): ``algorithm/<key>`` arrays (the network under
``algorithm/model.<MindSpore name>``), ``optimizer/<parameter name>`` momentum
buffers, ``rng/*`` arrays and ``__meta__``, the JSON of the config, the data meta,
``extra`` and the RNG states.  The file name is whatever the engine chooses
(``checkpoints/last.npz``, :func:`sharpdro.rundir.checkpoint_name`; ``last.pt`` in runs
written before); :func:`checkpoint_backend` tells the two formats apart by content.

API::

    torch_to_mindspore("runs/a/checkpoints/best.pt", "best-ms.pt")   # then evaluate with backend=mindspore
    mindspore_to_torch("runs/b/checkpoints/best.npz", "best-torch.pt")
    export_mindspore_ckpt("best-ms.pt", "net.ckpt")                  # a native MindSpore .ckpt of the network
    torch_state_to_mindspore(model.state_dict())                     # weights only, name -> ndarray
    mindspore_params_to_torch({name: ndarray})                       # -> PyTorch state_dict
    algorithm_state_to_mindspore(torch_algorithm.state_dict())       # -> MindSporeAlgorithm.load_state_dict
    algorithm_state_to_torch(ms_algorithm.state_dict())              # -> TorchAlgorithm.load_state_dict

The command line (``sharpdro convert``) is :mod:`sharpdro.commands.convert`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sharpdro.errors import TrainingError
from sharpdro.rundir import MINDSPORE_META_KEY as META_KEY
from sharpdro.rundir import checkpoint_format as checkpoint_backend  # noqa: F401  (kept as this module's name)
from sharpdro.rundir import unreadable_checkpoint_message

FORMAT = 1

#: PyTorch BatchNorm suffix -> MindSpore suffix.
BN_RENAME = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
BN_BACK = {v: k for k, v in BN_RENAME.items()}
_TORCH_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# --------------------------------------------------------------------------- names
def torch_bn_prefixes(keys) -> set[str]:
    """Module prefixes of the BatchNorm layers in a PyTorch state_dict (those with ``running_mean``)."""
    return {k.rsplit(".", 1)[0] for k in keys if k.endswith(".running_mean")}


def mindspore_name(torch_key: str, bn_prefixes: set[str]) -> str | None:
    """PyTorch state_dict key -> MindSpore parameter name (None for ``num_batches_tracked``)."""
    head, _, last = torch_key.rpartition(".")
    if last == "num_batches_tracked":
        return None
    if head in bn_prefixes and last in BN_RENAME:
        return f"{head}.{BN_RENAME[last]}"
    return torch_key


def torch_name(ms_name: str) -> str:
    """MindSpore parameter name -> PyTorch state_dict key."""
    head, _, last = ms_name.rpartition(".")
    return f"{head}.{BN_BACK[last]}" if last in BN_BACK else ms_name


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def torch_state_to_mindspore(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch network state_dict -> ``{MindSpore parameter name: float32 ndarray}`` (same layouts)."""
    bn = torch_bn_prefixes(state_dict)
    out = {}
    for k, v in state_dict.items():
        name = mindspore_name(k, bn)
        if name is not None:
            out[name] = np.ascontiguousarray(_np(v), dtype=np.float32)
    return out


def torch_parameter_names(state_dict_keys) -> list[str]:
    """The PyTorch parameters (not buffers) of a state_dict, in ``model.parameters()`` order."""
    return [k for k in state_dict_keys if k.rsplit(".", 1)[-1] not in _TORCH_BN_BUFFERS]


def mindspore_params_to_torch(params: Mapping[str, np.ndarray], num_batches_tracked: int = 0) -> dict:
    """``{MindSpore name: ndarray}`` -> a PyTorch state_dict (``num_batches_tracked`` added per BatchNorm)."""
    import torch

    out = {}
    for name, v in params.items():
        out[torch_name(name)] = torch.from_numpy(np.array(v, dtype=np.float32, copy=True))
        if name.endswith(".moving_variance"):
            out[name.rsplit(".", 1)[0] + ".num_batches_tracked"] = torch.tensor(int(num_batches_tracked))
    return out


def _reorder_like(state: dict, keys) -> dict:
    """PyTorch's ``load_state_dict`` does not care about order, but a stable order reads better."""
    return {k: state[k] for k in keys if k in state} | {k: v for k, v in state.items() if k not in keys}


# --------------------------------------------------------------------------- MindSpore checkpoint file
def write_checkpoint(path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write the ``.npz`` checkpoint atomically (see the module docstring)."""
    from sharpdro.io import atomic_write_stream

    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload[META_KEY] = np.frombuffer(json.dumps(meta, default=_json_default).encode("utf-8"), dtype=np.uint8)
    atomic_write_stream(path, lambda f: np.savez(f, **payload), need=sum(a.nbytes for a in payload.values()))


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """-> (arrays, meta) of a MindSpore backend checkpoint; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    kind = checkpoint_backend(path)
    if kind == "torch":
        raise TrainingError(f"checkpoint {path} was written by the PyTorch backend; convert it first: "
                            f"python -c \"from sharpdro.backends.mindspore.convert import torch_to_mindspore; "
                            f"torch_to_mindspore('{path}', 'converted.pt')\" (or sharpdro convert)")
    if kind != "mindspore":
        raise TrainingError(unreadable_checkpoint_message(path, ValueError("not a MindSpore-backend archive")))
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # truncated or foreign file
        raise TrainingError(unreadable_checkpoint_message(path, exc)) from None
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    if meta.get("format", 0) > FORMAT:
        raise TrainingError(f"checkpoint {path} has format {meta['format']}; this sharpdro reads up to {FORMAT}: "
                            f"upgrade sharpdro")
    return arrays, meta


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, Path)):
        return list(o) if isinstance(o, tuple) else str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# RNG states: NumPy's legacy tuple and Python's tuple as JSON + one array
def numpy_rng_to_json(state) -> tuple[dict, np.ndarray]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}, \
        np.asarray(keys, dtype=np.uint32)


def numpy_rng_from_json(info: Mapping, keys: np.ndarray):
    return (info["name"], np.asarray(keys, dtype=np.uint32), int(info["pos"]), int(info["has_gauss"]),
            float(info["cached"]))


def python_rng_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def python_rng_from_json(data) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


# --------------------------------------------------------------------------- whole checkpoints
def _read_torch_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    if checkpoint_backend(path) == "mindspore":
        raise TrainingError(f"checkpoint {path} is already a MindSpore backend checkpoint")
    from sharpdro.backends.torch.checkpoints import read_checkpoint as read_torch_checkpoint

    return read_torch_checkpoint(path)  # weights_only=True


def algorithm_state_to_mindspore(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch ``Algorithm.state_dict()`` -> the MindSpore ``Algorithm.state_dict()`` layout (NumPy)."""
    model_sd = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    out = {f"model.{k}": v for k, v in torch_state_to_mindspore(model_sd).items()}
    out.update({k: _np(v).copy() for k, v in state.items() if not k.startswith("model.")})
    return out


def algorithm_state_to_torch(state: Mapping[str, np.ndarray], num_batches_tracked: int = 0) -> dict:
    """A MindSpore ``Algorithm.state_dict()`` -> a PyTorch ``Algorithm.state_dict()`` (tensors)."""
    import torch

    params = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    out = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items() if not k.startswith("model.")}
    out.update({f"model.{k}": v for k, v in mindspore_params_to_torch(params, num_batches_tracked).items()})
    return out


def _check_mindspore_can_run(cfg, ckpt_path) -> None:
    """A run of a PyTorch-only network (timm:NAME, module.path:factory) or optimizer (adamw) has no MindSpore form."""
    from sharpdro.config import ConfigError

    name = str((cfg.get("model") or {}).get("name", ""))
    optimizer = (cfg.get("train") or {}).get("optimizer", "sgd")
    if ":" in name or optimizer != "sgd":
        raise ConfigError(f"{ckpt_path}: its run used model.name={name!r}, train.optimizer={optimizer!r}; the "
                          f"MindSpore backend has its own networks and SGD only, so it cannot be converted")


def torch_to_mindspore(ckpt_path, out_path) -> Path:
    """A PyTorch backend checkpoint -> a MindSpore backend checkpoint (weights, algorithm state, momentum, RNG).

    ``load_for_inference`` / ``evaluate`` / ``predict`` / ``--resume`` with backend=mindspore read the result.
    """
    state = _read_torch_checkpoint(ckpt_path)
    _check_mindspore_can_run(state["meta"]["config"], ckpt_path)
    algo = state["algorithm"]
    model_sd = {k[len("model."):]: v for k, v in algo.items() if k.startswith("model.")}
    arrays = {f"algorithm/{k}": v for k, v in algorithm_state_to_mindspore(algo).items()}
    # SGD momentum buffers: PyTorch indexes them by position in model.parameters()
    bn = torch_bn_prefixes(model_sd)
    order = torch_parameter_names(model_sd)
    opt = state.get("optimizer") or {}
    for i, key in enumerate(order):
        buf = (opt.get("state", {}).get(i) or {}).get("momentum_buffer")
        arr = _np(buf).astype(np.float32) if buf is not None else np.zeros(tuple(model_sd[key].shape), np.float32)
        arrays[f"optimizer/{mindspore_name(key, bn)}"] = arr
    meta = dict(state["meta"])
    meta["config"] = {**meta["config"], "backend": "mindspore"}
    rng = state.get("rng") or {}
    rng_meta: dict[str, Any] = {}
    if rng.get("numpy") is not None:
        from sharpdro.backends.torch.checkpoints import numpy_rng_from_plain

        info, keys = numpy_rng_to_json(numpy_rng_from_plain(rng["numpy"]))
        rng_meta["numpy"] = info
        arrays["rng/numpy_keys"] = keys
    if rng.get("python") is not None:
        rng_meta["python"] = python_rng_to_json(rng["python"])
    nbt = [int(_np(v)) for k, v in model_sd.items() if k.endswith("num_batches_tracked")]
    out = {"format": FORMAT, "backend": "mindspore", "converted_from": "torch", "meta": meta,
           "extra": state.get("extra", {}), "rng": rng_meta, "num_batches_tracked": max(nbt) if nbt else 0}
    write_checkpoint(out_path, arrays, out)
    return Path(out_path)


def mindspore_to_torch(ckpt_path, out_path) -> Path:
    """A MindSpore backend checkpoint -> a PyTorch backend checkpoint (``TorchSession.load_checkpoint`` reads it)."""
    import random

    import torch

    arrays, meta_all = read_checkpoint(ckpt_path)
    algo = algorithm_state_to_torch({k[len("algorithm/"):]: v for k, v in arrays.items()
                                     if k.startswith("algorithm/")}, meta_all.get("num_batches_tracked", 0))
    model_sd = {k[len("model."):]: v for k, v in algo.items() if k.startswith("model.")}
    meta = dict(meta_all["meta"])
    cfg = {**meta["config"], "backend": "torch"}
    meta["config"] = cfg
    t = cfg["train"]
    bn = torch_bn_prefixes(model_sd)
    order = torch_parameter_names(model_sd)
    opt_state = {}
    for i, key in enumerate(order):
        name = mindspore_name(key, bn)
        if f"optimizer/{name}" in arrays:
            opt_state[i] = {"momentum_buffer": torch.from_numpy(np.array(arrays[f"optimizer/{name}"], copy=True))}
    optimizer = {"state": opt_state, "param_groups": [{
        "lr": float(meta_all.get("lr", t["lr"])), "momentum": float(t["momentum"]), "dampening": 0,
        "weight_decay": float(t["weight_decay"]), "nesterov": bool(t["nesterov"]) and t["momentum"] > 0,
        "maximize": False, "foreach": None, "differentiable": False, "fused": None,
        "params": list(range(len(order)))}]}
    rng_meta = meta_all.get("rng", {})
    from sharpdro.backends.torch.checkpoints import numpy_rng_to_plain

    np_state = numpy_rng_to_plain(numpy_rng_from_json(rng_meta["numpy"], arrays["rng/numpy_keys"]) if "numpy"
                                  in rng_meta else np.random.RandomState(cfg.get("seed", 0)).get_state())
    py_state = (python_rng_from_json(rng_meta["python"]) if "python" in rng_meta
                else random.Random(cfg.get("seed", 0)).getstate())
    state = {
        "format": 1,
        "backend": "torch",
        "converted_from": "mindspore",
        "algorithm": algo,
        "optimizer": optimizer,
        "rng": {"torch": torch.Generator().manual_seed(int(cfg.get("seed", 0))).get_state(), "cuda": None,
                "numpy": np_state, "python": py_state},
        "meta": meta,
        "extra": meta_all.get("extra", {}),
    }
    from sharpdro.backends.torch.checkpoints import write_checkpoint as write_torch_checkpoint

    write_torch_checkpoint(out_path, state)
    return Path(out_path)


def network_parameters(ckpt_path) -> dict[str, np.ndarray]:
    """The network's parameters under their MindSpore names, from a checkpoint of either backend."""
    if checkpoint_backend(ckpt_path) == "torch":
        algo = _read_torch_checkpoint(ckpt_path)["algorithm"]
        return torch_state_to_mindspore({k[6:]: v for k, v in algo.items() if k.startswith("model.")})
    arrays, _ = read_checkpoint(ckpt_path)
    return {k[len("algorithm/model."):]: v for k, v in arrays.items() if k.startswith("algorithm/model.")}


def export_mindspore_ckpt(ckpt_path, out_path) -> Path:
    """The network of a checkpoint (either backend) as a native MindSpore ``.ckpt``
    (``mindspore.load_checkpoint`` + ``load_param_into_net`` into ``models.build_model(...)``)."""
    from sharpdro.backends.mindspore import _runtime  # noqa: F401  (CPU setting before MindSpore loads)
    import mindspore as ms

    out_path = Path(out_path)
    if out_path.suffix != ".ckpt":
        raise TrainingError(f"a MindSpore checkpoint file must end in .ckpt (MindSpore appends it), got {out_path}")
    params = network_parameters(ckpt_path)
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in params.items()], str(out_path))
    return out_path
