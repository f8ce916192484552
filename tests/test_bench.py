"""``sharpdro bench``, the host-sync audit of every algorithm's step, and the device-resident input path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sharpdro.backends.torch.algorithms import ALGORITHMS, build_algorithm
from sharpdro.backends.torch.bench import count_host_syncs
from sharpdro.experiments.bench import parse_spec
from sharpdro.backends.torch.models import build_model
from sharpdro.cli import main
from sharpdro.errors import SharpDROError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_json_is_the_last_line_with_the_required_keys(capsys):
    rc = main(["bench", "--algorithm", "sharpdro", "--compare", "erm,sharpdro_agnostic:fraction=0.5:"
               "second_pass_selected_only=true", "--model", "cnn", "--width", "8", "--batch-size", "16",
               "--steps", "3", "--warmup", "1", "--image-size", "16", "--device", "cpu", "--precision", "bf16",
               "--train-images", "64", "--eval-images", "64", "--corruption-images", "20", "--threads", "1",
               "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    for key in ("images_per_second", "step_seconds_median", "peak_memory_mb", "eval_images_per_second",
                "pipeline", "corruption", "ratios", "forward_macs_per_image", "eval_cpu_seconds"):
        assert key in result, key
    assert result["images_per_second"] > 0 and result["step_seconds_median"] > 0 and result["peak_memory_mb"] > 0
    assert set(result["results"]) == {"sharpdro", "erm", "sharpdro_agnostic:fraction=0.5:second_pass_selected_only=true"}
    assert result["ratios"]["erm"] == 1.0 and result["ratio_to"] == "erm"
    assert all(0 < r["step_cpu_seconds_median"] for r in result["results"].values())
    assert result["host_syncs_per_step"] == 0
    assert result["pipeline"]["batch_seconds_median"] > 0
    lp = result["loop"]
    assert lp["host_seconds_per_step"] == pytest.approx(
        lp["host_batch_seconds"] + lp["to_device_seconds"] + lp["epoch_sums_seconds"])
    assert lp["host_fraction_of_step"] == pytest.approx(lp["host_seconds_per_step"] / lp["step_seconds"])
    assert result["precision"] == "bf16" and result["hardware"]["device"] == "cpu"
    c = result["corruption"]
    assert {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "jpeg_compression"} <= set(c)
    assert all(c[k]["images_per_second"] > 0 for k in ("gaussian_noise", "jpeg_compression"))
    assert "images/s" in "\n".join(out[:-1])  # the table comes first


def test_bench_refuses_bad_compare_entries():
    assert parse_spec("sharpdro_agnostic:fraction=0.2") == ("sharpdro_agnostic", ["algorithm.fraction=0.2"])
    with pytest.raises(SharpDROError, match="unknown algorithm"):
        parse_spec("sharpdr")
    with pytest.raises(SharpDROError, match="key=value"):
        parse_spec("sam:rho")


def test_host_sync_counter_sees_item_bool_and_masks():
    t = torch.arange(4.0)
    with count_host_syncs() as counts:
        t.sum().item()
        bool(t.any())
        _ = t[t > 1]
        _ = t + 1  # not a sync
    assert counts == {"Tensor.item": 1, "Tensor.__bool__": 1, "bool-mask index": 1}
    assert torch.Tensor.item is not None and t[t > 1].shape == (2,)  # patches removed


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_update_makes_no_host_sync(name):
    """The CPU stand-in for torch.cuda.set_sync_debug_mode('error'): no .item()/bool()/mask index in a step."""
    torch.manual_seed(0)
    n = 12
    x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))
    g, idx = torch.arange(n) % 6, torch.arange(n)
    hp = {"gen_adjustment": 1.0, "select": "threshold", "eiil_robust": "sharpdro"}
    algo = build_algorithm(name, build_model("cnn", 10, 8, width=4).train(), 10, 6, hp, n)
    algo.configure(torch.optim.SGD(algo.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    if name == "jtt":
        algo.set_error_set(idx % 3 == 0)
    elif name == "eiil":
        algo.set_environments(idx % 2)
    elif hasattr(algo, "set_group_counts"):
        algo.set_group_counts(torch.bincount(g, minlength=6))
    algo.mark_prepared()
    algo.update(x, y, g if algo.uses_groups else None, idx)  # lazy optimizer state first
    with count_host_syncs() as counts:
        algo.update(x, y, g if algo.uses_groups else None, idx)
    assert counts == {}, counts


def test_device_resident_batches_equal_the_host_pipeline():
    """train.data_on_device=on (forced on the CPU here): same order, flips, crops and pixels as BatchIterator."""
    from sharpdro.backends.torch.session import TorchSession
    from sharpdro.config import load_config
    from sharpdro.data.batches import BatchIterator

    rng = np.random.default_rng(0)
    n = 50
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels, sev = rng.integers(0, 10, n), rng.integers(0, 6, n)
    it = BatchIterator(images, labels, sev, 16, seed=3, shuffle=True, drop_last=False, flip=True, crop_padding=2)

    class Factory:
        train = it

        def __call__(self, epoch):
            return it.iterate(epoch)

    sessions = {}
    for mode in ("on", "off"):
        cfg = load_config("quickstart", ["model.width=4", "train.progress=false", f"train.data_on_device={mode}",
                                         "train.device=cpu"])
        s = TorchSession(cfg, None, norm=([0.4] * 3, [0.2] * 3), num_classes=10, image_shape=(8, 8, 3),
                         num_groups=6, train_size=n)
        s.set_batch_factory(Factory())
        sessions[mode] = s
    assert sessions["on"].data_on_device and not sessions["off"].data_on_device
    for epoch in (0, 1):
        dev = [sessions["on"].to_device(*b) for b in sessions["on"].epoch_batches(epoch)]
        host = [sessions["off"].to_device(*b) for b in sessions["off"].epoch_batches(epoch)]
        assert len(dev) == len(host) == 4
        for a, b in zip(dev, host):
            for u, v in zip(a, b):
                assert torch.equal(u, v)


def test_mac_counter_matches_a_hand_count():
    from sharpdro.backends.torch.bench import count_macs

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),                       # 4x8x8 outputs x 3*3*3 = 256 x 27
        torch.nn.BatchNorm2d(4), torch.nn.ReLU(),                  # not counted
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),   # 8x4x4 outputs x (4/2)*3*3 = 128 x 18
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 5))                                     # 5 outputs x 8
    net.train()
    stats = net[1].running_mean.clone()
    assert count_macs(net, (3, 8, 8)) == 256 * 27 + 128 * 18 + 5 * 8
    assert net.training and torch.equal(net[1].running_mean, stats)  # mode and BatchNorm statistics kept
    # ResNet-18 at 224 px with 1000 classes: the published 1.8 G multiply-adds
    assert count_macs(build_model("resnet18", 1000, 224), (3, 224, 224)) == pytest.approx(1.814e9, rel=1e-3)


def test_compare_precision_interleaves_and_reports_each_ratio(capsys):
    rc = main(["bench", "--algorithm", "erm", "--compare", "sam", "--compare-precision", "fp32,bf16", "--model", "cnn",
               "--width", "8", "--batch-size", "16", "--steps", "2", "--warmup", "1", "--image-size", "16",
               "--skip", "pipeline,eval,corruption", "--threads", "1", "--json"])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert [(k, v["precision"]) for k, v in result["results"].items()] == [
        ("erm [fp32]", "fp32"), ("erm [bf16]", "bf16"), ("sam [fp32]", "fp32"), ("sam [bf16]", "bf16")]
    res = result["results"]
    for spec in ("erm", "sam"):
        assert result["precision_ratios"][spec]["fp32"] == 1.0
        assert result["precision_ratios"][spec]["bf16"] == pytest.approx(
            res[f"{spec} [bf16]"]["step_seconds_median"] / res[f"{spec} [fp32]"]["step_seconds_median"])
    text = "\n".join(out[:-1])
    assert "fp32 and bf16 (interleaved)" in text and "erm: step time / fp32 bf16" in text
    assert main(["bench", "--compare-precision", "fp32,bf8", "--skip", "pipeline,eval,corruption"]) == 2
    assert "--compare-precision bf8: allowed are" in capsys.readouterr().err
