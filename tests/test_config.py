import pytest
import yaml

from sharpdro.config import (SCHEMA, ConfigError, apply_overrides, config_hash, default_config, dump_config,
                             load_config, validate)
from sharpdro.schedule import lr_at


def test_defaults_validate_and_cover_schema():
    cfg = validate({})
    assert cfg == default_config()
    assert set(cfg) == set(SCHEMA)
    assert cfg["algorithm"]["name"] == "erm" and cfg["backend"] == "torch"


@pytest.mark.parametrize("name", ["quickstart", "cifar10", "cifar100", "imagenet30"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg["data"]["corruption"] in SCHEMA["data"]["corruption"].choices


def test_set_overrides_parse_yaml_values():
    cfg = load_config("quickstart", ["train.lr=0.1", "algorithm.name=sharpdro", "train.milestones=[0.5]",
                                     "data.val_per_class=null", "seed=3"])
    assert cfg["train"]["lr"] == 0.1
    assert cfg["algorithm"]["name"] == "sharpdro"
    assert cfg["train"]["milestones"] == [0.5]
    assert cfg["data"]["val_per_class"] is None
    assert cfg["seed"] == 3


@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["train.lrr", "lr"]),
    ("nosection.key=1", ["nosection"]),
    ("train.epochs=abc", ["train.epochs", "integer"]),
    ("train.epochs=0", ["train.epochs", ">= 1"]),
    ("algorithm.name=foo", ["algorithm.name", "sharpdro_agnostic"]),
    ("data.max_severity=6", ["data.max_severity", "<= 5"]),
    ("train.flip=true", ["train.flip"]),
    ("train=1", ["section"]),
    ("train.lr", ["section.key=value"]),
])
def test_bad_overrides_name_the_key_and_allowed_values(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", [override])
    for w in words:
        assert w in str(err.value)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(p)


def test_missing_config_file_lists_shipped():
    with pytest.raises(ConfigError, match="quickstart"):
        load_config("no-such-config")


def test_hash_is_stable_and_sensitive():
    a = load_config("quickstart")
    b = load_config("quickstart")
    assert config_hash(a) == config_hash(b)
    # key order does not matter
    reordered = {k: a[k] for k in reversed(list(a))}
    assert config_hash(reordered) == config_hash(a)
    assert config_hash(apply_overrides(a, ["train.lr=0.0501"])) != config_hash(a)


def test_dump_round_trip(tmp_path):
    cfg = load_config("cifar10", ["train.epochs=3"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = validate(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_step_schedule_official_milestones():
    cfg = load_config("cifar10", ["train.epochs=10", "train.lr=0.1"])
    lrs = [lr_at(e, cfg) for e in range(10)]
    # x0.2 from epoch 3 (30%), 6 (60%) and 8 (80%)
    assert lrs[:3] == [0.1] * 3
    assert lrs[3] == pytest.approx(0.02) and lrs[5] == pytest.approx(0.02)
    assert lrs[6] == pytest.approx(0.004) and lrs[8] == pytest.approx(0.0008) and lrs[9] == pytest.approx(0.0008)
    cos = load_config("cifar10", ["train.epochs=10", "train.schedule=cosine"])
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(5, cos) == pytest.approx(0.05)


def test_milestones_given_as_epoch_numbers_are_refused(tmp_path):
    """Issue 25, case 8: MultiStepLR's habit ``[30, 60, 80]`` passed and the rate never decayed (a milestone
    of 30 x the epochs is never reached): now one error that says milestones are fractions of training."""
    for text in ("train.milestones=[30, 60, 80]", "train.milestones=[0.5, 75]", "train.milestones=[-0.1]"):
        with pytest.raises(ConfigError, match=r"train\.milestones\[\d\]' = .* out of range.*fractions of "
                                              r"train\.epochs.*not epoch numbers"):
            load_config("cifar10", ["train.epochs=100", text])
    path = tmp_path / "c.yaml"
    path.write_text("base: cifar10\ntrain: {epochs: 100, milestones: [30, 60, 80]}\n")
    with pytest.raises(ConfigError, match="fractions of train.epochs"):
        load_config(path)
    cfg = load_config("cifar10", ["train.epochs=100", "train.milestones=[0.3, 0.6, 0.8]", "train.lr=0.1"])
    assert [lr_at(e, cfg) for e in (29, 30, 60, 80)] == pytest.approx([0.1, 0.02, 0.004, 0.0008])


def test_exponent_notation_is_a_number():
    # YAML 1.1 would read 1e-3 as a string
    assert load_config("quickstart", ["train.lr=1e-3"])["train"]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="number"):
        load_config("quickstart", ["train.lr=fast"])
