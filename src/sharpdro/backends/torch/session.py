"""The PyTorch session: model + algorithm + optimizer behind the backend interface.

The engine hands over NumPy batches (uint8 NHWC); here they become normalised NCHW
float tensors on the device.  Per-severity training statistics are accumulated on the
device and read once per epoch (plus a cheap finiteness check every ``_NAN_CHECK``
steps), so a step has no host synchronisation.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from sharpdro.data.normalize import channel_mean_std
from sharpdro.data.types import Splits
from sharpdro.errors import TrainingError
from sharpdro.io import atomic_save

from .algorithms import build_algorithm
from .algorithms.base import PrepareContext
from .models import build_model

_NAN_CHECK = 50  # steps between finiteness checks (one host sync each)
CHECKPOINT_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu "
                            f"or install a CUDA build of torch (see the README)")
    return dev


def _progress(iterable, desc: str, total: int | None, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


class TorchSession:
    def __init__(self, cfg: dict, splits: Splits | None, norm: tuple[list, list] | None = None,
                 num_classes: int | None = None, image_shape: tuple | None = None, num_groups: int | None = None,
                 train_size: int = 0, classes: list | None = None):
        self.cfg = cfg
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(int(t["threads"]))
        if t["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.device = resolve_device(t["device"])
        self.progress = bool(t["progress"])
        torch.manual_seed(cfg["seed"])
        random.seed(cfg["seed"])
        if splits is not None:
            norm = channel_mean_std(splits.train.images)
            num_classes, image_shape = splits.num_classes, splits.image_shape
            num_groups, train_size = splits.num_groups, len(splits.train)
            classes = list(splits.classes)
        self.norm = norm
        self.num_classes, self.image_shape, self.num_groups = num_classes, tuple(image_shape), num_groups
        self.train_size = train_size
        self.classes = classes or [str(i) for i in range(num_classes)]
        self._mean = torch.tensor(norm[0], device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(norm[1], device=self.device).view(1, 3, 1, 1) * 255.0
        self.memory_format = torch.channels_last if t["channels_last"] else torch.contiguous_format

        model = self._make_model()
        self.algorithm = build_algorithm(cfg["algorithm"]["name"], model, num_classes, num_groups,
                                         cfg["algorithm"], train_size).to(self.device)
        self.optimizer = self._make_optimizer(self.algorithm.model.parameters())
        self.algorithm.configure(self.optimizer)
        self._batch_factory = None

    # ----------------------------------------------------------------- building
    def _make_model(self) -> torch.nn.Module:
        m = self.cfg["model"]
        model = build_model(m["name"], self.num_classes, self.image_shape[0], width=m["width"],
                            dropout=m["dropout"])
        return model.to(self.device, memory_format=self.memory_format)

    def _make_optimizer(self, params) -> torch.optim.Optimizer:
        t = self.cfg["train"]
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                               nesterov=bool(t["nesterov"]) and t["momentum"] > 0)

    def to_device(self, images: np.ndarray, *arrays: np.ndarray):
        """uint8 NHWC NumPy -> normalised float NCHW on the device (+ int64 tensors for the rest)."""
        non_blocking = self.device.type == "cuda"
        x = torch.from_numpy(np.ascontiguousarray(images))
        if non_blocking:
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2).float()
        x = ((x - self._mean) / self._std).contiguous(memory_format=self.memory_format)
        rest = [torch.from_numpy(np.asarray(a, dtype=np.int64)).to(self.device, non_blocking=non_blocking)
                for a in arrays]
        return (x, *rest)

    def set_batch_factory(self, factory) -> None:
        """``factory(epoch) -> iterator of NumPy batches`` and ``factory.ordered()``: used by algorithm pre-stages."""
        self._batch_factory = factory

    def _prepare_context(self) -> PrepareContext:
        uses_groups = self.algorithm.uses_groups

        def device_batches(it):
            for images, labels, sev, idx in it:
                x, y, g, i = self.to_device(images, labels, sev, idx)
                yield x, y, (g if uses_groups else None), i

        factory = self._batch_factory
        if factory is None:
            raise TrainingError(f"algorithm {self.cfg['algorithm']['name']!r} has a pre-stage but the session "
                                f"has no training batches")
        from sharpdro.schedule import lr_at

        return PrepareContext(
            epochs_batches=lambda epoch: device_batches(factory(epoch)),
            ordered_batches=lambda: device_batches(factory.ordered()),
            make_model=self._make_model,
            make_optimizer=self._make_optimizer,
            lr_at=lambda epoch: lr_at(epoch, self.cfg),
            train_size=self.train_size,
            device=self.device,
            progress=lambda it, desc: _progress(it, desc, None, self.progress),
        )

    # ----------------------------------------------------------------- training
    def train_epoch(self, epoch: int, batches: Iterable, lr: float, num_batches: int | None = None) -> dict:
        algo = self.algorithm
        if not bool(algo.prepared):
            algo.prepare(self._prepare_context())
            algo.mark_prepared()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        algo.train()
        G = self.num_groups
        dev = self.device
        loss_sum = torch.zeros(G, device=dev, dtype=torch.float64)
        correct_sum = torch.zeros(G, device=dev, dtype=torch.float64)
        count = torch.zeros(G, device=dev, dtype=torch.float64)
        sel_sev_sum = torch.zeros((), device=dev, dtype=torch.float64)
        sel_count = torch.zeros((), device=dev, dtype=torch.float64)
        last = {}
        steps = 0
        for images, labels, sev, idx in _progress(batches, f"epoch {epoch}", num_batches, self.progress):
            x, y, s, i = self.to_device(images, labels, sev, idx)
            last = algo.update(x, y, s if algo.uses_groups else None, i)
            psl = last["per_sample_loss"].double()
            loss_sum.index_add_(0, s, psl)
            correct_sum.index_add_(0, s, last["correct"].double())
            count.index_add_(0, s, torch.ones_like(psl))
            if "selected" in last:
                sel = last["selected"].double()
                sel_sev_sum += (sel * s.double()).sum()
                sel_count += sel.sum()
            steps += 1
            if steps % _NAN_CHECK == 0 and not torch.isfinite(loss_sum).all():
                self._raise_nonfinite(epoch, steps)
        if steps == 0:
            raise TrainingError("the training set produced no batch; lower train.batch_size")
        if not torch.isfinite(loss_sum).all():
            self._raise_nonfinite(epoch, steps)
        loss_sum, correct_sum, count = loss_sum.cpu().numpy(), correct_sum.cpu().numpy(), count.cpu().numpy()
        denom = np.maximum(count, 1.0)
        stats = {
            "loss": float(loss_sum.sum() / count.sum()),
            "accuracy": float(correct_sum.sum() / count.sum()),
            "group_loss": (loss_sum / denom).tolist(),
            "group_acc": (correct_sum / denom).tolist(),
            "group_count": count.astype(int).tolist(),
            "steps": steps,
        }
        if "q" in last:
            stats["q"] = last["q"].detach().float().cpu().tolist()
        if float(sel_count) > 0:
            stats["agnostic_selected_severity"] = float(sel_sev_sum / sel_count)
            stats["agnostic_batch_severity"] = float((np.arange(G) * count).sum() / count.sum())
        return stats

    def _raise_nonfinite(self, epoch: int, steps: int):
        raise TrainingError(
            f"non-finite training loss (NaN or inf) in epoch {epoch} within its first {steps} steps; the run is "
            f"stopped and checkpoints/last.pt still holds the last good epoch. Lower train.lr (now "
            f"{self.optimizer.param_groups[0]['lr']:g}) or algorithm.rho, or use train.precision=fp32, then "
            f"resume with --resume or start a new run.")

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict_logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        self.algorithm.eval()
        out = []
        for start in range(0, len(images), batch_size):
            (x,) = self.to_device(images[start:start + batch_size])
            out.append(self.algorithm.predict(x).float().cpu())
        if not out:
            return np.zeros((0, self.num_classes), np.float32)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
        self.algorithm.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        preds = []
        for start in range(0, len(images), batch_size):
            x, y = self.to_device(images[start:start + batch_size], labels[start:start + batch_size])
            logits = self.algorithm.predict(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            preds.append(logits.argmax(1).cpu())
        pred = torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)
        labels = np.asarray(labels)
        return {"loss": float(loss_sum) / max(len(labels), 1), "correct": pred == labels, "pred": pred}

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path, extra: dict) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "backend": "torch",
            "algorithm": self.algorithm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "meta": {"norm": self.norm, "num_classes": self.num_classes, "image_shape": list(self.image_shape),
                     "num_groups": self.num_groups, "train_size": self.train_size, "classes": self.classes,
                     "config": self.cfg},
            "extra": extra,
        }
        atomic_save(path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path, weights_only: bool = False) -> dict:
        state = _read_checkpoint(path)
        self.algorithm.load_state_dict(state["algorithm"])
        if not weights_only:
            self.optimizer.load_state_dict(state["optimizer"])
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
        return state.get("extra", {})


def _read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or foreign file
        raise TrainingError(f"checkpoint {path} cannot be read ({exc}); it may be from an interrupted copy") from exc


class TorchBackend:
    name = "torch"

    def requires_groups(self, cfg: dict) -> bool:
        from .algorithms import ALGORITHMS

        return bool(ALGORITHMS[cfg["algorithm"]["name"]].uses_groups)

    def create_session(self, cfg: dict, splits: Splits) -> TorchSession:
        return TorchSession(cfg, splits)

    def load_for_inference(self, checkpoint_path, device: str | None = None):
        state = _read_checkpoint(checkpoint_path)
        meta = state["meta"]
        cfg = meta["config"]
        if device is not None:
            cfg = {**cfg, "train": {**cfg["train"], "device": device}}
        session = TorchSession(cfg, None, norm=meta["norm"], num_classes=meta["num_classes"],
                               image_shape=meta["image_shape"], num_groups=meta["num_groups"],
                               train_size=meta["train_size"], classes=meta.get("classes"))
        session.algorithm.load_state_dict(state["algorithm"])
        return session, cfg

