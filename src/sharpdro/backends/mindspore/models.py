"""The MindSpore networks: the same architectures as ``backends/torch/models.py``, name for name.

Every cell is laid out exactly as its PyTorch counterpart (same attribute names, same
positions inside ``SequentialCell``), so a parameter's MindSpore name is the PyTorch
name with BatchNorm's suffixes renamed (``weight``/``bias``/``running_mean``/
``running_var`` -> ``gamma``/``beta``/``moving_mean``/``moving_variance``); shapes and
layouts are identical (convolutions OIHW, dense ``[out, in]``).  ``convert.py`` relies
on this; ``tests/test_mindspore_parity.py`` checks it for every model.

Three MindSpore conventions differ from PyTorch and are handled here:
- BatchNorm ``momentum`` is the weight of the OLD running value (PyTorch's 0.1 is
  MindSpore's 0.9);
- ``nn.GELU`` defaults to the tanh approximation (PyTorch's default is the exact erf
  form, which ``approximate=False`` gives);
- cells are built in eval mode (the session calls ``set_train``).

Initialisation: :func:`init_weights` gives the same distributions as the PyTorch
models (Kaiming-normal fan-out convolutions, BatchNorm 1/0, PyTorch's default linear
weight init or Xavier-normal for WideResNet, zero linear bias) from a NumPy generator.
The session starts from the PyTorch initialisation of the same seed instead when
PyTorch is installed (``MindSporeSession._make_model``), so both backends start a run
from identical weights.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from sharpdro.backends.mindspore import _runtime  # noqa: F401  (the CPU setting, before MindSpore loads)
import mindspore as ms
from mindspore import nn, ops

from sharpdro.config import ConfigError

__all__ = ["MODELS", "build_model", "init_weights", "parameter_dict", "load_parameters", "SmallCNN", "CNN7",
           "ResNet", "WideResNet"]

_TORCH_BN_MOMENTUM = 0.1  # PyTorch's default; MindSpore's momentum is its complement


def _bn(c: int, eps: float = 1e-5, torch_momentum: float = _TORCH_BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=eps, momentum=1.0 - torch_momentum)


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    # weight_init zeros: the real values come from init_weights / a checkpoint (skips a random fill)
    if padding:
        return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=padding, has_bias=False,
                         weight_init="zeros")
    return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="valid", has_bias=False, weight_init="zeros")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return _conv(cin, cout, 3, stride, 1)


class GlobalAvgPool(nn.Cell):
    """``AdaptiveAvgPool2d(1)``: mean over H and W, keeping [N, C, 1, 1]."""

    def construct(self, x):
        return ops.mean(x, (2, 3), keep_dims=True)


class Flatten(nn.Cell):
    def construct(self, x):
        return ops.reshape(x, (x.shape[0], -1))


class Dropout(nn.Cell):
    """Inverted dropout (PyTorch's: zero with probability p, scale the rest by 1/(1-p)) from a NumPy generator.

    MindSpore's ``nn.Dropout`` keeps its random state inside the kernel, where
    ``get_rng_state`` cannot save it; with the mask drawn from ``self.rng`` (the
    session's generator, saved in its checkpoints) a resumed run is bit for bit the
    uninterrupted one.  PyNative only (the mask is made on the host).
    """

    def __init__(self, p: float, rng: np.random.Generator | None = None):
        super().__init__()
        self.p = float(p)
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def construct(self, x):
        if not self.training or self.p == 0:
            return x
        keep = self.rng.random(tuple(x.shape)) >= self.p
        mask = keep.astype(np.float32) * np.float32(1.0 / (1.0 - self.p))
        return x * ms.Tensor(mask, x.dtype)


def _head(features: int, num_classes: int, dropout: float) -> nn.SequentialCell:
    """Global average pool -> flatten -> dropout -> dense (positions 0..3, as the PyTorch head)."""
    drop = Dropout(dropout) if dropout > 0 else nn.Identity()
    return nn.SequentialCell([GlobalAvgPool(), Flatten(), drop,
                              nn.Dense(features, num_classes, weight_init="zeros", bias_init="zeros")])


# --------------------------------------------------------------------------- small CNN
class SmallCNN(nn.Cell):
    """Three conv-BN-ReLU(-maxpool) blocks of width w, 2w, 4w, global pool, dense (see the PyTorch model)."""

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 32, dropout: float = 0.0):
        super().__init__()
        layers = []
        cin, size = 3, int(image_size)
        for cout in (width, 2 * width, 4 * width):
            layers += [_conv3x3(cin, cout), _bn(cout), nn.ReLU()]
            if size >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            cin = cout
        self.features = nn.SequentialCell(layers)
        self.head = _head(cin, num_classes, dropout)

    def construct(self, x):
        return self.head(self.features(x))


# --------------------------------------------------------------------------- cnn7
class GlobalMaxPool(nn.Cell):
    """Max over H and W, keeping [N, C, 1, 1] (ties share the gradient, as PyTorch's ``amax``)."""

    def construct(self, x):
        return ops.amax(x, (2, 3), True)


def _gelu() -> nn.GELU:
    return nn.GELU(approximate=False)  # the exact erf form, PyTorch's nn.GELU()


class _Cnn7Block(nn.Cell):
    """conv3x3 -> max-pool 2 (identity at 1 px) -> BN -> GELU -> conv3x3 -> BN -> GELU (see the PyTorch model)."""

    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2) if pool else nn.Identity()
        self.bn1 = _bn(cout)
        self.act1 = _gelu()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = _bn(cout)
        self.act2 = _gelu()

    def construct(self, x):
        x = self.act1(self.bn1(self.pool(self.conv1(x))))
        return self.act2(self.bn2(self.conv2(x)))


class CNN7(nn.Cell):
    """Stem of width max(16, 3w/4), three pooled blocks of width w, 2w, 4w, global max pool, dense
    (see the PyTorch model)."""

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 32, dropout: float = 0.0):
        super().__init__()
        stem = max(16, 3 * width // 4)
        self.stem = nn.SequentialCell([_conv3x3(3, stem), _bn(stem), _gelu()])
        blocks, cin, size = [], stem, int(image_size)
        for cout in (width, 2 * width, 4 * width):
            blocks.append(_Cnn7Block(cin, cout, pool=size >= 2))
            size = size // 2 if size >= 2 else size
            cin = cout
        self.blocks = nn.SequentialCell(blocks)
        drop = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.SequentialCell([GlobalMaxPool(), Flatten(), drop,
                                       nn.Dense(cin, num_classes, weight_init="zeros", bias_init="zeros")])

    def construct(self, x):
        return self.head(self.blocks(self.stem(x)))


# --------------------------------------------------------------------------- ResNet
class _Basic(nn.Cell):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU()
        self.shortcut = _projection(cin, planes * self.expansion, stride)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _Bottleneck(nn.Cell):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3, as the PyTorch model
        self.bn2 = _bn(planes)
        self.conv3 = _conv(planes, cout, 1)
        self.bn3 = _bn(cout)
        self.relu = nn.ReLU()
        self.shortcut = _projection(cin, cout, stride)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Cell:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.SequentialCell([_conv(cin, cout, 1, stride), _bn(cout)])


class ResNet(nn.Cell):
    """ResNet-18/50; CIFAR stem for ``image_size <= 32``, ImageNet stem (7x7/2 conv + 3x3/2 max-pool) above."""

    def __init__(self, block, layers, num_classes: int, image_size: int = 32, dropout: float = 0.0):
        super().__init__()
        self.cifar_stem = int(image_size) <= 32
        if self.cifar_stem:
            self.stem = nn.SequentialCell([_conv3x3(3, 64), _bn(64), nn.ReLU()])
        else:
            self.stem = nn.SequentialCell([_conv(3, 64, 7, 2, 3), _bn(64), nn.ReLU(),
                                           nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)])
        cin, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.SequentialCell(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = _head(cin, num_classes, dropout)

    def construct(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


# --------------------------------------------------------------------------- WideResNet
# As the PyTorch model: the effective BatchNorm values of the official code (momentum 0.1,
# eps 1e-5 in PyTorch's convention), LeakyReLU slope 0.1.
_WRN_BN_EPS = 1e-5
_WRN_SLOPE = 0.1


def _wrn_bn(c: int) -> nn.BatchNorm2d:
    return _bn(c, eps=_WRN_BN_EPS)


def _wrn_act() -> nn.LeakyReLU:
    return nn.LeakyReLU(_WRN_SLOPE)


class _WideBlock(nn.Cell):
    """Pre-activation block (see the PyTorch ``_WideBlock``)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, preact_shared: bool = False):
        super().__init__()
        self.preact = nn.SequentialCell([_wrn_bn(cin), _wrn_act()])
        self.preact_shared = preact_shared
        self.branch = nn.SequentialCell([_conv3x3(cin, cout, stride), _wrn_bn(cout), _wrn_act(),
                                         _conv3x3(cout, cout)])
        self.shortcut = _conv(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def construct(self, x):
        a = self.preact(x)
        if self.preact_shared:
            return self.shortcut(a) + self.branch(a)
        return self.shortcut(x) + self.branch(a)


class WideResNet(nn.Cell):
    """WideResNet-28-k (4 blocks per stage, widths 16, 16k, 32k, 64k), LeakyReLU(0.1)."""

    def __init__(self, k: int, num_classes: int, depth: int = 28, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.stem = _conv3x3(3, widths[0])
        stages = []
        for i in range(3):
            blocks = [_WideBlock(widths[i], widths[i + 1], stride=1 if i == 0 else 2, preact_shared=(i == 0))]
            blocks += [_WideBlock(widths[i + 1], widths[i + 1]) for _ in range(n - 1)]
            stages.append(nn.SequentialCell(blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.final = nn.SequentialCell([_wrn_bn(widths[3]), _wrn_act()])
        self.head = _head(widths[3], num_classes, dropout)
        self.linear_init = "xavier"

    def construct(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.final(x))


# --------------------------------------------------------------------------- initialisation
def _bn_cells(model: nn.Cell):
    return [(n, c) for n, c in model.cells_and_names() if isinstance(c, nn.BatchNorm2d)]


def init_weights(model: nn.Cell, rng: np.random.Generator | int = 0) -> None:
    """The PyTorch models' initial distributions, drawn from a NumPy generator (or a seed)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    xavier = getattr(model, "linear_init", "default") == "xavier"
    for _name, cell in model.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            w = cell.weight
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            _set(w, rng.normal(0.0, math.sqrt(2.0 / fan_out), w.shape))
        elif isinstance(cell, nn.BatchNorm2d):
            _set(cell.gamma, np.ones(cell.gamma.shape))
            _set(cell.beta, np.zeros(cell.beta.shape))
            _set(cell.moving_mean, np.zeros(cell.moving_mean.shape))
            _set(cell.moving_variance, np.ones(cell.moving_variance.shape))
        elif isinstance(cell, nn.Dense):
            w = cell.weight
            fan_out, fan_in = w.shape
            if xavier:
                _set(w, rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), w.shape))
            else:  # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(fan_in)
                _set(w, rng.uniform(-bound, bound, w.shape))
            if cell.bias is not None:
                _set(cell.bias, np.zeros(cell.bias.shape))


def _set(param: ms.Parameter, value: np.ndarray) -> None:
    param.set_data(ms.Tensor(np.ascontiguousarray(value, dtype=np.float32)))


# --------------------------------------------------------------------------- registry
def _cnn(num_classes, image_size, width, dropout):
    return SmallCNN(num_classes, image_size=image_size, width=width, dropout=dropout)


def _cnn7(num_classes, image_size, width, dropout):
    return CNN7(num_classes, image_size=image_size, width=width, dropout=dropout)


def _resnet18(num_classes, image_size, width, dropout):
    return ResNet(_Basic, (2, 2, 2, 2), num_classes, image_size=image_size, dropout=dropout)


def _resnet50(num_classes, image_size, width, dropout):
    return ResNet(_Bottleneck, (3, 4, 6, 3), num_classes, image_size=image_size, dropout=dropout)


def _wrn28_2(num_classes, image_size, width, dropout):
    return WideResNet(2, num_classes, dropout=dropout)


def _wrn28_10(num_classes, image_size, width, dropout):
    return WideResNet(10, num_classes, dropout=dropout)


#: name -> constructor(num_classes, image_size, width, dropout), as the PyTorch registry.
MODELS: dict[str, Callable[..., nn.Cell]] = {
    "cnn": _cnn,
    "cnn7": _cnn7,
    "resnet18": _resnet18,
    "resnet50": _resnet50,
    "wrn28_2": _wrn28_2,
    "wrn28_10": _wrn28_10,
}


def build_model(name: str, num_classes: int, image_size: int, width: int = 32, dropout: float = 0.0,
                seed: int | np.random.Generator | None = 0,
                dropout_rng: np.random.Generator | None = None) -> nn.Cell:
    """A network in float32 (eval mode); initialised by :func:`init_weights` unless ``seed`` is None (zeros).

    ``dropout_rng``: the generator of the dropout masks (default: a fresh one seeded 0).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    model = MODELS[name](int(num_classes), int(image_size), int(width), float(dropout))
    if dropout_rng is not None:
        for _n, cell in model.cells_and_names():
            if isinstance(cell, Dropout):
                cell.rng = dropout_rng
    if seed is not None:
        init_weights(model, seed)
    return model


def parameter_dict(model: nn.Cell) -> dict[str, ms.Parameter]:
    """Every parameter (trainable and BatchNorm statistics) by name, in definition order."""
    return {p.name: p for p in model.get_parameters()}


def load_parameters(model: nn.Cell, params: dict[str, np.ndarray], strict: bool = True) -> None:
    """Set the network's parameters (MindSpore names, see ``convert.py``) from NumPy arrays."""
    own = parameter_dict(model)
    if strict:
        missing, unexpected = sorted(set(own) - set(params)), sorted(set(params) - set(own))
        if missing or unexpected:
            raise ConfigError(f"the weights do not fit the network (missing: {missing[:5]}, unexpected: "
                              f"{unexpected[:5]})")
    for name, value in params.items():
        if name in own:
            p = own[name]
            if tuple(p.shape) != tuple(np.shape(value)):
                raise ConfigError(f"weight {name!r} has shape {tuple(np.shape(value))}, the network expects "
                                  f"{tuple(p.shape)}")
            _set(p, value)
