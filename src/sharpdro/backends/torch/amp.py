"""Mixed precision for every algorithm, the two-pass SAM family included: :class:`Precision`.

One object owns the autocast context and, for fp16, the loss scale.  The algorithms
call it at fixed points of a step (see ``Algorithm._begin_step`` and friends in
``algorithms/base.py``), so no method carries its own AMP logic:

- ``precision()``                 the autocast context of a forward pass (``fp32``: none);
- ``precision.backward(loss)``    ``(loss * scale).backward()`` (fp16) or ``loss.backward()``;
- ``precision.unscale_(params)``  divides the gradients of the pass that just ran by the
  scale, once, and records whether any of them is inf/NaN;
- ``precision.step(optimizer)``   unscales a pass that is still scaled, runs the optimizer
  step unless a pass of this step overflowed, and updates the scale.

fp16 (a dynamic loss scale, as ``torch.amp.GradScaler``: start 2**16, x2 after 2000 clean
steps, x0.5 after an overflow; the scale stays a power of two, so scaling is exact):

- SAM-family steps run two scaled backward passes.  The first-pass gradient is unscaled
  before the perturbation is computed (eps comes from the true gradient), the second pass
  is unscaled on its own before the optimizer step: one unscale per pass.  When the first
  gradient is kept and added to the second (SharpDRO's ``add_back_first_grad``), it is
  moved aside before the second backward and added after the second pass is unscaled
  (``Algorithm._second_backward``), so the sum is never half scaled.
- Overflow policy: if either pass produced an inf/NaN gradient, the step is skipped
  consistently: the weights are restored (as in every SAM step), the optimizer does not
  step (its momentum is untouched), the algorithm's step state (group weights ``q``, the
  agnostic score memory) and the BatchNorm running statistics are put back as they were
  before the step, and the scale is halved.  A skipped step changes nothing but the scale.
- No host synchronisation: the inf check, the scale update and the skip are tensor ops;
  the skip needs an optimizer that takes ``found_inf`` (PyTorch's fused SGD, which the
  torch session builds for fp16).  Any other optimizer is stepped after one host read of
  the overflow flag (as ``torch.amp.GradScaler`` does).

bf16 needs no scale (its exponent range is fp32's): autocast only.

``auto`` (:func:`resolve_precision`) is bf16 where the device has fast bf16 matrix kernels (a CUDA
device with native bf16; a CPU whose oneDNN can use AMX-BF16 or AVX512-BF16) and fp32 elsewhere.
A CPU without those instructions runs bf16 by converting to fp32 around every kernel: slower than
fp32 (3.3x for a cnn7 step on an AVX512 Xeon without them), so it is never chosen there.  fp16 is
never chosen automatically.
"""
from __future__ import annotations

import contextlib
import functools
from typing import ContextManager, Iterable

import torch

