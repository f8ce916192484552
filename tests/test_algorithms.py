"""Algorithms against their definitions, computed independently (float64, a tiny BatchNorm CNN).

The hand-written references below use ``torch.func.functional_call`` with explicit
weight lists and their own group loops and SGD arithmetic; they share no code with
the algorithms beyond ``F.cross_entropy``.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sharpdro.backends.torch.algorithms import ALGORITHMS, PrepareContext, build_algorithm, group_mean
from sharpdro.backends.torch.algorithms.agnostic import ood_score
from sharpdro.backends.torch.algorithms.base import eg_update_
from sharpdro.backends.torch.algorithms.eiil import infer_environments, irm_penalty, irm_scale_grads
from sharpdro.backends.torch.models import build_model
from sharpdro.config import ALGORITHMS as CONFIG_ALGORITHMS, ConfigError

LR, MOM, WD = 0.1, 0.9, 5e-4
C, G, B = 3, 4, 12
ATOL = 1e-9  # float64: the references agree to ~1e-15; the task asks for 1e-6


class TinyNet(nn.Module):
    def __init__(self, bn: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(16, C)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def tiny(bn=True, seed=0):
    torch.manual_seed(seed)
    return TinyNet(bn).double().train()


def data(n=B, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    groups = torch.tensor([0, 1, 3] * (n // 3) + [0] * (n % 3))  # group 2 is empty
    return x, y, groups, torch.arange(n)


def make(name, model, hp=None, num_groups=G, train_size=B, momentum=MOM, wd=WD):
    algo = build_algorithm(name, model, C, num_groups, hp or {}, train_size)
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=LR, momentum=momentum, weight_decay=wd))
    return algo.train()


# ----------------------------------------------------------------------------- hand references
class HandSGD:
    """SGD with momentum and weight decay, written out (PyTorch semantics, no dampening)."""

    def __init__(self, lr=LR, momentum=MOM, wd=WD):
        self.lr, self.momentum, self.wd, self.buf = lr, momentum, wd, None

    def step(self, ws, grads):
        d = [gr + self.wd * w for w, gr in zip(ws, grads)]
        self.buf = d if self.buf is None else [self.momentum * b + di for b, di in zip(self.buf, d)]
        return [w - self.lr * b for w, b in zip(ws, self.buf)]


class HandState:
    """Weights as a plain list + buffers as a dict, stepped by the reference functions."""

    def __init__(self, model):
        self.model = copy.deepcopy(model).train()
        self.names = [n for n, _ in model.named_parameters()]
        self.ws = [p.detach().clone() for p in model.parameters()]
        self.bufs = {n: b.detach().clone() for n, b in model.named_buffers()}

    def forward(self, ws, bufs, x):  # train mode: BatchNorm updates ``bufs`` in place
        return functional_call(self.model, {**dict(zip(self.names, ws)), **bufs}, (x,))

    def check(self, algo_model):
        for n, w, p in zip(self.names, self.ws, algo_model.parameters()):
            assert torch.allclose(w, p.detach(), atol=ATOL, rtol=0), n
        for n, b in algo_model.named_buffers():
            assert torch.allclose(self.bufs[n].double(), b.double(), atol=ATOL, rtol=0), n


def hand_eps(ws, grads, rho, adaptive):
    if adaptive:
        norm = torch.sqrt(sum(((w.abs() * gr) ** 2).sum() for w, gr in zip(ws, grads)))
        return [rho * w * w * gr / (norm + 1e-12) for w, gr in zip(ws, grads)]
    norm = torch.sqrt(sum((gr ** 2).sum() for gr in grads))
    return [rho * gr / (norm + 1e-12) for gr in grads]


def hand_group_losses(per, g, num_groups):
    return torch.stack([per[g == k].mean() if bool((g == k).any()) else per.sum() * 0 for k in range(num_groups)])


def hand_two_pass(st: HandState, sgd: HandSGD, x, y, ascent, descent, rho, adaptive=False, add_back=True,
                  bn="freeze"):
    """One SAM-family step: ascent(per) -> first objective; descent(per_adv, per) -> second objective."""
    w = [t.clone().requires_grad_(True) for t in st.ws]
    per = F.cross_entropy(st.forward(w, st.bufs, x), y, reduction="none")
    g1 = torch.autograd.grad(ascent(per), w)
    eps = hand_eps(st.ws, g1, rho, adaptive)
    w_adv = [(a + e).requires_grad_(True) for a, e in zip(st.ws, eps)]
    bufs2 = {k: v.clone() for k, v in st.bufs.items()} if bn == "freeze" else st.bufs
    per_adv = F.cross_entropy(st.forward(w_adv, bufs2, x), y, reduction="none")
    g2 = torch.autograd.grad(descent(per_adv, per.detach()), w_adv)
    grads = [a + b for a, b in zip(g1, g2)] if add_back else list(g2)
    st.ws = sgd.step(st.ws, grads)


# ----------------------------------------------------------------------------- registry & shared pieces
def test_registry_matches_config_and_flags():
    assert tuple(ALGORITHMS) == CONFIG_ALGORITHMS
    assert {n for n, cls in ALGORITHMS.items() if cls.uses_groups} == {"groupdro", "sharpdro"}
    with pytest.raises(ConfigError, match="valid algorithms: erm, sam"):
        build_algorithm("irm", tiny(), C, G, {}, B)
    with pytest.raises(ConfigError, match="unknown algorithm hyperparameter"):
        build_algorithm("sam", tiny(), C, G, {"rhoo": 0.1}, B)


def test_group_mean_values_and_gradient_check():
    x, _, g, _ = data()
    v = torch.randn(B, dtype=torch.float64, requires_grad=True)
    means, counts = group_mean(v, g, G)
    assert counts.tolist() == [4, 4, 0, 4]
    assert torch.allclose(means, hand_group_losses(v, g, G), atol=1e-15)
    assert means[2] == 0
    assert torch.autograd.gradcheck(lambda t: group_mean(t, g, G)[0], (v,))
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: (q * group_mean(t, g, G)[0]).sum(), (v,))
    w = torch.rand(B, dtype=torch.float64)
    base = torch.randn(B, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: (w * (t - base)).sum(), (v,))


def test_eg_update_closed_form_and_no_overflow():
    q0 = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    L = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    q = eg_update_(q0.clone(), L, 0.7)
    ref = q0 * torch.exp(0.7 * L)
    assert torch.allclose(q, ref / ref.sum(), atol=1e-15)
    q = eg_update_(q0.clone(), L * 1e4, 1.0)  # exp(2e4) overflows the naive form
    assert torch.isfinite(q).all() and q[3] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- SharpDRO and SAM vs hand
@pytest.mark.parametrize("perturb_on,adaptive,add_back", [("batch", False, True), ("worst", False, True),
                                                          ("batch", True, True), ("batch", False, False)])
def test_sharpdro_step_matches_hand_computation(perturb_on, adaptive, add_back):
    model = tiny()
    rho, eta = 0.5, 0.3
    # q_absent='zero': the released code's reading (group 2 is absent from every batch here)
    hp = {"rho": rho, "eta": eta, "perturb_on": perturb_on, "adaptive": adaptive, "add_back_first_grad": add_back,
          "q_absent": "zero"}
    algo = make("sharpdro", copy.deepcopy(model), hp)
    st, sgd = HandState(model), HandSGD()
    q = torch.full((G,), 1.0 / G, dtype=torch.float64)
    for step in range(3):
        x, y, g, idx = data(seed=step)
        box = {}

        def ascent(per):
            L = hand_group_losses(per, g, G)
            qn = q * torch.exp(eta * L.detach())
            box["q"] = qn / qn.sum()
            return per.mean() if perturb_on == "batch" else (box["q"] * L).sum()

        def descent(per_adv, per):
            h = hand_group_losses(per_adv - per, g, G)
            return (box["q"] * h).sum()

        hand_two_pass(st, sgd, x, y, ascent, descent, rho, adaptive, add_back)
        q = box["q"]
        stats = algo.update(x, y, g, idx)
        assert torch.allclose(algo.q, q, atol=1e-12) and torch.allclose(stats["q"], q, atol=1e-12)
        st.check(algo.model)
    assert not torch.allclose(q, torch.full_like(q, 1.0 / G))  # q moved


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_matches_definition(adaptive):
    model = tiny()
    algo = make("sam", copy.deepcopy(model), {"rho": 0.3, "adaptive": adaptive})
    st, sgd = HandState(model), HandSGD()
    for step in range(2):
        x, y, g, idx = data(seed=step)
        hand_two_pass(st, sgd, x, y, lambda per: per.mean(), lambda pa, p: pa.mean(), 0.3, adaptive, add_back=False)
        stats = algo.update(x, y, None, idx)
        st.check(algo.model)
    assert set(stats) >= {"loss", "per_sample_loss", "correct"}


def test_bn_running_stats_frozen_or_updated_in_second_pass():
    x, y, g, idx = data()
    model = tiny()
    first_only = copy.deepcopy(model)
    first_only(x)  # the first pass alone, at w
    bn_ref = first_only.bn
    updated_models = {}
    for name in ("sam", "sharpdro", "sharpdro_agnostic"):
        frozen = make(name, copy.deepcopy(model), {"rho": 0.5, "bn_second_pass": "freeze"})
        updated = make(name, copy.deepcopy(model), {"rho": 0.5, "bn_second_pass": "update"})
        frozen.update(x, y, g, idx)
        updated.update(x, y, g, idx)
        assert torch.equal(frozen.model.bn.running_mean, bn_ref.running_mean), name
        assert torch.equal(frozen.model.bn.running_var, bn_ref.running_var), name
        assert int(frozen.model.bn.num_batches_tracked) == 1
        assert not torch.allclose(updated.model.bn.running_mean, bn_ref.running_mean), name
        assert int(updated.model.bn.num_batches_tracked) == 2
        updated_models[name] = updated.model
    # "update" equals two training forwards (at w, then at w+eps) each updating the statistics
    st = HandState(model)
    hand_two_pass(st, HandSGD(), x, y, lambda p: p.mean(), lambda pa, p: pa.mean(), 0.5, add_back=False, bn="update")
    st.check(updated_models["sam"])


# ----------------------------------------------------------------------------- GroupDRO
@pytest.mark.parametrize("C_adj", [0.0, 2.0])
def test_groupdro_q_closed_form_and_step(C_adj):
    model = tiny()
    eta = 0.5
    algo = make("groupdro", copy.deepcopy(model), {"eta": eta, "gen_adjustment": C_adj, "q_absent": "zero"},
                momentum=0.0, wd=0.0)
    counts = torch.tensor([40, 20, 5, 1])
    if C_adj:
        with pytest.raises(ConfigError, match="group counts"):
            algo.update(*data())
        algo.set_group_counts(counts)
    q0 = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    algo.q.copy_(q0)
    x, y, g, idx = data()
    st = HandState(model)
    w = [t.clone().requires_grad_(True) for t in st.ws]
    per = F.cross_entropy(st.forward(w, st.bufs, x), y, reduction="none")
    L = hand_group_losses(per, g, G)
    adj = C_adj / counts.double().sqrt()
    q = q0 * torch.exp(eta * (L.detach() + adj))
    q = q / q.sum()
    grads = torch.autograd.grad((q * L).sum(), w)
    st.ws = [a - LR * b for a, b in zip(st.ws, grads)]
    stats = algo.update(x, y, g, idx)
    assert torch.allclose(algo.q, q, atol=1e-12) and torch.allclose(stats["q"], q, atol=1e-12)
    st.check(algo.model)


def test_groupdro_prepare_counts_groups():
    x, y, g, idx = data()
    algo = make("groupdro", tiny(), {"gen_adjustment": 1.0})
    algo.prepare(make_ctx(x, y, g, tiny))
    assert algo.group_counts.tolist() == [4, 4, 0, 4] and algo.prepared
    assert torch.allclose(algo.adjustment, 1.0 / torch.tensor([4.0, 4.0, 1.0, 4.0], dtype=torch.float64).sqrt())


# ----------------------------------------------------------------------------- agnostic SharpDRO
def test_agnostic_top_fraction_picks_k_highest_and_matches_hand_step():
    model = tiny()
    frac = 0.25
    algo = make("sharpdro_agnostic", copy.deepcopy(model), {"rho": 0.4, "fraction": frac, "score": "msp",
                                                                  "select": "top_fraction"})
    st, sgd = HandState(model), HandSGD()
    for step in range(2):
        x, y, g, idx = data(seed=step)
        box = {}

        def ascent(per):
            return per.mean()

        def descent(per_adv, per):
            return (box["w"] * (per_adv - per)).sum()

        with torch.no_grad():
            logits = st.forward(st.ws, {k: v.clone() for k, v in st.bufs.items()}, x)
        score = 1 - torch.softmax(logits, 1).max(1).values
        k = math.ceil(frac * B)
        top = set(torch.argsort(score, descending=True)[:k].tolist())
        box["w"] = torch.tensor([1.0 / k if i in top else 0.0 for i in range(B)], dtype=torch.float64)
        hand_two_pass(st, sgd, x, y, ascent, descent, 0.4)
        stats = algo.update(x, y, None, idx)
        assert set(torch.nonzero(stats["selected"]).flatten().tolist()) == top
        st.check(algo.model)


def test_agnostic_soft_weighting_matches_hand_step():
    model = tiny()
    T = 0.5
    algo = make("sharpdro_agnostic", copy.deepcopy(model),
                {"rho": 0.4, "fraction": 0.5, "weighting": "soft", "temperature": T, "score": "entropy",
                 "select": "top_fraction"})
    st, sgd = HandState(model), HandSGD()
    x, y, g, idx = data()
    with torch.no_grad():
        p = torch.softmax(st.forward(st.ws, {k: v.clone() for k, v in st.bufs.items()}, x), 1)
    score = -(p * p.log()).sum(1)
    sel = torch.zeros(B, dtype=torch.bool)
    sel[torch.argsort(score, descending=True)[:6]] = True
    e = torch.where(sel, torch.exp(score / T), torch.zeros_like(score))
    wts = e / e.sum()
    hand_two_pass(st, sgd, x, y, lambda per: per.mean(), lambda pa, pr: (wts * (pa - pr)).sum(), 0.4)
    stats = algo.update(x, y, None, idx)
    assert torch.equal(stats["selected"], sel)
    st.check(algo.model)


def test_agnostic_selected_only_equals_full_batch_hard_step():
    """Without BatchNorm (whose batch statistics would differ on the subset) the two are the same step."""
    model = tiny(bn=False)
    hp = {"rho": 0.4, "fraction": 0.3, "score": "energy", "select": "top_fraction"}
    full = make("sharpdro_agnostic", copy.deepcopy(model), hp)
    sub = make("sharpdro_agnostic", copy.deepcopy(model), {**hp, "second_pass_selected_only": True})
    for step in range(3):
        x, y, g, idx = data(seed=step)
        s_full, s_sub = full.update(x, y, None, idx), sub.update(x, y, None, idx)
        assert torch.equal(s_full["selected"], s_sub["selected"]) and int(s_sub["selected"].sum()) == 4
        for a, b in zip(full.model.parameters(), sub.model.parameters()):
            assert torch.allclose(a, b, atol=1e-12, rtol=0)
    with pytest.raises(ConfigError, match="second_pass_selected_only"):
        build_algorithm("sharpdro_agnostic", tiny(), C, G, {**hp, "second_pass_selected_only": True,
                                                             "weighting": "soft"}, B)


def test_agnostic_threshold_uses_score_memory():
    n = 2 * B
    algo = make("sharpdro_agnostic", tiny(), {"select": "threshold", "fraction": 0.25, "score": "loss"},
                train_size=n)
    x, y, _, _ = data(n=n)
    assert torch.isnan(algo.score_memory).all()
    first, second = torch.arange(B), torch.arange(B, n)
    s1 = algo.update(x[first], y[first], None, first)
    score1 = s1["per_sample_loss"]
    assert torch.equal(s1["selected"], score1 >= torch.quantile(score1, 0.75))  # empty memory: batch quantile
    assert torch.equal(algo.score_memory[first], score1) and torch.isnan(algo.score_memory[second]).all()
    s2 = algo.update(x[second], y[second], None, second)
    assert torch.equal(s2["selected"], s2["per_sample_loss"] >= torch.quantile(score1, 0.75))  # memory quantile
    assert not torch.isnan(algo.score_memory).any()


def test_ood_scores():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    per = torch.tensor([0.1, 1.1], dtype=torch.float64)
    for kind in ("msp", "energy", "entropy", "loss"):
        s = ood_score(logits, per, kind)
        assert s[1] > s[0], kind  # the uniform prediction is the more out-of-distribution one
    assert torch.allclose(ood_score(logits, per, "energy"), -torch.logsumexp(logits, 1))
    assert ood_score(logits, per, "entropy")[1] == pytest.approx(math.log(3))


# ----------------------------------------------------------------------------- JTT
def make_ctx(x, y, g, factory, batch=4, lr=0.1, created=None):
    n = len(y)

    def epochs_batches(epoch):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(100 + epoch))
        for s in range(0, n, batch):
            i = perm[s:s + batch]
            yield x[i], y[i], (g[i] if g is not None else None), i

    def ordered_batches():
        for s in range(0, n, batch):
            i = torch.arange(s, min(n, s + batch))
            yield x[i], y[i], (g[i] if g is not None else None), i

    def make_model():
        m = factory()
        if created is not None:
            created.append(m)
        return m

    return PrepareContext(epochs_batches, ordered_batches, make_model,
                          lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9), lambda e: lr, n, "cpu")


def test_jtt_error_set_is_the_misclassified_points_and_is_upweighted():
    n, lam = 24, 5.0
    x, y, _, _ = data(n=n, seed=3)
    created = []
    algo = make("jtt", tiny(seed=1), {"jtt_epochs": 2, "jtt_lambda_up": lam, "jtt_mode": "reweight"}, train_size=n,
                momentum=0.0, wd=0.0)
    assert not algo.prepared
    algo.prepare(make_ctx(x, y, None, lambda: tiny(seed=7), created=created))
    assert algo.prepared and len(created) == 1
    with torch.no_grad():
        wrong = created[0].eval()(x).argmax(1) != y
    assert 0 < int(wrong.sum()) < n  # both sets non-empty, so `eq` instead of `ne` would fail
    assert torch.equal(algo.error_set, wrong)
    assert torch.equal(algo.weights, torch.where(wrong, lam, 1.0).double())
    # the training loss: CE weighted lambda_up on the error set, normalised by the batch's weight sum
    idx = torch.tensor([0, 3, 5, 8, 13, 21])
    ref = copy.deepcopy(algo.model)
    wts = torch.where(wrong[idx], lam, 1.0).double()
    loss = (wts * F.cross_entropy(ref(x[idx]), y[idx], reduction="none")).sum() / wts.sum()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    stats = algo.update(x[idx], y[idx], None, idx)
    assert torch.equal(stats["selected"], wrong[idx])
    for p0, gr, p1 in zip(ref.parameters(), grads, algo.model.parameters()):
        assert torch.allclose(p0 - LR * gr, p1, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- EIIL
def test_irm_penalty_matches_autograd_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (50,), generator=g)
    q = torch.rand(50, generator=g, dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    per = F.cross_entropy(logits * scale, y, reduction="none")
    pen = 0
    for wt in (q, 1 - q):
        (gr,) = torch.autograd.grad((wt * per).mean(), scale, retain_graph=True)
        pen = pen + gr ** 2
    assert torch.allclose(irm_penalty(irm_scale_grads(logits, y), q), pen, atol=1e-15)


def test_eiil_split_beats_random_split_on_a_spurious_reference_model():
    """Reference model follows a spurious feature right on 80% of points, wrong on the minority."""
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    minority = torch.rand(n, generator=g) < 0.2
    spurious = torch.where(minority, 1 - y, y)
    logits = torch.stack([-(2 * spurious - 1.0), 2 * spurious - 1.0], 1) * 2.0
    logits = logits + 0.3 * torch.randn(n, 2, generator=g)
    env, pen = infer_environments(logits, y, steps=300, lr=0.05, generator=torch.Generator().manual_seed(1))
    d = irm_scale_grads(logits, y)
    random_pens = [irm_penalty(d, (torch.rand(n, generator=g) < 0.5).double()) for _ in range(20)]
    assert pen > 2 * max(random_pens)
    # the penalty is convex in q, so its maximum is the split by the sign of d: EIIL reaches it
    assert torch.allclose(pen.double(), irm_penalty(d, (d > 0).double()).double(), rtol=1e-6)
    assert (env.bool() == minority).double().mean() > 0.95  # env 1 = the harder (minority) environment


def test_eiil_prepare_and_update_with_inferred_environments():
    n = 24
    x, y, g, _ = data(n=n, seed=4)
    algo = make("eiil", tiny(), {"eiil_steps": 50, "eiil_lr": 0.05, "eiil_epochs": 1}, num_groups=G, train_size=n)
    algo.prepare(make_ctx(x, y, None, tiny))
    assert algo.prepared and algo.robust.prepared
    assert set(algo.env.unique().tolist()) <= {0, 1}
    idx = torch.arange(8)
    q0 = algo.robust.q.clone()
    stats = algo.update(x[idx], y[idx], None, idx)
    assert torch.equal(stats["selected"], algo.env[idx] == 1)
    assert algo.robust.q.shape == (2,) and not torch.equal(algo.robust.q, q0)
    assert not any(k.startswith("robust.model.") for k in algo.state_dict())  # the model is saved once


# ----------------------------------------------------------------------------- state round trip
def same_state(a: dict, b: dict) -> bool:
    assert set(a) == set(b)
    return all(torch.equal(a[k].nan_to_num(-1.0), b[k].nan_to_num(-1.0)) if a[k].is_floating_point()
               else torch.equal(a[k], b[k]) for k in a)


def test_state_dict_round_trip_restores_algorithm_state():
    n = 24
    x, y, g, _ = data(n=n, seed=5)
    cases = {
        "groupdro": ({"gen_adjustment": 1.0}, g, {"q", "group_counts", "adjustment"}),
        "sharpdro": ({}, g, {"q"}),
        "jtt": ({}, None, {"error_set", "weights"}),
        "eiil": ({"eiil_steps": 20, "eiil_robust": "sharpdro", "gen_adjustment": 0.5}, None,
                 {"env", "robust.q", "robust.group_counts", "robust.prepared_flag"}),
        "sharpdro_agnostic": ({"select": "threshold"}, None, {"score_memory"}),
    }
    for name, (hp, groups, keys) in cases.items():
        def batch(i):
            return x[i], y[i], (groups[i] if groups is not None else None), i

        algo = make(name, tiny(), hp, train_size=n)
        algo.prepare(make_ctx(x, y, groups, tiny))
        for s in range(0, n, 8):
            algo.update(*batch(torch.arange(s, s + 8)))
        state = copy.deepcopy(algo.state_dict())
        assert keys | {"prepared_flag"} <= set(state), name
        fresh = make(name, tiny(seed=9), hp, train_size=n)
        assert not fresh.prepared and not same_state(state, fresh.state_dict())
        fresh.load_state_dict(state)
        fresh.optimizer.load_state_dict(copy.deepcopy(algo.optimizer.state_dict()))  # the trainer's part
        assert fresh.prepared and same_state(state, fresh.state_dict()), name
        # the restored algorithm continues exactly like the original
        a, b = algo.update(*batch(torch.arange(8))), fresh.update(*batch(torch.arange(8)))
        assert torch.equal(a["per_sample_loss"], b["per_sample_loss"]), name
        assert same_state(algo.state_dict(), fresh.state_dict()), name


# ----------------------------------------------------------------------------- every algorithm x model
_PRISTINE: dict = {}


def _pristine(name, size):
    if (name, size) not in _PRISTINE:
        torch.manual_seed(0)
        _PRISTINE[(name, size)] = build_model(name, 10, size, width=8)
    return _PRISTINE[(name, size)]


PAIRS = [(a, m, 32) for m in ("cnn", "cnn7", "resnet18", "resnet50", "wrn28_2", "wrn28_10") for a in ALGORITHMS]
PAIRS += [(a, "resnet18", 64) for a in ("erm", "sharpdro")]


@pytest.mark.parametrize("algo_name,model_name,size", PAIRS)
def test_every_algorithm_runs_on_every_model(algo_name, model_name, size):
    n = 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.tensor([1, 7])
    groups = torch.tensor([0, 5])
    idx = torch.arange(n)
    model = copy.deepcopy(_pristine(model_name, size)).train()
    hp = {"eiil_steps": 5, "fraction": 0.5}
    algo = build_algorithm(algo_name, model, 10, 6, hp, n)
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    algo.train()
    ctx_groups = groups if algo.uses_groups else None
    algo.prepare(make_ctx(x, y, ctx_groups, lambda: copy.deepcopy(_pristine(model_name, size)).train(), batch=n))
    before = [p.detach().clone() for p in algo.model.parameters()]
    stats = algo.update(x, y, groups if algo.uses_groups else None, idx)
    assert torch.isfinite(stats["loss"]) and stats["per_sample_loss"].shape == (n,)
    assert stats["correct"].dtype == torch.bool and stats["correct"].shape == (n,)
    assert all(not v.requires_grad for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.model.parameters()))
    algo.eval()
    with torch.no_grad():
        assert algo.predict(x).shape == (n, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("algo_name", list(ALGORITHMS))
def test_update_makes_no_host_sync_on_cuda(algo_name):
    dev = torch.device("cuda")
    n = 8
    x, y = torch.randn(n, 3, 16, 16, device=dev), torch.randint(0, 10, (n,), device=dev)
    groups, idx = torch.arange(n, device=dev) % 6, torch.arange(n, device=dev)
    model = build_model("cnn", 10, 16, width=8).to(dev).train()
    hp = {"eiil_steps": 5, "gen_adjustment": 1.0, "select": "threshold"} if algo_name != "sharpdro_agnostic" \
        else {"select": "threshold"}
    algo = build_algorithm(algo_name, model, 10, 6, hp, n)
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    ctx = make_ctx(x, y, groups if algo.uses_groups else None, lambda: build_model("cnn", 10, 16, width=8).to(dev),
                   batch=n)
    algo.prepare(ctx)
    algo.update(x, y, groups if algo.uses_groups else None, idx)  # warm-up (lazy optimizer state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        algo.update(x, y, groups if algo.uses_groups else None, idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- agnostic: the global selection
def _class_stream(n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    worst = torch.zeros(n, dtype=torch.bool)
    worst[torch.randperm(n, generator=g)[: n // 10]] = True
    return y, worst, g


def _recall_of_global_selection(decay, normalize, offset, noise, epochs=8, n=1000, batch=50, seed=0):
    """The worst 10% of a synthetic stream (known), each visit's score = planted gap + per-class offset + noise."""
    classes = 4
    y, worst, g = _class_stream(n, classes, seed)
    algo = make("sharpdro_agnostic", tiny(), {"select": "global", "fraction": 0.1, "memory_decay": decay,
                                              "class_normalize": normalize, "warmup_epochs": 1}, train_size=n)
    algo.num_classes = classes
    algo.class_stats = torch.stack([torch.zeros(classes), torch.ones(classes)]).double()
    chosen = torch.zeros(n, dtype=torch.bool)
    for epoch in range(epochs):
        algo.begin_epoch(epoch)
        chosen.zero_()
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            score = 2.0 * worst[idx] + offset * y[idx] + noise * torch.randn(len(idx), generator=g,
                                                                                dtype=torch.float64)
            _, selected, _ = algo._select_global(score, y[idx], idx)
            if epoch == 0:
                assert not selected.any()  # warm-up: the memory fills, nothing is selected
            chosen[idx] = selected
    return float((chosen & worst).sum() / worst.sum()), int(chosen.sum())


