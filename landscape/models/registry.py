"""The model registry: models by name (or `package.module:callable`) plus keyword arguments.

Builders declare `num_classes` and `input_shape` to be given them from the dataset (builder_kwargs), and take
optional extra kwargs, so a checkpoint that stores the name and the kwargs rebuilds the model with nothing else;
any `package.module:callable` (torchvision's builders) and `timm:NAME` work too. No pretrained weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from landscape.base.config import import_object
from landscape.base.errors import ConfigError, UnknownNameError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


TIMM = "timm:"  # --model timm:NAME: timm.create_model(NAME), never pretrained (no network at run time)
DATA_KWARGS = ("num_classes", "input_shape")  # what the data tells a builder, where the builder declares them


def get_builder(name: str) -> Callable[..., nn.Module]:
    """A registered builder, `timm:NAME` (timm's model NAME), or `package.module:callable` imported on demand."""
    if name.startswith(TIMM):
        return timm_builder(name[len(TIMM):])
    if ":" in name:
        fn = import_object(name, "model")
        if not callable(fn):
            raise UnknownNameError(f"model {name!r} is not callable; name a function or class that builds it")
        return fn
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}, "
                               "or give package.module:callable or timm:NAME")
    return _REGISTRY[name]


def timm_builder(model_name: str) -> Callable[..., nn.Module]:
    """timm's `model_name` as a builder that declares num_classes and input_shape (its channels go to in_chans)."""
    try:
        import timm
    except ImportError:
        raise UnknownNameError(f"--model timm:{model_name} needs timm (pip install timm, or pip install -e "
                               "'.[remedies]' in the clone)") from None
    if not timm.is_model(model_name):
        raise UnknownNameError(f"timm has no model {model_name!r}; see timm.list_models(), e.g. timm:resnet18")

    def build(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224), **kwargs: Any) -> nn.Module:
        in_chans = int(input_shape[0]) if len(input_shape) == 3 else kwargs.pop("in_chans", 3)
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)

    return build


def builder_kwargs(name: str, kwargs: dict[str, Any], **data: Any) -> dict[str, Any]:
    """The keyword arguments to build `name` with: `kwargs` as given, plus each of `data` (num_classes,
    input_shape) that the builder declares by name and `kwargs` does not set. A builder that takes **kwargs
    (torchvision's) gets only what it declares: torchvision's resnet18 would pass input_shape on to ResNet, which
    refuses it. What a checkpoint stores, so that it rebuilds the same model."""
    params = inspect.signature(get_builder(name)).parameters
    declared = {k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return {**{k: v for k, v in data.items() if k in declared and k not in kwargs}, **kwargs}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model from its name and kwargs (builder_kwargs says which); `num_classes`/`input_shape` are dropped
    for a builder that cannot take them (checkpoints before 0.9 stored them for every model)."""
    fn = get_builder(name)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {k: v for k, v in kwargs.items()
                if takes_any or k in params or k not in DATA_KWARGS}
    try:
        model = fn(**accepted)
    except TypeError as exc:
        raise ConfigError(f"model {name!r} rejected its arguments {accepted}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


# ----------------------------------------------------------------------------- MLP and CNNs for small data

def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


@register("mlp")
def mlp(num_classes: int = 10, input_shape: Sequence[int] = (40,), hidden: Sequence[int] = (100, 100),
        batchnorm: bool = False) -> nn.Module:
    """Fully connected ReLU network on the flattened input (the MNIST-1D baseline uses two layers of 100); with
    `batchnorm`, BatchNorm1d after each hidden linear layer (what Ghost BatchNorm acts on)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), *([nn.BatchNorm1d(int(h))] if batchnorm else []), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register("cnn1d")
def cnn1d(num_classes: int = 10, input_shape: Sequence[int] = (40,), channels: int = 25) -> nn.Module:
    """Three strided 1D convolutions and a linear head, for MNIST-1D-like sequences of shape (L,) or (C, L)."""
    in_ch, length = (1, input_shape[0]) if len(input_shape) == 1 else (input_shape[0], input_shape[1])
    convs: list[nn.Module] = [nn.Unflatten(1, (in_ch, length))] if len(input_shape) == 1 else []
    for i in range(3):
        convs += [nn.Conv1d(in_ch if i == 0 else channels, channels, 5, stride=2, padding=1), nn.ReLU()]
    body = nn.Sequential(*convs)
    with torch.no_grad():
        feat = body(torch.zeros(1, *input_shape)).numel()
    return nn.Sequential(body, nn.Flatten(), nn.Linear(feat, num_classes))


