"""Networks: registry, shapes, stems, WideResNet details, initialisation, and that the small CNN learns."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpdro.backends.torch.models import MODELS, build_model
from sharpdro.config import MODELS as CONFIG_MODELS, ConfigError

# Published parameter counts (10 classes, CIFAR stems): a structural check of each network.
PARAMS = {"cnn7": 295_490, "resnet18": 11_173_962, "resnet50": 23_520_842, "wrn28_2": 1_467_610, "wrn28_10": 36_479_194}


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


# --------------------------------------------------------------------------- cnn7
def _cnn7_count(w: int, classes: int) -> int:
    """Parameters of cnn7 from its layer shapes: 3x3 bias-free convolutions, BatchNorm (weight, bias), linear."""
    def conv_bn(cin, cout):
        return 9 * cin * cout + 2 * cout

    s = max(16, 3 * w // 4)
    n = conv_bn(3, s)
    for cin, c in ((s, w), (w, 2 * w), (2 * w, 4 * w)):
        n += conv_bn(cin, c) + conv_bn(c, c)
    return n + 4 * w * classes + classes


@pytest.mark.parametrize("width,classes", [(32, 10), (8, 7)])  # width 8: the stem's floor of 16 applies
def test_cnn7_parameter_count(width, classes):
    model = build_model("cnn7", classes, 32, width=width)
    assert sum(p.numel() for p in model.parameters()) == _cnn7_count(width, classes)


@pytest.mark.parametrize("size,final", [(32, 4), (16, 2), (8, 1), (4, 1)])
def test_cnn7_shapes_and_pooling_stops_at_one_pixel(size, final):
    torch.manual_seed(0)
    model = build_model("cnn7", 10, size, width=8).eval()
    seen = {}
    model.blocks.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert seen["x"].shape == (3, 32, final, final)
    pools = [isinstance(b.pool, nn.MaxPool2d) for b in model.blocks]
    assert pools == [True, True, size >= 8]  # at 4 px the last block's map is already 1 px wide


def test_cnn7_layers_compute_what_the_description_says():
    """Exact GELU, max-pool before BatchNorm, global max pool: one block and the head against direct formulas."""
    torch.manual_seed(0)
    model = build_model("cnn7", 10, 16, width=8).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial statistics so BatchNorm's position matters
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 8, 8, 8)  # the second block: 8 -> 16 channels
        block = model.blocks[1]

        def bn(t, m):
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            return (t - m.running_mean[:, None, None]) * scale[:, None, None] + m.bias[:, None, None]

        def gelu(t):
            return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))

        c = nn.functional.conv2d(x, block.conv1.weight, padding=1)
        pooled = c.reshape(2, 16, 4, 2, 4, 2).amax(dim=(3, 5))
        h = gelu(bn(pooled, block.bn1))
        ref = gelu(bn(nn.functional.conv2d(h, block.conv2.weight, padding=1), block.bn2))
        assert torch.allclose(block(x), ref, atol=1e-5)
        feats = torch.randn(2, 32, 2, 2)
        logits = feats.flatten(2).max(dim=2).values @ model.head[3].weight.T + model.head[3].bias
        assert torch.allclose(model.head(feats), logits, atol=1e-6)


def test_cnn7_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model("cnn7", 10, 16, width=8).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cnn7_dropout_and_initialisation():
    torch.manual_seed(0)
    model = build_model("cnn7", 10, 32, width=16, dropout=0.3)
    assert isinstance(model.head[2], nn.Dropout) and model.head[2].p == 0.3
    conv = model.blocks[2].conv2  # 64 -> 64, 3x3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.05)
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, (nn.Linear, nn.BatchNorm2d)))
