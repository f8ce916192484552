"""Equal tuning: seeded trials from each key's search space, and the report's per-method selection."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sharpdro import methods
from sharpdro.cli import main
from sharpdro.config import schema_field
from sharpdro.experiments import report as rp
from sharpdro.experiments import tuning
from sharpdro.experiments.sweep_spec import SweepError, expand, load_sweep


def test_every_tuned_key_has_a_search_space_beside_its_definition():
    for spec in methods.all_methods():
        for dotted in tuning.tuned_keys(spec.name):
            f = schema_field(dotted)
            assert f is not None and f.search is not None, (spec.name, dotted)
            assert f.search[0] in ("log_uniform", "uniform", "int_uniform", "choice")
    assert tuning.tuned_keys("erm") == []
    assert set(tuning.tuned_keys("jtt")) == {"algorithm.jtt_epochs", "algorithm.jtt_lambda_up"}
    assert set(tuning.tuned_keys("eiil")) >= {"algorithm.eiil_epochs", "algorithm.eiil_steps", "algorithm.eta",
                                              "algorithm.q_absent", "data.sampler"}
    assert {"algorithm.rho", "algorithm.eta", "algorithm.q_absent", "data.sampler"} <= set(tuning.tuned_keys("sharpdro"))


def test_trials_are_seeded_per_key_and_trial_zero_is_the_defaults():
    assert tuning.trial_values("sharpdro", 0, 0) == {}
    a = tuning.trial_values("sharpdro", 3, 7)
    assert a == tuning.trial_values("sharpdro", 3, 7)  # deterministic
    assert a != tuning.trial_values("sharpdro", 4, 7) and a != tuning.trial_values("sharpdro", 3, 8)
    # a key fixed by the sweep is not drawn, and the other draws do not move
    b = tuning.trial_values("sharpdro", 3, 7, fixed={"algorithm.eta"})
    assert "algorithm.eta" not in b and {k: v for k, v in a.items() if k != "algorithm.eta"} == b
    # drawn values are within their spaces
    for t in range(1, 30):
        v = tuning.trial_values("sharpdro", t, 0)
        assert 0.01 <= v["algorithm.rho"] <= 0.5 and v["data.sampler"] in ("uniform", "group_balanced")
        assert 1e-3 <= v["algorithm.eta"] <= 1.0 and v["algorithm.q_absent"] in ("zero", "skip")
        # ASAM's radius is drawn from its own scale
        assert 0.5 <= tuning.trial_values("sam", t, 0, algorithm={"adaptive": True})["algorithm.rho"] <= 5.0
    rhos = [tuning.trial_values("sam", t, 0)["algorithm.rho"] for t in range(1, 200)]
    assert np.median(np.log(rhos)) == pytest.approx(np.log(np.sqrt(0.01 * 0.5)), abs=0.3)  # log-uniform


def test_tune_block_expands_methods_trials_and_seeds(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"base": "quickstart", "set": ["train.epochs=1"],
                                    "grid": {"data.corruption": ["gaussian_noise", "jpeg_compression"]},
                                    "tune": {"trials": 3, "seed": 1, "methods": ["erm", "groupdro"],
                                             "seeds": [0, 1]}}))
    jobs = expand(load_sweep(path))
    # erm's trials are all its defaults (it tunes nothing): 1 configuration; groupdro: 3; x 2 seeds x 2 corruptions
    assert len(jobs) == 2 * 2 * (1 + 3)
    gd = [j for j in jobs if j.config["algorithm"]["name"] == "groupdro" and j.config["seed"] == 0
          and j.config["data"]["corruption"] == "gaussian_noise"]
    assert len({json.dumps(j.config, sort_keys=True) for j in gd}) == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "quickstart", "grid": {"seed": [0, 1]}, "tune": {"trials": 2}}))
    with pytest.raises(SweepError, match="remove seed"):
        load_sweep(bad)


def test_tuning_end_to_end_on_quickstart(tmp_path, capsys):
    """Trials on the tuning seed, then the selected trial on the final seed, then the report's selection."""
    sweep = tmp_path / "tune.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": "quickstart",
        "set": ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
                "train.epochs=1", "train.batch_size=40", "train.progress=false", "train.threads=1",
                "eval.batch_size=256"],
        "tune": {"trials": 2, "seed": 0, "methods": ["erm", "groupdro"], "seeds": [0], "final_seeds": [1]}}))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress"]) == 0
    runs = rp.load_runs(out)
    assert all(r.status == "done" for r in runs)
    trials = [r for r in runs if r.seed == 0]
    finals = [r for r in runs if r.seed == 1]
    assert len(trials) == 1 + 2 and len(finals) == 2  # erm: 1 configuration; groupdro: 2; one final run each
    # the final groupdro run is the configuration of the better worst-severity validation accuracy
    gd = [r for r in trials if r.config["algorithm"]["name"] == "groupdro"]
    best = max(gd, key=lambda r: (r.selected["val"]["worst"], -gd.index(r)))
    final_gd = [r for r in finals if r.config["algorithm"]["name"] == "groupdro"][0]
    assert {**final_gd.config, "seed": 0} == best.config
    # the report picks it and reports its final-seed run, with the number of trials behind the row
    table = rp.collect(out, select_hparams="worst")
    assert [r.method_key for r in table.rows] == ["erm", "groupdro"]
    row = table.rows[1]
    assert row.trials == 2 and [r.name for r in row.runs] == [final_gd.name]
    assert row.n_text() == "1; best of 2 trials" and table.rows[0].n_text() == "1; best of 1 trials"
    assert main(["report", str(out), "--select-hparams", "worst"]) == 0
    text = capsys.readouterr().out
    assert "best of 2 trials" in text and "Hyperparameters selected per method" in text
    # selecting on every seed instead (no final runs split off)
    table = rp.collect(out, select_hparams="worst", tuning_seeds=[0, 1])
    assert all(len(r.runs) >= 1 for r in table.rows)
    # a second invocation finds everything done
    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress"]) == 0
    assert "0 done" in capsys.readouterr().out