@register("cnn2d")
def cnn2d(num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28), width: int = 32) -> nn.Module:
    """Two conv-pool stages and two linear layers: the usual small CNN for MNIST and Fashion-MNIST."""
    c, h, w = input_shape
    body = nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    feat = 2 * width * (h // 4) * (w // 4)
    return nn.Sequential(body, nn.Linear(feat, 128), nn.ReLU(), nn.Linear(128, num_classes))


# ----------------------------------------------------------------------------- VGG-9 (Li et al.'s CIFAR model)

@register("vgg9")
def vgg9(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    """VGG-9 as in Li et al.: 7 conv-BN-ReLU layers in 3 pooled stages, one FC-BN-ReLU layer, a classifier."""
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            h, w = -(-h // 2), -(-w // 2)
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(),
                         nn.Linear(c * h * w, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True),
                         nn.Linear(c, num_classes))


# ----------------------------------------------------------------------------- CIFAR ResNets and Wide-ResNets

class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (a 1x1 conv-BN when the shape changes), or none for `noshort`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.use_shortcut = shortcut
        self.shortcut: nn.Module = nn.Identity()
        if shortcut and (stride != 1 or in_ch != out_ch):
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + self.shortcut(x)
        return torch.relu(out)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6n+2, widths 16/32/64 times `width`), optionally without shortcuts."""

    def __init__(self, depth: int, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32),
                 width: int = 1, shortcut: bool = True):
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_ch = 16
        for stage, out_ch in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, 2 if (stage > 0 and i == 0) else 1, shortcut))
                in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def _register_resnet(depth: int, shortcut: bool) -> None:
    name = f"resnet{depth}" + ("" if shortcut else "_noshort")

    @register(name)
    def build(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
        return CifarResNet(depth, num_classes, input_shape, shortcut=shortcut)

    build.__doc__ = f"CIFAR ResNet-{depth}" + ("" if shortcut else " without shortcut connections")


for _depth in (20, 56, 110):
    for _shortcut in (True, False):
        _register_resnet(_depth, _shortcut)


@register("wide_resnet")
def wide_resnet(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), depth: int = 20,
                width: int = 4) -> nn.Module:
    """CIFAR ResNet-depth with `width` times the channels: the Wide-ResNets of Li et al.'s width figure."""
    return CifarResNet(depth, num_classes, input_shape, width=width)


@register("wrn20_4")
def wrn20_4(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    return wide_resnet(num_classes, input_shape, depth=20, width=4)


@register("wrn56_2")
def wrn56_2(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> nn.Module:
    return wide_resnet(num_classes, input_shape, depth=56, width=2)


# ----------------------------------------------------------------------------- language models (landscape.models.lm)
# The vocabulary comes as num_classes and the sequence length as input_shape = (T,), from the corpus.

TRANSFORMER_SIZES = {  # parameters with a 28-token vocabulary, untied: tiny 0.11M, small 0.81M, medium 10.7M
    "tiny": {"d_model": 64, "n_layer": 2, "n_head": 4},  # base: 85M + 2 x 768 x vocabulary (GPT-2 small's shape)
    "small": {"d_model": 128, "n_layer": 4, "n_head": 4},
    "medium": {"d_model": 384, "n_layer": 6, "n_head": 6},
    "base": {"d_model": 768, "n_layer": 12, "n_head": 12},
}
LSTM_SIZES = {"tiny": {"d_model": 64, "hidden": 128, "n_layer": 1},
              "medium": {"d_model": 512, "hidden": 512, "n_layer": 2}}


@register("transformer")
def transformer(num_classes: int = 256, input_shape: Sequence[int] = (64,), **kwargs: Any) -> nn.Module:
    """Decoder-only Transformer (landscape.models.lm.Transformer): d_model, n_layer, n_head, mlp_ratio, positions
    (learned | rotary), tie_weights, dropout."""
    from landscape.models.lm import Transformer

    return Transformer(num_classes, int(input_shape[0]), **kwargs)


@register("lstm_lm")
def lstm_lm(num_classes: int = 256, input_shape: Sequence[int] = (64,), **kwargs: Any) -> nn.Module:
    """LSTM language model (landscape.models.lm.LSTMLanguageModel): d_model, hidden, n_layer, tie_weights, dropout."""
    from landscape.models.lm import LSTMLanguageModel

    return LSTMLanguageModel(num_classes, **kwargs)


def _register_size(family: str, size: str, defaults: dict[str, Any]) -> None:
    base = transformer if family == "transformer" else lstm_lm

    @register(f"{family}_{size}")
    def build(num_classes: int = 256, input_shape: Sequence[int] = (64,), **kwargs: Any) -> nn.Module:
        return base(num_classes, input_shape, **{**defaults, **kwargs})

    build.__doc__ = f"{family} with {defaults} (any of them can be overridden by --model-kwargs)"


for _size, _defaults in TRANSFORMER_SIZES.items():
    _register_size("transformer", _size, _defaults)
for _size, _defaults in LSTM_SIZES.items():
    _register_size("lstm", _size, _defaults)
