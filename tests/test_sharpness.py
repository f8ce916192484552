"""Sharpness analysis: closed forms on quadratic losses, exact weight restore, the command end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sharpdro.backends.torch.models import build_model
from sharpdro.backends.torch.loss_landscape import (filter_normalized_direction, measure_model, objective_from_loss,
                                               random_direction_increase, worst_case_increase)
from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.engine import train
from sharpdro.experiments.sharpness import SharpnessSettings, severity_entries, subset_indices

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RHO = 0.05


def _spd(n: int, eigenvalues, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


class Quadratic:
    """``L(theta) = 0.5 (theta - c)^T A (theta - c)`` over a 3x4 "weight" W and a 3-vector "bias" b.

    ``c`` is the current value of (W, b), so the measurement starts at the exact minimum,
    where the gradient is zero: the ascent's first step is a seeded random direction.
    """

    def __init__(self, eigenvalues=(4.0, 1.0, *np.linspace(0.9, 0.05, 13)), seed: int = 0):
        g = torch.Generator().manual_seed(seed + 1)
        self.W = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
        self.b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
        self.params = [self.W, self.b]
        self.A = _spd(15, eigenvalues, seed)
        self.c = self.flat().detach().clone()

    def flat(self) -> torch.Tensor:
        return torch.cat([self.W.flatten(), self.b])

    def loss(self) -> torch.Tensor:
        t = self.flat() - self.c
        return 0.5 * t @ self.A @ t

    def quad(self, d) -> float:
        v = torch.cat([x.flatten() for x in d])
        return float(0.5 * v @ self.A @ v)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _bitwise_equal(params, saved) -> bool:
    return all(torch.equal(p.detach(), s) for p, s in zip(params, saved))


# --------------------------------------------------------------------------- closed forms
def test_worst_case_at_a_minimum_is_half_rho2_lambda_max():
    q = Quadratic()
    before = _snapshot(q.params)
    res = worst_case_increase(objective_from_loss(q.loss, q.params), q.params, RHO, steps=60, seed=3)
    lam_max = float(torch.linalg.eigvalsh(q.A).max())
    assert res["loss"] == 0.0
    assert res["random_steps"] == 1  # zero gradient at the minimum: the first step is a seeded random one
    assert res["eps_norm"] == pytest.approx(RHO, rel=1e-12)
    assert res["worst_increase"] == pytest.approx(0.5 * RHO ** 2 * lam_max, rel=1e-9)
    assert res["worst_increase"] <= 0.5 * RHO ** 2 * lam_max * (1 + 1e-12)  # never above the true maximum
    assert _bitwise_equal(q.params, before)


def test_worst_case_adaptive_ball_closed_form():
    # ASAM ball ||eps / |w| || <= rho: eps = |w| u, so the maximum is 0.5 rho^2 lambda_max(T A T), T = diag|w|.
    q = Quadratic()
    res = worst_case_increase(objective_from_loss(q.loss, q.params), q.params, RHO, steps=200, adaptive=True)
    t = torch.diag(q.c.abs())
    lam_max = float(torch.linalg.eigvalsh(t @ q.A @ t).max())
    assert res["worst_increase"] == pytest.approx(0.5 * RHO ** 2 * lam_max, rel=1e-8)


def test_first_ascent_step_is_sam():
    q = Quadratic()
    with torch.no_grad():  # move away from the minimum: nonzero gradient g = A (w - c)
        q.W.add_(0.1)
    w = q.flat().detach() - q.c
    g = q.A @ w
    eps = RHO * g / g.norm()
    want = float(0.5 * (w + eps) @ q.A @ (w + eps) - 0.5 * w @ q.A @ w)
    res = worst_case_increase(objective_from_loss(q.loss, q.params), q.params, RHO, steps=1)
    assert res["random_steps"] == 0
    assert res["worst_increase"] == pytest.approx(want, rel=1e-12)
    more = worst_case_increase(objective_from_loss(q.loss, q.params), q.params, RHO, steps=20)
    assert more["worst_increase"] >= res["worst_increase"]  # more steps never lower the reported maximum


def test_random_directions_match_closed_form_exactly():
    q = Quadratic()
    before = _snapshot(q.params)
    radii = [0.01, 0.05, 0.2]
    k = 7
    res = random_direction_increase(objective_from_loss(q.loss, q.params), q.params,
                                    lambda j: filter_normalized_direction(q.params, 5, j), radii, count=k)
    quads = np.array([q.quad(filter_normalized_direction(q.params, 5, j)) for j in range(k)])
    want = np.array([[r * r * v for r in radii] for v in quads])  # 0.5 r^2 d^T A d per direction
    np.testing.assert_allclose(res["increases"], want, rtol=1e-10, atol=1e-18)
    np.testing.assert_allclose(res["mean_increase"], want.mean(0), rtol=1e-10)
    np.testing.assert_allclose(res["std_increase"], want.std(0, ddof=1), rtol=1e-8)
    assert _bitwise_equal(q.params, before)


def test_unit_directions_mean_is_half_r2_trace_over_n():
    # Random unit directions: exactly 0.5 r^2 mean_j d_j^T A d_j, and E[d^T A d] = tr(A) / n.
    q = Quadratic()
    g = torch.Generator().manual_seed(11)
    dirs = []
    for _ in range(4000):
        v = torch.randn(15, generator=g, dtype=torch.float64)
        v = v / v.norm()
        dirs.append([v[:12].view(3, 4), v[12:]])
    r = 0.1
    res = random_direction_increase(objective_from_loss(q.loss, q.params), q.params, dirs, [r])
    exact = 0.5 * r * r * np.mean([2 * q.quad(d) for d in dirs])
    assert res["mean_increase"][0] == pytest.approx(exact, rel=1e-10)
    expected = 0.5 * r * r * float(torch.trace(q.A)) / 15
    assert res["mean_increase"][0] == pytest.approx(expected, rel=0.05)  # Monte Carlo: ~1.3% std error


def test_filter_normalized_direction():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    lin = torch.randn(5, 7)
    bias = torch.randn(5)
    d = filter_normalized_direction([w, lin, bias], seed=0, index=2)
    np.testing.assert_allclose(d[0].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-9)
    np.testing.assert_allclose(d[1].norm(dim=1), lin.norm(dim=1), rtol=1e-5)
    assert torch.equal(d[2], torch.zeros(5))
    again = filter_normalized_direction([w, lin, bias], seed=0, index=2)
    assert all(torch.equal(a, b) for a, b in zip(d, again))
    other = filter_normalized_direction([w, lin, bias], seed=0, index=3)
    assert not torch.equal(d[0], other[0])
    # the same Gaussian draw for any dtype: a float32 copy of the weights gives the float32 direction
    d32 = filter_normalized_direction([w.float(), lin, bias], seed=0, index=2)
    np.testing.assert_allclose(d32[0].double(), d[0], rtol=1e-5)


# --------------------------------------------------------------------------- through a module
class QuadraticModule(nn.Module):
    """A module whose per-sample "loss" output is the quadratic: the model code path, a closed-form answer."""

    def __init__(self, q: Quadratic):
        super().__init__()
        self.W = nn.Parameter(q.W.detach().clone())
        self.b = nn.Parameter(q.b.detach().clone())
        self.register_buffer("A", q.A.clone())
        self.register_buffer("c", q.c.clone())

    def forward(self, x):
        t = torch.cat([self.W.flatten(), self.b]) - self.c
        return (0.5 * t @ self.A @ t).expand(x.shape[0])


def test_measure_model_quadratic_closed_form():
    q = Quadratic()
    model = QuadraticModule(q).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long)), (torch.zeros(2, 1), torch.zeros(2).long())]
    radii = [0.02, 0.1]
    res = measure_model(model, batches, rho=RHO, radii=radii, directions=4, ascent_steps=60, seed=9,
                        criterion=lambda out, y: out)
    lam_max = float(torch.linalg.eigvalsh(q.A).max())
    assert res["loss"] == 0.0
    assert res["worst_increase"] == pytest.approx(0.5 * RHO ** 2 * lam_max, rel=1e-9)
    params = list(model.parameters())
    quads = [q.quad(filter_normalized_direction(params, 9, j)) for j in range(4)]
    np.testing.assert_allclose(res["mean_increase"], [r * r * np.mean(quads) for r in radii], rtol=1e-10)
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_cnn_weights_restored_bit_for_bit():
    torch.manual_seed(0)
    model = build_model("cnn", 10, 8, width=8, dropout=0.2).train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.randn(16, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    kw = dict(rho=0.1, radii=[0.05, 0.5], directions=3, ascent_steps=3, seed=1)
    res = measure_model(model, batches, **kw)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # parameters and BN buffers
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert res["worst_increase"] > 0 and len(res["worst_history"]) == 3
    assert res["mean_increase"][1] > res["mean_increase"][0]
    again = measure_model(model, batches, **kw)
    assert again["worst_increase"] == res["worst_increase"]  # deterministic (seeded directions, eval mode)
    assert again["mean_increase"] == res["mean_increase"]
    adaptive = measure_model(model, batches, adaptive=True, **kw)
    assert adaptive["worst_increase"] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_subset_is_fixed_by_seed():
    a = subset_indices(500, 100, 0)
    assert len(a) == 100 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, subset_indices(500, 100, 0))
    assert not np.array_equal(a, subset_indices(500, 100, 1))
    assert np.array_equal(subset_indices(50, 100, 0), np.arange(50))


# --------------------------------------------------------------------------- the command
TINY = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
        "train.epochs=1", "train.batch_size=40", "train.progress=false", "train.threads=1", "eval.batch_size=256"]
ARGS = ["--directions", "3", "--ascent-steps", "2", "--radii", "0.05,0.1", "--max-images", "60", "--no-progress"]


@pytest.mark.filterwarnings("ignore:no training image at severity")
def test_command_end_to_end(tmp_path, capsys):
    runs = {}
    for algo in ("erm", "sharpdro"):
        runs[algo] = tmp_path / algo
        train(load_config("quickstart", [*TINY, f"algorithm.name={algo}"]), out_dir=runs[algo])
    ckpt = runs["erm"] / "checkpoints" / "best.pt"
    ckpt_bytes = ckpt.read_bytes()

    assert main(["sharpness", str(runs["erm"]), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "worst@0.05" in out and "sharpness.json" in out
    single = json.loads((runs["erm"] / "sharpness.json").read_text())
    entries = severity_entries(single)
    assert sorted(entries) == [0, 1, 2, 3, 4, 5]
    for e in entries.values():
        assert set(e) >= {"loss", "worst_increase", "radii", "mean_increase", "std_increase"}
        assert e["radii"] == [0.05, 0.1] and len(e["mean_increase"]) == 2 and len(e["std_increase"]) == 2
        assert e["worst_increase"] >= 0 and e["images"] == 60
    assert single["settings"]["rho"] == 0.05 and single["settings"]["directions"] == 3
    assert single["run"]["algorithm"] == "erm"
    for suffix in ("png", "svg"):
        data = (runs["erm"] / f"sharpness.{suffix}").read_bytes()
        assert data.startswith(PNG_MAGIC) if suffix == "png" else b"<svg" in data[:2000]
    assert ckpt.read_bytes() == ckpt_bytes

    cmp_dir = tmp_path / "cmp"
    assert main(["sharpness", str(runs["erm"]), str(runs["sharpdro"]), "--severities", "0", "5", "--out",
                 str(cmp_dir), *ARGS]) == 0
    assert "worst-case loss increase" in capsys.readouterr().out
    combined = json.loads((cmp_dir / "sharpness.json").read_text())
    assert [r["label"] for r in combined["runs"]] == ["erm", "sharpdro"]
    erm = combined["runs"][0]["result"]
    for s in ("0", "5"):  # same seed: same images and directions, so the same numbers as the single-run call
        assert erm[s]["worst_increase"] == single[s]["worst_increase"]
        assert erm[s]["mean_increase"] == single[s]["mean_increase"]
    assert "1" not in erm
    assert (cmp_dir / "sharpness.png").read_bytes().startswith(PNG_MAGIC)
    assert (runs["sharpdro"] / "sharpness.json").is_file()

    assert main(["sharpness", str(runs["erm"]), "--rho", "0", "--no-progress"]) == 2
    assert main(["sharpness", str(runs["erm"]), "--severities", "9", *ARGS]) == 2
    assert "not in the run's test split" in capsys.readouterr().err


def test_settings_validation():
    from sharpdro.experiments.sharpness import SharpnessError, parse_radii

    assert parse_radii("0.01,0.02, 0.05") == [0.01, 0.02, 0.05]
    with pytest.raises(SharpnessError):
        parse_radii("0.1,abc")
    for bad in (dict(rho=-1.0), dict(radii=[0.0]), dict(directions=0, ascent_steps=0), dict(split="train"),
                dict(max_images=0)):
        with pytest.raises(SharpnessError):
            SharpnessSettings(**bad).validate()
