"""Networks: registry, shapes, stems, WideResNet details, initialisation, and that the small CNN learns."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpdro.backends.torch.models import MODELS, build_model
from sharpdro.config import MODELS as CONFIG_MODELS, ConfigError

# Published parameter counts (10 classes, CIFAR stems): a structural check of each network.
PARAMS = {"resnet18": 11_173_962, "resnet50": 23_520_842, "wrn28_2": 1_467_610, "wrn28_10": 36_479_194}


def test_registry_matches_config_choices():
    assert tuple(MODELS) == CONFIG_MODELS


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_model("vgg16", 10, 32)
    for name in MODELS:
        assert name in str(err.value)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape_and_parameter_count(name):
    torch.manual_seed(0)
    model = build_model(name, 10, 32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if name in PARAMS:
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_resnet_stem_depends_on_image_size():
    torch.manual_seed(0)
    small, large = build_model("resnet18", 30, 32), build_model("resnet18", 30, 64)
    convs_small = [m for m in small.stem if isinstance(m, nn.Conv2d)]
    convs_large = [m for m in large.stem if isinstance(m, nn.Conv2d)]
    assert convs_small[0].kernel_size == (3, 3) and convs_small[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.stem)
    assert convs_large[0].kernel_size == (7, 7) and convs_large[0].stride == (2, 2)
    assert any(isinstance(m, nn.MaxPool2d) for m in large.stem)
    # 64 px through the ImageNet stem: 64 -> 32 (conv) -> 16 (pool) -> ... -> 2 before the global pool
    feats = {}
    large.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    large.train()
    out = large(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 30) and feats["x"].shape[-2:] == (2, 2)


@pytest.mark.parametrize("name", ["wrn28_2"])
def test_wideresnet_effective_bn_and_leaky_relu(name):
    model = build_model(name, 10, 32)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert bns and all(m.momentum == 0.1 and m.eps == 1e-5 for m in bns)
    assert acts and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in acts)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 25  # stem + 3 stages x 4 blocks x 2
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64, 128]


def test_initialisation():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 32)
    conv = model.layer3[0].conv2  # 256 -> 256, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.02)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)


def test_cnn_width_dropout_and_tiny_images():
    a, b = build_model("cnn", 10, 32, width=8), build_model("cnn", 10, 32, width=16)
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in b.parameters())
    drop = build_model("cnn", 10, 8, width=8, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in drop.modules())
    assert drop.eval()(torch.randn(3, 3, 8, 8)).shape == (3, 10)  # 8 px digits: pooling stops at 1 px


def test_cnn_learns_digits_in_one_cpu_epoch():
    """The 8x8 digits (scikit-learn's embedded copy): one epoch of the small CNN is far above chance."""
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0
    x = ((x - x.mean()) / x.std())[:, None].repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = build_model("cnn", 10, 8, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    for s in range(0, len(train), 50):
        i = train[s:s + 50]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).double().mean().item()
    assert acc > 0.6  # chance is 0.1
