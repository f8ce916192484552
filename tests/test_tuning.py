"""Equal tuning: seeded trials from each key's search space, and the report's per-method selection."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sharpdro import methods
from sharpdro.cli import main
from sharpdro.config import get, load_config, schema_field
from sharpdro.experiments import report as rp
from sharpdro.experiments import report_formats as rf
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


def test_tuning_end_to_end_on_quickstart(tmp_path, capsys, tiny_sweep_set):
    """Trials on the tuning seed, then the selected trial on the final seed, then the report's selection."""
    sweep = tmp_path / "tune.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": "quickstart",
        "set": tiny_sweep_set,
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
    assert row.n_text() == "1; best of 2 trials" and table.rows[0].n_text() == "1; 1 configuration"
    assert main(["report", str(out), "--select-hparams", "worst"]) == 0
    text = capsys.readouterr().out
    assert "best of 2 trials" in text and "Hyperparameters selected per method" in text
    # selecting on every seed instead (no final runs split off)
    table = rp.collect(out, select_hparams="worst", tuning_seeds=[0, 1])
    assert all(len(r.runs) >= 1 for r in table.rows)
    # a second invocation finds everything done
    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress"]) == 0
    assert "0 done" in capsys.readouterr().out


# --------------------------------------------------------------------------- tune.space and tune.variants


def _sweep_file(tmp_path, tune: dict, name: str = "tune.yaml", **extra):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "quickstart", "set": ["train.epochs=1"], **extra, "tune": tune}))
    return path


@pytest.mark.parametrize("space, match", [
    ({"algorithm.jtt_lambda_up": ["normal", 4, 6]}, r"algorithm\.jtt_lambda_up: .* is no distribution"),
    ({"algorithm.jtt_lambda_up": ["choice", 4, 5, 6]}, r"algorithm\.jtt_lambda_up: choice takes 1 value"),
    ({"algorithm.jtt_epochs": ["int_uniform", 1]}, r"algorithm\.jtt_epochs: int_uniform takes 2 value"),
    ({"algorithm.jtt_lambda_up": ["choice", [0.5, 4]]}, r"algorithm\.jtt_lambda_up.*0\.5 is out of range"),
    ({"algorithm.jtt_epochs": ["int_uniform", 0, 3]}, r"algorithm\.jtt_epochs.*0 is out of range"),
    ({"algorithm.jtt_epochs": ["uniform", 1, 3]}, r"algorithm\.jtt_epochs is an integer key"),
    ({"algorithm.jtt_epochs": ["int_uniform", 4, 2]}, r"algorithm\.jtt_epochs: low 4 is above high 2"),
    ({"algorithm.q_absent": ["uniform", 0, 1]}, r"algorithm\.q_absent is not a number"),
    ({"data.sampler": ["choice", ["uniform", "shuffled"]]}, r"data\.sampler.*'shuffled' is not allowed"),
    ({"algorithm.rho": ["log_uniform", 0.0, 0.5]}, r"algorithm\.rho: log_uniform needs a positive low"),
    ({"algorithm.gen_adjustment": ["uniform", 0, 1]}, r"no method of this sweep .* tunes 'algorithm\.gen_adjustment'"),
    ({"algorithm.eiil_steps": ["choice", [500]]}, r"tunes 'algorithm\.eiil_steps'; it is tuned by eiil"),
    ({"algorithm.jtt_lambda": ["choice", [4]]}, r"'algorithm\.jtt_lambda' is no config key"),
])
def test_a_bad_space_is_one_error_naming_the_key(tmp_path, space, match):
    path = _sweep_file(tmp_path, {"trials": 2, "methods": ["jtt", "sharpdro"], "space": space})
    with pytest.raises(tuning.TuningError, match=match):
        load_sweep(path)