def test_global_selection_memory_recovers_the_known_worst_samples():
    # one visit's score is too noisy (gap 2 against noise 1): without memory much is missed
    single, _ = _recall_of_global_selection(decay=0.0, normalize=True, offset=0.0, noise=1.0)
    remembered, count = _recall_of_global_selection(decay=0.8, normalize=True, offset=0.0, noise=1.0)
    assert single < 0.7
    assert remembered >= 0.9
    assert 70 <= count <= 130  # the top 10% of the training set (1000 points), give or take the drift


def test_class_normalisation_removes_a_planted_per_class_offset():
    raw, _ = _recall_of_global_selection(decay=0.8, normalize=False, offset=3.0, noise=0.3)
    normalised, _ = _recall_of_global_selection(decay=0.8, normalize=True, offset=3.0, noise=0.3)
    assert raw < 0.5  # the highest class's ordinary samples crowd out the others' worst
    assert normalised >= 0.9


def test_global_selection_statistics_match_the_numpy_reference():
    import numpy as np

    from sharpdro.methods.sharpdro_agnostic import selection_statistics

    n = 60
    algo = make("sharpdro_agnostic", tiny(), {"select": "global", "fraction": 0.15}, train_size=n)
    g = torch.Generator().manual_seed(3)
    algo.score_memory.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 2 + 1)
    algo.score_memory[:5] = float("nan")  # not seen yet
    algo.memory_labels.copy_(torch.randint(0, C, (n,), generator=g))
    algo.memory_labels[:5] = -1
    for normalize in (True, False):
        algo.normalize = normalize
        algo.refresh_selection()
        stats, thr = selection_statistics(algo.score_memory.numpy(), algo.memory_labels.numpy(), C, 0.15, normalize)
        assert np.allclose(algo.class_stats.numpy(), stats, rtol=1e-12, atol=0)
        assert float(algo.threshold) == pytest.approx(thr, rel=1e-12)
    algo.normalize = True
    algo.refresh_selection()
    z = (algo.score_memory - algo.class_stats[0][algo.memory_labels.clamp(min=0)]) / \
        algo.class_stats[1][algo.memory_labels.clamp(min=0)]
    z = z[5:]
    assert (z >= algo.threshold).float().mean().item() == pytest.approx(0.15, abs=1.5 / (n - 5))
    for c in range(C):  # each class normalised to mean 0, std 1
        zc = z[algo.memory_labels[5:] == c]
        assert abs(float(zc.mean())) < 1e-9 and float(zc.std(unbiased=False)) == pytest.approx(1.0, rel=1e-9)


