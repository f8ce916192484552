"""The public PyTorch API (:mod:`sharpdro.torch`): the engine's own steps behind a closure.

Every public step is compared with the engine's ``update`` on the same model, batches and
optimizer (float32, BatchNorm in train mode): weights, BatchNorm statistics, momentum and q
agree to 1e-6 (they run the same code, so in practice exactly).  The engine's SharpDRO step
is pinned to the released code by ``test_algorithms.test_sharpdro_step_matches_hand_computation``.
"""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sharpdro.backends.torch.algorithms import build_algorithm
from sharpdro.backends.torch.amp import Precision
from sharpdro.config import ConfigError
from test_algorithms import TinyNet  # the parity tests' BatchNorm net (pytest puts tests/ on the path)

from sharpdro.torch import (SAM, GroupDROLoss, GroupIdError, SharpDRO, group_balanced_sampler,
                            group_balanced_weights, jtt_loss_weights, jtt_sampler, jtt_upsampled_indices)

LR, MOM, WD = 0.1, 0.9, 5e-4
C, G, B = 3, 4, 12
ATOL = 1e-6


def _net(seed=0):
    torch.manual_seed(seed)
    return TinyNet(bn=True).train()  # conv, BatchNorm, pool, linear: float32 here


def _batches(steps=3, n=B):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(n, 3, 8, 8, generator=g)
        y = torch.randint(0, C, (n,), generator=g)
        groups = torch.tensor([0, 1, 3] * (n // 3))  # group 2 absent: q_absent matters
        out.append((x, y, groups))
    return out


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM, weight_decay=WD)


def _assert_same_state(a: nn.Module, b: nn.Module, opt_a, opt_b):
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa.double(), pb.double(), atol=ATOL, rtol=0), name
    for pa, pb in zip(a.parameters(), b.parameters()):
        ma, mb = opt_a.state[pa]["momentum_buffer"], opt_b.state[pb]["momentum_buffer"]
        assert torch.allclose(ma, mb, atol=ATOL, rtol=0)


def _ce(model, x, y):
    return lambda: F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("options", [
    {},  # the released reading: perturb_on=batch, add-back, q_absent=zero, bn_second_pass=freeze
    {"perturb_on": "worst", "q_absent": "skip"},
    {"adaptive": True, "bn_second_pass": "update", "add_back_first_grad": False},
])
def test_public_sharpdro_step_equals_the_engine_update(options):
    engine_model, public_model = _net(), _net()
    engine = build_algorithm("sharpdro", engine_model, C, G, {"rho": 0.3, "eta": 0.5, **options}, B)
    engine.configure(_sgd(engine_model))
    opt = SharpDRO(public_model, _sgd(public_model), num_groups=G, rho=0.3, eta=0.5, **options)
    for x, y, g in _batches():
        stats = engine.update(x, y, g, torch.arange(B))
        loss = opt.step(_ce(public_model, x, y), g)
        assert torch.allclose(loss, stats["loss"], atol=ATOL, rtol=0)
        assert torch.allclose(opt.q, engine.q, atol=ATOL, rtol=0)
    assert not torch.allclose(opt.q, torch.full((G,), 1 / G))  # q moved
    _assert_same_state(engine_model, public_model, engine.optimizer, opt.base_optimizer)


def test_public_sam_and_asam_equal_the_engine_update():
    for adaptive in (False, True):
        engine_model, public_model = _net(), _net()
        engine = build_algorithm("sam", engine_model, C, G, {"adaptive": adaptive}, B)
        engine.configure(_sgd(engine_model))
        opt = SAM(public_model, _sgd(public_model), adaptive=adaptive)
        assert opt._step.rho == engine.rho == (2.0 if adaptive else 0.05)  # the engine's default radius
        for x, y, _g in _batches():
            engine.update(x, y, None, torch.arange(B))
            opt.step(_ce(public_model, x, y))
        _assert_same_state(engine_model, public_model, engine.optimizer, opt.base_optimizer)


