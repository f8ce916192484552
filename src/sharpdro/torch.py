"""SharpDRO, SAM / ASAM, GroupDRO and JTT's pieces for your own PyTorch training loop.

Any model, any per-sample loss, your own groups::

    from sharpdro.torch import SharpDRO

    opt = SharpDRO(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), num_groups=3)
    for x, y, g in loader:                                  # g: int64 group ids in [0, num_groups)
        loss = opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"), g)

``closure()`` runs the forward pass and returns the PER-SAMPLE losses (a 1-D tensor, e.g.
``reduction="none"``); the step calls it twice (at w and at w + eps) and does everything
else: zero_grad, both backward passes, the q update, the SAM perturbation and its exact
restore, the BatchNorm policy of the second pass, the first-pass gradient add-back and
the base optimizer's step.  Do not call ``backward()`` or ``base_optimizer.step()`` yourself.

One implementation: these objects run the engine's own steps (``sharpdro train`` builds the
same classes, :mod:`sharpdro.backends.torch.algorithms`), whose ``update(x, y, groups, idx)``
is ``step_with`` with a cross-entropy forward; ``SharpDRO.step`` is ``step_with`` with your
closure.  So a step here equals the engine's to float rounding, and (through the engine's
pinned parity test) the released SharpDRO code.

What you must know:

- Groups: int64 ids in ``[0, num_groups)``; any other id is a :class:`GroupIdError` naming it
  (never silently dropped).  On a GPU the check reads one flag back per step.
- Mixed precision: ``precision="bf16"`` (autocast around the closure) or ``"fp16"`` (autocast
  and a dynamic loss scale over both passes: each pass unscaled once, an overflowed step
  skipped whole, q and BatchNorm statistics rolled back).  Do not use a ``GradScaler`` or
  your own ``torch.autocast`` around ``step``; an autocast inside your closure works (the losses
  are taken in float32) but gets no loss scale.
- DistributedDataParallel: pass the DDP-wrapped model and call it in the closure.  Group
  losses and counts are summed over the replicas (every rank holds the same q) and each
  gradient is all-reduced exactly once (``m_sharpness=True``: each replica perturbs with its
  own first-pass gradient, under ``no_sync``).  Every rank must call ``step``.
- Learning-rate schedulers: give them ``base_optimizer`` (this wrapper is not a
  ``torch.optim.Optimizer``).  ``model.train()`` / ``model.eval()`` stay yours.
- Checkpoints: ``state_dict()`` holds q (and the other group statistics), the base optimizer's
  state and the fp16 loss scale; the model's weights are yours to save.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sharpdro.backends.torch.algorithms import SAM as _EngineSAM
from sharpdro.backends.torch.algorithms import GroupDRO as _EngineGroupDRO
from sharpdro.backends.torch.algorithms import SharpDRO as _EngineSharpDRO
from sharpdro.backends.torch.algorithms.base import Algorithm
from sharpdro.backends.torch.algorithms.functional import GroupIdError, check_group_ids
from sharpdro.config import check_value
from sharpdro.data.batches import group_balanced_weights
from sharpdro.errors import ConfigError
from sharpdro.methods.jtt import loss_weights as _jtt_loss_weights
from sharpdro.methods.jtt import upsampled_indices as _jtt_upsampled_indices

__all__ = ["SharpDRO", "SAM", "GroupDROLoss", "group_balanced_sampler", "group_balanced_weights",
           "jtt_upsampled_indices", "jtt_loss_weights", "jtt_sampler", "check_groups", "GroupIdError"]

Closure = Callable[[], torch.Tensor]
# the sampled second pass indexes a batch (x, y) the closure API does not see: the exact pass only
_CLOSURE_ONLY_EXCLUDED = ("second_pass_fraction", "second_pass_sampling", "sampled_bn_stats")


def _allowed(engine: type[Algorithm]) -> list[str]:
    return [k for k in engine.spec.hparams if k not in _CLOSURE_ONLY_EXCLUDED]


def _options(engine: type[Algorithm], owner: str, given: Mapping[str, Any]) -> dict:
    """``given`` checked against the method's own hyperparameters (the ``algorithm.<key>`` fields)."""
    allowed = _allowed(engine)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{owner}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return {k: check_value(f"algorithm.{k}", v) for k, v in given.items()}


