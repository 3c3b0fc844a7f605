"""Models that take a norm factory (channels -> nn.Module), so every norm and implementation
from the registry plugs in, and where it goes relative to the activation:

- `before` (standard; Ioffe & Szegedy 2015, He et al. 2016): conv -> norm -> ReLU
- `after` (the seed notebook's advice, here something to measure): conv -> ReLU -> norm

    >>> model = resnet20((3, 32, 32), num_classes=10, norm=lambda c: norms.build("gn", c, groups=8))

The configs in conf/model/ name them by `_target_`; `from_config` builds any model a config names,
normbench's or a user's (docs/plugins.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench import plugins
from normbench.errors import UsageError

NormFactory = Callable[[int], nn.Module]
POSITIONS = ("before", "after")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> ReLU, or conv -> ReLU -> norm; the conv has no bias (the norm, or the next one, shifts).

    A norm that includes its activation (`includes_activation`: FRN + TLU, EvoNorm) replaces the
    norm-and-ReLU pair, as in its paper: no ReLU is added, and where the unit has no activation the
    norm drops its own (`apply_act = False`, timm's option).
    """

    def __init__(self, conv: nn.Module, channels: int, norm: NormFactory, position: str, act: bool = True):
        layer = norm(channels)
        if getattr(layer, "includes_activation", False):
            layer.apply_act = act
            super().__init__(conv, layer)
            return
        layers = [conv, layer] + ([nn.ReLU(inplace=True)] if act else [])
        if position == "after" and act:
            layers[1], layers[2] = layers[2], layers[1]
        super().__init__(*layers)


class SmallCNN1d(nn.Module):
    """A small 1-D CNN for MNIST-1D-sized signals (N, C, L): three conv units, then a linear classifier.

    Shaped like the MNIST-1D paper's CNN (three convolutions, strides 1-2-2, ~94% test accuracy with
    ReLU and no norm; Greydanus & Kobak 2024), here with a norm in every unit.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        *,
        width: int = 32,
        length: int = 40,
        norm_position: str = "before",
    ):
        super().__init__()
        self.features = nn.Sequential(
            ConvNormAct(nn.Conv1d(in_channels, width, 5, padding=2, bias=False), width, norm, norm_position),
            ConvNormAct(nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False), width, norm, norm_position),
            ConvNormAct(nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False), width, norm, norm_position),
        )
        # Flatten rather than pool: MNIST-1D digits are told apart partly by where their features sit.
        out_length = (length + 3) // 4
        self.classifier = nn.Linear(width * out_length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """He et al. 2016's basic block: two 3x3 convs with a norm each and an identity shortcut.

    Where the block changes shape, the shortcut subsamples and pads the new channels with zeros
    ("option A", used for CIFAR in He et al. 2016, Sec. 4.2), so the block adds no parameters there.
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: NormFactory, position: str):
        super().__init__()
        self.unit1 = ConvNormAct(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), cout, norm, position)
        conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        # Standard: conv2 -> norm, add, ReLU. After: conv2 -> ReLU -> norm, add, ReLU.
        self.unit2 = ConvNormAct(conv2, cout, norm, position, act=position == "after")
        self.stride, self.extra = stride, cout - cin

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride > 1:  # x[:, :, ::s, ::s] in values; a strided slice's backward would be NCHW
            x = F.avg_pool2d(x, 1, self.stride)
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.unit2(self.unit1(x)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2): a 3x3 stem, 3 stages of 3 basic blocks with
    16/32/64 channels (stride 2 entering stages 2 and 3), global average pooling, a linear layer.
    0.27M parameters with BN.

    `zero_init_residual`: the last norm's weight in each block starts at 0, so each block starts as
    the identity (Goyal et al. 2017, Sec. 5.1; the GN paper does so for GN and BN, Wu & He 2018, Sec. 5.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        norm: NormFactory,
        *,
        widths: tuple[int, int, int] | list[int] = (16, 32, 64),
        blocks_per_stage: int = 3,
        norm_position: str = "before",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        w = list(widths)
        self.stem = ConvNormAct(nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False), w[0], norm, norm_position)
        blocks, cin = [], w[0]
        for stage, cout in enumerate(w):
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1, norm, norm_position))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for block in self.blocks:
                zero_last_norm(block)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def zero_last_norm(block: BasicBlock) -> None:
    """Zero the weight of the block's last norm; a norm without weight (`none`, affine=False) is left as is."""
    norm = block.unit2[2] if isinstance(block.unit2[1], nn.ReLU) else block.unit2[1]
    weight = getattr(norm, "weight", None)
    if weight is not None:
        with torch.no_grad():
            weight.zero_()


