"""The probe table of docs/results/cifar10_cpu/README.md (SharpDRO's group weights, weight decay and schedule
probes) is typed by hand from run folders; each row names its folder, and its numbers are checked here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu"
HEADER = "| SharpDRO reading (η = 0.01, ρ = 0.05) |"


def _rows() -> list[list[str]]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(HEADER))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def _final_q(run: Path) -> list[float] | None:
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    with_q = [r["q"] for r in records if "q" in r]
    return with_q[-1] if with_q else None


ROWS = _rows()


def test_every_row_names_a_committed_run():
    assert len(ROWS) >= 9
    for row in ROWS:
        run = ROOT / row[-1].strip("`")
        assert (run / "metrics.jsonl").is_file(), row[-1]


@pytest.mark.parametrize("row", ROWS, ids=[r[-1].strip("`") for r in ROWS])
def test_row_matches_its_run(row):
    run = ROOT / row[-1].strip("`")
    q_text, train, val_worst, clean, severe, avg = row[1:7]
    q = _final_q(run)
    if q_text:
        shown = [float(x) for x in q_text.replace(", falling", "").split()]
        assert shown == pytest.approx([round(v, 3) for v in q], abs=1e-9)
    else:
        assert q is None  # an ERM row: no group weights
    if not train:  # a run stopped before the end: q only
        assert not (run / "summary.json").exists()
        return
    s = json.loads((run / "summary.json").read_text())
    assert float(train) == pytest.approx(s["selected_train_accuracy"], abs=5e-4)
    for shown, value in ((val_worst, s["val_worst"]), (clean, s["test_accuracy"]["0"]),
                         (severe, s["test_accuracy"]["5"]), (avg, s["test_average"])):
        assert float(shown) == pytest.approx(100 * value, abs=0.05 + 1e-9)
