"""sharpdro.load_runs: a long DataFrame with the documented columns and every config key."""
import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from sharpdro import load_runs  # noqa: E402
from sharpdro.config import load_config  # noqa: E402
from sharpdro.engine import train  # noqa: E402
from sharpdro.io import read_jsonl  # noqa: E402
from sharpdro.runs_table import COLUMNS  # noqa: E402

TINY = ["data.train_per_class=30", "data.val_per_class=3", "data.test_per_class=5", "model.width=8",
        "train.epochs=2", "train.batch_size=50", "train.progress=false", "train.threads=1"]


def test_long_table_of_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for algo in ("erm", "groupdro"):
        train(load_config("quickstart", TINY + [f"algorithm.name={algo}"]), out_dir=sweep / algo)
    (sweep / "empty").mkdir()
    df = load_runs(sweep)
    assert list(df.columns[:len(COLUMNS)]) == list(COLUMNS)
    for key in ("algorithm.name", "data.corruption", "train.lr", "seed", "model.width", "output.loggers"):
        assert key in df.columns
    # run x split x severity x epoch
    assert len(df) == 2 * 3 * 6 * 2
    assert set(df.split) == {"train", "val", "test"} and set(df.severity) == set(range(6))
    assert df.groupby(["run", "split", "severity", "epoch"]).size().max() == 1
    rec = read_jsonl(sweep / "groupdro" / "metrics.jsonl")[1]
    row = df[(df.run == "groupdro") & (df.split == "test") & (df.severity == 3) & (df.epoch == 1)].iloc[0]
    assert row.accuracy == rec["test"]["accuracy"]["3"] and row.ece == rec["test"]["ece"]["3"]
    assert row["algorithm.name"] == "groupdro" and row.status == "done"
    train_row = df[(df.run == "erm") & (df.split == "train") & (df.severity == 0) & (df.epoch == 0)].iloc[0]
    assert train_row["count"] > 0 and np.isnan(train_row.ece)
    # the selected epoch: one per run, the summary's
    import json

    sel = df[df.selected & (df.split == "test")]
    for run in ("erm", "groupdro"):
        summary = json.loads((sweep / run / "summary.json").read_text())
        assert set(sel[sel.run == run].epoch) == {summary["selected_epoch"]}
        got = sel[sel.run == run].set_index("severity").accuracy.to_dict()
        assert got == {int(k): v for k, v in summary["test_accuracy"].items()}
    assert load_runs(sweep / "erm").run.unique().tolist() == ["erm"]
    assert list(load_runs(sweep / "empty").columns) == list(COLUMNS)
