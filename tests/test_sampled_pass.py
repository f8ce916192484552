"""The sampled second pass (``algorithm.second_pass_fraction``): exactness at f = 1, unbiasedness, resume, precision.

The unbiasedness tests hold the weights fixed (lr 0) and repeat the same step many times
with fresh draws; the mean of the applied gradients must equal a hand-written float64
reference of the full second pass (BatchNorm normalising with the first pass's
full-batch statistics, written out here with ``F.batch_norm``) within a few standard
errors, and variants that are biased by construction must fail the same check.
"""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpdro.backends.torch.algorithms import build_algorithm
from sharpdro.backends.torch.algorithms.sampling import draw_indices
from sharpdro.backends.torch.amp import Precision
from sharpdro.backends.torch.models import build_model
from sharpdro.errors import ConfigError
from sharpdro.methods.sampling import draw_numpy, sample_count, step_seed

C, G, B = 3, 4, 16
RHO, ETA = 0.5, 0.3

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(16, C)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def tiny(seed=0):
    torch.manual_seed(seed)
    return TinyNet().double().train()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    # a rare group (3: one sample), an empty one (2), two common ones
    groups = torch.tensor([0, 1] * 7 + [0, 3])
    return x, y, groups, torch.arange(B)


def make(name, model, hp=None, lr=0.1, mode=None):
    algo = build_algorithm(name, model, C, G, hp or {}, B)
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
                   Precision(mode, "cpu") if mode else None)
    return algo.train()


def _flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- hand reference
def _net(ws, x, stats=None):
    """TinyNet with weights ``ws``; BatchNorm with the batch's statistics (returned) or the given ones."""
    cw, cb, bw, bb, fw, fb = ws
    h = F.conv2d(x, cw, cb, padding=1)
    if stats is None:
        var, mean = torch.var_mean(h.detach(), dim=(0, 2, 3), correction=0)
        stats = (mean, var)
        h = F.batch_norm(h, None, None, bw, bb, True, 0.0, 1e-5)
    else:
        h = F.batch_norm(h, stats[0], stats[1], bw, bb, False, 0.0, 1e-5)
    return F.linear(F.avg_pool2d(torch.relu(h), 4).flatten(1), fw, fb), stats


def hand_grad(model, x, y, groups, name="sharpdro", uniform_weights=False):
    """The applied gradient of the full step whose second pass normalises with the first pass's statistics.

    sharpdro: grad mean l(w) + grad_{w+eps} sum_i a_i l_i(w+eps), a_i = q'_g / n_g;
    sam:      grad_{w+eps} mean_i l_i(w+eps).
    """
    ws = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    logits, stats = _net(ws, x)
    per = F.cross_entropy(logits, y, reduction="none")
    g1 = torch.autograd.grad(per.mean(), ws)
    norm = torch.sqrt(sum((g ** 2).sum() for g in g1))
    w_adv = [(w + RHO * g / (norm + 1e-12)).detach().requires_grad_(True) for w, g in zip(ws, g1)]
    per_adv = F.cross_entropy(_net(w_adv, x, stats)[0], y, reduction="none")
    if name == "sam":
        return torch.cat([g.flatten() for g in torch.autograd.grad(per_adv.mean(), w_adv)])
    n = torch.stack([(groups == k).sum() for k in range(G)]).double()
    L = torch.stack([per[groups == k].mean() if n[k] > 0 else per.sum() * 0 for k in range(G)]).detach()
    q = torch.full((G,), 1.0 / G, dtype=torch.float64) * torch.exp(ETA * L)
    q = q / q.sum()
    a = (q / n.clamp(min=1))[groups]
    if uniform_weights:  # what uniform sampling without the weights estimates: (A / B) sum_i grad l_i
        a = torch.full_like(a, float(a.sum()) / B)
    g2 = torch.autograd.grad((a * per_adv).sum(), w_adv)
    return torch.cat([(u + v).flatten() for u, v in zip(g1, g2)])


def draws_of_applied_gradient(name, hp, n_draws, draw_fn=None):
    """The applied gradient of ``n_draws`` repetitions of the same step (lr 0, q reset), float64.

    BatchNorm with the first pass's statistics unless ``hp`` says otherwise (the unbiased mode)."""
    hp = {"sampled_bn_stats": "first_pass", **hp}
    model = tiny()
    algo = make(name, copy.deepcopy(model), {"rho": RHO, "eta": ETA, **hp} if name == "sharpdro" else
                {"rho": RHO, **hp}, lr=0.0)
    algo.draw_fn = draw_fn
    x, y, g, idx = batch()
    out = []
    for _ in range(n_draws):
        if hasattr(algo, "q"):
            algo.q.fill_(1.0 / G)
        algo.update(x, y, g if algo.uses_groups else None, idx)
        out.append(_flat_grad(algo.model))
    return model, torch.stack(out), (x, y, g)