def test_group_dro_loss_equals_the_engine_groupdro_step():
    engine_model, public_model = _net(), _net()
    engine = build_algorithm("groupdro", engine_model, C, G, {"eta": 0.5}, B)
    engine.configure(_sgd(engine_model))
    crit, sgd = GroupDROLoss(G, eta=0.5), _sgd(public_model)
    for x, y, g in _batches():
        engine.update(x, y, g, torch.arange(B))
        sgd.zero_grad()
        crit(F.cross_entropy(public_model(x), y, reduction="none"), g).backward()
        sgd.step()
        assert torch.allclose(crit.q, engine.q, atol=ATOL, rtol=0)
    _assert_same_state(engine_model, public_model, engine.optimizer, sgd)
    assert set(crit.state_dict()) >= {"q", "group_counts"}
    fresh = GroupDROLoss(G, eta=0.5)
    fresh.load_state_dict(crit.state_dict())
    assert torch.equal(fresh.q, crit.q)


def test_group_dro_loss_is_the_q_weighted_group_mean():
    crit = GroupDROLoss(3, eta=1.0)
    losses = torch.tensor([1.0, 3.0, 2.0, 0.5], requires_grad=True)
    groups = torch.tensor([0, 0, 1, 2])
    out = crit(losses, groups)
    L = torch.tensor([2.0, 2.0, 0.5])
    q = torch.exp(L) / torch.exp(L).sum()  # one EG step from uniform
    assert torch.allclose(crit.q, q) and torch.allclose(out, (q * L).sum())
    out.backward()
    assert torch.allclose(losses.grad, torch.stack([q[0] / 2, q[0] / 2, q[1], q[2]]))


