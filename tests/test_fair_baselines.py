"""Baselines as their authors run them, and DRO that does not starve rare groups (issue 11).

JTT's upsampled epochs (counted on a real run), EIIL's inference with its authors' lr and a
stopping rule, the absent-group readings of the q update on a stream with a rare hard group,
the group-balanced sampler, ASAM's radius, and the job names of changed defaults.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from sharpdro import methods
from sharpdro.backends.torch.algorithms import build_algorithm
from sharpdro.backends.torch.algorithms.base import eg_update_
from sharpdro.backends.torch.algorithms.jtt import JTT
from sharpdro.config import ConfigError, default_config, load_config, validate
from sharpdro.data.batches import BatchIterator, SamplingPlan
from sharpdro.data.splits import build_splits
from sharpdro.engine import train
from sharpdro.errors import SharpDROError
from sharpdro.experiments.sweep_spec import job_hash
from sharpdro.io import read_jsonl
from sharpdro.methods import eiil as eiil_spec
from sharpdro.methods import jtt as jtt_spec

TINY = ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
        "train.epochs=1", "train.batch_size=40", "train.progress=false", "train.threads=1", "eval.batch_size=256"]


def tiny(*extra):
    return load_config("quickstart", [*TINY, *extra])


@pytest.fixture(scope="module")
def splits():
    return build_splits(tiny(), progress=False)


# ----------------------------------------------------------------------------- JTT
def test_jtt_upsampled_epoch_counts_on_a_real_run(tmp_path, splits, monkeypatch):
    """The second stage's epoch is the data plus lambda copies of E: counted from the batches the step receives."""
    lam = 3
    seen: list[np.ndarray] = []
    update = JTT.update

    def spy(self, x, y, groups, idx):
        seen.append(idx.cpu().numpy().copy())
        return update(self, x, y, groups, idx)

    monkeypatch.setattr(JTT, "update", spy)
    cfg = tiny("algorithm.name=jtt", "algorithm.jtt_epochs=1", f"algorithm.jtt_lambda_up={lam}")
    assert cfg["algorithm"]["jtt_mode"] == "upsample"  # the default: the authors' JTT
    summary = train(cfg, out_dir=tmp_path / "run", splits=splits)
    n = len(splits.train)
    errors = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["algorithm"]["error_set"]
    errors = errors.numpy()
    assert 0 < errors.sum() < n
    # the epoch: every index once plus lam copies of each error point, N + lam |E| samples, shuffled
    from sharpdro.engine import _BatchFactory

    factory = _BatchFactory(cfg, splits.train)
    factory.set_plan(SamplingPlan(indices=jtt_spec.upsampled_indices(errors, lam)))
    order = factory.train.epoch_order(0)
    assert len(order) == n + lam * int(errors.sum())
    counts = np.bincount(order, minlength=n)
    assert np.all(counts[errors] == 1 + lam) and np.all(counts[~errors] == 1)
    # what the step saw is that epoch (its last partial batch dropped, as in every training epoch)
    got = np.concatenate(seen)
    B = cfg["train"]["batch_size"]
    assert len(got) == (len(order) // B) * B and len(order) - len(got) < B
    assert np.array_equal(got, order[:len(got)])
    seen_counts = np.bincount(got, minlength=n)
    dropped = np.bincount(order[len(got):], minlength=n)
    assert np.array_equal(seen_counts + dropped, counts)
    # the record of what the pre-stage found
    pre = summary["prestage"]
    assert pre == json.loads((tmp_path / "run" / "prestage.json").read_text())
    assert pre["error_set_size"] == int(errors.sum()) and pre["train_size"] == n
    assert pre["error_set_fraction"] == pytest.approx(errors.mean())
    assert pre["identification_train_accuracy"] == pytest.approx(1 - errors.mean())
    assert pre["epoch_samples"] == len(order) and pre["mode"] == "upsample"
    assert pre["identification"]["lr"] == cfg["train"]["lr"] and pre["identification"]["epochs"] == 1
    sev = splits.train.severity
    assert pre["members_fraction_by_severity"] == {str(s): pytest.approx(errors[sev == s].mean())
                                                   for s in np.unique(sev)}
    rec = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
    assert sum(rec["train"]["group_count"].values()) == len(got)


def test_jtt_reweight_keeps_n_point_epochs_and_upsample_needs_whole_lambda():
    assert np.array_equal(jtt_spec.upsampled_indices(np.array([0, 1, 0, 1], bool), 2), [0, 1, 2, 3, 1, 1, 3, 3])
    assert np.array_equal(jtt_spec.loss_weights(np.array([0, 1], bool), 4.0, "reweight"), [1.0, 4.0])
    assert np.array_equal(jtt_spec.loss_weights(np.array([0, 1], bool), 4.0, "upsample"), [1.0, 1.0])
    algo = build_algorithm("jtt", torch.nn.Linear(3, 2), 2, 1, {"jtt_mode": "reweight"}, train_size=5)
    algo.set_error_set(torch.tensor([1, 0, 0, 1, 0], dtype=torch.bool))
    algo.mark_prepared()
    assert algo.sampling_plan().indices is None
    with pytest.raises(ConfigError, match="whole number"):
        methods.get("jtt").validate({**default_config()["algorithm"], "jtt_lambda_up": 2.5})
    methods.get("jtt").validate({**default_config()["algorithm"], "jtt_lambda_up": 2.5, "jtt_mode": "reweight"})


# ----------------------------------------------------------------------------- EIIL
def planted(n=3000, C=5, frac=0.3, seed=0):
    """Logits of a reference model that is right (confidently) on environment 0, wrong on environment 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    env = (rng.random(n) < frac).astype(np.int64)
    logits = rng.normal(0, 0.5, (n, C)).astype(np.float32)
    logits[np.arange(n), np.where(env == 1, (y + 1) % C, y)] += 3.0
    return logits, y, env


def test_eiil_default_lr_recovers_a_planted_split_and_converges():
    h = default_config()["algorithm"]
    assert h["eiil_lr"] == 0.001 and h["eiil_steps"] == 10000  # the authors' settings
    logits, y, env = planted()
    init = np.random.default_rng(1).standard_normal(len(y)).astype(np.float32)
    r = eiil_spec.run_inference(logits, y, h["eiil_steps"], h["eiil_lr"], init=init, tol=h["eiil_tol"])
    assert r.converged and r.steps < h["eiil_steps"]  # the stopping rule ended it
    assert (r.env == env).mean() >= 0.95
    long = eiil_spec.run_inference(logits, y, 30000, h["eiil_lr"], init=init, stop=False)
    assert r.penalty == pytest.approx(long.penalty, rel=0.01)
    assert r.summary()["environment_sizes"] == np.bincount(r.env, minlength=2).tolist()
    # a budget too small for lr 1e-3: not converged, and said so
    short = eiil_spec.run_inference(logits, y, 500, h["eiil_lr"], init=init, tol=h["eiil_tol"])
    assert short.steps == 500 and not short.converged
    assert short.penalty < 0.9 * long.penalty
    # without early stopping the whole budget runs and the verdict is still given
    full = eiil_spec.run_inference(logits, y, 5000, h["eiil_lr"], init=init, stop=False)
    assert full.steps == 5000 and full.converged


def test_eiil_prestage_record_and_balanced_environments(tmp_path, splits):
    cfg = tiny("algorithm.name=eiil", "algorithm.eiil_epochs=2", "data.sampler=group_balanced", "train.epochs=1")
    summary = train(cfg, out_dir=tmp_path / "run", splits=splits)
    pre = summary["prestage"]
    for key in ("penalty", "steps", "converged", "environment_sizes", "reference"):
        assert key in pre, key
    assert isinstance(pre["converged"], bool) and sum(pre["environment_sizes"]) == len(splits.train)
    ref = pre["reference"]
    assert ref["selection"] == "val_loss" and len(ref["val_loss_by_epoch"]) == 2
    assert ref["kept_epoch"] == 1 + int(np.argmin(ref["val_loss_by_epoch"]))


# ----------------------------------------------------------------------------- q and absent groups
def stream(steps=3000, B=20, props=(0.6, 0.39, 0.01), losses=(1.0, 1.5, 3.0), seed=0):
    """Batches of group ids drawn from ``props``; group k has loss losses[k] (the rare group is the hardest)."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        g = rng.choice(len(props), size=B, p=props)
        counts = np.bincount(g, minlength=len(props))
        yield torch.tensor(np.where(counts > 0, losses, 0.0)), torch.tensor(counts, dtype=torch.float64)


@pytest.mark.parametrize("q_absent", ["zero", "skip"])
def test_rare_hard_group_keeps_its_weight_only_under_skip(q_absent):
    algo = build_algorithm("groupdro", torch.nn.Linear(3, 2).double(), 2, 3, {"eta": 0.05, "q_absent": q_absent})
    absent_steps = 0
    for L, counts in stream():
        before = algo.q.clone()
        q = algo.update_q(L, counts)
        assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
        if counts[2] == 0:
            absent_steps += 1
            if q_absent == "skip":
                assert torch.equal(q[2], before[2])  # an absent group's q does not move
    assert absent_steps > 2000  # the rare group is absent from most batches
    if q_absent == "skip":
        assert int(algo.q.argmax()) == 2 and float(algo.q[2]) > 0.9  # the hardest group ends on top
    else:
        assert float(algo.q[2]) < 1e-6  # it collapses although its loss is the highest


def test_skip_equals_zero_when_every_group_is_present():
    q0 = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    L = torch.tensor([1.0, 0.5, 0.2, 2.0], dtype=torch.float64)
    a = eg_update_(q0.clone(), L, 0.7)
    b = eg_update_(q0.clone(), L, 0.7, torch.ones(4, dtype=torch.bool))
    assert torch.allclose(a, b, atol=1e-15)
    # one absent group: it keeps its q, the others share the rest in the EG proportions
    present = torch.tensor([True, True, False, True])
    c = eg_update_(q0.clone(), L, 0.7, present)
    assert c[2] == q0[2] and float(c.sum()) == pytest.approx(1.0, abs=1e-15)
    w = q0 * torch.exp(0.7 * L)
    ref = w[present] / w[present].sum() * (1 - q0[2])
    assert torch.allclose(c[present], ref, atol=1e-15)


# ----------------------------------------------------------------------------- the group-balanced sampler
def test_group_balanced_sampler_equalises_groups_with_replacement():
    sizes = [600, 300, 80, 15, 4, 1]  # a Poisson-like severity mixture
    sev = np.repeat(np.arange(6), sizes)
    n = len(sev)
    it = BatchIterator(np.zeros((n, 2, 2, 3), np.uint8), np.zeros(n, np.int64), sev, 50, seed=3,
                       sampler="group_balanced")
    epochs = 300
    per_group = np.zeros((epochs, 6))
    repeats = 0
    for e in range(epochs):
        order = it.epoch_order(e)
        assert len(order) == n
        per_group[e] = np.bincount(sev[order], minlength=6)
        repeats += int(max(Counter(order.tolist()).values()) > 1)
    mean = per_group.mean(0)
    se = per_group.std(0, ddof=1) / np.sqrt(epochs)
    assert np.all(np.abs(mean - n / 6) < 4 * se + 1e-9), (mean, se)  # equal in expectation
    assert repeats == epochs  # with replacement: the rare points repeat within an epoch
    assert not np.array_equal(it.epoch_order(0), it.epoch_order(1))
    assert np.array_equal(it.epoch_order(5), it.epoch_order(5))  # seeded by (seed, epoch)
    # balancing other groups than the severities (EIIL's environments)
    env = (np.arange(n) % 10 == 0).astype(np.int64)
    order = it.planned(SamplingPlan(groups=env), "group_balanced").epoch_order(0)
    assert abs(env[order].mean() - 0.5) < 0.05


def test_sampler_applies_to_group_weighted_methods_only(tmp_path, splits):
    from sharpdro.engine import sampler

    with pytest.raises(SharpDROError, match="data.sampler"):
        train(tiny("algorithm.name=erm", "data.sampler=group_balanced"), out_dir=tmp_path / "r", splits=splits)
    assert {m.name for m in methods.all_methods() if m.group_sampling} == {"groupdro", "sharpdro", "eiil"}
    assert default_config()["data"]["sampler"] == "auto"  # group_balanced where it applies, uniform elsewhere
    for name in methods.names():
        expected = "group_balanced" if methods.get(name).group_sampling else "uniform"
        assert sampler(validate({"algorithm": {"name": name}})) == expected, name
        assert sampler(validate({"algorithm": {"name": name}, "data": {"sampler": "uniform"}})) == "uniform"


# ----------------------------------------------------------------------------- ASAM, and job names
def test_asam_radius_is_the_authors_unless_given():
    assert validate({"algorithm": {"name": "sam"}})["algorithm"]["rho"] == 0.05
    assert validate({"algorithm": {"name": "sam", "adaptive": True}})["algorithm"]["rho"] == 2.0
    assert validate({"algorithm": {"name": "sam", "adaptive": True, "rho": 0.5}})["algorithm"]["rho"] == 0.5
    algo = build_algorithm("sharpdro", torch.nn.Linear(3, 2), 2, 3, {"adaptive": True})
    assert algo.rho == 2.0


def test_changed_defaults_keep_old_job_names():
    old_default_eiil = validate({"algorithm": {"name": "eiil", "eiil_steps": 2000, "eiil_epochs": 1}})
    new_default_eiil = validate({"algorithm": {"name": "eiil"}})
    assert job_hash(old_default_eiil) == job_hash(validate({"algorithm": {"name": "eiil", "eiil_epochs": 1,
                                                                           "eiil_steps": 2000}}))
    assert job_hash(new_default_eiil) != job_hash(old_default_eiil)  # a different computation, a new name
    # ERM does not read the EIIL keys: at the former or the new default it is the same job
    assert job_hash(validate({"algorithm": {"eiil_steps": 2000}})) == job_hash(validate({}))
    assert job_hash(validate({"algorithm": {"eiil_steps": 500}})) != job_hash(validate({}))


def test_committed_baseline_measurements_keep_their_job_names():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "docs" / "baselines" / "sweep"
    folders = sorted(d for d in root.iterdir() if (d / "config.yaml").is_file()) if root.is_dir() else []
    for d in folders:
        assert job_hash(validate(yaml.safe_load((d / "config.yaml").read_text()))) == d.name


@pytest.mark.parametrize("name", ["groupdro", "sharpdro", "eiil"])
def test_a_full_step_leaves_an_absent_group_alone_under_skip(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()
    x, y = torch.randn(8, 3, 2, 2, dtype=torch.float64), torch.randint(0, 3, (8,))
    g = torch.tensor([0, 0, 1, 1, 3, 3, 0, 1])  # group 2 absent
    hp = {"q_absent": "skip", "eta": 0.5}
    if name == "eiil":
        algo = build_algorithm(name, model, 3, 4, {**hp, "eiil_robust": "groupdro"}, train_size=8)
        algo.set_environments(torch.tensor([0, 0, 0, 0, 0, 0, 0, 0]))  # environment 1 absent
        robust, idx = algo.robust, torch.arange(8)
    else:
        algo = build_algorithm(name, model, 3, 4, hp, train_size=8)
        robust, idx = algo, torch.arange(8)
    algo.configure(torch.optim.SGD(model.parameters(), lr=0.1))
    robust.q.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)[: robust.q.numel()] /
                   torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)[: robust.q.numel()].sum())
    before = robust.q.clone()
    algo.update(x, y, g if name != "eiil" else None, idx)
    absent = 2 if name != "eiil" else 1
    assert robust.q[absent] == before[absent] and float(robust.q.sum()) == pytest.approx(1.0, abs=1e-12)
    if name != "eiil":  # the present groups moved
        assert not torch.equal(robust.q, before)
