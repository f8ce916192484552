"""The MindSpore session: model + algorithm + optimizer behind the backend interface.

The counterpart of ``backends/torch/session.py`` for the framework-neutral engine:
the same constructor, ``train_epoch`` / ``evaluate`` / ``predict_logits`` /
``save_checkpoint`` / ``load_checkpoint`` / ``set_batch_factory`` / ``to_device``, the
same statistics and the same errors.

How it runs: PyNative with ``mindspore.runtime.launch_blocking()`` (the fast path on
CPU, and the mode the parity tests check), fp32, the CPU settings of ``_runtime``.
Per-severity statistics are accumulated on the host (each step already returns NumPy).

Initial weights: when PyTorch is installed (it is a dependency of sharpdro) the network
is initialised by building the PyTorch model of the same seed and converting it, so a
MindSpore run and a PyTorch run of the same config start from identical weights (the
fresh models of the JTT/EIIL pre-stages and EIIL's initial assignments continue the same
PyTorch generator, as in the PyTorch session).  PyTorch's global RNG is left untouched.
Without PyTorch, ``models.init_weights`` draws the same distributions with NumPy.

Checkpoints: the ``.npz`` format of ``convert.py`` (no pickle), at whatever path the
engine gives (``checkpoints/last.npz``: :func:`sharpdro.rundir.checkpoint_name`; runs written
before that suffix hold ``last.pt``, read the same way).
"""
from __future__ import annotations

import random
import warnings
from typing import Iterable

import numpy as np

from sharpdro.backends.mindspore import _runtime  # noqa: F401  (the CPU setting, before MindSpore loads)
import mindspore as ms
from mindspore import nn, ops

from sharpdro.backends.base import session_shape
from sharpdro.data.types import Splits
from sharpdro.errors import NonFiniteLossError, TrainingError
from sharpdro.metrics import TrainEpochSums
from sharpdro.rundir import check_checkpoint_fits, check_finite_weights

from . import convert
from sharpdro import methods

from .algorithms import build_algorithm
from .algorithms.base import PrepareContext, set_lr
from .models import build_model, init_weights, load_parameters

CHECKPOINT_FORMAT = convert.FORMAT