def test_sharpdro_with_mse_moves_q_to_the_hard_group():
    """Regression, MSE, 3 groups: group 2's targets carry noise of std 2 (irreducible loss ~4), so q goes to it."""
    g = torch.Generator().manual_seed(0)
    n = 300
    x = torch.randn(n, 5, generator=g)
    groups = torch.arange(n) % 3
    w = torch.randn(5, generator=g)
    y = x @ w
    y[groups == 2] += 2.0 * torch.randn(int((groups == 2).sum()), generator=g)  # the hard group
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = SharpDRO(model, torch.optim.SGD(model.parameters(), lr=0.05), num_groups=3, eta=0.05)
    for step in range(60):
        idx = torch.randint(0, n, (32,), generator=g)
        loss = opt.step(lambda: F.mse_loss(model(x[idx]).squeeze(1), y[idx], reduction="none"), groups[idx])
        assert loss.ndim == 0 and torch.isfinite(loss)
    with torch.no_grad():
        per = F.mse_loss(model(x).squeeze(1), y, reduction="none")
        group_loss = torch.stack([per[groups == k].mean() for k in range(3)])
    assert int(group_loss.argmax()) == 2
    assert int(opt.q.argmax()) == 2 and float(opt.q[2]) > 0.5, opt.q
    assert torch.isclose(opt.q.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("bad", [G, -1, 99])
@pytest.mark.parametrize("where", ["engine-sharpdro", "engine-groupdro", "public-sharpdro", "public-groupdro-loss"])
def test_group_id_out_of_range_is_an_error(where, bad):
    """An id outside [0, num_groups) is one clear error naming the id and num_groups, before anything moves
    (issue 25 case 10: the engine's steps used to drop such a sample from every group silently)."""
    model = _net()
    x, y, g = _batches(1)[0]
    g = g.clone()
    g[5] = bad
    losses = F.cross_entropy(model(x), y, reduction="none")  # the loss module's input (the user's forward)
    before = copy.deepcopy(model.state_dict())
    if where.startswith("engine"):
        algo = build_algorithm(where.split("-")[1], model, C, G, {}, B)
        algo.configure(_sgd(model))
        call = lambda: algo.update(x, y, g, torch.arange(B))  # noqa: E731
    elif where == "public-sharpdro":
        opt = SharpDRO(model, _sgd(model), G)
        call = lambda: opt.step(_ce(model, x, y), g)  # noqa: E731
    else:
        crit = GroupDROLoss(G)
        call = lambda: crit(losses, g)  # noqa: E731
    with pytest.raises(GroupIdError, match=rf"group id {bad} is outside \[0, {G}\) \(num_groups={G}"):
        call()
    if where == "public-groupdro-loss":
        assert torch.equal(crit.q, torch.full((G,), 1.0 / G))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_group_ids_must_be_integers():
    model = _net()
    opt = SharpDRO(model, _sgd(model), G)
    x, y, g = _batches(1)[0]
    with pytest.raises(GroupIdError, match="integer tensor"):
        opt.step(_ce(model, x, y), g.float())


def test_bad_arguments_are_one_clear_error():
    model = _net()
    x, y, g = _batches(1)[0]
    with pytest.raises(ConfigError, match="unknown option.*rh0.*allowed:.*perturb_on"):
        SharpDRO(model, _sgd(model), G, rh0=0.1)
    with pytest.raises(ConfigError, match="perturb_on"):
        SharpDRO(model, _sgd(model), G, perturb_on="paper")
    with pytest.raises(ConfigError, match="second_pass_fraction"):  # needs the batch, not a closure
        SharpDRO(model, _sgd(model), G, second_pass_fraction=0.5)
    with pytest.raises(ConfigError, match="num_groups must be a positive integer"):
        SharpDRO(model, _sgd(model), 0)
    with pytest.raises(ConfigError, match="base_optimizer must be a torch.optim.Optimizer"):
        SharpDRO(model, model.parameters(), G)
    opt = SharpDRO(model, _sgd(model), G)
    with pytest.raises(ConfigError, match="per-sample losses, a 1-D float tensor.*got \\(\\)"):
        opt.step(lambda: F.cross_entropy(model(x), y), g)  # the mean, not per sample
    with pytest.raises(ConfigError, match="returned 12 losses for 6 group ids"):
        opt.step(_ce(model, x, y), g[:6])


def test_state_dict_round_trip_resumes_exactly():
    """q and the base optimizer's momentum travel in state_dict(): a restored wrapper steps as the original."""
    batches = _batches(4)
    model = _net()
    opt = SharpDRO(model, _sgd(model), G, eta=0.5)
    for x, y, g in batches[:2]:
        opt.step(_ce(model, x, y), g)
    state, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    assert torch.equal(state["state"]["q"], opt.q) and state["base_optimizer"]["state"]
    assert not any(k.startswith("model") for k in state["state"])  # the weights are the user's to save
    for x, y, g in batches[2:]:
        opt.step(_ce(model, x, y), g)
    resumed = _net(seed=5)
    resumed.load_state_dict(weights)
    opt2 = SharpDRO(resumed, _sgd(resumed), G, eta=0.5)
    opt2.load_state_dict(state)
    for x, y, g in batches[2:]:
        opt2.step(_ce(resumed, x, y), g)
    assert torch.equal(opt2.q, opt.q)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_bf16_autocast_step_equals_the_engine_bf16_update():
    engine_model, public_model = _net(), _net()
    engine = build_algorithm("sharpdro", engine_model, C, G, {}, B)
    engine.configure(_sgd(engine_model), amp=Precision("bf16", "cpu"))
    opt = SharpDRO(public_model, _sgd(public_model), G, precision="bf16")
    for x, y, g in _batches(2):
        engine.update(x, y, g, torch.arange(B))
        opt.step(_ce(public_model, x, y), g)
    _assert_same_state(engine_model, public_model, engine.optimizer, opt.base_optimizer)


def test_fp16_loss_scale_step_equals_the_engine_and_skips_an_overflow():
    """fp16 (scaling logic only on the CPU, as tests/test_precision.py): same step as the engine; an inf loss
    skips the whole step (weights, momentum, q, BatchNorm statistics untouched) and halves the scale."""
    engine_model, public_model = _net(), _net()
    engine = build_algorithm("sharpdro", engine_model, C, G, {}, B)
    engine.configure(_sgd(engine_model), amp=Precision("fp16", "cpu", autocast=False))
    opt = SharpDRO(public_model, _sgd(public_model), G)
    opt._step.configure(opt.base_optimizer, amp=Precision("fp16", "cpu", autocast=False))  # no CPU fp16 kernels
    for x, y, g in _batches(2):
        engine.update(x, y, g, torch.arange(B))
        opt.step(_ce(public_model, x, y), g)
    _assert_same_state(engine_model, public_model, engine.optimizer, opt.base_optimizer)
    snapshot, q = copy.deepcopy(public_model.state_dict()), opt.q.clone()
    x, y, g = _batches(1)[0]
    opt.step(lambda: F.cross_entropy(public_model(x), y, reduction="none") * torch.tensor(float("inf")), g)
    assert torch.equal(opt.q, q)
    for k, v in public_model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert float(opt.state_dict()["precision"]["scale"]) == 2.0 ** 15


def test_importing_sharpdro_imports_no_torch_and_the_public_names_resolve_lazily():
    code = ("import sys, sharpdro\n"
            "assert 'torch' not in sys.modules, 'import sharpdro imported torch'\n"
            "from sharpdro import SharpDRO, SAM, GroupDROLoss, group_balanced_sampler\n"
            "import sharpdro.torch as api\n"
            "assert SharpDRO is api.SharpDRO and GroupDROLoss is api.GroupDROLoss\n"
            "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_group_balanced_sampler_weights_and_draws():
    from sharpdro.data.batches import BatchIterator

    groups = np.array([0] * 80 + [1] * 15 + [2] * 5)
    sampler = group_balanced_sampler(torch.as_tensor(groups), generator=torch.Generator().manual_seed(0))
    assert len(sampler) == 100
    assert torch.allclose(sampler.weights, torch.as_tensor(1.0 / np.bincount(groups)[groups]))
    assert np.array_equal(group_balanced_weights(groups), 1.0 / np.bincount(groups)[groups])
    big = group_balanced_sampler(groups, num_samples=30000, generator=torch.Generator().manual_seed(0))
    freq = np.bincount(groups[list(big)], minlength=3) / 30000
    assert np.allclose(freq, 1 / 3, atol=0.02), freq  # uniform over groups, not over samples (0.8/0.15/0.05)
    # the engine's group_balanced epochs use the same weights
    it = BatchIterator(np.zeros((100, 2, 2, 3), np.uint8), np.zeros(100, np.int64), groups, 10, seed=0,
                       sampler="group_balanced")
    order = np.concatenate([it.epoch_order(e) for e in range(100)])
    assert np.allclose(np.bincount(groups[order], minlength=3) / len(order), 1 / 3, atol=0.02)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(groups)), batch_size=10,
                                         sampler=sampler)
    assert sum(len(b[0]) for b in loader) == 100
    with pytest.raises(ConfigError, match="one group id per sample"):
        group_balanced_sampler([])


