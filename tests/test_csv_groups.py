"""Your own groups: ``data.dataset=csv`` (path,label,group[,split]) with ``data.corruption=none``, and hand-made
splits; through the CLI (train, evaluate, report, plot, sweep, --resume)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sharpdro.cli import main
from sharpdro.config import load_config
from sharpdro.data.groups import GroupIdError
from sharpdro.data.splits import build_splits
from sharpdro.data.types import LabeledArrays, Splits
from sharpdro.errors import DataError

GROUPS = ("water", "land", "night")
TINY = ["model.width=4", "train.epochs=2", "train.batch_size=20", "train.progress=false", "train.threads=1",
        "eval.batch_size=256", "data.dataset=csv", "data.corruption=none"]


def write_csv(folder: Path, n: int = 120, split: bool = False, seed: int = 0) -> Path:
    """A CSV of ``n`` 8x8 PNGs, 2 classes (brightness), 3 groups whose noise grows water < land < night."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = ["path,label,group" + (",split" if split else "")]
    for i in range(n):
        label, group = i % 2, GROUPS[(i // 2) % 3]
        noise = {"water": 10, "land": 40, "night": 90}[group]
        img = np.clip(70 + 110 * label + rng.normal(0, noise, (8, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        extra = "," + ("test" if i % 5 == 0 else "val" if i % 7 == 0 else "train") if split else ""
        rows.append(f"img/{i}.png,{'bright' if label else 'dark'},{group}{extra}")
    path = folder / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def cfg_for(csv: Path, *extra: str) -> dict:
    return load_config("quickstart", [*TINY, f"data.root={csv}", *extra])


def _sets(cli_args: list[str]) -> list[str]:
    out = []
    for a in cli_args:
        out += ["--set", a]
    return out


def test_csv_with_three_groups_trains_through_the_cli_and_every_command_reads_the_run(tmp_path, capsys):
    csv = write_csv(tmp_path / "data")
    args = [*TINY, f"data.root={csv}", "algorithm.name=sharpdro"]
    run = tmp_path / "runs" / "r1"
    assert main(["train", "-c", "quickstart", "--out", str(run), *_sets(args)]) == 0
    out = capsys.readouterr().out
    assert "counts per group {'land': 28, 'night': 28, 'water': 28}" in out  # 70% of each group's 40 rows
    assert "no split column: each group's rows split 70% train / 10% val / 20% test" in out
    assert "test accuracy per group: land:" in out and " night:" in out and " water:" in out
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(summary["test_accuracy"]) == ["0", "1", "2"]  # one entry per group
    assert summary["group_names"] == {"0": "land", "1": "night", "2": "water"}
    assert len(summary["test_ece"]) == 3
    data = json.loads((run / "data.json").read_text())
    assert data["group_names"] == ["land", "night", "water"] and "70% train" in data["split_rule"]

    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "group" in out.splitlines()[1] and any(line.startswith("night") for line in out.splitlines())
    evaluation = json.loads(next(run.glob("evaluation-*.json")).read_text())
    assert evaluation["test"]["accuracy"] == summary["test_accuracy"]  # the same weights, the same test sets

    assert main(["report", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "per group" in out and "| Worst group (%) | land | night | water |" in out and "Sev." not in out

    assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "plots")]) == 0
    assert list((tmp_path / "plots").glob("*.svg"))

    # --resume reads the run back (its checkpoint, data record and groups) and finds it finished
    (run / "summary.json").unlink()
    assert main(["train", "-c", "quickstart", "--out", str(run), "--resume", *_sets(args)]) == 0
    assert "resumed" in capsys.readouterr().out
    again = json.loads((run / "summary.json").read_text())
    assert again["test_accuracy"] == summary["test_accuracy"] and again["group_names"] == summary["group_names"]


def test_csv_sweep(tmp_path):
    csv = write_csv(tmp_path / "data", n=60)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "quickstart", "set": [*TINY, "train.epochs=1", f"data.root={csv}"],
                                     "grid": {"algorithm.name": ["erm", "groupdro"]}}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("summary.json")]
    assert sorted(s["algorithm"] for s in summaries) == ["erm", "groupdro"]
    assert all(len(s["test_accuracy"]) == 3 and s["group_names"]["2"] == "water" for s in summaries)


def test_csv_split_column_and_the_reproducible_default_split(tmp_path):
    with_split = build_splits(cfg_for(write_csv(tmp_path / "a", split=True)), progress=False)
    n_test = len([i for i in range(120) if i % 5 == 0])
    assert sum(len(v) for v in with_split.test.values()) == n_test
    assert with_split.meta["split_rule"] == "the CSV's split column"
    assert with_split.meta["group_names"] == ["land", "night", "water"] and with_split.classes == ["bright", "dark"]
    for g, part in with_split.test.items():  # each group's test set holds that group's images only
        assert (part.severity == g).all()

    csv = write_csv(tmp_path / "b")
    a, b = (build_splits(cfg_for(csv), progress=False) for _ in range(2))
    c = build_splits(cfg_for(csv, "seed=1"), progress=False)
    assert np.array_equal(a.train.images, b.train.images)  # reproducible
    assert not np.array_equal(a.train.images, c.train.images)  # and seeded
    assert a.meta["counts"]["train"] == [28, 28, 28] and a.meta["counts"]["val"] == [4, 4, 4]
    assert a.meta["counts"]["test"] == [8, 8, 8]
    assert a.num_groups == 3 and a.max_severity == 2


def test_csv_bad_input_is_one_clear_error(tmp_path):
    csv = write_csv(tmp_path / "d", n=12)
    text = csv.read_text()
    bad = tmp_path / "d" / "bad.csv"
    bad.write_text(text.replace("path,label,group", "path,label,grp"))
    with pytest.raises(DataError, match="needs a header with the columns path,label,group.*lacks group"):
        build_splits(cfg_for(bad), progress=False)
    bad.write_text(text.replace("img/3.png", "img/missing.png"))
    with pytest.raises(DataError, match=r"line 5: image .*missing.png.* not found"):
        build_splits(cfg_for(bad), progress=False)
    bad.write_text("path,label,group,split\nimg/0.png,dark,water,training\n")
    with pytest.raises(DataError, match="split 'training' is not one of train, val, test"):
        build_splits(cfg_for(bad), progress=False)
    with pytest.raises(DataError, match="data.corruption=none takes the groups from the data"):
        build_splits(load_config("quickstart", ["data.corruption=none"]), progress=False)
    with pytest.raises(DataError, match="set data.corruption=none"):
        build_splits(cfg_for(csv, "data.corruption=gaussian_noise"), progress=False)


def _hand_splits(groups_train, G=3, n_eval=10, seed=0):
    rng = np.random.default_rng(seed)

    def arrays(n, groups):
        labels = rng.integers(0, 2, n)
        images = (labels[:, None, None, None] * 150 + rng.integers(0, 60, (n, 8, 8, 3))).astype(np.uint8)
        return LabeledArrays(images, labels.astype(np.int64), np.asarray(groups, np.int64))

    held = {g: arrays(n_eval, np.full(n_eval, g)) for g in range(G)}
    return Splits(train=arrays(len(groups_train), groups_train), val=held, test=dict(held), classes=["a", "b"],
                  max_severity=G - 1, meta={"group_names": ["red", "green", "blue"]})


def test_train_with_hand_made_splits(tmp_path):
    from sharpdro import train

    cfg = load_config("quickstart", ["model.width=4", "train.epochs=1", "train.batch_size=20",
                                     "train.progress=false", "algorithm.name=groupdro"])
    summary = train(cfg, out_dir=tmp_path, splits=_hand_splits(np.arange(60) % 3))
    assert sorted(summary["test_accuracy"]) == ["0", "1", "2"]
    assert summary["group_names"] == {"0": "red", "1": "green", "2": "blue"}
    with pytest.raises(GroupIdError, match=r"group id 3 is outside \[0, 3\).*the training set"):
        train(cfg, out_dir=tmp_path / "bad", splits=_hand_splits(np.arange(60) % 4))
