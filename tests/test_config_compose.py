"""Configs people compose and read: `base:` chains and cycles, `sharpdro config`, docs/config.md, py.typed."""
from pathlib import Path

import pytest
import yaml

from sharpdro.cli import main
from sharpdro.config import SCHEMA, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_chain_child_overrides_base(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "grand.yaml", {"base": "cifar10", "train": {"lr": 0.5, "epochs": 7, "milestones": [0.5]}})
    write(tmp_path / "sub" / "parent.yaml", {"base": "../grand.yaml", "train": {"lr": 0.2}, "seed": 3})
    child = write(tmp_path / "sub" / "child.yaml", {"base": "parent", "train": {"epochs": 2}, "model": {"width": 8}})
    cfg = load_config(child)
    shipped = load_config("cifar10")
    assert cfg["train"]["epochs"] == 2  # child
    assert cfg["train"]["lr"] == 0.2 and cfg["seed"] == 3  # parent
    assert cfg["train"]["milestones"] == [0.5]  # grandparent (a list replaces the base's)
    assert cfg["data"]["dataset"] == "cifar10" and cfg["model"]["name"] == shipped["model"]["name"]  # shipped base
    assert cfg["model"]["width"] == 8
    assert "base" not in cfg
    # --set still wins over the whole chain
    assert load_config(child, ["train.epochs=9"])["train"]["epochs"] == 9


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml", "seed": 1})
    write(tmp_path / "b.yaml", {"base": "c.yaml"})
    write(tmp_path / "c.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml -> " in str(err.value) and str(err.value).count("a.yaml") == 2
    write(tmp_path / "self.yaml", {"base": "self.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")
    write(tmp_path / "missing.yaml", {"base": "no-such-config"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_sweep_base_may_itself_have_a_base(tmp_path):
    from sharpdro.experiments import sweep as sw

    write(tmp_path / "run.yaml", {"base": "quickstart", "train": {"epochs": 1}})
    write(tmp_path / "sweep.yaml", {"base": "run.yaml", "grid": {"seed": [0, 1]}})
    jobs = sw.expand(sw.load_sweep(tmp_path / "sweep.yaml"))
    assert [j.config["train"]["epochs"] for j in jobs] == [1, 1]
    assert jobs[0].config["data"]["dataset"] == "digits"


def test_config_command_lists_every_key(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for name, node in SCHEMA.items():
        keys = [name] if not isinstance(node, dict) else [f"{name}.{k}" for k in node]
        for key in keys:
            assert f"\n{key}  (" in "\n" + out, key
    assert main(["config", "output"]) == 0
    out = capsys.readouterr().out
    assert "output.loggers  (list of str, default []; tensorboard, mlflow, wandb (each))" in out
    assert "train." not in out
    assert main(["config", "nosuch"]) == 2


def test_docs_config_md_is_current():
    from sharpdro.configdoc import markdown

    assert (REPO / "docs" / "config.md").read_text() == markdown(), \
        "docs/config.md is stale: run `sharpdro config --markdown > docs/config.md`"
    assert "docs/config.md" in (REPO / "README.md").read_text()


def test_py_typed_is_shipped():
    import sharpdro

    assert (Path(sharpdro.__file__).parent / "py.typed").is_file()
    assert '"py.typed"' in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("name,base,dataset", [("release_imagenet30", "imagenet30", "ImageNet30"),
                                               ("release_cifar10", "cifar10", "CIFAR10")])
def test_release_configs_read_the_release_layout(name, base, dataset):
    cfg = load_config(name)
    ref = load_config(base)
    assert cfg["data"]["dataset"] == "labelfile" and cfg["data"]["name"] == dataset and cfg["data"]["root"] == "data"
    for section in ("model", "algorithm", "train", "eval"):
        assert cfg[section] == ref[section]  # the release's hyperparameters, from the shipped base


def test_release_config_trains_on_the_release_layout(tmp_path):
    """A tiny copy of the release's data folder: the _val list becomes the test split."""
    import numpy as np
    from PIL import Image

    from sharpdro.data.splits import build_splits

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 3)):
        lines = []
        for c, cls in enumerate(("acorn", "airliner")):
            (tmp_path / f"ImageNet30_{split}_img" / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / f"ImageNet30_{split}_img" / cls / f"{i}.JPEG")
                lines.append(f"{cls}/{i}.JPEG {c}")
        (tmp_path / f"ImageNet30_{split}_label.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config("release_imagenet30", [f"data.root={tmp_path}", "data.train_per_class=8",
                                             "data.image_size=16"])
    splits = build_splits(cfg, progress=False)
    assert len(splits.test[0]) == 6  # the _val list
    assert len(splits.train) <= 16 and len(splits.val[0]) == 2 * (12 - 8)  # validation: rest of the train list
