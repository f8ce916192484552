"""The small interface every backend implements (torch now, mindspore next).

The framework-neutral engine (``sharpdro.engine``) owns the epoch loop, evaluation
schedule, metrics, model selection, run directory and resume logic; a backend owns
tensors: the model, the algorithm, the optimizer and checkpoints.  Batches cross the
boundary as NumPy arrays (uint8 NHWC images, int64 labels, int64 severities, int64
indices); results come back as NumPy arrays and Python floats.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Iterable, Protocol

import numpy as np

from sharpdro.data.types import Splits

Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # images, labels, severity, index


class Session(Protocol):
    """One model + algorithm + optimizer, built from a resolved config."""

    def train_epoch(self, epoch: int, batches: Iterable[Batch], lr: float, num_batches: int | None = None) -> dict:
        """Run one epoch of ``algorithm.update`` over ``batches`` with learning rate ``lr``.

        Returns plain floats/lists: ``loss`` (mean first-pass loss), ``group_loss``,
        ``group_acc`` and ``group_count`` (per severity, length S+1), ``steps``, and
        algorithm extras such as ``q`` or ``agnostic_selected_severity``.
        Raises TrainingError on a non-finite loss.
        """

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
        """Eval-mode pass: ``{'loss': float, 'correct': bool[N], 'pred': int64[N]}``."""

    def predict_logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float32 [N, C] logits in eval mode."""

    def save_checkpoint(self, path, extra: dict) -> None:
        """Write model, optimizer, algorithm state, every RNG and ``extra`` atomically."""

    def load_checkpoint(self, path, weights_only: bool = False) -> dict:
        """Restore what save_checkpoint wrote; return ``extra``."""


class Backend(Protocol):
    name: str

    def requires_groups(self, cfg: dict) -> bool:
        """True when the configured algorithm trains on severity labels (refused without them)."""

    def create_session(self, cfg: dict, splits: Splits) -> Session:
        """Build model, algorithm and optimizer; run the algorithm's pre-stage lazily on the first epoch."""

    def load_for_inference(self, checkpoint_path) -> tuple[Session, dict]:
        """A session from a checkpoint alone (its embedded config); returns (session, config)."""

    # Optional hook (looked up with getattr):
    # release_memory() -> None: free cached accelerator memory between two runs in one process.
    # Optional modules of a backend package (backend_module): ``bench`` (measure(...) for ``sharpdro bench``),
    # ``loss_landscape`` (measure_session(...) for ``sharpdro sharpness``).


def finite_logits(session: Session, images: np.ndarray, batch_size: int) -> np.ndarray:
    """``session.predict_logits``, refused when an output is NaN or infinite: an argmax of NaN is class 0, which
    would be reported as a prediction, or as an accuracy (the share of class 0)."""
    logits = session.predict_logits(images, batch_size)
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        from sharpdro.errors import TrainingError

        raise TrainingError(f"the model's outputs are not finite (NaN or infinity) for {int(bad.sum())} of "
                            f"{len(logits)} images: its weights are damaged or overflow, so no prediction or "
                            f"accuracy is reported. Use another checkpoint of the run, or train it again")
    return logits


def session_shape(splits: Splits) -> dict:
    """What every backend's session derives from the training data (and stores in its checkpoints)."""
    from sharpdro.data.normalize import channel_mean_std

    return {"norm": channel_mean_std(splits.train.images), "num_classes": splits.num_classes,
            "image_shape": splits.image_shape, "num_groups": splits.num_groups, "train_size": len(splits.train),
            "classes": list(splits.classes)}


_BACKENDS = {"torch": "sharpdro.backends.torch", "mindspore": "sharpdro.backends.mindspore"}
_LOADED: dict[str, Backend] = {}  # the backends get_backend returned in this process


def get_backend(name: str) -> Backend:
    from sharpdro.errors import SharpDROError

    if name not in _BACKENDS:
        raise SharpDROError(f"unknown backend {name!r}; available: {', '.join(_BACKENDS)}")
    try:
        module = importlib.import_module(_BACKENDS[name])
    except ImportError as exc:
        extra = "pip install 'sharpdro[mindspore]'" if name == "mindspore" else "pip install torch"
        raise SharpDROError(f"backend {name!r} cannot be imported ({exc}); install it with: {extra}") from exc
    _LOADED[name] = module.BACKEND
    return module.BACKEND


def backend_module(name: str, module: str):
    """The optional module ``sharpdro.backends.<name>.<module>`` (``bench``, ``loss_landscape``) that a command
    needs; a SharpDROError saying so when the backend has none."""
    from sharpdro.errors import SharpDROError

    if name not in _BACKENDS:
        raise SharpDROError(f"unknown backend {name!r}; available: {', '.join(_BACKENDS)}")
    full = f"{_BACKENDS[name]}.{module}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name == full:
            have = [b for b in _BACKENDS if importlib.util.find_spec(f"{_BACKENDS[b]}.{module}") is not None]
            raise SharpDROError(f"the {name!r} backend has no {module} module (available for: "
                                f"{', '.join(have) or 'none'})") from None
        extra = "pip install 'sharpdro[mindspore]'" if name == "mindspore" else "pip install torch"
        raise SharpDROError(f"backend {name!r} cannot be imported ({exc}); install it with: {extra}") from exc


def release_memory() -> None:
    """Ask every backend used in this process to free its cached accelerator memory (after a sweep job)."""
    for backend in list(_LOADED.values()):
        hook = getattr(backend, "release_memory", None)
        if hook is not None:
            try:
                hook()
            except Exception:  # pragma: no cover - best effort between jobs
                pass