class MLP(nn.Module):
    """Linear -> norm -> ReLU units on flattened input: norms see (N, C) with no spatial positions,
    so BatchNorm's statistics come from the batch alone."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        norm: NormFactory,
        *,
        width: int = 64,
        depth: int = 2,
        norm_position: str = "before",
    ):
        super().__init__()
        units, cin = [], in_features
        for _ in range(depth):
            units.append(ConvNormAct(nn.Linear(cin, width, bias=False), width, norm, norm_position))
            cin = width
        self.features = nn.Sequential(nn.Flatten(), *units)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# The `_target_`s of conf/model/: each takes the job's input shape (C, *spatial), classes and norm
# factory, plus its options. Defaults for all three let the speed app build one bare (`shape=model`),
# where it swaps each norm layer for the one it times: torch.nn's BatchNorm is only a placeholder.
@plugins.register("model")
def resnet20(
    input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, norm: NormFactory | None = None, **options
) -> ResNet20:
    """ResNet-20 for (C, H, W) input, with torch.nn BatchNorm unless `norm` is given."""
    channels = _spatial(input_shape, 2, "resnet20", options)[0]
    return _construct(ResNet20, "resnet20", channels, num_classes, norm or nn.BatchNorm2d, **options)


@plugins.register("model")
def cnn1d(
    input_shape: tuple[int, ...] = (1, 40), num_classes: int = 10, norm: NormFactory | None = None, **options
) -> SmallCNN1d:
    """The MNIST-1D CNN for (C, L) input, with torch.nn BatchNorm unless `norm` is given."""
    channels, length = _spatial(input_shape, 1, "cnn1d", options)
    return _construct(SmallCNN1d, "cnn1d", channels, num_classes, norm or nn.BatchNorm1d, length=length, **options)


@plugins.register("model")
def mlp(
    input_shape: tuple[int, ...] = (1, 40), num_classes: int = 10, norm: NormFactory | None = None, **options
) -> MLP:
    """The MLP on flattened input of any shape, with torch.nn BatchNorm unless `norm` is given."""
    _spatial(input_shape, None, "mlp", options)
    return _construct(MLP, "mlp", math.prod(input_shape), num_classes, norm or nn.BatchNorm1d, **options)


@plugins.register("model")
def timm_model(
    model_name: str, input_shape: tuple[int, ...], num_classes: int, norm: NormFactory, **options
) -> nn.Module:
    """A timm model (`timm.create_model`, untrained) with `norm` as its `norm_layer`: for models that
    call norm_layer(channels), such as resnet18 or resnet50 (docs/plugins.md). Needs timm installed."""
    try:
        import timm  # optional: only this target needs it
    except Exception as exc:  # timm missing, or a dependency of its (torchvision) missing
        raise UsageError(
            f"model {model_name} needs timm, which cannot be imported ({type(exc).__name__}: {exc}): "
            "pip install timm torchvision, or pick another model (e.g. model=resnet20)"
        ) from None

    def norm_layer(channels: int, device=None, dtype=None) -> nn.Module:
        # timm passes the device and dtype it builds on to every layer it makes
        return norm(channels).to(device=device, dtype=dtype)

    return timm.create_model(
        model_name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], norm_layer=norm_layer, **options
    )


def _spatial(input_shape, needed: int | None, name: str, options: dict) -> tuple[int, ...]:
    """`input_shape` as ints, checked against the model's spatial dimensions and norm position."""
    position = options.get("norm_position", "before")
    if position not in POSITIONS:
        raise UsageError(f"model.norm_position must be one of {', '.join(POSITIONS)}, got {position!r}")
    shape = tuple(int(s) for s in input_shape)
    if needed is not None and len(shape) - 1 != needed:
        raise UsageError(
            f"model {name} takes inputs with {needed} spatial dimension(s), but the dataset's are "
            f"{shape} (C, *spatial): pick a model for this dataset, e.g. "
            f"{'model=resnet20' if len(shape) == 3 else 'model=cnn1d'}"
        )
    return shape


def _construct(cls, name: str, *args, **options) -> nn.Module:
    try:
        return cls(*args, **options)
    except TypeError as exc:  # an option the model does not take
        raise UsageError(f"model {name}: {exc}; see conf/model/{name}.yaml for its options") from None


def from_config(node, key: str = "model", example: str = "normbench.models.cnn1d", **runtime) -> nn.Module:
    """The model a config node names by `_target_`, built with the job's `runtime` arguments: the one
    way both apps build a model (the accuracy job passes input_shape, num_classes and norm; the speed
    job's `shape=model` passes none and swaps the norm layers)."""
    model = plugins.build(node, key, example, kind="model", **runtime)
    if not isinstance(model, nn.Module):
        raise UsageError(f"{key}._target_={node.get('_target_')} built a {type(model).__name__}, not a torch.nn.Module")
    return model


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int, norm: NormFactory, **options) -> nn.Module:
    """This module's model `name` (resnet20, cnn1d, mlp) from Python, through `from_config`."""
    return from_config(
        {"_target_": f"normbench.models.{name}", **options}, input_shape=input_shape, num_classes=num_classes, norm=norm
    )


def name_of(node) -> str:
    """The model as rows name it: its `_target_`'s last part (resnet20, resnet50), or a `model_name` option (timm's)."""
    return str(node.get("model_name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1])
