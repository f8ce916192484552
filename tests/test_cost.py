"""``sharpdro cost`` on a real tiny tuning sweep: every run's recorded wall time times its threads, tuning
runs apart from reported ones, summed as a direct computation over the run folders does."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from sharpdro.cli import main
from sharpdro.experiments import cost
from sharpdro.rundir import RunDir


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory, tiny_tune_sweep):
    return tiny_tune_sweep(tmp_path_factory.mktemp("cost"), {
        "trials": 2, "seed": 0, "methods": ["erm", "groupdro"], "seeds": [0], "final_seeds": [1],
        "variants": [{"name": "GroupDRO, balanced, skip", "method": "groupdro",
                      "set": {"data.sampler": "group_balanced", "algorithm.q_absent": "skip"}}]})


def _expected(out):
    """(method or variant, role) -> [runs, CPU-hours], straight from the run folders and sweep.json."""
    index = json.loads((out / "sweep.json").read_text())["jobs"]
    got: dict = {}
    for name, entry in index.items():
        run = RunDir(out / name)
        cfg = run.read_config()
        if not run.is_finished():
            continue
        of = entry.get("variant_of") or {}
        label = next(iter(of)) if of and name not in of.values() else cfg["algorithm"]["name"]
        role = "tuning" if cfg["seed"] == 0 and label == cfg["algorithm"]["name"] else "reported"
        hours = run.read_summary()["wall_seconds"] * (cfg["train"]["threads"] or 1) / 3600.0
        cell = got.setdefault((label, role), [0, 0.0])
        cell[0] += 1
        cell[1] += hours
    return got


def _by_label(rows):
    out = {}
    for r in rows:
        label = r.variant or r.method_key
        for role in cost.ROLES:
            if r.n[role]:
                out[(label, role)] = [r.n[role], r.cpu_hours[role]]
    return out


def test_cost_splits_tuning_from_reported_runs_as_a_direct_sum_does(sweep_out):
    rows, tune = cost.collect_cost(sweep_out)
    assert tune["final_seeds"] == [1]
    got = _by_label(rows)
    want = _expected(sweep_out)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == want[key][0] and got[key][1] == pytest.approx(want[key][1], rel=1e-12)
    # ERM: 1 configuration (its two trials are one job) + 1 final; GroupDRO: 2 trials + 1 final; the variant: 1
    assert {k: v[0] for k, v in got.items()} == {
        ("erm", "tuning"): 1, ("erm", "reported"): 1, ("groupdro", "tuning"): 2, ("groupdro", "reported"): 1,
        ("GroupDRO, balanced, skip", "reported"): 1}
    assert [r.label for r in rows] == ["ERM", "GroupDRO", "GroupDRO, balanced, skip"]
    t = cost.totals(rows)
    assert t["all"]["n"] == 6 and t["all"]["cpu_hours"] == pytest.approx(sum(v[1] for v in want.values()))


def test_threads_and_processes_multiply_and_unfinished_runs_are_counted_apart(sweep_out, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(sweep_out, out)
    rows, _ = cost.collect_cost(out)
    before = {(r.variant or r.method_key): dict(r.cpu_hours) for r in rows}
    index = json.loads((out / "sweep.json").read_text())["jobs"]
    erm_final = next(h for h, e in index.items() if e["config"]["algorithm"]["name"] == "erm"
                     and e["config"]["seed"] == 1)
    gd_trial = next(h for h, e in index.items() if e["config"]["algorithm"]["name"] == "groupdro"
                    and e["config"]["seed"] == 0)
    # the ERM final ran with 4 threads (a runtime key, as a resumed run may change it)
    cfg_path = RunDir(out / erm_final).config
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"]["threads"] = 4
    cfg_path.write_text(yaml.safe_dump(cfg))
    erm_hours = RunDir(out / erm_final).read_summary()["wall_seconds"] / 3600.0
    # the variant ran data-parallel on 2 processes (summary "processes")
    variant = next(h for h, e in index.items() if e.get("variant_of") and h not in e["variant_of"].values())
    summary_path = out / variant / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "processes": 2}))
    # one GroupDRO trial is unfinished: its summary and done marker gone
    gd_hours = RunDir(out / gd_trial).read_summary()["wall_seconds"] / 3600.0
    for f in (out / gd_trial).iterdir():
        if f.name in ("done", "summary.json"):
            f.unlink()
    rows, _ = cost.collect_cost(out)
    after = {(r.variant or r.method_key): r for r in rows}
    assert after["erm"].cpu_hours["reported"] == pytest.approx(before["erm"]["reported"] + 3 * erm_hours)
    assert after["groupdro"].cpu_hours["tuning"] == pytest.approx(before["groupdro"]["tuning"] - gd_hours)
    assert after["groupdro"].n["tuning"] == 1 and after["groupdro"].unfinished == 1
    name = "GroupDRO, balanced, skip"
    assert after[name].cpu_hours["reported"] == pytest.approx(2 * before[name]["reported"])
    assert "1 unfinished run(s) are not counted" in cost.to_markdown(rows)


def test_cost_command_writes_every_format_and_refuses_a_bad_one(sweep_out, tmp_path, capsys):
    prefix = tmp_path / "c" / "arm_cost"
    prefix.parent.mkdir()
    assert main(["cost", str(sweep_out), "--out", str(prefix)]) == 0
    data = json.loads(prefix.with_suffix(".json").read_text())
    rows, _ = cost.collect_cost(sweep_out)
    assert data["totals"]["all"]["n"] == 6
    assert math.isclose(data["totals"]["all"]["cpu_hours"], cost.totals(rows)["all"]["cpu_hours"], abs_tol=1e-4)
    csv_lines = prefix.with_suffix(".csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(rows)
    md = prefix.with_suffix(".md").read_text()
    assert "| Digits (ImageNet-C constants) | Gaussian | **all** | 3 |" in md
    capsys.readouterr()
    assert main(["cost", str(sweep_out), "--format", "xlsx", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "unknown format 'xlsx'" in err and "Traceback" not in err
    assert not list(tmp_path.glob("x.*"))


def test_to_go_counts_unfinished_and_not_yet_listed_final_jobs(sweep_out, tmp_path):
    """The estimate of the compute ahead: a final run deleted is one job at its row's minutes per finished run;
    a sweep whose final jobs are not listed yet (its state before selection) has final seeds x (method +
    its variants) jobs per method ahead, at the tuning runs' minutes."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(sweep_out, out)
    rows, tune = cost.collect_cost(out)
    assert cost.to_go(rows, tune) == {"jobs": 0, "after_selection": 0, "unestimated": 0, "cpu_hours": 0.0}
    assert "To go: nothing" in cost.to_markdown(rows, tune)
    index_path = out / "sweep.json"
    sweep = json.loads(index_path.read_text())
    final = [h for h, e in sweep["jobs"].items() if e["config"]["seed"] == 1]
    erm_final = next(h for h in final if sweep["jobs"][h]["config"]["algorithm"]["name"] == "erm")
    shutil.rmtree(out / erm_final)  # listed, not started
    rows, tune = cost.collect_cost(out)
    g = cost.to_go(rows, tune)
    erm = next(r for r in rows if r.method_key == "erm" and r.variant is None)
    assert g["jobs"] == 1 and g["after_selection"] == 0
    # at the minutes of ERM's remaining (tuning) run, one thread: the deleted run no longer counts
    assert erm.n == {"tuning": 1, "reported": 0}
    assert g["cpu_hours"] == pytest.approx(erm.minutes_per_run / 60.0)
    # before selection: no final job listed; ERM 1 seed x 1, GroupDRO 1 seed x (1 + its variant)
    for h in final:
        del sweep["jobs"][h]
        shutil.rmtree(out / h, ignore_errors=True)
    index_path.write_text(json.dumps(sweep))
    rows, tune = cost.collect_cost(out)
    g = cost.to_go(rows, tune)
    minutes = {r.method_key: r.minutes_per_run for r in rows}
    assert g["jobs"] == g["after_selection"] == 3 and g["unestimated"] == 0
    assert g["cpu_hours"] == pytest.approx((minutes["erm"] + 2 * minutes["groupdro"]) / 60.0)
    md = cost.to_markdown(rows, tune)
    assert "To go: 3 jobs" in md and "3 of them are final jobs the tune block adds after selection" in md
    assert json.loads(cost.render(rows, "json", tune))["to_go"]["jobs"] == 3


