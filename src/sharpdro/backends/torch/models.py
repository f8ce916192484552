"""Networks: two small CPU-friendly CNNs (``cnn``, ``cnn7``), ResNet-18/50 and WideResNet-28-k.

Every model maps already-normalised float images ``[N, 3, H, W]`` to logits
``[N, num_classes]``.  ``build_model(name, ...)`` is the only entry point the
trainer uses; ``MODELS`` is the registry.

Initialisation everywhere: Kaiming-normal convolutions (fan-out, ReLU gain, as
the official SharpDRO code), BatchNorm weight 1 / bias 0, linear layers with
PyTorch's default weight init and a zero bias (WideResNet: Xavier-normal weight,
as the official code).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sharpdro.config import ConfigError

__all__ = ["MODELS", "build_model", "factory_model", "timm_model", "is_external", "SmallCNN", "CNN7", "ResNet", "WideResNet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_weights(model: nn.Module, linear: str = "default") -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "xavier":
                nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _Head(nn.Sequential):
    """Global average pool -> flatten -> dropout -> linear."""

    def __init__(self, features: int, num_classes: int, dropout: float):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                         nn.Linear(features, num_classes))


# --------------------------------------------------------------------------- small CNN
class SmallCNN(nn.Module):
    """Three conv-BN-ReLU(-maxpool) blocks of width w, 2w, 4w, global pool, linear.

    A few hundred thousand parameters at w=32: trains digits / CIFAR well above chance
    in a few CPU epochs.  Pooling is skipped once the feature map is 1 pixel wide, so
    tiny images (8x8 digits) work too.
    """

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 32, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = 3, int(image_size)
        for cout in (width, 2 * width, 4 * width):
            layers += [_conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _Head(cin, num_classes, dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- cnn7
class GlobalMaxPool(nn.Module):
    """Max over H and W, keeping [N, C, 1, 1].  ``amax`` splits the gradient evenly between
    tied maxima, as MindSpore's ``amax`` does (``AdaptiveMaxPool2d`` gives it to one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=True)


class _Cnn7Block(nn.Module):
    """conv3x3 -> max-pool 2 (identity once the map is 1 px wide) -> BN -> GELU -> conv3x3 -> BN -> GELU.

    Pooling right after the first convolution runs the rest of the block on a quarter of
    the pixels, which is most of this network's speed.
    """

    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.GELU()  # exact (erf) form
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))
        return self.act2(self.bn2(self.conv2(x)))


class CNN7(nn.Module):
    """Seven convolutions: a stem of width max(16, 3w/4), three pooled blocks of width w, 2w, 4w
    (two convolutions each, GELU), global max pool, linear (after airbench's CIFAR-10 networks).

    295,490 parameters at w=32 with 10 classes.  The network of the CPU reproduction: on one
    thread a training step costs a little over half of ``cnn`` at w=64 (``sharpdro bench``)
    and it fits small CIFAR training mixtures much further.  Pooling stops at 1 px, so any
    image size works (the 16 px digits included).
    """

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 32, dropout: float = 0.0):
        super().__init__()
        stem = max(16, 3 * width // 4)
        self.stem = nn.Sequential(_conv3x3(3, stem), nn.BatchNorm2d(stem), nn.GELU())
        blocks, cin, size = [], stem, int(image_size)
        for cout in (width, 2 * width, 4 * width):
            blocks.append(_Cnn7Block(cin, cout, pool=size >= 2))
            size = size // 2 if size >= 2 else size
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(GlobalMaxPool(), nn.Flatten(1),
                                  nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(cin, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# --------------------------------------------------------------------------- ResNet
class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, planes * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3 (torchvision "v1.5")
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet-18/50.

    Stem: for ``image_size <= 32`` the CIFAR stem (3x3 conv, stride 1, no max-pool);
    for larger images the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool),
    which the official code uses for ImageNet-30 even at 64 px.
    """

    def __init__(self, block, layers, num_classes: int, image_size: int = 32, dropout: float = 0.0):
        super().__init__()
        self.cifar_stem = int(image_size) <= 32
        if self.cifar_stem:
            self.stem = nn.Sequential(_conv3x3(3, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        cin, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = _Head(cin, num_classes, dropout)
        _init_weights(self)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


# --------------------------------------------------------------------------- WideResNet
# The official code gives its BatchNorm subclass momentum=1e-3 and eps=1e-3 as constructor
# defaults but never passes them to nn.BatchNorm2d, so the values in effect are PyTorch's
# defaults, momentum 0.1 and eps 1e-5.  We match the effective values.
_WRN_BN_MOMENTUM = 0.1
_WRN_BN_EPS = 1e-5
_WRN_SLOPE = 0.1  # LeakyReLU negative slope, as the official code


def _wrn_bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_WRN_BN_EPS, momentum=_WRN_BN_MOMENTUM)


def _wrn_act() -> nn.LeakyReLU:
    return nn.LeakyReLU(_WRN_SLOPE)


class _WideBlock(nn.Module):
    """Pre-activation block: [BN-act] conv3x3(stride) BN-act conv3x3, plus a shortcut.

    With ``preact_shared`` (first block of the network) the BN-act is applied to the
    input once and both the branch and the shortcut read the activated tensor;
    otherwise the shortcut reads the raw input and only the branch is pre-activated.
    The shortcut is a 1x1 conv when the shape changes, the identity otherwise.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, preact_shared: bool = False):
        super().__init__()
        self.preact = nn.Sequential(_wrn_bn(cin), _wrn_act())
        self.preact_shared = preact_shared
        self.branch = nn.Sequential(_conv3x3(cin, cout, stride), _wrn_bn(cout), _wrn_act(), _conv3x3(cout, cout))
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if (stride != 1 or cin != cout) else nn.Identity())

    def forward(self, x):
        a = self.preact(x)
        return self.shortcut(a if self.preact_shared else x) + self.branch(a)


