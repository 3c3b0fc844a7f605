"""Models by name. Each takes a norm factory (channels -> nn.Module), so every norm and implementation
from the registry plugs in, and where it goes relative to the activation:

- `before` (standard; Ioffe & Szegedy 2015, He et al. 2016): conv -> norm -> ReLU
- `after` (the seed notebook's advice, here something to measure): conv -> ReLU -> norm

    >>> model = build("resnet20", in_channels=3, num_classes=10, norm=lambda c: norms.build("gn", c, groups=8))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
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


MODELS = {"cnn1d": SmallCNN1d, "resnet20": ResNet20, "mlp": MLP}


# Hydra `_target_`s with defaults for every argument (`shape=model` in the speed app): the speed job
# swaps each norm layer for the one it times, so torch.nn's BatchNorm is only a placeholder here.
def resnet20(in_channels: int = 3, num_classes: int = 10, norm: NormFactory | None = None, **options) -> ResNet20:
    """ResNet-20 for (N, 3, 32, 32) input, with torch.nn BatchNorm unless `norm` is given."""
    return ResNet20(in_channels, num_classes, norm or nn.BatchNorm2d, **options)


def cnn1d(in_channels: int = 1, num_classes: int = 10, norm: NormFactory | None = None, **options) -> SmallCNN1d:
    """The MNIST-1D CNN for (N, 1, 40) input (`length=` for others), with torch.nn BatchNorm unless `norm` is given."""
    return SmallCNN1d(in_channels, num_classes, norm or nn.BatchNorm1d, **options)


def available() -> list[str]:
    return list(MODELS)


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int, norm: NormFactory, **options) -> nn.Module:
    """Model `name` for inputs of shape (C, *spatial), with `norm(channels)` as its normalization layers."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(MODELS)} (e.g. model=cnn1d)")
    position = options.get("norm_position", "before")
    if position not in POSITIONS:
        raise UsageError(f"model.norm_position must be one of {', '.join(POSITIONS)}, got {position!r}")
    spatial = len(input_shape) - 1
    needed = {"cnn1d": 1, "resnet20": 2}.get(name)
    if needed is not None and spatial != needed:
        raise UsageError(
            f"model {name} takes inputs with {needed} spatial dimension(s), but the dataset's are "
            f"{tuple(input_shape)} (C, *spatial): pick a model for this dataset, e.g. "
            f"{'model=resnet20' if spatial == 2 else 'model=cnn1d'}"
        )
    cls = MODELS[name]
    try:
        if name == "cnn1d":
            return cls(input_shape[0], num_classes, norm, length=input_shape[1], **options)
        if name == "mlp":
            flat = 1
            for s in input_shape:
                flat *= s
            return cls(flat, num_classes, norm, **options)
        return cls(input_shape[0], num_classes, norm, **options)
    except TypeError as exc:  # an option the model does not take
        raise UsageError(f"model {name}: {exc}; see conf/model/{name}.yaml for its options") from None
