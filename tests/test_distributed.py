"""Data parallelism: 2 CPU processes (Gloo) against one process with the whole batch.

One ``torch.multiprocessing.spawn`` of two ranks runs every case (start-up dominates the
cost).  Exactness: the model has no BatchNorm (per-replica batch statistics differ from the
global batch's by design; SyncBatchNorm is ``train.sync_bn``), float64, so the
distributed step equals the single-process step to rounding (atol 1e-10).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sharpdro.backends.torch.algorithms import build_algorithm
from sharpdro.backends.torch.distributed import Replicas, wrap_ddp

W, B, C, G = 2, 12, 3, 4
LR, MOM, WD = 0.1, 0.9, 5e-4
ATOL = 1e-10

# (label, algorithm, hparams, m_sharpness, compared with the single process)
CASES = [
    ("sharpdro", "sharpdro", {}, False, True),
    ("sharpdro_worst", "sharpdro", {"perturb_on": "worst"}, False, True),
    ("sharpdro_no_add_back", "sharpdro", {"add_back_first_grad": False, "gen_adjustment": 1.0}, False, True),
    ("groupdro", "groupdro", {}, False, True),
    ("sam", "sam", {"adaptive": True}, False, True),
    ("jtt", "jtt", {}, False, True),
    ("sharpdro_m_sharpness", "sharpdro", {}, True, False),
    ("agnostic_threshold", "sharpdro_agnostic", {"select": "threshold"}, False, False),
    # the sampled second pass: each replica draws from its shard (checked against its own reference below)
    ("sharpdro_sampled", "sharpdro", {"second_pass_fraction": 0.5, "rho": 0.5, "eta": 0.5}, False, False),
    ("sam_sampled", "sam", {"second_pass_fraction": 0.5, "rho": 0.5}, False, False),
    ("agnostic_global", "sharpdro_agnostic", {"select": "global", "score": "loss", "warmup_epochs": 0,
                                               "fraction": 0.25, "refresh_steps": 1,
                                               "second_pass_selected_only": True}, False, False),
]


class NoBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(16, C)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


def _model():
    torch.manual_seed(0)
    return NoBNNet().double().train()


def _batches(steps=2):
    g = torch.Generator().manual_seed(1)
    out = []
    for k in range(steps):
        x = torch.randn(B, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (B,), generator=g)
        # group 2 empty; group 3 only in rank 1's half; rank 0's half has groups 0 and 1 only
        groups = torch.tensor([0, 1, 0, 1, 1, 0] + [3, 0, 3, 1, 3, 0])
        idx = torch.arange(B) + k * B
        out.append((x, y, groups, idx))
    return out


def _build(name, hp, model):
    algo = build_algorithm(name, model, C, G, hp, 2 * B)
    if name == "jtt":
        errors = torch.zeros(2 * B, dtype=torch.bool)
        errors[::3] = True
        algo.set_error_set(errors)
    if hp.get("gen_adjustment"):
        algo.set_group_counts(torch.tensor([10, 8, 0, 3]))
    algo.mark_prepared()
    return algo


def _result(algo):
    out = {"params": [p.detach().clone() for p in algo.model.parameters()]}
    if hasattr(algo, "q"):
        out["q"] = algo.q.detach().clone()
    for key in ("score_memory", "memory_labels", "class_stats", "threshold"):
        if hasattr(algo, key):
            out[key] = getattr(algo, key).detach().clone()
    return out


def _single(name, hp):
    algo = _build(name, hp, _model())
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=LR, momentum=MOM, weight_decay=WD))
    for x, y, g, idx in _batches():
        algo.update(x, y, g if algo.uses_groups else None, idx)
    return _result(algo)


def _worker(rank, port, out_dir, engine_cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(W),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=W)
    try:
        results = {}
        half = slice(rank * B // W, (rank + 1) * B // W)
        for label, name, hp, m_sharp, _ in CASES:
            algo = _build(name, hp, _model())
            ddp = wrap_ddp(algo.model, torch.device("cpu"))
            algo.configure(torch.optim.SGD(algo.model.parameters(), lr=LR, momentum=MOM, weight_decay=WD),
                           None, Replicas(world_size=W, rank=rank, net=ddp, ddp=ddp,
                                          per_replica_perturbation=m_sharp))
            draws = []
            for x, y, g, idx in _batches():
                algo.update(x[half], y[half], g[half] if algo.uses_groups else None, idx[half])
                if getattr(algo, "sampled", False):
                    draws.append(algo.last_draw.clone())
            results[label] = {**_result(algo), "draws": draws}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        # the engine end to end: rank 0 alone writes the run directory
        from sharpdro.data.splits import build_splits
        from sharpdro.engine import train

        for i, (cfg, run) in enumerate(engine_cfg):
            summary = train(cfg, out_dir=run, splits=build_splits(cfg, progress=False))
            torch.save(summary, Path(out_dir) / f"summary{rank}-{i}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    from sharpdro.config import load_config

    out = tmp_path_factory.mktemp("ddp")
    base = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
            "train.epochs=2", "train.batch_size=40", "train.progress=false", "train.threads=1",
            "algorithm.name=sharpdro", f"data.cache_dir={out / 'cache'}"]
    cfg = load_config("quickstart", base)
    # ERM for 3 epochs (selects epoch index 1 on the 16x16 digits: not the last, so best.pt's weights are what
    # is tested), with the test set at every epoch and once, after training
    three = base + ["train.epochs=3", "algorithm.name=erm", "data.image_size=16"]
    engine = [(cfg, str(out / "run")), (load_config("quickstart", three), str(out / "every")),
              (load_config("quickstart", three + ["eval.test=selected"]), str(out / "selected"))]
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out), engine), nprocs=W, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(W)]
    summaries = [torch.load(out / f"summary{r}-0.pt", weights_only=False) for r in range(W)]
    return ranks, summaries, cfg, out / "run"


@pytest.mark.parametrize("label,name,hp", [(c[0], c[1], c[2]) for c in CASES if c[4]])
def test_distributed_step_equals_single_process_step(spawned, label, name, hp):
    """Two steps of 2 x B/2 samples == two steps of B samples: same weights, same q, on both ranks."""
    ranks, _, _, _ = spawned
    ref = _single(name, hp)
    for r in range(W):
        got = ranks[r][label]
        for a, b in zip(got["params"], ref["params"]):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        if "q" in ref:
            torch.testing.assert_close(got["q"], ref["q"], atol=ATOL, rtol=0)
            assert not torch.allclose(ref["q"], torch.full_like(ref["q"], 1 / G))  # q moved


@pytest.mark.parametrize("label", [c[0] for c in CASES if not c[4]])
def test_replicas_agree_where_the_step_is_per_replica(spawned, label):
    """m-sharpness (per-replica eps) and the agnostic variant: every rank ends with the same state."""
    ranks, _, _, _ = spawned
    a, b = ranks[0][label], ranks[1][label]
    for x, y in zip(a["params"], b["params"]):
        torch.testing.assert_close(x, y, atol=ATOL, rtol=0)
    for key in ("q", "score_memory", "memory_labels", "class_stats", "threshold"):
        if key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, equal_nan=True)
    if "score_memory" in a:  # both ranks' scores were written on both ranks
        assert int(torch.isfinite(a["score_memory"]).sum()) == 2 * B
    if label == "sharpdro_m_sharpness":  # a different step from the global perturbation
        assert any(not torch.allclose(x, y) for x, y in zip(a["params"], ranks[0]["sharpdro"]["params"]))


def test_engine_under_two_processes_writes_once_and_resumes_on_one(spawned, tmp_path):
    from sharpdro.engine import evaluate_run, train
    from sharpdro.io import read_jsonl

    _, summaries, cfg, run = spawned
    assert summaries[0]["processes"] == 2
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]  # sharded evaluation, summed
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]  # one writer: one line per epoch
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "summary.json").is_file()
    from sharpdro.data.splits import build_splits

    n_train = len(build_splits(cfg, progress=False).train)
    # every training image once per epoch, summed over the ranks (drop_last keeps whole global batches)
    assert sum(records[0]["train"]["group_count"].values()) == n_train // 40 * 40
    # the checkpoint holds the unwrapped model: it loads in one process, whose evaluation matches
    result = evaluate_run(run, progress=False)
    assert result["test"]["accuracy"] == summaries[0]["test_accuracy"]
    resumed = train(cfg, out_dir=run, resume=True)
    assert resumed["test_accuracy"] == summaries[0]["test_accuracy"]


def test_test_set_at_the_selected_epoch_under_two_processes(spawned):
    """eval.test=selected: every rank loads the selected epoch's weights (rank 0 reads, broadcasts) and takes
    part in the sharded test evaluation; the result is the eval.test=every run's at that epoch."""
    from sharpdro.io import read_jsonl

    _, _, _, run = spawned
    out = run.parent
    every = torch.load(out / "summary0-1.pt", weights_only=False)
    sel = [torch.load(out / f"summary{r}-2.pt", weights_only=False) for r in range(W)]
    assert sel[0]["test_accuracy"] == sel[1]["test_accuracy"] == every["test_accuracy"]
    assert sel[0]["selected_epoch"] == every["selected_epoch"] < 2  # not the last epoch: best.pt's weights
    records = read_jsonl(out / "selected" / "metrics.jsonl")
    assert [("test" in r) for r in records] == [r["epoch"] == every["selected_epoch"] for r in records]
    for a, b in zip(read_jsonl(out / "every" / "metrics.jsonl"), records):  # the same training
        assert {k: v for k, v in a.items() if k not in ("test", "seconds")} == \
            {k: v for k, v in b.items() if k not in ("test", "seconds")}