def _num_groups(num_groups: Any, owner: str) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise ConfigError(f"{owner}: num_groups must be a positive integer (the number of groups), got {num_groups!r}")
    return int(num_groups)


def _unwrap(model: nn.Module, owner: str) -> tuple[nn.Module, nn.Module | None]:
    """``(module holding the weights, the DDP wrapper or None)``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module, model
    return model, None


def _replicas(ddp: nn.Module | None, m_sharpness: bool):
    """The engine's view of data parallelism for a DDP model (None: one process)."""
    if ddp is None or not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return None
    from sharpdro.backends.torch.distributed import Replicas

    return Replicas(world_size=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(), net=ddp,
                    ddp=ddp, per_replica_perturbation=bool(m_sharpness), _group=ddp.process_group)


def _precision(mode: str, module: nn.Module):
    if mode == "fp32":
        return None
    from sharpdro.backends.torch.amp import Precision

    ref = next(iter(module.parameters()), None)
    return Precision(mode, ref.device if ref is not None else "cpu")


def _build_step(engine: type[Algorithm], module: nn.Module, num_groups: int, hparams: dict) -> Algorithm:
    """The engine's step class ``engine`` around ``module`` (the weights stay the caller's: not in its state)."""
    step = engine(module, 0, num_groups, hparams, 0, register_model=False)
    step.sync_group_check = True
    step.mark_prepared()
    return step