def test_global_warmup_is_erm_then_the_step_uses_the_memory_threshold():
    """Warm-up epochs: ERM's step (memory written); then the hand step with w_i = [z_i >= thr] / max(k, f B)."""
    n, frac = 2 * B, 0.25
    x, y, _, _ = data(n=n, seed=4)
    model = tiny(bn=False)
    algo = make("sharpdro_agnostic", copy.deepcopy(model), {"rho": 0.4, "fraction": frac, "score": "loss",
                                                            "warmup_epochs": 1, "memory_decay": 0.5},
                train_size=n)
    erm = make("erm", copy.deepcopy(model))
    halves = (torch.arange(B), torch.arange(B, n))
    algo.begin_epoch(0)
    first = {}
    for i in halves:
        with torch.no_grad():
            first[int(i[0])] = F.cross_entropy(algo.model(x[i]), y[i], reduction="none")
        s = algo.update(x[i], y[i], None, i)
        erm.update(x[i], y[i], None, i)
        assert not s["selected"].any()
    for a, b in zip(algo.model.parameters(), erm.model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(algo.score_memory, torch.cat([first[0], first[B]]))
    assert torch.equal(algo.memory_labels, y)
    algo.begin_epoch(1)
    algo.refresh_selection()  # what the epoch's first step does: the statistics from the memory
    st, sgd = HandState(algo.model), HandSGD()
    sgd.buf = [algo.optimizer.state[p]["momentum_buffer"].clone() for p in algo.model.parameters()]
    i = halves[0]
    with torch.no_grad():
        loss_now = F.cross_entropy(algo.model(x[i]), y[i], reduction="none")
    m = 0.5 * algo.score_memory[i] + 0.5 * loss_now
    z = (m - algo.class_stats[0][y[i]]) / algo.class_stats[1][y[i]]
    sel = z >= algo.threshold
    assert 0 < int(sel.sum()) < B
    wts = sel.double() / max(int(sel.sum()), frac * B)
    hand_two_pass(st, sgd, x[i], y[i], lambda per: per.mean(), lambda pa, pr: (wts * (pa - pr)).sum(), 0.4)
    s = algo.update(x[i], y[i], None, i)
    assert torch.equal(s["selected"], sel)
    assert torch.allclose(algo.score_memory[i], m, atol=1e-15, rtol=0)
    st.check(algo.model)


def test_global_selected_only_equals_full_batch_hard_step():
    n = 3 * B
    x, y, _, _ = data(n=n, seed=6)
    model = tiny(bn=False)
    hp = {"rho": 0.4, "fraction": 0.3, "score": "input_hf", "warmup_epochs": 0}
    full = make("sharpdro_agnostic", copy.deepcopy(model), hp, train_size=n)
    sub = make("sharpdro_agnostic", copy.deepcopy(model), {**hp, "second_pass_selected_only": True}, train_size=n)
    for epoch in range(2):
        full.begin_epoch(epoch), sub.begin_epoch(epoch)
        for s in range(0, n, B):
            i = torch.arange(s, s + B)
            a, b = full.update(x[i], y[i], None, i), sub.update(x[i], y[i], None, i)
            assert torch.equal(a["selected"], b["selected"])
    for a, b in zip(full.model.parameters(), sub.model.parameters()):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_feature_and_input_scores():
    x, y, _, _ = data(n=6, seed=2)
    x[3:] += 2.0 * torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for kind in ("feature_norm", "gradnorm", "input_hf"):
        algo = make("sharpdro_agnostic", tiny(), {"score": kind}, train_size=6)
        algo.eval()
        s = algo.ood_scores(x, y)
        with torch.no_grad():
            h = algo.model.pool(torch.relu(algo.model.bn(algo.model.conv(x)))).flatten(1)
            p = torch.softmax(algo.model.fc(h), 1)
        lap = 4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:]
        want = {"feature_norm": -h.norm(dim=1), "gradnorm": -((p - 1 / C).abs().sum(1) * h.abs().sum(1)),
                "input_hf": lap.pow(2).mean((1, 2, 3))}[kind]
        assert torch.allclose(s.double(), want, rtol=1e-6, atol=0), kind
    assert (want[3:].min() > want[:3].max())  # the noisy images have the higher high-frequency energy


