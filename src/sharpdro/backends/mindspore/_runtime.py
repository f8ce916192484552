"""MindSpore process settings: the CPU speed settings, the execution mode, the device.

Imported first by every module of this package that imports MindSpore, so the oneDNN
setting is in the environment before MindSpore loads.

Measured on this project's machines (``shared/notes/mindspore-backend.md``):

1. MindSpore 2.9+ bundles oneDNN 3.x, which on AVX-512 CPUs falls back to its
   reference convolution (a ResNet-18 forward takes minutes).  ``ONEDNN_MAX_CPU_ISA=AVX2``
   brings the jit kernels back; the numbers are the same.  We set it unless the user
   did, run one small convolution so MindSpore's oneDNN reads it, then remove it again:
   oneDNN reads the variable once per library, and PyTorch's own oneDNN (the session
   draws its initial weights with PyTorch) keeps its full instruction set.
2. PyNative's asynchronous queue spin-waits on small machines; ``launch_blocking()``
   (synchronous PyNative) is the fast path we use.  PyNative is also the mode the
   parity tests check.

``configure(device, threads, deterministic)`` applies them once per process (MindSpore
refuses to change the device or the thread count afterwards).
"""
from __future__ import annotations

import os

ISA_VAR = "ONEDNN_MAX_CPU_ISA"
ISA_DEFAULT = "AVX2"

#: True when this package put ONEDNN_MAX_CPU_ISA into the environment (the user had not set it).
isa_set_here = False
if ISA_VAR not in os.environ:
    os.environ[ISA_VAR] = ISA_DEFAULT
    isa_set_here = True

_configured: dict | None = None


def _target(device: str) -> tuple[str, int | None]:
    from sharpdro.errors import TrainingError

    dev = (device or "auto").lower()
    if dev in ("auto", "cpu"):
        return "CPU", None
    if dev.startswith("cuda"):
        _, _, index = dev.partition(":")
        return "GPU", int(index) if index else None
    raise TrainingError(f"train.device={device!r} is not available with backend=mindspore; use cpu (or auto), "
                        f"or cuda[:N] with a GPU build of MindSpore")


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure(device: str = "auto", threads: int | None = None, deterministic: bool = False) -> dict:
    """PyNative + launch_blocking on the configured device, CPU kernel threads, the oneDNN setting.

    The first call decides; a later call asking for another device raises (MindSpore
    cannot switch a process to another device).  Returns the settings in effect.
    """
    global _configured, isa_set_here
    from sharpdro.errors import TrainingError

    target, index = _target(device)
    if _configured is not None:
        if _configured["target"] != target:
            raise TrainingError(f"this process already runs MindSpore on {_configured['target']}; it cannot switch "
                                f"to {target} (train.device={device!r}); start a new process")
        return _configured
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        if index is None:
            ms.set_device(target)
        else:
            ms.set_device(target, index)
    except RuntimeError as exc:
        raise TrainingError(f"MindSpore cannot use {target} here ({str(exc).splitlines()[0]}); use "
                            f"train.device=cpu") from exc
    ms.runtime.launch_blocking()
    n_threads = int(threads) if threads else default_threads()
    if target == "CPU":
        try:
            ms.device_context.cpu.op_tuning.threads_num(n_threads)
        except RuntimeError:  # set already by the user's own code
            pass
    if deterministic:
        try:
            ms.set_deterministic(True)
        except (RuntimeError, ValueError):  # pragma: no cover - older MindSpore
            pass
    if target == "CPU":
        _warm_up_cpu()
    if isa_set_here and os.environ.get(ISA_VAR) == ISA_DEFAULT:
        del os.environ[ISA_VAR]  # MindSpore's oneDNN has read it; leave PyTorch's untouched
        isa_set_here = False
    _configured = {"target": target, "device_id": index, "threads": n_threads, "mode": "pynative",
                   "cpu_isa": os.environ.get(ISA_VAR, ISA_DEFAULT)}
    return _configured


def _warm_up_cpu() -> None:
    """One tiny convolution (forward and backward): MindSpore's oneDNN reads ONEDNN_MAX_CPU_ISA now."""
    import numpy as np
    import mindspore as ms
    from mindspore import ops

    x = ms.Tensor(np.ones((1, 1, 4, 4), np.float32))
    w = ms.Parameter(ms.Tensor(np.ones((1, 1, 3, 3), np.float32)), name="warm_up_weight")
    grad = ms.grad(lambda inp: ops.conv2d(inp, w, pad_mode="pad", padding=1).sum(), None, (w,))
    grad(x)[0].asnumpy()


def configured() -> dict | None:
    return _configured
