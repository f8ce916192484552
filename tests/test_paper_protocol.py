"""The paper sweeps (configs/sweeps/paper_*.yaml): the full grid, equal tuning, each dataset's recipe, and what
their header comments say they run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sharpdro.config import load_config, shipped_file
from sharpdro.experiments.sweep_spec import expand, load_sweep
from sharpdro.experiments.tuning import trial_values
from sharpdro.experiments.tuning_final import final_jobs
from sharpdro.metrics import summarize
from sharpdro.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
# The paper's protocol (docs/paper_protocol.md): network, training images per class, image size
PAPER = {"cifar10": ("wrn28_2", 4000, None), "cifar100": ("wrn28_2", 400, None), "imagenet30": ("resnet18", 1000, 64)}
METHODS = {"erm", "sam", "groupdro", "jtt", "eiil", "sharpdro", "sharpdro_agnostic"}
CORRUPTIONS = {"gaussian_noise", "jpeg_compression"}
# The official code's hyperparameters (the README command and train.py), written out here on their own
RECIPE = {
    "train": {"epochs": 200, "batch_size": 100, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005,
              "schedule": "step", "milestones": [0.3, 0.6, 0.8], "gamma": 0.2},
    "data": {"protocol": "per_class_floor", "poisson_lambda": 1.0, "max_severity": 5, "flip": True,
             "crop_padding": 0},
    "eval": {"batch_size": 128, "selection": "worst"},
}


def _subset(section: dict, ref: dict) -> dict:
    return {k: section[k] for k in ref}


def test_the_cifar10_recipe_is_the_official_one_and_the_other_bases_share_it():
    c10 = load_config("cifar10")
    for section, ref in RECIPE.items():
        assert _subset(c10[section], ref) == ref, section
    assert c10["algorithm"]["rho"] == 0.05 and c10["algorithm"]["eta"] == 0.01
    for name in ("cifar100", "imagenet30"):
        cfg = load_config(name)
        assert cfg["train"] == c10["train"] and cfg["eval"] == c10["eval"], name
        assert _subset(cfg["data"], RECIPE["data"]) == RECIPE["data"], name


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_paper_sweep_runs_every_method_and_corruption_with_equal_tuning_on_the_recipe(dataset):
    spec = load_sweep(f"paper_{dataset}")  # the shipped name finds the packaged file
    assert shipped_file(f"paper_{dataset}", "sweeps").read_bytes() == \
        (REPO / "configs" / "sweeps" / f"paper_{dataset}.yaml").read_bytes()
    tune = spec.tune
    assert set(tune["methods"]) == METHODS and set(spec.grid["data.corruption"]) == CORRUPTIONS
    assert len(spec.grid) == 1 and spec.include == []
    assert len(tune["final_seeds"]) == 3 and not set(tune["seeds"]) & set(tune["final_seeds"])
    assert tune["trials"] >= 8
    jobs = expand(spec)
    network, per_class, size = PAPER[dataset]
    from sharpdro.experiments.sweep_spec import resolve_precision

    c10 = resolve_precision(load_config("cifar10"))  # jobs run in the precision auto resolves to where expanded
    counts: dict[tuple, int] = {}
    for job in jobs:
        cfg = job.config
        assert cfg["data"]["dataset"] == dataset and cfg["model"]["name"] == network
        assert cfg["data"]["train_per_class"] == per_class and cfg["data"]["image_size"] == size
        assert cfg["train"] == c10["train"] and cfg["eval"] == c10["eval"]
        assert _subset(cfg["data"], RECIPE["data"]) == RECIPE["data"]
        assert cfg["seed"] in tune["seeds"]
        key = (cfg["data"]["corruption"], cfg["algorithm"]["name"])
        counts[key] = counts.get(key, 0) + 1
        if job.varying == (f"data.corruption={key[0]}", f"algorithm.name={key[1]}", f"seed={cfg['seed']}"):
            assert cfg["algorithm"]["rho"] == 0.05 and cfg["algorithm"]["eta"] == 0.01  # trial 0: the official values
    # every method and corruption, each with as many jobs as the trials have distinct draws, on every tuning seed
    assert set(counts) == {(c, m) for c in CORRUPTIONS for m in METHODS}
    for (_, method), n in counts.items():
        draws = {json.dumps(trial_values(method, t, tune["seed"]), sort_keys=True) for t in range(tune["trials"])}
        assert n == len(draws) * len(tune["seeds"]), method
    assert counts[("gaussian_noise", "erm")] == len(tune["seeds"]) and counts[("gaussian_noise", "sam")] > 1
    # the header comment's counts are the sweep's
    header = "\n".join(line[2:] for line in (REPO / "configs" / "sweeps" / f"paper_{dataset}.yaml").read_text()
                       .splitlines() if line.startswith("# "))
    header = " ".join(header.split())
    n_final = len(tune["methods"]) * len(spec.grid["data.corruption"]) * len(tune["final_seeds"])
    assert int(re.search(r"lists (\d+) trial jobs", header).group(1)) == len(jobs)
    assert int(re.search(r"= (\d+) final jobs", header).group(1)) == n_final
    assert int(re.search(r"(\d+) runs in all", header).group(1)) == len(jobs) + n_final


def _write_finished_run(d: Path, cfg: dict, worst_val: float) -> None:
    """A finished run folder as the engine leaves it, with one evaluated epoch."""
    acc = {str(s): worst_val + 0.01 * s for s in range(6)}
    acc["5"] = worst_val - 0.01  # the worst severity
    block = {"accuracy": acc, **summarize(acc)}
    run = RunDir(d)
    d.mkdir(parents=True)
    run.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run.metrics.write_text(json.dumps({"epoch": 0, "val": block, "test": block}) + "\n")
    run.summary.write_text(json.dumps({"finished": True}))
    run.done.write_text("{}")


@pytest.mark.parametrize("dataset", sorted(PAPER))
def test_paper_sweep_runs_the_best_trial_of_every_method_on_every_final_seed(dataset, tmp_path):
    spec = load_sweep(f"paper_{dataset}")
    jobs = expand(spec)
    best: dict[tuple, dict] = {}
    for i, job in enumerate(jobs):  # scores in an order unrelated to the trial number
        score = 0.3 + ((i * 37) % 101) / 1000
        _write_finished_run(tmp_path / job.hash, job.config, score)
        key = (job.config["data"]["corruption"], job.config["algorithm"]["name"])
        if key not in best or score > best[key][0]:
            best[key] = (score, job.config)
    finals = final_jobs(spec, tmp_path, jobs)
    tune = spec.tune
    assert len(finals) == len(tune["methods"]) * len(spec.grid["data.corruption"]) * len(tune["final_seeds"])
    assert len({j.hash for j in finals} | {j.hash for j in jobs}) == len(finals) + len(jobs)  # all new runs
    got: dict[tuple, list] = {}
    for job in finals:
        cfg = job.config
        key = (cfg["data"]["corruption"], cfg["algorithm"]["name"])
        got.setdefault(key, []).append(cfg["seed"])
        assert {**cfg, "seed": tune["seeds"][0]} == best[key][1]  # the best trial, on a final seed
    assert set(got) == set(best) and all(sorted(s) == sorted(tune["final_seeds"]) for s in got.values())
