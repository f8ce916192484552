"""The PyTorch session: model + algorithm + optimizer behind the backend interface.

The engine hands over NumPy batches (uint8 NHWC); here they become normalised NCHW
float tensors on the device.  Per-severity training statistics are accumulated on the
device and read once per epoch (plus a cheap finiteness check every ``_NAN_CHECK``
steps), so a step has no host synchronisation.

Input pipeline: on CUDA, host batches are pinned and copied without blocking, so the
host prepares batch b+1 while the GPU runs batch b.  When the uint8 training set fits
on the device (``train.data_on_device``: ``auto`` = on CUDA when it takes at most a
quarter of the GPU's memory), it is uploaded once and every batch is gathered,
flipped, cropped and normalised on the device, with the same order and augmentation
parameters as :class:`~sharpdro.data.batches.BatchIterator` (the same pixels).

Precision (``train.precision``, :mod:`.amp`), ``train.channels_last``,
``train.compile`` and data parallelism (torchrun, :mod:`.distributed`) are set up here
and handed to the algorithm by ``configure``.
"""
from __future__ import annotations

import random
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from sharpdro.backends.base import session_shape
from sharpdro.data.types import Splits
from sharpdro.errors import NonFiniteLossError, TrainingError
from sharpdro.metrics import TrainEpochSums
from sharpdro.rundir import check_checkpoint_fits, check_finite_weights

from .algorithms import build_algorithm
from .algorithms.base import PrepareContext
from .amp import Precision, hardware_record, resolve_precision
from .checkpoints import numpy_rng_from_plain, numpy_rng_to_plain, read_checkpoint, write_checkpoint
from .distributed import Replicas, broadcast_state, is_distributed, rank_seed, wrap_ddp
from .models import build_model

_NAN_CHECK = 50  # steps between finiteness checks (one host sync each)
CHECKPOINT_FORMAT = 1


def make_optimizer(params, train: dict, fused: bool = False) -> torch.optim.Optimizer:
    """The run's base optimizer (``train.optimizer``): SGD (momentum, nesterov, L2 weight decay) or AdamW
    (decoupled weight decay, torch's default betas (0.9, 0.999) and eps 1e-8).

    ``fused`` (fp16): the fused kernels take the overflow flag on the device, so a skipped step needs no
    host sync (both optimizers have one).
    """
    kw = {"fused": True} if fused else {}
    kind = train.get("optimizer", "sgd")
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"], **kw)
    if kind != "sgd":
        raise TrainingError(f"train.optimizer={kind!r}: the PyTorch backend has sgd and adamw")
    return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"],
                           nesterov=bool(train["nesterov"]) and train["momentum"] > 0, **kw)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu "
                            f"or install a CUDA build of torch (see the README)")
    if dev.type == "cuda" and is_distributed():  # one GPU per process: torchrun's LOCAL_RANK
        import os

        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return dev