def test_input_hf_reference_against_closed_forms_and_the_torch_step():
    """The NumPy reference of the input_hf score (the result scripts score images with it): a checkerboard of
    +-1 has Laplacian +-8 everywhere inside, so 64; a constant or a linear ramp has none; and it equals what the
    PyTorch step computes on the same batch."""
    import numpy as np

    from sharpdro.backends.torch.algorithms import agnostic as torch_agnostic
    from sharpdro.methods.sharpdro_agnostic import input_high_frequency

    i, j = np.meshgrid(np.arange(7), np.arange(9), indexing="ij")
    checker = np.broadcast_to((-1.0) ** (i + j), (2, 3, 7, 9))
    ramp = np.broadcast_to(0.3 * i - 0.7 * j + 2.0, (1, 3, 7, 9))
    got = input_high_frequency(np.concatenate([checker, ramp, np.full((1, 3, 7, 9), 5.0)]))
    assert got == pytest.approx([64.0, 64.0, 0.0, 0.0], abs=1e-12)
    x = np.random.default_rng(0).normal(size=(4, 3, 8, 8))
    # the device version computes in float32
    assert input_high_frequency(x) == pytest.approx(torch_agnostic.input_high_frequency(torch.from_numpy(x)).numpy(), rel=1e-6)


def test_auroc_matches_a_direct_computation():
    import numpy as np

    from sharpdro.metrics import auroc, severity_auroc

    rng = np.random.default_rng(0)
    for _ in range(5):
        s = rng.integers(0, 6, 80).astype(float)  # many ties
        pos = rng.random(80) < 0.3
        diff = s[pos][:, None] - s[~pos][None, :]
        direct = ((diff > 0) + 0.5 * (diff == 0)).mean()
        assert auroc(s, pos) == pytest.approx(direct, rel=1e-12)
    sev = np.array([0, 0, 1, 2, 3, 4, 5, 0])
    score = np.array([0.1, 0.2, 9.0, 9.0, 0.5, 0.6, 0.15, 0.3])
    # severities 1-2 are left out; positives 0.5, 0.6, 0.15 against 0.1, 0.2, 0.3
    assert severity_auroc(score, sev) == pytest.approx((3 + 3 + 1) / 9)
    assert np.isnan(auroc([1.0, 2.0], [True, True]))


