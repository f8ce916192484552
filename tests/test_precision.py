"""Mixed precision on the CPU: bf16 / fp16 steps of every method, the fp16 loss scale, overflow skips.

Tolerances (3 steps of a width-8 BatchNorm CNN, lr 0.1, from one initialisation):
- bf16 autocast vs fp32: ||w_bf16 - w_fp32|| <= 0.15 ||w_fp32 - w_0|| (bf16 keeps 8 bits of
  mantissa; measured 0.04-0.07), |q_bf16 - q_fp32| <= 1e-4;
- fp16 autocast + loss scale vs fp32: <= 0.06 (measured 0.01-0.03), |dq| <= 1e-4;
- fp16 loss scaling alone (autocast off, fp32 forwards): the scale is a power of two, so the
  step equals the fp32 step to 1e-6 relative.  This holds only if the first-pass gradient
  is unscaled before the perturbation, each pass is unscaled once, and SharpDRO's add-back
  sums unscaled gradients.
"""
from __future__ import annotations

import copy

import pytest
import torch

from sharpdro.backends.torch.algorithms import build_algorithm
from sharpdro.backends.torch.algorithms.base import _bn_buffers
from sharpdro.backends.torch.amp import Precision
from sharpdro.backends.torch.models import build_model

N, SIZE, CLASSES, GROUPS = 24, 16, 10, 6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("cnn", CLASSES, SIZE, width=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    groups = torch.arange(N) % GROUPS
    return model, (x, y, groups, torch.arange(N))


def _make(setup, name, mode, hp=None, **precision_kw):
    model, _ = setup
    algo = build_algorithm(name, copy.deepcopy(model).train(), CLASSES, GROUPS, hp or {}, N)
    if name == "jtt":
        algo.set_error_set(torch.arange(N) % 4 == 0)
    opt = torch.optim.SGD(algo.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=mode == "fp16")
    algo.configure(opt, Precision(mode, "cpu", **precision_kw))
    algo.mark_prepared()
    return algo


def _run(algo, batch, steps=3):
    x, y, g, idx = batch
    for _ in range(steps):
        stats = algo.update(x, y, g if algo.uses_groups else None, idx)
    return stats


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", ["erm", "sam", "groupdro", "sharpdro", "sharpdro_agnostic", "jtt"])
@pytest.mark.parametrize("mode,tol", [("bf16", 0.15), ("fp16", 0.06)])
def test_mixed_precision_step_is_finite_and_close_to_fp32(setup, name, mode, tol):
    model, batch = setup
    w0 = _flat(model)
    # agnostic: 20% of this 24-image batch (the default 5% selects 1-2 images whose weight ~0.5 each overflows
    # fp16's initial loss scale, so the first fp16 step is skipped by design and the comparison is moot)
    hp = {"fraction": 0.2} if name == "sharpdro_agnostic" else None
    ref = _make(setup, name, "fp32", hp)
    _run(ref, batch)
    algo = _make(setup, name, mode, hp)
    stats = _run(algo, batch)
    w, wf = _flat(algo.model), _flat(ref.model)
    assert torch.isfinite(w).all() and torch.isfinite(stats["loss"])
    assert float((w - wf).norm() / (wf - w0).norm()) <= tol
    if hasattr(ref, "q"):
        assert float((algo.q - ref.q).abs().max()) <= 1e-4
        assert not torch.equal(algo.q, torch.full_like(algo.q, 1 / GROUPS))
    if mode == "fp16":
        assert float(algo.precision.scale) == 2.0 ** 16  # no overflow at the initial scale


@pytest.mark.parametrize("name,hp", [
    ("sam", {}), ("sam", {"adaptive": True}), ("sharpdro", {}), ("sharpdro", {"add_back_first_grad": False}),
    ("sharpdro", {"perturb_on": "worst"}), ("sharpdro_agnostic", {"second_pass_selected_only": True}),
    ("groupdro", {}), ("erm", {}),
])
def test_loss_scaling_alone_equals_fp32(setup, name, hp):
    """fp16 scaling with fp32 forwards: two scaled backward passes, one unscale each == the fp32 step."""
    _, batch = setup
    ref = _make(setup, name, "fp32", hp)
    _run(ref, batch)
    algo = _make(setup, name, "fp16", hp, autocast=False)
    _run(algo, batch)
    wf = _flat(ref.model)
    assert float((_flat(algo.model) - wf).norm() / wf.norm()) <= 1e-6
    if hasattr(ref, "q"):
        torch.testing.assert_close(algo.q, ref.q, atol=1e-7, rtol=0)


def _state(algo):
    opt = algo.optimizer
    return {"w": _flat(algo.model).clone(),
            "mom": [opt.state[p]["momentum_buffer"].clone() for p in algo.model.parameters() if p in opt.state],
            "bn": [b.clone() for b in _bn_buffers(algo.model)],
            "q": algo.q.clone() if hasattr(algo, "q") else None}


def _assert_unchanged(before, algo):
    after = _state(algo)
    assert torch.equal(before["w"], after["w"])
    assert len(before["mom"]) == len(after["mom"])
    assert all(torch.equal(a, b) for a, b in zip(before["mom"], after["mom"]))
    assert all(torch.equal(a, b) for a, b in zip(before["bn"], after["bn"]))
    if before["q"] is not None:
        assert torch.equal(before["q"], after["q"])


class _Poison:
    """Forward hook: the ``which``-th forward call (1-based) of every step returns inf logits."""

    def __init__(self, which):
        self.which, self.calls = which, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.which:
            return output * float("inf")
        return output


@pytest.mark.parametrize("name,which", [("sharpdro", 1), ("sharpdro", 2), ("sam", 2), ("groupdro", 1),
                                        ("sharpdro_agnostic", 2)])
def test_overflowed_fp16_step_is_skipped_and_changes_nothing_but_the_scale(setup, name, which):
    """Overflow in the first or only the second pass: w, momentum, q and BN statistics stay; the scale halves."""
    _, batch = setup
    algo = _make(setup, name, "fp16", {"bn_second_pass": "update"} if name != "groupdro" else None)
    _run(algo, batch, steps=1)  # a normal step first: momentum buffers exist
    before, scale = _state(algo), float(algo.precision.scale)
    poison = _Poison(which)
    handle = algo.model.register_forward_hook(poison)
    try:
        _run(algo, batch, steps=1)
    finally:
        handle.remove()
    assert poison.calls >= which
    _assert_unchanged(before, algo)
    assert float(algo.precision.scale) == scale / 2
    _run(algo, batch, steps=1)  # and the next clean step moves again
    assert not torch.equal(before["w"], _flat(algo.model))
    assert torch.isfinite(_flat(algo.model)).all()


def test_first_fp16_step_overflow_keeps_fused_momentum_clean(setup):
    """A skipped very first step (no momentum yet) must not leave uninitialised momentum buffers."""
    _, batch = setup
    algo = _make(setup, "sharpdro", "fp16", init_scale=2.0 ** 120)  # the scaled backward overflows fp16
    w0 = _flat(algo.model).clone()
    _run(algo, batch, steps=1)
    assert torch.equal(w0, _flat(algo.model))
    assert float(algo.precision.scale) == 2.0 ** 119
    for p in algo.model.parameters():
        assert torch.equal(algo.optimizer.state[p]["momentum_buffer"], torch.zeros_like(p))
    torch.testing.assert_close(algo.q, torch.full_like(algo.q, 1 / GROUPS))


def test_fp16_step_makes_no_host_sync_with_the_fused_optimizer(setup):
    from sharpdro.backends.torch.bench import count_host_syncs

    _, batch = setup
    algo = _make(setup, "sharpdro", "fp16")
    _run(algo, batch, steps=1)
    with count_host_syncs() as counts:
        _run(algo, batch, steps=1)
    assert counts == {}


def test_session_trains_in_bf16_and_fp16_and_checkpoints_the_scale(tmp_path):
    from sharpdro.config import load_config
    from sharpdro.data.splits import build_splits
    from sharpdro.engine import train

    base = ["data.train_per_class=30", "data.val_per_class=3", "data.test_per_class=5", "model.width=8",
            "train.epochs=1", "train.batch_size=30", "train.progress=false", "train.threads=1",
            "algorithm.name=sharpdro", "train.channels_last=true"]
    splits = build_splits(load_config("quickstart", base), progress=False)
    for mode in ("bf16", "fp16"):
        summary = train(load_config("quickstart", [*base, f"train.precision={mode}"]), out_dir=tmp_path / mode,
                        splits=splits)
        assert 0.0 <= summary["test_average"] <= 1.0
    state = torch.load(tmp_path / "fp16" / "checkpoints" / "last.pt", weights_only=False)
    assert state["precision"]["mode"] == "fp16" and float(state["precision"]["scale"]) > 0


def test_compile_option_constructs_and_failures_are_clear(monkeypatch):
    from sharpdro.backends.torch.session import TorchSession
    from sharpdro.config import load_config
    from sharpdro.errors import TrainingError

    cfg = load_config("quickstart", ["model.width=8", "train.compile=true", "train.progress=false",
                                     "algorithm.name=sam", "train.device=cpu"])
    real = torch.compile

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", lambda m: real(m, backend=failing_backend))
    session = TorchSession(cfg, None, norm=([0.5] * 3, [0.25] * 3), num_classes=10, image_shape=(8, 8, 3),
                           num_groups=6, train_size=16)
    assert session.algorithm.net is not session.algorithm.model  # the compiled wrapper
    assert "._orig_mod" not in "".join(session.algorithm.state_dict())  # checkpoints hold the plain model
    import numpy as np

    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 16), np.zeros(16, np.int64),
             np.arange(16))
    session.algorithm.mark_prepared()
    with pytest.raises(TrainingError, match="train.compile=false"):
        session.train_epoch(0, [batch], 0.01)
    torch._dynamo.reset()
