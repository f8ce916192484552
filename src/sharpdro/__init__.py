"""sharpdro: SharpDRO (CVPR 2023) and its baselines, on photon-limited corruptions.

Public API (framework-neutral; importing it never imports a deep-learning backend):

    from sharpdro import load_config, corrupt, build_splits, train, evaluate_run
    from sharpdro import evaluate_model, load_pretrained, load_runs
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
    raise AttributeError(f"module 'sharpdro' has no attribute {name!r}")


__all__ = ["ConfigError", "load_config", "corrupt", "build_splits", "train", "evaluate_run", "evaluate_model",
           "load_pretrained", "load_runs", "__version__"]