def _progress(iterable, desc: str, total: int | None, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class MindSporeSession:
    def __init__(self, cfg: dict, splits: Splits | None, norm: tuple[list, list] | None = None,
                 num_classes: int | None = None, image_shape: tuple | None = None, num_groups: int | None = None,
                 train_size: int = 0, classes: list | None = None):
        self.cfg = cfg
        t = cfg["train"]
        self.runtime = _runtime.configure(t["device"], t.get("threads"), bool(t.get("deterministic", False)))
        precision = t.get("precision", "fp32")
        if precision not in ("fp32", "auto"):  # auto: this backend has no mixed precision (fp32)
            raise TrainingError(f"backend=mindspore trains in fp32 only (train.precision={precision!r}); set "
                                f"train.precision=fp32 or use backend=torch")
        for key in ("channels_last", "compile"):
            if t.get(key):
                warnings.warn(f"train.{key} has no effect with backend=mindspore (ignored)", stacklevel=2)
        self.progress = bool(t["progress"])
        seed = int(cfg["seed"])
        ms.set_seed(seed)
        random.seed(seed)
        if splits is not None:
            shape = session_shape(splits)
            norm, num_classes, image_shape = shape["norm"], shape["num_classes"], shape["image_shape"]
            num_groups, train_size, classes = shape["num_groups"], shape["train_size"], shape["classes"]
        self.norm = norm
        self.num_classes, self.image_shape, self.num_groups = num_classes, tuple(image_shape), num_groups
        self.train_size = train_size
        self.classes = classes or [str(i) for i in range(num_classes)]
        # float32 arithmetic as the PyTorch session: (x - mean*255) / (std*255), bit for bit
        self._mean = (np.asarray(norm[0], np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        self._std = (np.asarray(norm[1], np.float32) * np.float32(255.0)).reshape(1, 3, 1, 1)
        self.init_source = "torch" if _torch_available() else "numpy"
        self._torch_rng = None  # PyTorch generator state between model inits (init_source == 'torch')
        self._numpy_rng = np.random.default_rng(seed)
        self._dropout_rng = np.random.default_rng(seed)  # dropout masks (models.Dropout); checkpointed

        model = self._make_model()
        if splits is not None and cfg["model"].get("init_from"):  # a training run from exported weights
            from sharpdro.export import pretrained_state

            state = pretrained_state(cfg["model"]["init_from"], cfg["model"], num_classes, self.image_shape[0])
            load_parameters(model, convert.torch_state_to_mindspore(state), strict=False)
        self.algorithm = build_algorithm(cfg["algorithm"]["name"], model, num_classes, num_groups,
                                         cfg["algorithm"], train_size)
        self.optimizer = self._make_optimizer(model.trainable_params())
        self.algorithm.configure(self.optimizer)
        self.algorithm.randn = self._randn  # a pre-stage's random start (EIIL), as PyTorch draws it
        self._batch_factory = None
        self._lr = float(t["lr"])

    # ----------------------------------------------------------------- building
    def _torch_init(self, fn):
        """Run ``fn()`` on PyTorch's global generator continued from this session's own state."""
        import torch

        with torch.random.fork_rng(devices=[]):
            if self._torch_rng is None:
                torch.manual_seed(int(self.cfg["seed"]))
            else:
                torch.set_rng_state(self._torch_rng)
            out = fn()
            self._torch_rng = torch.get_rng_state()
        return out

    def _make_model(self) -> nn.Cell:
        m = self.cfg["model"]
        args = (m["name"], self.num_classes, self.image_shape[0])
        model = build_model(*args, width=m["width"], dropout=m["dropout"], seed=None,
                            dropout_rng=self._dropout_rng)
        if self.init_source == "torch":
            from sharpdro.backends.torch.models import build_model as build_torch_model

            tmodel = self._torch_init(lambda: build_torch_model(*args, width=m["width"], dropout=m["dropout"]))
            load_parameters(model, convert.torch_state_to_mindspore(tmodel.state_dict()))
        else:
            init_weights(model, self._numpy_rng)
        return model

    def _randn(self, n: int) -> np.ndarray:
        """EIIL's initial assignments: PyTorch's ``torch.randn(n)`` continuing the init generator (or NumPy)."""
        if self.init_source == "torch":
            import torch

            return self._torch_init(lambda: torch.randn(n)).numpy()
        return self._numpy_rng.standard_normal(n).astype(np.float32)

    def _make_optimizer(self, params) -> nn.Optimizer:
        """PyTorch's SGD: weight decay on every parameter (a group, or MindSpore skips gamma/beta), no dampening."""
        t = self.cfg["train"]
        if t.get("optimizer", "sgd") != "sgd":
            raise TrainingError(f"train.optimizer={t['optimizer']!r}: the MindSpore backend has SGD only; "
                                f"use backend=torch or train.optimizer=sgd")
        params = list(params)
        momentum = float(t["momentum"])
        return nn.Momentum([{"params": params, "weight_decay": float(t["weight_decay"])}],
                           learning_rate=float(t["lr"]), momentum=momentum,
                           use_nesterov=bool(t["nesterov"]) and momentum > 0)

    def to_device(self, images: np.ndarray, *arrays: np.ndarray):
        """uint8 NHWC NumPy -> normalised float32 NCHW tensor (+ int32 tensors for the rest)."""
        x = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32)
        x = (x - self._mean) / self._std
        rest = [ms.Tensor(np.asarray(a).astype(np.int32)) for a in arrays]
        return (ms.Tensor(np.ascontiguousarray(x)), *rest)

    def set_batch_factory(self, factory) -> None:
        """``factory(epoch) -> iterator of NumPy batches`` and ``factory.ordered()``: used by algorithm pre-stages."""
        self._batch_factory = factory

    def _prepare_context(self) -> PrepareContext:
        uses_groups = self.algorithm.uses_groups

        def device_batches(it):
            for images, labels, sev, idx in it:
                x, y, g = self.to_device(images, labels, sev)
                yield x, y, (g if uses_groups else None), np.asarray(idx, dtype=np.int64)

        factory = self._batch_factory
        if factory is None:
            raise TrainingError(f"algorithm {self.cfg['algorithm']['name']!r} has a pre-stage but the session "
                                f"has no training batches")
        from sharpdro.schedule import lr_at

        has_val = getattr(factory, "validation", lambda: None)() is not None
        prestage = getattr(factory, "prestage", factory)
        return PrepareContext(
            epochs_batches=lambda epoch: device_batches(prestage(epoch)),
            ordered_batches=lambda: device_batches(factory.ordered()),
            make_model=self._make_model,
            make_optimizer=self._make_optimizer,
            lr_at=lambda epoch: lr_at(epoch, self.cfg),
            train_size=self.train_size,
            device=self.runtime["target"].lower(),
            progress=lambda it, desc: _progress(it, desc, None, self.progress),
            val_batches=(lambda: device_batches(factory.validation())) if has_val else None,
            run_epochs=int(self.cfg["train"]["epochs"]),
            base_lr=float(self.cfg["train"]["lr"]),
        )

    def prepare(self) -> dict | None:
        """Run the algorithm's pre-stage unless done (or restored); returns what it found (None: not run now)."""
        algo = self.algorithm
        if algo.prepared:
            return None
        algo.prepare(self._prepare_context())
        algo.mark_prepared()
        return algo.prestage_info

    def sampling_plan(self):
        """The training batches the prepared algorithm asks for (:class:`~sharpdro.data.batches.SamplingPlan`)."""
        return self.algorithm.sampling_plan()

    # ----------------------------------------------------------------- training
    def train_epoch(self, epoch: int, batches: Iterable, lr: float, num_batches: int | None = None) -> dict:
        algo = self.algorithm
        self.prepare()  # the engine has run it already (and planned the batches); a bare session runs it here
        set_lr(self.optimizer, lr)
        self._lr = float(lr)
        algo.train()
        algo.begin_epoch(epoch)
        sums = TrainEpochSums.numpy(self.num_groups)
        last: dict = {}
        for images, labels, sev, idx in _progress(batches, f"epoch {epoch + 1}", num_batches, self.progress):
            x, y, s = self.to_device(images, labels, sev)
            last = algo.update(x, y, s if algo.uses_groups else None, np.asarray(idx, dtype=np.int64))
            sums.add(np.asarray(sev, dtype=np.int64), last["per_sample_loss"], last["correct"], last.get("selected"))
            if not np.isfinite(last["per_sample_loss"]).all():
                self._raise_nonfinite(epoch, sums.steps)
        if sums.steps == 0:
            raise TrainingError("the training set produced no batch; lower train.batch_size")
        return sums.stats(q=last.get("q"))

    def _raise_nonfinite(self, epoch: int, steps: int):
        raise NonFiniteLossError(
            f"non-finite training loss (NaN or inf) in epoch {epoch + 1} at step {steps} (train.lr {self._lr:g}); "
            f"the run is stopped")

    # --------------------------------------------------------------- evaluation
    def predict_logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        self.algorithm.eval()
        out = []
        for start in range(0, len(images), batch_size):
            (x,) = self.to_device(images[start:start + batch_size])
            out.append(self.algorithm.predict(x).asnumpy().astype(np.float32))
        if not out:
            return np.zeros((0, self.num_classes), np.float32)
        return np.concatenate(out)

    def ood_scores(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
        """The agnostic method's score of each image in eval mode (its diagnostics' hook), float64."""
        self.algorithm.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x, y = self.to_device(images[start:start + batch_size], labels[start:start + batch_size])
            out.append(self.algorithm.ood_scores(x, y).asnumpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0)

    def algorithm_buffer(self, name: str) -> np.ndarray:
        """A buffer of the algorithm state (e.g. the agnostic score memory) as a NumPy array."""
        return np.array(self.algorithm.buffers[name], copy=True)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
        self.algorithm.eval()
        loss_sum = 0.0
        preds = []
        for start in range(0, len(images), batch_size):
            x, y = self.to_device(images[start:start + batch_size], labels[start:start + batch_size])
            logits = self.algorithm.predict(x)
            loss_sum += float(ops.cross_entropy(logits, y, reduction="sum").asnumpy())
            preds.append(logits.argmax(1).asnumpy().astype(np.int64))
        pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
        labels = np.asarray(labels)
        return {"loss": loss_sum / max(len(labels), 1), "correct": pred == labels, "pred": pred}

    # -------------------------------------------------------------- checkpoints
    def _meta(self) -> dict:
        return {"norm": [list(map(float, v)) for v in self.norm], "num_classes": self.num_classes,
                "image_shape": list(self.image_shape), "num_groups": self.num_groups,
                "train_size": self.train_size, "classes": self.classes, "config": self.cfg}

    def save_checkpoint(self, path, extra: dict) -> None:
        arrays = {f"algorithm/{k}": v for k, v in self.algorithm.state_dict().items()}
        for p, m in zip(self.optimizer.parameters, self.optimizer.moments):
            arrays[f"optimizer/{p.name}"] = m.asnumpy()
        np_info, np_keys = convert.numpy_rng_to_json(np.random.get_state())
        arrays["rng/numpy_keys"] = np_keys
        arrays["rng/mindspore"] = ms.get_rng_state().asnumpy()
        meta = {"format": CHECKPOINT_FORMAT, "backend": "mindspore", "meta": self._meta(), "extra": extra,
                "lr": self._lr, "global_step": int(self.optimizer.global_step.asnumpy().reshape(-1)[0]),
                "rng": {"numpy": np_info, "python": convert.python_rng_to_json(random.getstate()),
                        "dropout": self._dropout_rng.bit_generator.state}}
        convert.write_checkpoint(path, arrays, meta)

    def load_checkpoint(self, path, weights_only: bool = False) -> dict:
        arrays, meta = convert.read_checkpoint(path)
        _check_state(path, arrays, meta, self.cfg)
        return self._load_state(arrays, meta, weights_only)

    def _load_state(self, arrays: dict, meta: dict, weights_only: bool) -> dict:
        self.algorithm.load_state_dict({k[len("algorithm/"):]: v for k, v in arrays.items()
                                        if k.startswith("algorithm/")})
        if not weights_only:
            for p, m in zip(self.optimizer.parameters, self.optimizer.moments):
                key = f"optimizer/{p.name}"
                if key in arrays:
                    m.set_data(ms.Tensor(np.asarray(arrays[key], dtype=np.float32)))
            if "global_step" in meta:
                self.optimizer.global_step.set_data(
                    ms.Tensor(np.full(self.optimizer.global_step.shape, meta["global_step"], np.int32)))
            rng = meta.get("rng", {})
            if "numpy" in rng and "rng/numpy_keys" in arrays:
                np.random.set_state(convert.numpy_rng_from_json(rng["numpy"], arrays["rng/numpy_keys"]))
            if "python" in rng:
                random.setstate(convert.python_rng_from_json(rng["python"]))
            if "dropout" in rng:
                self._dropout_rng.bit_generator.state = rng["dropout"]
            if "rng/mindspore" in arrays:
                ms.set_rng_state(ms.Tensor(arrays["rng/mindspore"]))
        return meta.get("extra", {})


def _check_state(path, arrays: dict, state: dict, cfg: dict | None = None) -> None:
    """Before a checkpoint is loaded: written by this method and network (``cfg``), with finite weights."""
    if cfg is not None:
        check_checkpoint_fits(path, (state.get("meta") or {}).get("config"), cfg)
    check_finite_weights(path, [k for k, v in arrays.items() if k.startswith("algorithm/model.")
                                and np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()])


class MindSporeBackend:
    name = "mindspore"

    def resolve_precision(self, cfg: dict) -> str:
        """``train.precision`` as it runs: this backend trains in fp32 only, so ``auto`` is fp32."""
        requested = cfg["train"]["precision"]
        return "fp32" if requested == "auto" else requested

    def hardware(self, cfg: dict) -> dict:
        return {"device": str(cfg["train"]["device"]), "fast_bf16": False}

    def requires_groups(self, cfg: dict) -> bool:
        return methods.get(cfg["algorithm"]["name"]).needs_groups

    def create_session(self, cfg: dict, splits: Splits) -> MindSporeSession:
        return MindSporeSession(cfg, splits)

    def load_for_inference(self, checkpoint_path, device: str | None = None):
        """A session from a checkpoint alone; a PyTorch backend checkpoint is converted on the fly."""
        path = checkpoint_path
        if convert.checkpoint_backend(path) == "torch":
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as tmp:
                return self.load_for_inference(convert.torch_to_mindspore(path, Path(tmp) / "converted.pt"),
                                               device=device)
        from sharpdro.config import validate

        arrays, state = convert.read_checkpoint(path)
        _check_state(path, arrays, state)
        meta = state["meta"]
        cfg = validate({**meta["config"], "backend": "mindspore"})  # fills keys added since it was written
        if device is not None:
            cfg = {**cfg, "train": {**cfg["train"], "device": device}}
        session = MindSporeSession(cfg, None, norm=meta["norm"], num_classes=meta["num_classes"],
                                   image_shape=meta["image_shape"], num_groups=meta["num_groups"],
                                   train_size=meta["train_size"], classes=meta.get("classes"))
        session._load_state(arrays, state, weights_only=True)
        return session, cfg
