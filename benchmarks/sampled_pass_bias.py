"""Bias of the sampled second pass (``algorithm.second_pass_fraction``), measured in float64.

    PYTHONPATH=src python benchmarks/sampled_pass_bias.py [--draws 300] [--fraction 0.25] [--out FILE]

Setting: the ``cnn`` model (BatchNorm after each convolution), 16 px, 10 classes, batch
128 of seeded noise images with severity groups 0..5 in Poisson(1) proportions, after 20
plain SGD steps (so the weights are not at their initialisation), group weights q
concentrated on the rare groups (0.05, 0.05, 0.1, 0.2, 0.3, 0.3).  The step runs with
lr 0 and ``add_back_first_grad=false``, so the gradient left in ``.grad`` is the second
pass's alone; q is reset before every repetition.

Reported, relative to ||g_exact|| (g_exact: the exact step's second-pass gradient,
f = 1, BatchNorm on the batch at w + eps):
- ``expected_first_pass``: the exact expectation of the sampled estimator with the
  first pass's statistics (enumerated: the sum over samples i of a_i / A times the
  estimate from m copies of i), i.e. where the sampled step points on average;
- the mean over ``--draws`` draws with the first pass's statistics and with the
  subsample's own, their distance to ``expected_first_pass`` in standard errors
  (max over coordinates) and to g_exact;
- the noise of one draw.
"""
from __future__ import annotations

import argparse
import copy
import json
import math

import torch

from sharpdro.backends.torch.algorithms import build_algorithm
from sharpdro.backends.torch.models import build_model

C, G, B, SIZE = 10, 6, 128, 16
Q = torch.tensor([0.05, 0.05, 0.1, 0.2, 0.3, 0.3], dtype=torch.float64)


def setup(seed=0):
    torch.manual_seed(seed)
    model = build_model("cnn", C, SIZE, width=16).double().train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    p = torch.tensor([math.exp(-1) / math.factorial(k) for k in range(G)], dtype=torch.float64)
    groups = torch.multinomial(p / p.sum(), B, replacement=True, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(20):  # move away from the initialisation
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, (x, y, groups, torch.arange(B))


def second_pass_grad(model, batch, hp, draw_fn=None):
    algo = build_algorithm("sharpdro", copy.deepcopy(model), C, G,
                           {"rho": 0.05, "eta": 0.0, "add_back_first_grad": False, **hp}, B)
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=0.0))
    algo.draw_fn = draw_fn
    x, y, g, idx = batch

    def one():
        algo.q.copy_(Q)  # eta 0: q stays Q in the step
        algo.update(x, y, g, idx)
        return torch.cat([p.grad.flatten() for p in algo.model.parameters()])

    return one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, batch = setup()
    groups = batch[2]
    counts = torch.bincount(groups, minlength=G).double()
    a = (Q / counts.clamp(min=1))[groups]
    A = float(a.sum())
    m = math.ceil(args.fraction * B)
    exact = second_pass_grad(model, batch, {})()
    scale = float(exact.norm())

    # exact expectation of the first-pass-statistics estimator, by enumeration
    box = {}
    enum = second_pass_grad(model, batch, {"second_pass_fraction": args.fraction},
                            draw_fn=lambda w, m_: torch.full((m_,), box["i"], dtype=torch.long))
    expected = torch.zeros_like(exact)
    for i in range(B):
        if a[i] > 0:
            box["i"] = i
            expected += float(a[i]) / A * enum()

    out = {"setting": {"model": "cnn width 16", "batch": B, "image_size": SIZE, "fraction": args.fraction,
                       "m": m, "draws": args.draws, "group_counts": counts.long().tolist(), "q": Q.tolist(),
                       "dtype": "float64"},
           "norm_exact": scale,
           "expected_first_pass_vs_exact": {
               "relative_distance": float((expected - exact).norm()) / scale,
               "cosine": float(expected @ exact / (expected.norm() * exact.norm()))}}
    for bn in ("first_pass", "sample"):
        for scheme in ("systematic", "multinomial"):
            step = second_pass_grad(model, batch, {"second_pass_fraction": args.fraction, "sampled_bn_stats": bn,
                                                   "second_pass_sampling": scheme})
            draws = torch.stack([step() for _ in range(args.draws)])
            mean = draws.mean(0)
            se = draws.std(0) / math.sqrt(args.draws)
            z = ((mean - expected).abs() / se.clamp(min=1e-300)).max()
            z_exact = ((mean - exact).abs() / se.clamp(min=1e-300)).max()
            out[f"{bn}/{scheme}"] = {
                "mean_vs_expected_first_pass_relative": float((mean - expected).norm()) / scale,
                "mean_vs_expected_first_pass_max_z": float(z),
                "mean_vs_exact_relative": float((mean - exact).norm()) / scale,
                "mean_vs_exact_max_z": float(z_exact),
                "mean_cosine_to_exact": float(mean @ exact / (mean.norm() * exact.norm())),
                "one_draw_noise_relative": float((draws - mean).norm(dim=1).mean()) / scale,
                "standard_error_of_mean_relative": float((draws - mean).norm(dim=1).mean()) / scale
                / math.sqrt(args.draws),
            }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