def test_space_and_variant_errors_through_the_command_line(tmp_path, capsys):
    lam = "algorithm.jtt_lambda_up"
    path = _sweep_file(tmp_path, {"trials": 2, "methods": ["jtt"], "space": {lam: ["choice", [0]]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) != 0
    err = capsys.readouterr().err
    assert "algorithm.jtt_lambda_up" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a narrowed key the sweep fixes would never be drawn
    fixed = _sweep_file(tmp_path, {"trials": 2, "methods": ["jtt"], "space": {lam: ["choice", [4, 5]]}},
                        "fixed.yaml", grid={lam: [4, 5]})
    with pytest.raises(SweepError, match=r"tune\.space narrows algorithm\.jtt_lambda_up, which the sweep fixes"):
        expand(load_sweep(fixed))


@pytest.mark.parametrize("tune, match", [
    ({"variants": [{"name": "a", "method": "groupdro", "set": {"algorithm.eta": 0.5}}]}, "give final_seeds"),
    ({"final_seeds": [1], "variants": [{"name": "a", "method": "sharpdro", "set": {"algorithm.eta": 0.5}}]},
     "method 'sharpdro' is not tuned by this sweep"),
    ({"final_seeds": [1], "variants": [{"name": "a", "method": "groupdro", "set": {"algorithm.eta": 0.5}},
                                       {"name": "a", "method": "groupdro", "set": {"algorithm.eta": 0.1}}]},
     "the name 'a' is given twice"),
    ({"final_seeds": [1], "variants": [{"name": "a", "method": "groupdro", "set": {"seed": 4}}]},
     r"seed is not a variant's to set"),
    ({"final_seeds": [1], "variants": [{"name": "a", "method": "groupdro", "set": {"data.sampler": "shuffled"}}]},
     r"variants\[0\] \('a'\)\.set: .*data\.sampler.*not allowed"),
    ({"final_seeds": [1], "variants": [{"name": "a", "method": "groupdro"}]}, "exactly the keys name, method, set"),
])
def test_a_bad_variant_is_one_error(tmp_path, tune, match):
    path = _sweep_file(tmp_path, {"trials": 2, "methods": ["erm", "groupdro"], **tune})
    with pytest.raises(tuning.TuningError, match=match):
        load_sweep(path)


def test_a_narrowed_space_moves_only_its_own_key(tmp_path):
    eta = ("log_uniform", 0.02, 0.03)
    for t in range(1, 25):
        a = tuning.trial_values("sharpdro", t, 0)
        b = tuning.trial_values("sharpdro", t, 0, space={"algorithm.eta": eta})
        drawn, _ = b.pop("algorithm.eta"), a.pop("algorithm.eta")
        assert a == b and 0.02 <= drawn <= 0.03
        # the narrowed key keeps its own generator: the same uniform draw, mapped onto the new range
        u = np.random.default_rng(tuning._seed(0, "sharpdro", t, "algorithm.eta")).uniform(np.log(0.02), np.log(0.03))
        assert drawn == float(f"{np.exp(u):.4g}")
    # through sweep files: the same trials in the same order, equal but for the narrowed keys
    tune = {"trials": 6, "seed": 3, "methods": ["erm", "groupdro", "jtt"], "seeds": [0]}
    space = {"algorithm.eta": list(eta), "algorithm.jtt_lambda_up": ["choice", [4, 5, 6]]}
    plain = tuning.trial_points(load_sweep(_sweep_file(tmp_path, tune, "plain.yaml")).tune)
    path = _sweep_file(tmp_path, {**tune, "space": space}, "narrowed.yaml")
    narrowed = tuning.trial_points(load_sweep(path).tune)
    assert len(plain) == len(narrowed) == 3 * 6
    moved = 0
    for p, n in zip(plain, narrowed):
        a, b = dict(p), dict(n)
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k not in space} == {k: v for k, v in b.items() if k not in space}
        if "algorithm.eta" in b:
            assert 0.02 <= b["algorithm.eta"] <= 0.03
        if "algorithm.jtt_lambda_up" in b:
            assert b["algorithm.jtt_lambda_up"] in (4, 5, 6)
        moved += a != b
    assert moved >= 7  # groupdro's 5 drawn trials and some of jtt's
    etas = {j.config["algorithm"]["eta"] for j in expand(load_sweep(path))
            if j.config["algorithm"]["name"] == "groupdro"}
    assert len(etas) == 6 and all(0.02 <= e <= 0.03 for e in etas - {0.01})
    stored = load_sweep(_sweep_file(tmp_path, {**tune, "space": {"algorithm.jtt_lambda_up": ["choice", [4, 5]]}},
                                    "stored.yaml")).to_dict()["tune"]["space"]
    assert stored == {"algorithm.jtt_lambda_up": ("choice", (4, 5))}


def _set(cfg: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    cfg[leaf] = value


def test_variants_rerun_the_selected_trial_with_their_settings(tmp_path, capsys, tiny_sweep_set):
    """A real tiny tuning sweep with variants: the variant jobs are the selected trial's overrides plus the
    variant's settings on every final seed, run once; the report puts each after its method's row."""
    variants = [
        {"name": "GroupDRO, eta=0.5", "method": "groupdro", "set": {"algorithm.eta": 0.5}},
        # settings no trial has (trial 0: sampler auto, q_absent zero; trial 1 draws uniform and zero), so that
        # its jobs are its own
        {"name": "GroupDRO, balanced, skip", "method": "groupdro",
         "set": {"data.sampler": "group_balanced", "algorithm.q_absent": "skip"}},
        {"name": "ERM, lr 0.05", "method": "erm", "set": {"train.lr": 0.05}},  # the quickstart's lr: no change
    ]
    sweep = tmp_path / "tune.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": "quickstart",
        "set": tiny_sweep_set,
        "tune": {"trials": 2, "seed": 0, "methods": ["erm", "groupdro"], "seeds": [0], "final_seeds": [1, 2],
                 "space": {"algorithm.eta": ["log_uniform", 0.02, 0.2]}, "variants": variants}}))
    out = tmp_path / "out"
    # before any trial: the final and variant jobs are listed as waiting for the selection
    assert main(["sweep", str(sweep), "--out", str(out), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "3 jobs: 3 new" in dry  # erm's 2 trials are one job; groupdro's 2
    assert "GroupDRO: the selected trial and its variants 'GroupDRO, eta=0.5', 'GroupDRO, balanced, skip' " \
           "on seeds 1, 2 (up to 6 jobs)" in dry
    assert "up to 10 more jobs after selection" in dry

    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    runs = {r.name: r for r in rp.load_runs(out)}
    assert all(r.status == "done" for r in runs.values())
    index = json.loads((out / "sweep.json").read_text())["jobs"]
    # erm: 1 trial job + 2 finals (its variant coincides); groupdro: 2 trials + 2 finals + 2 x 2 variant jobs
    assert len(runs) == 1 + 2 + 2 + 2 + 4

    def by_method(m, seed):
        return [r for r in runs.values() if r.config["algorithm"]["name"] == m and r.seed == seed]

    assert len(by_method("erm", 0)) == 1
    gd = by_method("groupdro", 0)
    # the trial run again on the final seeds is one of the best worst-severity validation accuracy
    rerun = [r for r in gd if any({**f.config, "seed": 0} == r.config for f in by_method("groupdro", 1))]
    assert len(rerun) == 1
    best = rerun[0]
    assert best.selected["val"]["worst"] == max(r.selected["val"]["worst"] for r in gd)
    for seed in (1, 2):
        # the selected trial on the final seed: its config with the seed changed
        final = [r for r in by_method("groupdro", seed) if {**r.config, "seed": 0} == best.config]
        assert len(final) == 1
        final = final[0]
        for v in variants[:2]:
            expected = json.loads(json.dumps(final.config))
            for k, x in v["set"].items():
                _set(expected, k, x)
            match = [r for r in runs.values() if r.config == expected]
            assert len(match) == 1 and match[0].name != final.name
            assert index[match[0].name]["variant_of"] == {v["name"]: final.name}
        erm_final = by_method("erm", seed)
        assert len(erm_final) == 1 and index[erm_final[0].name]["variant_of"] == {"ERM, lr 0.05": erm_final[0].name}

    table = rp.collect(out, select_hparams="worst")
    assert [(r.method_key, r.variant) for r in table.rows] == [
        ("erm", None), ("erm", "ERM, lr 0.05"), ("groupdro", None), ("groupdro", "GroupDRO, eta=0.5"),
        ("groupdro", "GroupDRO, balanced, skip")]
    erm, erm_v, gdr, v1, v2 = table.rows
    # each variant is paired with its own method's row first
    firsts = {}
    for p in table.paired():
        firsts.setdefault((p.row.method_key, p.row.variant), p.reference.method)
    assert firsts[("groupdro", "GroupDRO, eta=0.5")] == firsts[("groupdro", "GroupDRO, balanced, skip")] == "GroupDRO"
    assert "a variant row also against its own method's row" in " ".join(rf.paired_notes(table))
    assert erm.n_text() == "2; 1 configuration" and gdr.n_text() == "2; best of 2 trials"
    assert v1.n_text() == v2.n_text() == erm_v.n_text() == "2; variant of the selected trial"
    assert sorted(r.name for r in erm_v.runs) == sorted(r.name for r in erm.runs)  # coincident: the same runs
    assert [r.seed for r in v1.runs] == [1, 2] and all(r.config["algorithm"]["eta"] == 0.5 for r in v1.runs)
    assert v1.stat("worst")[0] == pytest.approx(50.0 * (v1.runs[0].worst + v1.runs[1].worst))
    notes = "\n".join(table.notes())
    assert "Search space narrowed for this sweep: algorithm.eta: log_uniform [0.02, 0.2] " \
           "(declared: log_uniform [0.001, 1.0])" in notes
    assert "Variants (not tuned" in notes and "GroupDRO, eta=0.5 = GroupDRO with algorithm.eta=0.5" in notes
    assert ("Digits (ImageNet-C constants) Gaussian ERM, lr 0.05: the selected ERM trial already has this "
            "variant's settings") in notes
    assert "ERM has no method hyperparameters" in notes
    # "Selected": ERM tunes nothing; GroupDRO its drawn keys that differ from the base config (trial 1, drawn
    # here again) or "defaults" (trial 0); a variant, what it inherits and its own settings after +
    base = load_config("quickstart", yaml.safe_load(sweep.read_text())["set"])
    drawn = tuning.trial_values("groupdro", 1, 0, space={"algorithm.eta": ("log_uniform", 0.02, 0.2)})
    trial = 1 if gdr.runs[0].config["algorithm"]["eta"] == drawn["algorithm.eta"] else 0
    values = drawn if trial else {}

    def expected(drop=()):
        parts = sorted(f"{k.split('.')[-1]}={v}" for k, v in values.items()
                       if k not in drop and v != get(base, k))
        return ", ".join(parts) or "defaults"

    assert gdr.runs[0].config["algorithm"]["eta"] == (drawn["algorithm.eta"] if trial else 0.01)
    assert erm.selected_text == "–" and erm_v.selected_text == "+ lr=0.05"
    assert gdr.selected_text == expected()
    assert v1.selected_text == expected(drop=("algorithm.eta",)) + " + eta=0.5"
    # (the variant's settings in the tune block's order, as sweep.json holds it)
    head = expected(drop=("data.sampler", "algorithm.q_absent"))
    assert v2.selected_text == head + " + q_absent=skip, sampler=group_balanced"
    # every format labels the variant rows
    md = rf.render(table, "md")
    header = md.splitlines()[2]
    assert "| Method | Selected | Averaged accuracy (%) |" in header and "algorithm." not in header
    assert f"| GroupDRO | {gdr.selected_text} |" in md
    assert "| GroupDRO, balanced, skip |" in md and "2; variant of the selected trial" in md
    csv_rows = list(csv.DictReader(io.StringIO(rf.render(table, "csv"))))
    # CSV keeps every key's column beside the Selected text
    assert [r["selected"] for r in csv_rows] == [r.selected_text for r in table.rows]
    assert [r["algorithm.eta"] for r in csv_rows][2:4] == [str(gdr.runs[0].config["algorithm"]["eta"]), "0.5"]
    assert [(r["method"], r["algorithm"]) for r in csv_rows] == [
        ("ERM", "erm"), ("ERM, lr 0.05", "erm"), ("GroupDRO", "groupdro"), ("GroupDRO, eta=0.5", "groupdro"),
        ("GroupDRO, balanced, skip", "groupdro")]
    assert "GroupDRO, eta=0.5 &" in rf.render(table, "tex")
    rows = json.loads(rf.render(table, "json"))["rows"]
    assert [r.get("variant") for r in rows] == [None, "ERM, lr 0.05", None, "GroupDRO, eta=0.5",
                                                 "GroupDRO, balanced, skip"]
    assert rows[3]["method"] == "GroupDRO, eta=0.5" and rows[3]["algorithm"] == "groupdro"
    assert [r["selected_text"] for r in rows] == [r.selected_text for r in table.rows]
    assert rows[3]["hyperparameters"]["algorithm.eta"] == 0.5
    # the dry run now lists the variant jobs, done, and nothing waits
    assert main(["sweep", str(sweep), "--out", str(out), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.count("[variant: GroupDRO, eta=0.5]") == 2 and dry.count("[variant: ERM, lr 0.05]") == 2
    assert "11 jobs: 11 done" in dry and "after selection" not in dry
    # a second invocation finds everything done, variants included
    assert main(["sweep", str(sweep), "--out", str(out), "--no-progress"]) == 0
    assert "0 done" in capsys.readouterr().out


def test_selected_column_shows_the_methods_tuned_keys_the_sweep_does_not_fix():
    from sharpdro.experiments import tuning_report as tr

    sweep = {"set": ["data.sampler=uniform", "train.epochs=1"], "grid": {"algorithm.eta": [0.1, 0.2]},
             "tune": {"methods": ["erm", "groupdro"]}}
    assert tr.shown_keys("groupdro", sweep) == ["algorithm.q_absent"]  # eta and the sampler are the sweep's
    assert tr.shown_keys("erm", sweep) == [] and tr.shown_keys("erm", sweep, ["algorithm.rho"]) == []
    # keys the candidates differ in are shown, but an algorithm key only to a method that reads it
    assert tr.shown_keys("groupdro", sweep, ["algorithm.eta", "algorithm.rho", "train.lr"]) == \
        ["algorithm.q_absent", "algorithm.eta", "train.lr"]
    assert tr.shown_keys("sharpdro", sweep, ["algorithm.rho", "algorithm.jtt_epochs"]) == ["algorithm.rho"]
    assert tr._short_names({"train.lr", "model.lr", "algorithm.rho"}) == {
        "train.lr": "train.lr", "model.lr": "model.lr", "algorithm.rho": "rho"}


def test_slurm_launches_submit_the_final_seeds_once_the_trials_are_done(tmp_path, monkeypatch, capsys,
                                                                         tiny_sweep_set):
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
        "set": tiny_sweep_set,
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