def test_slurm_launches_submit_the_final_seeds_once_the_trials_are_done(tmp_path, monkeypatch, capsys):
    """Slurm returns before its jobs run: a later launch of the same command submits the final-seed jobs."""
    from sharpdro.experiments import sweep as sw

    queue = []  # what the fake cluster holds: (function, arguments), run when the test says so

    class Executor:
        batch = contextlib.nullcontext

        def submit(self, fn, *args):
            queue.append((fn, args))
            return type("SlurmJob", (), {"job_id": str(len(queue))})()

    monkeypatch.setattr(sw, "make_slurm_executor", lambda *a, **k: Executor())

    def cluster_runs():
        ran = [args[1] for _, args in queue]
        for fn, args in queue:
            fn(*args)
        queue.clear()
        return ran

    sweep = tmp_path / "tune.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": "quickstart",
        "set": ["data.train_per_class=40", "data.val_per_class=5", "data.test_per_class=10", "model.width=8",
                "train.epochs=1", "train.batch_size=40", "train.threads=1", "eval.batch_size=256"],
        "tune": {"trials": 2, "seed": 0, "methods": ["erm", "groupdro"], "seeds": [0], "final_seeds": [1, 2]}}))
    out = tmp_path / "out"
    argv = ["sweep", str(sweep), "--out", str(out), "--launcher", "slurm", "--no-progress"]
    trials = expand(load_sweep(sweep))
    assert main(argv) == 0
    assert sorted(cluster_runs()) == sorted(str(out / j.hash) for j in trials)  # the trials only
    assert main(argv) == 0  # the trials are done: the selected trial of each method on seeds 1 and 2
    finals = [rp.load_run(Path(d), "worst") for d in cluster_runs()]
    assert sorted((r.config["algorithm"]["name"], r.seed) for r in finals) == \
        [("erm", 1), ("erm", 2), ("groupdro", 1), ("groupdro", 2)]
    table = rp.collect(out, select_hparams="worst")
    assert sorted(r.name for row in table.rows for r in row.runs) == sorted(r.name for r in finals)
    capsys.readouterr()
    assert main(argv) == 0 and queue == []  # nothing left to submit
    assert f"{len(trials) + 4} jobs: 0 done, 0 failed, {len(trials) + 4} skipped" in capsys.readouterr().out