class WideResNet(nn.Module):
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
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.final = nn.Sequential(_wrn_bn(widths[3]), _wrn_act())
        self.head = _Head(widths[3], num_classes, dropout)
        _init_weights(self, linear="xavier")

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.final(x))


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


#: name -> constructor(num_classes, image_size, width, dropout).  ``width`` only
#: affects ``cnn`` and ``cnn7``; the others have their published widths.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": _cnn,
    "cnn7": _cnn7,
    "resnet18": _resnet18,
    "resnet50": _resnet50,
    "wrn28_2": _wrn28_2,
    "wrn28_10": _wrn28_10,
}


def is_external(name: str) -> bool:
    """``timm:NAME`` or ``module.path:factory``: a network this package does not define (PyTorch only)."""
    return ":" in str(name)


def build_model(name: str, num_classes: int, image_size: int, width: int = 32, dropout: float = 0.0,
                pretrained: bool = False) -> nn.Module:
    """A freshly initialised network (on the CPU, float32).

    ``name``: a built-in (:data:`MODELS`), ``timm:NAME`` (``timm.create_model(NAME, pretrained=...,
    num_classes=..., in_chans=3)``; pip install timm) or ``module.path:factory`` (any callable returning an
    ``nn.Module``, see :func:`factory_model`). ``pretrained`` applies to ``timm:`` names only.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if pretrained and not str(name).startswith("timm:"):
        raise ConfigError(f"model.pretrained=true is for timm:NAME models only; model.name={name!r}")
    if str(name).startswith("timm:"):
        return timm_model(name[len("timm:"):], int(num_classes), dropout=float(dropout), pretrained=bool(pretrained))
    if is_external(name):
        return factory_model(name, int(num_classes), int(image_size), width=int(width), dropout=float(dropout))
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}, timm:NAME or "
                          f"module.path:factory")
    return MODELS[name](int(num_classes), int(image_size), int(width), float(dropout))


# --------------------------------------------------------------------------- escape hatches
def timm_model(arch: str, num_classes: int, dropout: float = 0.0, pretrained: bool = False) -> nn.Module:
    """``timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=3)``
    (plus ``drop_rate=dropout`` when dropout > 0); a missing timm is one error saying how to install it."""
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(f"model.name='timm:{arch}' needs timm: pip install timm (or pip install "
                          f"'sharpdro[timm]'); importing it failed: {exc}") from None
    kwargs = {"drop_rate": dropout} if dropout > 0 else {}
    try:
        model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=3, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model (NAME)"
        raise ConfigError(f"model.name='timm:{arch}': timm cannot build it ({exc}); "
                          f"timm.list_models() names the architectures it has") from None
    return _checked_module(model, f"timm:{arch}")


# The factory's optional keyword arguments: passed when its signature names them.
FACTORY_KEYWORDS = ("in_channels", "image_size", "width", "dropout")


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """The callable ``module.path:attr`` names (importing the module runs its code: the config named it)."""
    import importlib

    module_path, _, attr = str(name).partition(":")
    if not module_path or not attr:
        raise ConfigError(f"model.name={name!r}: write a custom network as module.path:factory "
                          f"(e.g. my_models:make_net)")
    try:
        obj = importlib.import_module(module_path)
    except ImportError as exc:
        raise ConfigError(f"model.name={name!r}: cannot import module {module_path!r} ({exc}); install it or put "
                          f"its folder on PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.name={name!r}: module {module_path!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.name={name!r}: {attr!r} is not callable (a function or class returning an "
                          f"nn.Module)")
    return obj


def factory_model(name: str, num_classes: int, image_size: int, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """``factory(num_classes=N)`` of ``model.name: module.path:factory``, plus ``in_channels=3``,
    ``image_size=S``, ``width=W``, ``dropout=P`` for each of those its signature names.

    A factory without a ``dropout`` (``width``) parameter refuses a ``model.dropout`` > 0 (a ``model.width``
    other than the default), which it could not honour.
    """
    import inspect

    from sharpdro.config import SCHEMA

    factory = resolve_factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    values = {"in_channels": 3, "image_size": int(image_size), "width": int(width), "dropout": float(dropout)}
    kwargs = {"num_classes": int(num_classes)}
    kwargs.update({k: v for k, v in values.items() if k in params})
    if dropout > 0 and "dropout" not in params:
        raise ConfigError(f"model.dropout={dropout} but {name} takes no dropout argument; set model.dropout=0")
    if width != SCHEMA["model"]["width"].default and "width" not in params:
        raise ConfigError(f"model.width={width} but {name} takes no width argument; leave model.width unset")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.name={name!r}: calling it with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())} "
                          f"failed ({exc}); a factory takes num_classes= (and optionally "
                          f"{', '.join(FACTORY_KEYWORDS)})") from None
    return _checked_module(model, name)


def _checked_module(model, name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