def max_z(samples: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |mean - ref| / standard error over the coordinates (a coordinate without variance: exact or inf)."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    diff = (mean - ref).abs()
    exact = se <= 1e-12 * (1 + ref.abs())
    z = torch.where(exact, torch.where(diff <= 1e-9 * (1 + ref.abs()), 0.0, float("inf")), diff / se)
    return float(z.max())


# ----------------------------------------------------------------------------- f = 1: the exact step
@pytest.mark.parametrize("name", ["sharpdro", "sam"])
def test_full_fraction_is_the_exact_step_bit_for_bit(name):
    x, y, g, idx = batch()
    a = make(name, tiny(), {})
    b = make(name, tiny(), {"second_pass_fraction": 1.0, "second_pass_sampling": "multinomial",
                            "sampled_bn_stats": "first_pass"})
    assert not b.sampled and "sample_draws" not in b.state_dict()  # the checkpoint layout of before
    for _ in range(3):
        a.update(x, y, g if a.uses_groups else None, idx)
        b.update(x, y, g if b.uses_groups else None, idx)
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(u, v), k


def test_fraction_must_lie_in_the_unit_interval():
    from sharpdro.config import load_config

    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="second_pass_fraction"):
            load_config(None, ["algorithm.name=sharpdro", f"algorithm.second_pass_fraction={bad}"])
    assert sample_count(0.25, 128) == 32 and sample_count(0.1, 30) == 3 and sample_count(1e-6, 8) == 1


# ----------------------------------------------------------------------------- the draws
@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_draw_frequencies_are_proportional_to_the_weights(scheme):
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.5, 4.0, 0.0, 2.0], dtype=torch.float64)
    gen = torch.Generator()
    m, reps = 4, 4000
    counts = torch.zeros(len(w), dtype=torch.float64)
    for t in range(reps):
        gen.manual_seed(step_seed(7, 0, t))
        counts += torch.bincount(draw_indices(w, m, gen, scheme), minlength=len(w)).double()
    expected = m * reps * w / w.sum()
    assert counts[w == 0].sum() == 0
    se = torch.sqrt(expected.clamp(min=1.0))
    assert float(((counts - expected).abs() / se).max()) < 5
    # the NumPy draw (MindSpore's) has the same law
    rng = np.random.default_rng(0)
    counts_np = sum(np.bincount(draw_numpy(w.numpy(), m, rng, scheme), minlength=len(w)) for _ in range(reps))
    assert np.abs((counts_np - expected.numpy()) / se.numpy()).max() < 5


def test_systematic_draw_is_stratified():
    """A weight class of mass Q gets floor or ceil of m Q / A draws, never a random number."""
    w = torch.tensor([0.1] * 12 + [0.4] * 2 + [0.6] * 2, dtype=torch.float64)  # masses 1.2, 0.8, 1.2 of 3.2
    gen = torch.Generator()
    for t in range(200):
        gen.manual_seed(t)
        idx = draw_indices(w, 8, gen, "systematic")
        n_small = int((idx < 12).sum())
        assert n_small in (math.floor(8 * 1.2 / 3.2), math.ceil(8 * 1.2 / 3.2))


# ----------------------------------------------------------------------------- unbiasedness
@pytest.mark.parametrize("scheme,n_draws", [("systematic", 300), ("multinomial", 400)])
def test_sampled_sharpdro_gradient_is_unbiased(scheme, n_draws):
    model, grads, (x, y, g) = draws_of_applied_gradient(
        "sharpdro", {"second_pass_fraction": 0.25, "second_pass_sampling": scheme}, n_draws)
    ref = hand_grad(model, x, y, g)
    assert max_z(grads, ref) < 5.0
    # a single draw is noisy: the test is not trivially passed by a constant
    assert float((grads[0] - ref).norm()) > 1e-3 * float(ref.norm())


def test_uniform_sampling_without_the_weights_is_biased():
    """Drawing uniformly and weighting each draw A / m estimates (A / B) sum_i grad l_i: the test sees it."""
    model, grads, (x, y, g) = draws_of_applied_gradient(
        "sharpdro", {"second_pass_fraction": 0.25},
        400, draw_fn=lambda w, m: torch.randint(0, w.numel(), (m,)))
    assert max_z(grads, hand_grad(model, x, y, g)) > 10.0
    # and it is unbiased for what it does estimate: the check itself is sound
    assert max_z(grads, hand_grad(model, x, y, g, uniform_weights=True)) < 5.0


def test_subsample_batchnorm_statistics_bias_the_step():
    """The default (``sample``) is biased with BatchNorm: the mean of its draws misses the reference."""
    model, grads, (x, y, g) = draws_of_applied_gradient(
        "sharpdro", {"second_pass_fraction": 0.25, "sampled_bn_stats": "sample"}, 400)
    assert max_z(grads, hand_grad(model, x, y, g)) > 10.0


def test_sampled_sam_gradient_is_unbiased():
    model, grads, (x, y, _) = draws_of_applied_gradient("sam", {"second_pass_fraction": 0.25}, 300)
    assert max_z(grads, hand_grad(model, x, y, None, name="sam")) < 5.0


