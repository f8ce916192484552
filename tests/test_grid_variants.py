"""docs/baselines/grid_variants.py writes the table docs/baselines.md quotes (each variant against its own
method, paired by seed, beside the final q); checked on a real tiny tuning sweep against the run folders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from script_loader import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "baselines" / "grid_variants.py"
VARIANT = "SharpDRO, uniform, skip"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_tune_sweep) -> Path:
    return tiny_tune_sweep(tmp_path_factory.mktemp("variants"), {
        "trials": 1, "seed": 0, "methods": ["erm", "sharpdro"], "seeds": [0], "final_seeds": [1, 2, 3],
        "variants": [{"name": VARIANT, "method": "sharpdro",
                      "set": {"data.sampler": "uniform", "algorithm.q_absent": "skip"}}]}, ["train.epochs=2"])


def _final_runs(sweep: Path, variant: bool) -> dict[int, Path]:
    """seed -> run folder of SharpDRO's final runs (the variant's, or the method's own)."""
    index = json.loads((sweep / "sweep.json").read_text())["jobs"]
    out = {}
    for name, entry in index.items():
        cfg = entry["config"]
        if cfg["algorithm"]["name"] != "sharpdro" or cfg["seed"] == 0:
            continue
        if (cfg["data"]["sampler"] == "uniform") == variant:
            out[cfg["seed"]] = sweep / name
    return out


def test_variant_row_is_the_paired_difference_and_the_last_q(sweep, capsys):
    module = _module()
    assert module.main([str(sweep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (row,) = [ln for ln in lines if f"| {VARIANT} |" in ln]
    cells = [c.strip() for c in row.strip("|").split("|")]
    own, var = _final_runs(sweep, False), _final_runs(sweep, True)
    assert sorted(own) == sorted(var) == [1, 2, 3]
    summary = lambda d: json.loads((d / "summary.json").read_text())
    for col, key in ((7, "test_average"), (8, "test_worst")):
        d = np.array([100 * (summary(var[s])[key] - summary(own[s])[key]) for s in (1, 2, 3)])
        half = student_t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
        assert cells[col] == f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
    last_q = [json.loads((var[s] / "metrics.jsonl").read_text().splitlines()[-1])["q"] for s in (1, 2, 3)]
    assert cells[9] == "final q " + " ".join(f"{v:.3f}" for v in np.mean(last_q, axis=0)) + " (mean over 3 seeds)"
    # the method's own row is there too, without a difference
    (method,) = [ln for ln in lines if "| SharpDRO |" in ln]
    assert [c.strip() for c in method.strip("|").split("|")][7:9] == ["", ""]


def _module():
    return load_script(SCRIPT, "grid_variants")


def test_committed_table_is_the_committed_runs(capsys):
    """docs/baselines/grid_variants.md is what the script writes from the committed reproduction runs, byte for
    byte; a combination still running (some of its final runs committed, not all) is left out, not half shown
    (the script failed on such a row before)."""
    results = SCRIPT.parents[2] / "docs" / "results" / "cifar10_cpu"
    assert _module().main([str(results / "imagenet_table"), str(results / "cifar_table")]) == 0
    out = capsys.readouterr().out
    assert out == (SCRIPT.parent / "grid_variants.md").read_text(encoding="utf-8")


def test_a_running_combination_is_left_out(sweep, tmp_path, capsys):
    """Remove one final run from a copy of the tiny sweep (as a committed folder holds a job that is still
    running: not at all): its combination leaves the table."""
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    assert _module().main([str(copy)]) == 0
    assert f"| {VARIANT} |" in capsys.readouterr().out
    shutil.rmtree(_final_runs(copy, True)[2])
    assert _module().main([str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"| {VARIANT} |" not in out and "| SharpDRO |" not in out


def test_baselines_doc_quotes_the_committed_table():
    """docs/baselines.md retypes the committed table with its own labels; each 'm ± s' and 'Δ [lo, hi]' of its
    table is in the committed one (a retyped number cannot drift from the runs)."""
    import re

    doc = (SCRIPT.parents[1] / "baselines.md").read_text(encoding="utf-8")
    section = doc[doc.index("## In the reproduction grid"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    table = (SCRIPT.parent / "grid_variants.md").read_text(encoding="utf-8")
    # ERM has no variant, so its reference line is not in the table (the reproduction's report has it)
    section = "\n".join(ln for ln in section.splitlines() if ln.startswith("| ")
                         and not ln.startswith("| ERM, for reference"))
    quoted = re.findall(r"\d+\.\d\d ± \d+\.\d\d|[−+-]\d+\.\d\d \[[−+-]\d+\.\d\d, [−+-]\d+\.\d\d\]", section)
    assert len(quoted) >= 16
    for text in quoted:
        assert text.replace("−", "-") in table, text
