"""Models: every norm plugs in, norm position, zero-init, ResNet-20's published shape, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench import models, norms
from normbench.errors import UsageError

SHAPES = {"cnn1d": (1, 40), "resnet20": (3, 16, 16), "mlp": (1, 40)}


def factory(name: str, seen: list | None = None):
    def make(c: int) -> nn.Module:
        if seen is not None:
            seen.append(c)
        return norms.build(name, c, **({"groups": 8} if name == "gn" else {}))

    return make


@pytest.mark.parametrize("model", ["cnn1d", "resnet20", "mlp"])
@pytest.mark.parametrize("norm", ["bn", "ln", "in", "gn", "none"])
def test_every_norm_plugs_into_every_model(model, norm):
    if model == "mlp" and norm == "in":
        pytest.skip("InstanceNorm needs spatial positions; the MLP has none")
    torch.manual_seed(0)
    m = models.build(model, input_shape=SHAPES[model], num_classes=7, norm=factory(norm))
    out = m(torch.randn(4, *SHAPES[model]))
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    out.sum().backward()


def test_norm_factory_gets_each_layers_channels():
    seen: list[int] = []
    models.build("resnet20", input_shape=(3, 8, 8), num_classes=10, norm=factory("bn", seen))
    # stem + 3 stages x 3 blocks x 2 norms
    assert seen == [16] + [16] * 6 + [32] * 6 + [64] * 6
    seen.clear()
    models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=factory("bn", seen), width=24)
    assert seen == [24, 24, 24]


def test_resnet20_has_he_et_als_size():
    m = models.build("resnet20", input_shape=(3, 32, 32), num_classes=10, norm=factory("bn"))
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters.
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 2) == 0.27
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) + 1 == 20  # 19 convs + the fc layer


def test_norm_position_before_and_after_the_activation():
    before = models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=factory("bn"))
    after = models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=factory("bn"), norm_position="after")
    assert [type(x).__name__ for x in before.features[0]] == ["Conv1d", "BatchNorm", "ReLU"]
    assert [type(x).__name__ for x in after.features[0]] == ["Conv1d", "ReLU", "BatchNorm"]
    with pytest.raises(UsageError, match="before, after"):
        models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=factory("bn"), norm_position="middle")


@pytest.mark.parametrize("position", ["before", "after"])
def test_zero_init_makes_each_residual_branch_start_at_zero(position):
    torch.manual_seed(0)
    m = models.build(
        "resnet20",
        input_shape=(3, 8, 8),
        num_classes=10,
        norm=factory("gn"),
        norm_position=position,
        zero_init_residual=True,
    )
    for block in m.blocks:
        last = block.unit2[-1] if position == "after" else block.unit2[1]
        assert isinstance(last, norms.GroupNorm) and torch.all(last.weight == 0)
        assert torch.any(block.unit1[1 if position == "before" else 2].weight != 0)
        x = torch.randn(2, block.unit1[0].in_channels, 8, 8)
        # The residual branch outputs 0 (its norm's bias), so the block is ReLU(shortcut(x)).
        assert torch.equal(block(x), torch.relu(block.shortcut(x)))


def test_zero_init_tolerates_norms_without_weight():
    m = models.build("resnet20", input_shape=(3, 8, 8), num_classes=10, norm=factory("none"), zero_init_residual=True)
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    affine_free = lambda c: norms.build("bn", c, affine=False)  # noqa: E731
    models.build("resnet20", input_shape=(3, 8, 8), num_classes=10, norm=affine_free, zero_init_residual=True)


def test_bad_model_input():
    with pytest.raises(UsageError, match="model._target_=normbench.models.vgg could not be built"):
        models.build("vgg", input_shape=(3, 8, 8), num_classes=10, norm=factory("bn"))
    with pytest.raises(UsageError, match="model=resnet20"):
        models.build("cnn1d", input_shape=(3, 8, 8), num_classes=10, norm=factory("bn"))
    with pytest.raises(UsageError, match="conf/model/cnn1d.yaml"):
        models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=factory("bn"), depth=3)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_downsampling_shortcut_subsamples_and_keeps_the_layout(layout):
    torch.manual_seed(0)
    block = models.BasicBlock(4, 8, 2, lambda c: norms.build("bn", c), "before")
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64).to(memory_format=layout).requires_grad_()
    y = block.shortcut(x)
    expected = torch.cat(
        [torch.zeros(2, 2, 3, 3, dtype=x.dtype), x[:, :, ::2, ::2], torch.zeros(2, 2, 3, 3, dtype=x.dtype)], 1
    )
    assert torch.equal(y, expected)  # every other position, the new channels zero on both sides
    (grad,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert grad.is_contiguous(memory_format=layout)  # a channels_last model's gradient stays channels_last
    assert torch.equal(grad[:, :, 1::2], torch.zeros_like(grad[:, :, 1::2]))