def test_jtt_pieces_are_the_engine_jtt():
    from sharpdro.methods import jtt

    errors = torch.tensor([False, True, False, False, True])
    idx = jtt_upsampled_indices(errors, 3)
    assert np.array_equal(idx, jtt.upsampled_indices(errors.numpy(), 3))
    assert np.array_equal(np.bincount(idx), [1, 4, 1, 1, 4])  # each error point 1 + lambda times
    assert np.array_equal(jtt_loss_weights(errors, 3), [1, 3, 1, 1, 3])
    sampler = jtt_sampler(errors, 3, generator=torch.Generator().manual_seed(0))
    assert sorted(sampler) == sorted(idx.tolist())
    with pytest.raises(ConfigError, match="one bool per training sample"):
        jtt_upsampled_indices(np.array([0.2, 0.5]), 3)


# ------------------------------------------------------------------ DistributedDataParallel (2 CPU processes)
W, DB = 2, 12


class NoBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(64, C)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _ddp_setup():
    torch.manual_seed(0)
    model = NoBNNet().double()
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(DB, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, C, (DB,), generator=g),
                torch.tensor([0, 1, 0, 1, 1, 0, 3, 0, 3, 1, 3, 0])) for _ in range(2)]
    return model, batches


def _ddp_run(model, batches, rank=None):
    net = model if rank is None else nn.parallel.DistributedDataParallel(model)
    part = slice(None) if rank is None else slice(rank * DB // W, (rank + 1) * DB // W)
    opt = SharpDRO(net, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM), G, eta=0.5)
    crit = GroupDROLoss(G, eta=0.5)
    for x, y, g in batches:
        x, y, g = x[part], y[part], g[part]
        opt.step(lambda: F.cross_entropy(net(x), y, reduction="none"), g)
        crit(torch.ones(len(g), dtype=torch.float64) * (1 + g), g)  # q from the global batch's group losses
    return {"params": [p.detach().clone() for p in model.parameters()], "q": opt.q.clone(), "q_loss": crit.q.clone()}


def _ddp_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=W)
    try:
        model, batches = _ddp_setup()
        torch.save(_ddp_run(model, batches, rank), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_public_sharpdro_under_ddp_equals_one_process_on_the_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=W, join=True)
    model, batches = _ddp_setup()
    single = _ddp_run(model, batches)
    for rank in range(W):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["q"], single["q"], atol=1e-10) and torch.allclose(got["q_loss"], single["q_loss"])
        for a, b in zip(got["params"], single["params"]):
            assert torch.allclose(a, b, atol=1e-10)