class _ClosureStep:
    """What SharpDRO and SAM share: the engine step object, the closure's forward, the optimizer face."""

    _engine: type[Algorithm] = Algorithm

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, num_groups: int,
                 hparams: dict, precision: str, m_sharpness: bool):
        owner = type(self).__name__
        module, ddp = _unwrap(model, owner)
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise ConfigError(f"{owner}: base_optimizer must be a torch.optim.Optimizer over the model's parameters "
                              f"(e.g. torch.optim.SGD(model.parameters(), lr=0.1)), got {type(base_optimizer).__name__}")
        precision = check_value("train.precision", precision)
        self.model = module
        self.base_optimizer = base_optimizer
        self._step = _build_step(self._engine, module, num_groups, hparams)
        self._step.configure(base_optimizer, amp=_precision(precision, module), replicas=_replicas(ddp, m_sharpness))

    def _forward(self, closure: Closure, size: int | None) -> Callable[[], tuple[None, torch.Tensor]]:
        precision = self._step.precision
        owner = type(self).__name__

        def forward():
            with torch.enable_grad(), (precision() if precision is not None else contextlib.nullcontext()):
                losses = closure()
            if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or not losses.is_floating_point():
                shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
                raise ConfigError(f"{owner}.step: the closure must return the per-sample losses, a 1-D float tensor "
                                  f"(e.g. F.cross_entropy(out, y, reduction='none')), got {shape}")
            if size is not None and losses.numel() != size:
                raise ConfigError(f"{owner}.step: the closure returned {losses.numel()} losses for {size} group ids")
            if losses.dtype in (torch.float16, torch.bfloat16):
                losses = losses.float()
            return None, losses

        return forward

    @property
    def param_groups(self) -> list[dict]:
        """The base optimizer's parameter groups (learning rates)."""
        return self.base_optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The step's state (q, group counts ...), the base optimizer's, and the fp16 loss scale."""
        precision = self._step.precision
        return {"state": {k: v.detach().clone() for k, v in self._step.state_dict().items()},
                "base_optimizer": self.base_optimizer.state_dict(),
                "precision": precision.state_dict() if precision is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"state", "base_optimizer"} - set(state)
        if missing:
            raise ConfigError(f"{type(self).__name__}.load_state_dict: not a state_dict() of this class "
                              f"(missing {', '.join(sorted(missing))})")
        self._step.load_state_dict(state["state"])
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        if self._step.precision is not None and state.get("precision"):
            self._step.precision.load_state_dict(state["precision"])

    def __repr__(self) -> str:
        allowed = _allowed(self._engine)
        opts = ", ".join(f"{k}={v!r}" for k, v in self._step.hparams.items() if k in allowed)
        return f"{type(self).__name__}({opts}, base_optimizer={type(self.base_optimizer).__name__})"


class SharpDRO(_ClosureStep):
    """SharpDRO (Huang et al., CVPR 2023) as an optimizer wrapper: worst-case sharpness over your groups.

    ``SharpDRO(model, base_optimizer, num_groups, rho=None, eta=0.01, **options)``; ``rho=None``
    is the engine's default radius (0.05, or 2.0 with ``adaptive=True``, ASAM's).  Options, with
    the engine's defaults (``algorithm.<key>`` in a config; ``sharpdro config --explain``):

    - ``perturb_on='batch'``: the ascent from the batch mean loss (the released code);
      ``'worst'``: from the q-weighted group loss (the paper's reading);
    - ``add_back_first_grad=True``: the first-pass gradient is added to the second (released code);
    - ``q_absent='zero'``: a group absent from the batch gets loss 0 in the q update (released
      code); ``'skip'``: its q does not move;
    - ``adaptive=False``: ASAM's |w|-scaled perturbation;
    - ``bn_second_pass='freeze'``: BatchNorm running statistics are left as the first pass set
      them (``'update'``: the second pass updates them too);
    - ``gen_adjustment=0.0``: GroupDRO's C / sqrt(n_g) in the q update (needs :meth:`set_group_counts`).

    Keywords: ``precision`` (``fp32``, ``bf16``, ``fp16``) and ``m_sharpness`` (DDP); see the module.

    :meth:`step` returns the first pass's mean loss (detached).  ``q``: the group weights, a
    tensor of shape ``[num_groups]`` on the model's device.
    """

    _engine = _EngineSharpDRO

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, num_groups: int,
                 rho: float | None = None, eta: float = 0.01, *, precision: str = "fp32", m_sharpness: bool = False,
                 **options: Any):
        num_groups = _num_groups(num_groups, "SharpDRO")
        hparams = _options(_EngineSharpDRO, "SharpDRO", {"rho": rho, "eta": eta, **options})
        super().__init__(model, base_optimizer, num_groups, hparams, precision, m_sharpness)

    @property
    def q(self) -> torch.Tensor:
        """The group weights (the live tensor; copy it to keep a value)."""
        return self._step.q

    @property
    def num_groups(self) -> int:
        return self._step.num_groups

    def set_group_counts(self, counts: Sequence[int] | torch.Tensor) -> None:
        """Training-set size of each group (needed by ``gen_adjustment`` > 0)."""
        self._step.set_group_counts(torch.as_tensor(counts))

    def step(self, closure: Closure, groups: torch.Tensor) -> torch.Tensor:
        """One SharpDRO step; ``closure()`` -> per-sample losses [B], ``groups`` int64 [B]."""
        _, per, _ = self._step.step_with(self._forward(closure, groups.numel()), groups)
        return per.detach().mean()


class SAM(_ClosureStep):
    """SAM (Foret et al. 2021), or ASAM with ``adaptive=True``, as an optimizer wrapper.

    ``SAM(model, base_optimizer, rho=None, adaptive=False, bn_second_pass='freeze')``; ``rho=None``:
    0.05, or 2.0 with ``adaptive`` (the engine's defaults).  :meth:`step` takes the same closure
    as :meth:`SharpDRO.step` (per-sample losses) and returns the first pass's mean loss.
    """

    _engine = _EngineSAM

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, rho: float | None = None,
                 adaptive: bool = False, *, precision: str = "fp32", m_sharpness: bool = False, **options: Any):
        hparams = _options(_EngineSAM, "SAM", {"rho": rho, "adaptive": adaptive, **options})
        super().__init__(model, base_optimizer, 1, hparams, precision, m_sharpness)

    def step(self, closure: Closure) -> torch.Tensor:
        """One SAM step; ``closure()`` -> per-sample losses [B]."""
        _, per = self._step.step_with(self._forward(closure, None))
        return per.detach().mean()


class GroupDROLoss(_EngineGroupDRO):
    """GroupDRO's loss (Sagawa et al. 2020) as a module: ``loss = crit(per_sample_losses, groups)``.

    Each call updates q <- q exp(eta L_g) / Z from the batch's detached group mean losses L_g,
    then returns sum_g q_g L_g to backpropagate (the engine's GroupDRO objective, the same
    code).  ``q`` and the group counts are buffers: in ``state_dict()``, moved by ``.to()``.
    Options: ``q_absent`` (``'zero'`` or ``'skip'``) and ``gen_adjustment`` (C / sqrt(n_g),
    with :meth:`set_group_counts`).  Under ``torch.distributed`` (more than one process),
    ``all_replicas=True`` (the default) takes the group losses of the global batch, so every
    rank holds the same q.
    """

    def __init__(self, num_groups: int, eta: float = 0.01, *, all_replicas: bool = True, **options: Any):
        num_groups = _num_groups(num_groups, "GroupDROLoss")
        hparams = _options(_EngineGroupDRO, "GroupDROLoss", {"eta": eta, **options})
        super().__init__(nn.Module(), 0, num_groups, hparams, 0, register_model=False)
        self.sync_group_check = True
        self.mark_prepared()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if all_replicas and distributed and torch.distributed.get_world_size() > 1:
            from sharpdro.backends.torch.distributed import Replicas

            self.replicas = Replicas(world_size=torch.distributed.get_world_size(), rank=torch.distributed.get_rank())

    def forward(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
            raise ConfigError("GroupDROLoss: give the per-sample losses, a 1-D tensor (reduction='none'), "
                              f"got {tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__}")
        self.check_ready(groups)
        return self.group_dro_loss(losses.float() if losses.dtype in (torch.float16, torch.bfloat16) else losses,
                                   groups)[0]

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, eta={self.eta}, q_absent={self.q_absent!r}"


def group_balanced_sampler(groups: Sequence[int] | np.ndarray | torch.Tensor, num_samples: int | None = None,
                           generator: torch.Generator | None = None) -> torch.utils.data.WeightedRandomSampler:
    """group_DRO's weighted sampling for a ``DataLoader(..., sampler=...)``: with replacement, each sample
    drawn with probability proportional to 1 / (size of its group), so every group is equally likely.

    ``groups``: the group id (or any hashable label) of every training sample, in dataset order;
    ``num_samples``: draws per epoch (default: the dataset size).  The same weights as the
    engine's ``data.sampler=group_balanced`` (:func:`group_balanced_weights`).
    """
    groups = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise ConfigError(f"group_balanced_sampler: give one group id per sample (a non-empty 1-D sequence), "
                          f"got shape {groups.shape}")
    weights = torch.as_tensor(group_balanced_weights(groups), dtype=torch.float64)
    return torch.utils.data.WeightedRandomSampler(weights, len(groups) if num_samples is None else int(num_samples),
                                                  replacement=True, generator=generator)


def jtt_upsampled_indices(errors: Sequence[bool] | np.ndarray | torch.Tensor, lambda_up: float) -> np.ndarray:
    """JTT's second-stage epoch: every index once plus ``lambda_up`` extra copies of each error-set index.

    ``errors``: bool per training sample, True where the identification model is wrong
    (``logits.argmax(1) != y``).  The engine's ``jtt_mode=upsample`` epoch (:mod:`sharpdro.methods.jtt`).
    """
    return _jtt_upsampled_indices(_as_bool(errors), lambda_up)


def jtt_loss_weights(errors: Sequence[bool] | np.ndarray | torch.Tensor, lambda_up: float) -> np.ndarray:
    """JTT's ``reweight`` alternative: ``lambda_up`` on the error set, 1 elsewhere (float32, per sample)."""
    return _jtt_loss_weights(_as_bool(errors), lambda_up, "reweight")


def jtt_sampler(errors: Sequence[bool] | np.ndarray | torch.Tensor, lambda_up: float,
                generator: torch.Generator | None = None) -> torch.utils.data.SubsetRandomSampler:
    """A shuffling sampler over :func:`jtt_upsampled_indices` (N + lambda_up |E| draws per epoch)."""
    return torch.utils.data.SubsetRandomSampler(jtt_upsampled_indices(errors, lambda_up).tolist(), generator=generator)


def _as_bool(errors) -> np.ndarray:
    errors = errors.cpu().numpy() if isinstance(errors, torch.Tensor) else np.asarray(errors)
    if errors.ndim != 1 or (errors.dtype != bool and not np.isin(errors, (0, 1)).all()):
        raise ConfigError("JTT: errors must be one bool per training sample (True: misclassified by the "
                          "identification model)")
    return errors.astype(bool)


def check_groups(groups: torch.Tensor, num_groups: int) -> None:
    """The group-id check every step here runs (:class:`GroupIdError` naming the id and ``num_groups``)."""
    check_group_ids(groups, num_groups, sync=True)