from sharpdro.config import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_isa() -> dict:
    """What this CPU offers bf16 (recorded in every run): PyTorch's kernel capability and the bf16 instructions.

    ``amx_bf16`` / ``avx512_bf16`` come from the kernel's flags (``/proc/cpuinfo``) where it can be read,
    else from PyTorch's own cpuinfo probe (``amx_tile`` implies AMX-BF16 on every CPU that has it).
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    probe = getattr(torch, "cpu", None)
    amx = "amx_bf16" in flags if flags else bool(getattr(probe, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = "avx512_bf16" in flags if flags else bool(
        getattr(probe, "_is_avx512_bf16_supported", lambda: False)())
    return {"capability": torch.backends.cpu.get_cpu_capability(), "amx_bf16": amx, "avx512_bf16": avx512_bf16}


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matrix kernels natively (faster than fp32), not by emulation."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        isa = cpu_isa()
        return bool(isa["amx_bf16"] or isa["avx512_bf16"])
    return False


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """``train.precision`` as it will run: ``auto`` becomes bf16 on fast-bf16 hardware, else fp32."""
    if requested != "auto":
        return requested
    return "bf16" if fast_bf16(device) else "fp32"


def hardware_record(device: torch.device | str) -> dict:
    """The hardware facts ``auto`` precision is resolved from (``summary.json``'s ``hardware``)."""
    device = torch.device(device)
    out = {"device": str(device), "fast_bf16": fast_bf16(device), "torch": torch.__version__}
    if device.type == "cuda" and torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(device)
    else:
        out["cpu_isa"] = cpu_isa()
    return out


class Precision:
    """Autocast + (fp16) dynamic loss scaling for one training loop.  Callable: ``with precision(): ...``."""

    def __init__(self, mode: str = "fp32", device: torch.device | str = "cpu", *, autocast: bool = True,
                 init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        if mode not in PRECISIONS:
            raise ConfigError(f"train.precision={mode!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
        self.mode = mode
        self.device = torch.device(device)
        self.dtype = _DTYPES.get(mode, torch.float32)
        # ``autocast=False`` keeps fp32 forwards but still scales (tests of the scaler logic alone).
        self.autocast_enabled = mode != "fp32" and autocast
        self.scaling = mode == "fp16"
        self._options = dict(autocast=autocast, init_scale=init_scale, growth_factor=growth_factor,
                             backoff_factor=backoff_factor, growth_interval=growth_interval)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        if self.scaling:
            self.scale = torch.full((), float(init_scale), dtype=torch.float32, device=self.device)
            self.growth_tracker = torch.zeros((), dtype=torch.int32, device=self.device)
            self.found_inf = torch.zeros((), dtype=torch.float32, device=self.device)
        self._pending = False  # gradients of the last backward are still scaled

    # ------------------------------------------------------------------ forward
    def __call__(self) -> ContextManager:
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def fresh(self) -> "Precision":
        """A new helper of the same kind with its own scale (for a pre-stage's reference model)."""
        return Precision(self.mode, self.device, **self._options)

    # ------------------------------------------------------------------ backward
    def begin(self) -> None:
        """Start a step: clear the overflow flag."""
        if self.scaling:
            self.found_inf.zero_()
        self._pending = False

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaling:
            (loss * self.scale.to(loss.dtype)).backward()
            self._pending = True
        else:
            loss.backward()

    def unscale_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Divide the current gradients of ``params`` by the scale (once per pass); record inf/NaN."""
        if not self.scaling:
            return
        groups: dict = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        inv = self.scale.double().reciprocal().float()
        for (device, _), grads in groups.items():
            found = torch.zeros((), dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv.to(device))
            self.found_inf.add_(found.to(self.found_inf.device))
        self._pending = False

    @property
    def pending(self) -> bool:
        return self._pending

    def overflowed(self) -> torch.Tensor | None:
        """bool tensor: did a pass of this step overflow (None when not scaling)."""
        return self.found_inf > 0 if self.scaling else None

    # ------------------------------------------------------------------ step
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step (skipped on overflow), then the scale update."""
        if not self.scaling:
            optimizer.step()
            return
        if self._pending:
            self.unscale_(p for group in optimizer.param_groups for p in group["params"])
        found = self.found_inf.clamp(max=1.0)
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            _init_momentum_buffers(optimizer)
            optimizer.found_inf = found
            optimizer.grad_scale = None  # already unscaled
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
                del optimizer.grad_scale
        elif not bool(found):  # one host read: this optimizer cannot skip on the device
            optimizer.step()
        torch._amp_update_scale_(self.scale, self.growth_tracker, found, self.growth_factor,
                                 self.backoff_factor, self.growth_interval)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        if not self.scaling:
            return {"mode": self.mode}
        return {"mode": self.mode, "scale": self.scale.detach().cpu().clone(),
                "growth_tracker": self.growth_tracker.detach().cpu().clone()}

    def load_state_dict(self, state: dict | None) -> None:
        if not state or not self.scaling or "scale" not in state:
            return
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])

    def __repr__(self) -> str:
        return f"Precision({self.mode!r}, device={str(self.device)!r})"


def _init_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Zero momentum buffers before a fused SGD's first step.

    Fused SGD allocates its buffers uninitialised on the first step and fills them in the
    kernel, which a skipped (overflowed) first step never runs; a zero buffer gives the same
    first update (buf = 0.9 * 0 + g = g) and survives a skip.
    """
    if not isinstance(optimizer, torch.optim.SGD) or optimizer.state:
        return
    for group in optimizer.param_groups:
        if group["momentum"] != 0:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def as_precision(amp, device: torch.device | str = "cpu") -> Precision | None:
    """``configure``'s ``amp`` argument: a :class:`Precision`, a zero-argument autocast factory, or None."""
    if amp is None or isinstance(amp, Precision):
        return amp
    if callable(amp):
        return _FactoryPrecision(amp, device)
    raise TypeError(f"amp must be a Precision or a zero-argument autocast factory, got {type(amp).__name__}")


class _FactoryPrecision(Precision):
    """A bare autocast factory (the older ``amp=`` argument): autocast only, no scaling."""

    def __init__(self, factory, device):
        super().__init__("fp32", device)
        self._factory = factory
        self.autocast_enabled = True

    def __call__(self) -> ContextManager:
        return self._factory()

    def fresh(self) -> "Precision":
        return _FactoryPrecision(self._factory, self.device)