@pytest.mark.parametrize("label", ["sharpdro_sampled", "sam_sampled"])
def test_sampled_step_is_the_sum_of_the_replicas_estimates(spawned, label):
    """Each replica r draws m_r = ceil(f B/W) of its own samples with the GLOBAL weights a_i
    (q and the group counts of the global batch) and contributes (A_r / m_r) sum_j grad l_{i_j}(w + eps),
    A_r = sum of its a_i; DDP's average of W x these is their sum: the estimate of the global sharpness
    gradient.  Reference written out here from the draws the replicas made."""
    from torch.func import functional_call

    ranks, _, _, _ = spawned
    name, hp = {c[0]: (c[1], c[2]) for c in CASES}[label]
    rho, eta = hp["rho"], hp.get("eta", 0.0)
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOM, weight_decay=WD)
    q = torch.full((G,), 1.0 / G, dtype=torch.float64)
    for step, (x, y, g, _idx) in enumerate(_batches()):
        ws = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        per = F.cross_entropy(functional_call(model, dict(zip(names, ws)), (x,)), y, reduction="none")
        g1 = torch.autograd.grad(per.mean(), ws)
        n = torch.stack([(g == k).sum() for k in range(G)]).double()
        if name == "sharpdro":
            L = torch.stack([per[g == k].mean() if n[k] > 0 else per.sum() * 0 for k in range(G)]).detach()
            q = q * torch.exp(eta * (L - L.max()))
            q = q / q.sum()
            a = (q / n.clamp(min=1))[g]
        else:
            a = torch.full((B,), 1.0 / B, dtype=torch.float64)
        norm = torch.sqrt(sum((t ** 2).sum() for t in g1))
        w_adv = [(w + rho * t / (norm + 1e-12)).detach().requires_grad_(True) for w, t in zip(ws, g1)]
        per_adv = F.cross_entropy(functional_call(model, dict(zip(names, w_adv)), (x,)), y, reduction="none")
        loss = 0.0
        for r in range(W):
            local = torch.arange(r * B // W, (r + 1) * B // W)
            d = local[ranks[r][label]["draws"][step]]
            assert len(d) == 3  # ceil(0.5 * 6)
            loss = loss + a[local].sum() / len(d) * per_adv[d].sum()
        g2 = torch.autograd.grad(loss, w_adv)
        for p, u, v in zip(model.parameters(), g1, g2):
            p.grad = u + v if name == "sharpdro" else v.clone()
        opt.step()
    for r in range(W):
        for a_, b_ in zip(ranks[r][label]["params"], model.parameters()):
            torch.testing.assert_close(a_, b_.detach(), atol=ATOL, rtol=0)
        if name == "sharpdro":
            torch.testing.assert_close(ranks[r][label]["q"], q, atol=ATOL, rtol=0)
    # the replicas drew different subsamples (own seeds), at least once
    assert any(not torch.equal(d0, d1) for d0, d1 in zip(ranks[0][label]["draws"], ranks[1][label]["draws"]))