def test_global_weights_never_exceed_one_when_the_scores_drift():
    """A drift of every score above the threshold selects the whole batch: the weights stay 1/k each (sum 1)."""
    n = 4 * B
    algo = make("sharpdro_agnostic", tiny(), {"select": "global", "fraction": 0.1, "warmup_epochs": 0,
                                              "class_normalize": False, "memory_decay": 0.0,
                                              "refresh_steps": 0}, train_size=n)
    y = torch.arange(n) % C
    algo.begin_epoch(0)
    for s in range(0, n, B):  # fill the memory
        i = torch.arange(s, s + B)
        algo._select_global(torch.rand(B, dtype=torch.float64), y[i], i)
    algo.begin_epoch(1)
    i = torch.arange(B)
    w, sel, _ = algo._select_global(torch.rand(B, dtype=torch.float64) + 10.0, y[i], i)
    assert sel.all() and torch.allclose(w, torch.full((B,), 1.0 / B, dtype=torch.float64))
    i = torch.arange(B, 2 * B)
    w, sel, _ = algo._select_global(torch.full((B,), -10.0, dtype=torch.float64).index_fill_(0, torch.tensor([0]), 10.0),
                                    y[i], i)
    assert int(sel.sum()) == 1 and float(w[0]) == pytest.approx(1.0 / (0.1 * B))  # one selected: 1 / (f B)