# ----------------------------------------------------------------------------- resume
def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["sharpdro", "sam"])
def test_resume_equals_an_uninterrupted_run(name):
    hp = {"second_pass_fraction": 0.25}
    batches = [batch(seed=s) for s in range(4)]

    def run(algo, bs):
        for x, y, g, idx in bs:
            algo.update(x, y, g if algo.uses_groups else None, idx)

    def build(run_seed, model_seed=0):
        model = tiny(model_seed)
        torch.manual_seed(run_seed)  # the run's seed, set by the session before the algorithm is built
        return make(name, model, hp)

    full, first = build(11), build(11)
    run(full, batches)
    run(first, batches[:2])
    algo_state, opt_state = _roundtrip(first.state_dict()), _roundtrip(first.optimizer.state_dict())
    assert int(algo_state["sample_draws"]) == 2
    resumed = build(999, model_seed=5)  # another seed: the draws must come from the checkpoint
    resumed.load_state_dict(algo_state)
    resumed.optimizer.load_state_dict(opt_state)
    run(resumed, batches[2:])
    for (k, u), v in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(u, v), k
    # and the draws did vary from step to step
    other = build(999)
    run(other, batches)
    assert any(not torch.equal(u, v) for u, v in zip(full.model.parameters(), other.model.parameters()))


# ----------------------------------------------------------------------------- precision
@pytest.fixture(scope="module")
def cnn_setup():
    torch.manual_seed(0)
    model = build_model("cnn", 10, 16, width=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (24,), generator=g)
    return model, (x, y, torch.arange(24) % 6, torch.arange(24))


def _cnn_algo(setup, name, mode, hp, **kw):
    model, _ = setup
    algo = build_algorithm(name, copy.deepcopy(model).train(), 10, 6, hp, 24)
    opt = torch.optim.SGD(algo.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    algo.configure(opt, Precision(mode, "cpu", **kw))
    # the same draws in every precision (q differs in its last bits between them)
    algo.draw_fn = lambda w, m, gen=torch.Generator().manual_seed(3): torch.randint(0, w.numel(), (m,),
                                                                                   generator=gen)
    return algo.mark_prepared() or algo


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("name", ["sharpdro", "sam"])
@pytest.mark.parametrize("bn", ["sample", "first_pass"])
@pytest.mark.parametrize("mode,tol", [("bf16", 0.15), ("fp16", 0.06)])
def test_sampled_mixed_precision_close_to_fp32(cnn_setup, name, bn, mode, tol):
    model, (x, y, g, idx) = cnn_setup
    hp = {"second_pass_fraction": 0.25, "sampled_bn_stats": bn}
    w0 = _flat(model)
    ref, algo = _cnn_algo(cnn_setup, name, "fp32", hp), _cnn_algo(cnn_setup, name, mode, hp)
    for _ in range(3):
        ref.update(x, y, g if ref.uses_groups else None, idx)
        stats = algo.update(x, y, g if algo.uses_groups else None, idx)
    w, wf = _flat(algo.model), _flat(ref.model)
    assert torch.isfinite(w).all() and torch.isfinite(stats["loss"])
    assert float((w - wf).norm() / (wf - w0).norm()) <= tol
    if name == "sharpdro":
        assert float((algo.q - ref.q).abs().max()) <= 1e-4


@pytest.mark.parametrize("name", ["sharpdro", "sam"])
@pytest.mark.parametrize("bn", ["sample", "first_pass"])
def test_sampled_loss_scaling_alone_equals_fp32(cnn_setup, name, bn):
    _, (x, y, g, idx) = cnn_setup
    hp = {"second_pass_fraction": 0.25, "sampled_bn_stats": bn}
    ref, algo = _cnn_algo(cnn_setup, name, "fp32", hp), _cnn_algo(cnn_setup, name, "fp16", hp, autocast=False)
    for _ in range(3):
        ref.update(x, y, g if ref.uses_groups else None, idx)
        algo.update(x, y, g if algo.uses_groups else None, idx)
    wf = _flat(ref.model)
    assert float((_flat(algo.model) - wf).norm() / wf.norm()) <= 1e-6


def test_sampled_pass_leaves_batchnorm_running_statistics_as_the_first_pass_left_them():
    x, y, g, idx = batch()
    model = tiny()
    algo = make("sharpdro", copy.deepcopy(model), {"second_pass_fraction": 0.5, "bn_second_pass": "update",
                                                   "sampled_bn_stats": "first_pass"}, lr=0.0)
    algo.update(x, y, g, idx)
    ref = copy.deepcopy(model)
    ref(x)  # one training forward of the full batch
    for a, b in zip(algo.model.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert "forward" not in vars(algo.model.bn)  # the frozen forward is removed after the pass


def test_compiled_forward_is_refused_with_first_pass_statistics():
    from sharpdro.backends.torch.distributed import Replicas

    algo = build_algorithm("sharpdro", tiny(), C, G, {"second_pass_fraction": 0.5, "sampled_bn_stats": "first_pass"},
                           B)
    with pytest.raises(ConfigError, match="train.compile"):
        algo.configure(torch.optim.SGD(algo.model.parameters(), lr=0.1), None,
                       Replicas(net=torch.compile(algo.model)))
