"""MindSpore backend: the same models, algorithms and checkpoints' content as the PyTorch backend.

``BACKEND`` (and ``MindSporeBackend``, ``MindSporeSession``, ``bench_train_step``) load
MindSpore on first access, so ``sharpdro.backends.mindspore.convert`` (checkpoint
conversion, NumPy + PyTorch only) works where MindSpore is not installed.  Only this
package imports MindSpore.  See docs/mindspore.md.
"""
from __future__ import annotations

_LAZY = ("BACKEND", "MindSporeBackend", "MindSporeSession", "bench_train_step")


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import session
    except ImportError as exc:
        from sharpdro.errors import SharpDROError

        raise SharpDROError(f"backend 'mindspore' cannot be imported ({exc}); install it with: "
                            f"pip install 'sharpdro[mindspore]'") from exc
    if name == "bench_train_step":
        from .bench import bench_train_step as value
    else:
        value = session.MindSporeBackend() if name == "BACKEND" else getattr(session, name)
    globals()[name] = value
    return value


__all__ = list(_LAZY)