def test_runs_from_machines_of_different_kinds_are_named_in_the_notes(sweep_out, tmp_path):
    """min/run averages wall-clock minutes: a sweep finished on two kinds of machine (a CPU of another vector
    extension, a GPU) says so, with each kind's count read from the runs' summary.json."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(sweep_out, out)
    rows, _ = cost.collect_cost(out)
    assert not any("more than one kind of machine" in n for n in cost.to_dict(rows)["notes"])
    done = sorted(p.parent for p in out.glob("*/done"))
    own = cost.machine_kind(RunDir(done[0]).read_summary())  # this machine's kind, as every run recorded it
    other = "AVX2" if own != "CPU AVX2" else "AVX512"  # a CPU of another kind than this one
    for folder, hw in ((done[0], {"device": "cuda:0", "cuda_device": "NVIDIA H100"}),
                       (done[1], {"device": "cpu", "cpu_isa": {"capability": other}})):
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "hardware": hw}))
    rows, _ = cost.collect_cost(out)
    kinds = sorted({"NVIDIA H100": 1, f"CPU {other}": 1, own: len(done) - 2}.items())
    note = ("The finished runs ran on more than one kind of machine (summary.json's hardware): "
            + ", ".join(f"{k} {n} run(s)" for k, n in kinds) + "; a row's min/run mixes them.")
    assert f"- {note}" in cost.to_markdown(rows).splitlines()
    assert sum(sum(r["machines"].values()) for r in cost.to_dict(rows)["rows"]) == len(done)
