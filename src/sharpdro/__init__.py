"""sharpdro: SharpDRO (CVPR 2023) and its baselines, on photon-limited corruptions.

Public API (framework-neutral; importing it never imports a deep-learning backend):

    from sharpdro import load_config, corrupt, build_splits, train, evaluate_run
    from sharpdro import evaluate_model, load_pretrained, load_runs

In your own PyTorch loop (imports torch on first use): ``from sharpdro import SharpDRO``
(or SAM, GroupDROLoss, group_balanced_sampler), the same as ``sharpdro.torch``.
"""
from __future__ import annotations

from sharpdro.config import ConfigError, load_config  # noqa: E402
from sharpdro.version import __version__  # noqa: E402


def __getattr__(name):
    # Lazy so that `import sharpdro` stays cheap and backend-free.
    if name == "corrupt":
        from sharpdro.data.corruptions import corrupt

        return corrupt
    if name == "build_splits":
        from sharpdro.data.splits import build_splits

        return build_splits
    if name in ("train", "evaluate_run"):
        from sharpdro import engine

        return getattr(engine, name)
    if name == "load_pretrained":
        from sharpdro.export import load_pretrained

        return load_pretrained
    if name == "evaluate_model":
        from sharpdro.robustness import evaluate_model

        return evaluate_model
    if name == "load_runs":
        from sharpdro.runs_table import load_runs

        return load_runs
    if name in _TORCH_API:
        import importlib

        return getattr(importlib.import_module("sharpdro.torch"), name)
    raise AttributeError(f"module 'sharpdro' has no attribute {name!r}")


# the public PyTorch API (sharpdro.torch), resolved on first use so that `import sharpdro` imports no torch
_TORCH_API = ("SharpDRO", "SAM", "GroupDROLoss", "group_balanced_sampler")


__all__ = ["ConfigError", "load_config", "corrupt", "build_splits", "train", "evaluate_run", "evaluate_model",
           "load_pretrained", "load_runs", "SharpDRO", "SAM", "GroupDROLoss", "group_balanced_sampler", "__version__"]
