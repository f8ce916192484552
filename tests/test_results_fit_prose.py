"""The CPU reproduction's README quotes how much of its training mixture each method fits: those figures are the
runs' own (each severity's training accuracy in the selected epoch, weighted by its share of the mixture), not
the group-balanced stream's running accuracy, which over-weights the rare severities."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "docs" / "results" / "cifar10_cpu"
README = (HERE / "README.md").read_text()


def _fits(arm: str, corruption: str) -> dict[str, list[float]]:
    """Per row (method, or variant name): the mixture-weighted training accuracy (%) of each final seed."""
    out: dict[str, list[float]] = {}
    for h, job in json.loads((HERE / arm / "sweep.json").read_text())["jobs"].items():
        o = job["overrides"]
        if "seed=0" in o or f"data.corruption={corruption}" not in o:
            continue
        key = next(iter(job.get("variant_of") or {}), None) or \
            next(x for x in o if x.startswith("algorithm.name=")).split("=")[1]
        summary = json.loads((HERE / arm / h / "summary.json").read_text())
        records = [json.loads(x) for x in (HERE / arm / h / "metrics.jsonl").read_text().splitlines()]
        sel = next(r for r in records if r["epoch"] == summary["selected_epoch"])
        mix = _mixture(HERE / arm / h)
        acc = sel["train"]["group_acc"]
        out.setdefault(key, []).append(100 * sum(acc[k] * n for k, n in mix.items()) / sum(mix.values()))
    return out


def _mixture(run: Path) -> dict[str, int]:
    """The run's training mixture, as its train.log recorded it when the run started."""
    line = next(x for x in (run / "train.log").read_text().splitlines() if "counts per severity" in x)
    counts = json.loads(line.split("counts per severity ", 1)[1].split("]")[0] + "]")
    return {str(i): n for i, n in enumerate(counts)}


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("corruption, quoted, stream", [("gaussian_noise", "64.7", "75.9"),
                                                        ("jpeg_compression", "62.3", "73.4")])
def test_sharpdro_fit_in_the_cifar_arm_is_the_mixture_weighted_one(corruption, quoted, stream):
    fits = _fits("cifar_table", corruption)
    assert f"{_mean(fits['sharpdro']):.1f}" == quoted
    assert quoted + "% of its mixture" in README
    assert f"{_mean(fits['erm']):.1f}" == {"gaussian_noise": "97.9", "jpeg_compression": "98.8"}[corruption]
    assert stream in README  # the stream's figure is named as such beside it


def test_imagenet_gaussian_fit_range_of_the_methods_that_fit_least():
    fits = _fits("imagenet_table", "gaussian_noise")
    least = ["groupdro", "sharpdro", "SharpDRO, released reading", "SharpDRO, f=0.25",
             "SharpDRO, uniform batches, skip", "sharpdro_agnostic"]
    lo, hi = min(_mean(fits[k]) for k in least), max(_mean(fits[k]) for k in least)
    assert f"training accuracy {lo:.0f}-{hi:.0f}% against ERM's {_mean(fits['erm']):.0f}%" in README