def augment_on_device(images: torch.Tensor, flip: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
                      padding: int) -> torch.Tensor:
    """:func:`sharpdro.data.batches.augment_batch` on a device tensor (uint8 NHWC): flip, zero-pad, crop."""
    B, H, W, _ = images.shape
    if padding > 0:
        padded = images.new_zeros((B, H + 2 * padding, W + 2 * padding, images.shape[3]))
        padded[:, padding:padding + H, padding:padding + W] = images
    else:
        padded = images
    Wp = W + 2 * padding
    ar_h = torch.arange(H, device=images.device)
    ar_w = torch.arange(W, device=images.device)
    rows = oy[:, None] + ar_h
    cols = ox[:, None] + ar_w
    cols = torch.where(flip[:, None], Wp - 1 - cols, cols)
    b = torch.arange(B, device=images.device)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]]


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
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.world_size = torch.distributed.get_world_size() if is_distributed() else 1
        self.rank = torch.distributed.get_rank() if is_distributed() else 0
        self.progress = bool(t["progress"]) and self.rank == 0
        torch.manual_seed(cfg["seed"])
        random.seed(cfg["seed"])
        if splits is not None:
            shape = session_shape(splits)
            norm, num_classes, image_shape = shape["norm"], shape["num_classes"], shape["image_shape"]
            num_groups, train_size, classes = shape["num_groups"], shape["train_size"], shape["classes"]
        self.norm = norm
        self.num_classes, self.image_shape, self.num_groups = num_classes, tuple(image_shape), num_groups
        self.train_size = train_size
        self.classes = classes or [str(i) for i in range(num_classes)]
        self._mean = torch.tensor(norm[0], device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(norm[1], device=self.device).view(1, 3, 1, 1) * 255.0
        self.memory_format = torch.channels_last if t["channels_last"] else torch.contiguous_format

        self.precision = Precision(resolve_precision(t["precision"], self.device), self.device)
        model = self._make_model()
        if splits is not None and cfg["model"].get("init_from"):  # a training run from exported weights
            from sharpdro.export import init_from_pretrained

            init_from_pretrained(model, cfg["model"]["init_from"], cfg["model"], num_classes, self.image_shape[0])
        if self.world_size > 1 and t["sync_bn"]:
            if self.device.type != "cuda":
                raise TrainingError("train.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                                    "set train.sync_bn=false")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.algorithm = build_algorithm(cfg["algorithm"]["name"], model, num_classes, num_groups,
                                         cfg["algorithm"], train_size).to(self.device)
        self.optimizer = self._make_optimizer(self.algorithm.model.parameters())
        self.replicas = self._make_replicas(self.algorithm.model)
        self.algorithm.configure(self.optimizer, self.precision, self.replicas)
        if self.world_size > 1:  # dropout differs between replicas (reproducibly)
            torch.manual_seed(rank_seed(cfg["seed"], self.rank))
        self._batch_factory = None
        self._resident = None  # the training set on the device (see set_batch_factory)

    # ----------------------------------------------------------------- building
    def _make_model(self) -> torch.nn.Module:
        m = self.cfg["model"]
        model = build_model(m["name"], self.num_classes, self.image_shape[0], width=m["width"],
                            dropout=m["dropout"], pretrained=bool(m.get("pretrained", False)))
        return model.to(self.device, memory_format=self.memory_format)

    def _make_optimizer(self, params) -> torch.optim.Optimizer:
        return make_optimizer(params, self.cfg["train"], fused=self.precision.mode == "fp16")

    def _make_replicas(self, model: torch.nn.Module) -> Replicas | None:
        """DDP wrapper (torchrun) and/or torch.compile of the training forward."""
        t = self.cfg["train"]
        net = ddp = None
        if self.world_size > 1:
            ddp = net = wrap_ddp(model, self.device)
        if t["compile"]:
            if not hasattr(torch, "compile"):
                raise TrainingError("train.compile=true needs torch >= 2.0; set train.compile=false")
            net = torch.compile(net if net is not None else model)
        if net is None:
            return None
        return Replicas(world_size=self.world_size, rank=self.rank, net=net, ddp=ddp,
                        per_replica_perturbation=bool(t["m_sharpness"]))

    def to_device(self, images, *arrays):
        """uint8 NHWC NumPy -> normalised float NCHW on the device (+ int64 tensors for the rest).

        Tensors already on the device (the device-resident path) pass through unchanged.
        """
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return (images, *arrays)
        non_blocking = self.device.type == "cuda"
        x = torch.from_numpy(np.ascontiguousarray(images))
        if non_blocking:
            x = x.pin_memory()
        x = self._normalize(x.to(self.device, non_blocking=non_blocking))
        rest = []
        for a in arrays:
            a = torch.from_numpy(np.asarray(a, dtype=np.int64))
            rest.append(a.pin_memory().to(self.device, non_blocking=True) if non_blocking else a)
        return (x, *rest)

    def _normalize(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_uint8_nhwc.permute(0, 3, 1, 2).float()
        return ((x - self._mean) / self._std).contiguous(memory_format=self.memory_format)

    def set_batch_factory(self, factory) -> None:
        """``factory(epoch) -> iterator of NumPy batches`` and ``factory.ordered()``: used by algorithm pre-stages.

        A factory with a ``train`` BatchIterator may also be served from the device
        (``train.data_on_device``), see :meth:`epoch_batches`.
        """
        self._batch_factory = factory
        self._resident = None
        it = getattr(factory, "train", None)
        if it is not None and self._use_resident(it):
            dev = self.device
            self._resident = {
                "images": torch.from_numpy(np.ascontiguousarray(it.images)).to(dev),
                "labels": torch.from_numpy(it.labels).to(dev),
                "severity": torch.from_numpy(it.severity).to(dev),
            }

    def _use_resident(self, it) -> bool:
        mode = self.cfg["train"]["data_on_device"]
        if mode != "auto":
            return bool(mode)
        if self.device.type != "cuda":
            return False
        total = torch.cuda.get_device_properties(self.device).total_memory
        return it.images.nbytes <= total // 4

    @property
    def data_on_device(self) -> bool:
        return self._resident is not None

    def epoch_batches(self, epoch: int):
        """The training batches of ``epoch``: host NumPy batches, or device tensors (resident data)."""
        factory = self._batch_factory
        if factory is None:
            raise TrainingError("the session has no training batches (set_batch_factory)")
        if self._resident is None:
            return factory(epoch)
        return self._resident_batches(factory.train, epoch)

    def _resident_batches(self, it, epoch: int):
        """BatchIterator.iterate(epoch) on the device: same order, same flips and crops, same pixels."""
        from sharpdro.data.batches import AUGMENT_TAG, draw_augmentation

        res, dev = self._resident, self.device
        order = it.epoch_order(epoch)
        n_batches, bs = len(it), it.batch_size
        augment = it.flip or it.crop_padding > 0
        if augment:  # every batch's parameters drawn as the host iterator does, sent once per epoch
            params = []
            for b in range(n_batches):
                n = len(order[b * bs:(b + 1) * bs])
                rng = np.random.default_rng(np.random.SeedSequence([it.seed, AUGMENT_TAG, int(epoch), it.rank, b]))
                mask, oy, ox = draw_augmentation(rng, n, it.flip, it.crop_padding)
                params.append(np.stack([mask.astype(np.int64), oy, ox]))
            aug = torch.from_numpy(np.concatenate(params, axis=1) if params else np.zeros((3, 0), np.int64))
            aug = aug.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else aug
        order_t = torch.from_numpy(np.ascontiguousarray(order[:n_batches * bs] if it.drop_last else order))
        order_t = order_t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else order_t
        for b in range(n_batches):
            idx = order_t[b * bs:(b + 1) * bs]
            images = res["images"].index_select(0, idx)
            if augment:
                p = aug[:, b * bs:b * bs + idx.shape[0]]
                images = augment_on_device(images, p[0].bool(), p[1], p[2], it.crop_padding)
            yield self._normalize(images), res["labels"][idx], res["severity"][idx], idx

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

        # Data-parallel runs: every replica runs the pre-stage on the whole (unsharded) training set with
        # the global batch, and rank 0's result is broadcast afterwards (see train_epoch).
        prestage = getattr(factory, "prestage", factory)
        has_val = getattr(factory, "validation", lambda: None)() is not None
        return PrepareContext(
            epochs_batches=lambda epoch: device_batches(prestage(epoch)),
            ordered_batches=lambda: device_batches(factory.ordered()),
            make_model=self._make_model,
            make_optimizer=self._make_optimizer,
            lr_at=lambda epoch: lr_at(epoch, self.cfg),
            train_size=self.train_size,
            device=self.device,
            progress=lambda it, desc: _progress(it, desc, None, self.progress),
            val_batches=(lambda: device_batches(factory.validation())) if has_val else None,
            run_epochs=int(self.cfg["train"]["epochs"]),
            base_lr=float(self.cfg["train"]["lr"]),
        )

    def prepare(self) -> dict | None:
        """Run the algorithm's pre-stage unless done (or restored); returns what it found (None: not run now)."""
        algo = self.algorithm
        if bool(algo.prepared):
            return None
        algo.prepare(self._prepare_context())
        algo.mark_prepared()
        if self.replicas is not None:
            self.replicas.broadcast_module_(algo)  # every replica holds rank 0's pre-stage result
        return algo.prestage_info

    def sampling_plan(self):
        """The training batches the prepared algorithm asks for (:class:`~sharpdro.data.batches.SamplingPlan`)."""
        return self.algorithm.sampling_plan()

    # ----------------------------------------------------------------- training
    def train_epoch(self, epoch: int, batches: Iterable, lr: float, num_batches: int | None = None) -> dict:
        algo = self.algorithm
        self.prepare()  # the engine has run it already (and planned the batches); a bare session runs it here
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        algo.train()
        algo.begin_epoch(epoch)
        G = self.num_groups
        sums = TrainEpochSums(G, torch.zeros(TrainEpochSums.size(G), device=self.device, dtype=torch.float64),
                              lambda t: t.double(), lambda target, i, v: target.index_add_(0, i, v))
        last = {}
        for images, labels, sev, idx in _progress(batches, f"epoch {epoch + 1}", num_batches, self.progress):
            x, y, s, i = self.to_device(images, labels, sev, idx)
            try:
                last = algo.update(x, y, s if algo.uses_groups else None, i)
            except Exception as exc:
                _raise_compile_error(exc, self.cfg)
                raise
            sums.add(s, last["per_sample_loss"], last["correct"], last.get("selected"))
            if sums.steps % _NAN_CHECK == 0 and not self._all_finite(sums.loss_sum):
                self._raise_nonfinite(epoch, sums.steps)
        if sums.steps == 0:
            raise TrainingError("the training set produced no batch; lower train.batch_size")
        if not self._all_finite(sums.loss_sum):
            self._raise_nonfinite(epoch, sums.steps)
        if self.replicas is not None:
            # BatchNorm running statistics drift per replica within an epoch (each normalises its own
            # shard); rank 0's are the checkpointed ones, so every rank evaluates with them.
            self.replicas.broadcast_module_(self.algorithm.model, buffers_only=True)
            # training statistics of the global batches: the same on every rank
            self.replicas.all_reduce_sum_(sums.sums)
        q = last["q"].detach().float().cpu().numpy() if "q" in last else None
        return sums.stats(q=q, to_numpy=lambda t: t.cpu().numpy())

    def _all_finite(self, loss_sum: torch.Tensor) -> bool:
        """Host check of the accumulated losses (every rank takes the same decision)."""
        bad = (~torch.isfinite(loss_sum)).any().to(torch.float64)
        if self.replicas is not None:
            self.replicas.all_reduce_sum_(bad)
        return not bool(bad)

    def _raise_nonfinite(self, epoch: int, steps: int):
        raise NonFiniteLossError(
            f"non-finite training loss (NaN or inf) in epoch {epoch + 1} within its first {steps} steps (train.lr "
            f"{self.optimizer.param_groups[0]['lr']:g}); the run is stopped")

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

    @torch.no_grad()
    def ood_scores(self, images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
        """The agnostic method's score of each image in eval mode (its diagnostics' hook), float64."""
        self.algorithm.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x, y = self.to_device(images[start:start + batch_size], labels[start:start + batch_size])
            out.append(self.algorithm.ood_scores(x, y).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def algorithm_buffer(self, name: str) -> np.ndarray:
        """A buffer of the algorithm state (e.g. the agnostic score memory) as a NumPy array."""
        return getattr(self.algorithm, name).detach().cpu().numpy()

    # -------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path, extra: dict) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "backend": "torch",
            "algorithm": self.algorithm.state_dict(),  # the unwrapped model: resumes on any number of processes
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": numpy_rng_to_plain(np.random.get_state()),
                "python": random.getstate(),
            },
            "meta": {"norm": self.norm, "num_classes": self.num_classes, "image_shape": list(self.image_shape),
                     "num_groups": self.num_groups, "train_size": self.train_size, "classes": self.classes,
                     "config": self.cfg},
            "extra": extra,
        }
        write_checkpoint(path, state)

    def load_checkpoint(self, path, weights_only: bool = False) -> dict:
        if self.world_size > 1:  # rank 0 reads, every rank receives (no shared filesystem needed)
            state = broadcast_state(_read_checkpoint(path) if self.rank == 0 else None, self._collective_device())
        else:
            state = _read_checkpoint(path)
        _check_state(path, state, self.cfg)
        self.algorithm.load_state_dict(state["algorithm"])
        if not weights_only:
            self.optimizer.load_state_dict(state["optimizer"])
            self.precision.load_state_dict(state.get("precision"))
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                try:
                    torch.cuda.set_rng_state_all(rng["cuda"])
                except (RuntimeError, IndexError):  # saved with another number of GPUs
                    pass
            np.random.set_state(numpy_rng_from_plain(rng["numpy"]))
            random.setstate(rng["python"])
            if self.world_size > 1:
                epoch = int(state.get("extra", {}).get("epoch", -1)) + 1
                torch.manual_seed(rank_seed(self.cfg["seed"], self.rank, epoch))
        return state.get("extra", {})

    def _collective_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def _raise_compile_error(exc: Exception, cfg: dict) -> None:
    """A torch.compile failure (no C++ compiler, unsupported op ...) as a TrainingError that says what to do."""
    mod = type(exc).__module__ or ""
    if cfg["train"]["compile"] and (mod.startswith("torch._dynamo") or mod.startswith("torch._inductor")):
        raise TrainingError(f"train.compile=true: torch.compile failed on this machine "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"set train.compile=false (or install a C++ compiler for the CPU "
                            f"backend / Triton for CUDA)") from exc


_read_checkpoint = read_checkpoint  # weights_only=True; see .checkpoints


def _check_state(path, state: dict, cfg: dict | None = None) -> None:
    """Before a checkpoint is loaded: written by this method and network (``cfg``), with finite weights."""
    if cfg is not None:
        check_checkpoint_fits(path, (state.get("meta") or {}).get("config"), cfg)
    check_finite_weights(path, [k for k, v in state["algorithm"].items()
                                if k.startswith("model.") and isinstance(v, torch.Tensor) and v.is_floating_point()
                                and not bool(torch.isfinite(v).all())])


class TorchBackend:
    name = "torch"

    def resolve_precision(self, cfg: dict) -> str:
        """``train.precision`` as it runs on ``train.device`` here (``auto``: bf16 where bf16 is fast, else fp32)."""
        return resolve_precision(cfg["train"]["precision"], resolve_device(cfg["train"]["device"]))

    def hardware(self, cfg: dict) -> dict:
        """The facts ``auto`` precision was resolved from, for the run's summary."""
        return hardware_record(resolve_device(cfg["train"]["device"]))

    def requires_groups(self, cfg: dict) -> bool:
        from sharpdro import methods

        return methods.get(cfg["algorithm"]["name"]).needs_groups

    def create_session(self, cfg: dict, splits: Splits) -> TorchSession:
        return TorchSession(cfg, splits)

    def init_distributed(self, cfg: dict):
        """The engine's process handle: torchrun's process group (NCCL on CUDA, Gloo on CPU) or one process."""
        from .distributed import init_processes

        return init_processes(cfg)

    def load_for_inference(self, checkpoint_path, device: str | None = None):
        state = _read_checkpoint(checkpoint_path)
        _check_state(checkpoint_path, state)
        from sharpdro.config import validate

        meta = state["meta"]
        cfg = validate(meta["config"])  # fills keys added since the checkpoint was written
        cfg = {**cfg, "train": {**cfg["train"], "compile": False}}
        # The checkpoint holds the weights: never fetch timm's pretrained ones again. A module.path:factory
        # model is rebuilt by importing the factory the run's own (embedded) config names.
        cfg = {**cfg, "model": {**cfg["model"], "pretrained": False}}
        if device is not None:
            cfg = {**cfg, "train": {**cfg["train"], "device": device}}
        from sharpdro.config import ConfigError, is_external_model

        try:
            session = TorchSession(cfg, None, norm=meta["norm"], num_classes=meta["num_classes"],
                                   image_shape=meta["image_shape"], num_groups=meta["num_groups"],
                                   train_size=meta["train_size"], classes=meta.get("classes"))
        except ConfigError as exc:
            if not is_external_model(cfg["model"]["name"]):
                raise
            raise ConfigError(f"{checkpoint_path}: its run trained model.name={cfg['model']['name']!r}, which must "
                              f"be importable to load it: {exc}") from None
        session.algorithm.load_state_dict(state["algorithm"])
        return session, cfg

    def release_memory(self) -> None:
        """Free what the CUDA caching allocator holds (between two sweep jobs in one process)."""
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
