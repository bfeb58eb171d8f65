"""The networks of Sec. 4.2: sizes, FLOPs, shortcuts, shapes, initialization."""
import math

import pytest
import torch
from torch import nn

from resnet_cifar.models import (PadShortcut, build_model, count_parameters, plain, resnet,
                                 resnet34_imagenet)
from resnet_cifar.models import flop_count

# Option A (parameter-free shortcuts), 10 classes: exact counts. The paper's Table 6
# rounds them to 0.27M, 0.46M, 0.66M, 0.85M, 1.7M and 19.4M.
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def expected_params(depth: int) -> int:
    """Closed form for option A: 97,216 parameters per n (one block in each stage),
    minus 21,926 (the first blocks of stages 2/3 are smaller, plus stem and FC)."""
    return 97_216 * ((depth - 2) // 6) - 21_926


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_parameter_counts_option_a(depth):
    assert count_parameters(resnet(depth)) == PARAMS[depth] == expected_params(depth)


def test_resnet1202_parameter_count():
    model = resnet(1202)
    assert count_parameters(model) == expected_params(1202) == 19_421_274  # the paper's 19.4M


def test_resnet32_flops_fvcore():
    assert flop_count(resnet(32)) == 69_468_800


def test_option_a_shortcut_is_parameter_free_and_pads_extra_channels():
    shortcut = PadShortcut(16, 32, stride=2)
    assert count_parameters(shortcut) == 0
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0
    # every block entering a new stage uses it, and no 1x1 convolution exists anywhere
    model = resnet(20)
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert [(m.stride, m.extra) for m in pads] == [(2, 16), (2, 32)]
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_output_shape(depth):
    model = resnet(depth).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_depth_means_weighted_layers():
    for depth in (20, 56):
        model = resnet(depth)
        weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth


def test_plain_twin_has_same_parameters_and_no_shortcut():
    for depth in (20, 32, 56):
        assert count_parameters(plain(depth)) == count_parameters(resnet(depth))
    torch.manual_seed(0)
    model = plain(20)
    assert all(not block.residual for stage in (model.stage1, model.stage2, model.stage3) for block in stage)
    # zeroing the residual branch of a plain net kills the signal; a ResNet passes it on
    for net in (plain(20), resnet(20)):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m is not net.bn1:
                nn.init.zeros_(m.weight)
        net.eval()
        with torch.no_grad():
            feats = net.stage3(net.stage2(net.stage1(torch.relu(net.bn1(net.conv1(torch.rand(1, 3, 32, 32)))))))
        assert (feats.abs().sum() == 0) == (net.shortcut_option is None)


def test_option_b_adds_projections():
    a, b = resnet(32, "A"), resnet(32, "B")
    # two 1x1 projections (16->32, 32->64) with their BN: 512+64 + 2048+128
    assert count_parameters(b) - count_parameters(a) == 2_752
    assert count_parameters(b) > count_parameters(a)


def test_resnet34_imagenet_size():
    params = count_parameters(resnet34_imagenet())
    assert params == 21_289_802
    assert params / PARAMS[32] > 45


@pytest.mark.parametrize("depth", [0, 8.0, 21, 33, 100, -4])
def test_bad_depth_names_valid_choices(depth):
    with pytest.raises(ValueError, match=r"6n\+2.*20, 32, 44, 56, 110"):
        resnet(depth)


def test_unknown_shortcut_and_arch():
    with pytest.raises(ValueError, match=r"shortcut must be one of \('A', 'B', 'B-no-bn'\)"):
        resnet(20, "C")
    with pytest.raises(ValueError, match=r"arch must be one of .*resnet.*plain"):
        build_model("densenet")


def test_final_relu_clamps_logits():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    with_relu = resnet(20, final_relu=True).eval()
    torch.manual_seed(1)
    without = resnet(20).eval()
    with torch.no_grad():
        assert (with_relu(x) >= 0).all()
        assert (with_relu(x) == 0).any()  # half the logits are clamped at start
        assert (without(x) < 0).any()


def test_bn_options_propagate():
    model = build_model("resnet", 20, bn_eps=1e-3, bn_momentum=0.3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 19
    assert all(m.eps == 1e-3 and m.momentum == 0.3 for m in bns)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)


def test_he_initialization():
    torch.manual_seed(0)
    model = resnet(32)
    conv = model.stage3[1].conv1  # 64 -> 64, 3x3: fan_out = 576
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2 / 576)) < 0.05 * math.sqrt(2 / 576)
    assert abs(conv.weight.mean().item()) < 0.01
    stem = model.conv1  # fan_out = 16 * 9 = 144
    assert abs(stem.weight.std().item() - math.sqrt(2 / 144)) < 0.15 * math.sqrt(2 / 144)
    assert not model.fc.bias.any()


def test_layer_table_counts_32_weighted_layers_and_shapes():
    from resnet_cifar.analysis import layer_table
    table = layer_table(resnet(32), ["conv1", "stage1", "stage2", "stage3", "fc"])
    assert table.loc["total", "weighted layers"] == 32          # 6n+2 with n=5
    assert table.loc["total", "parameters"] == 464_154
    assert table.loc["stage2", "output (C×H×W)"] == "32×16×16"  # stride 2 entering stage 2
    assert table.loc["stage3", "output (C×H×W)"] == "64×8×8"
    assert table.loc[["conv1", "stage1", "stage2", "stage3", "fc"], "parameters"].sum() == 464_154 - 32  # + stem BN


def test_architecture_flops_is_cached_and_leaves_the_rng_alone():
    from resnet_cifar.models import architecture_flops
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    architecture_flops.cache_clear()
    flops = architecture_flops("resnet", 32, "A")   # a miss: builds and traces a model
    assert torch.equal(torch.rand(3), expected_draw)  # ... without consuming the caller's RNG
    assert flops == 69_468_800
    assert architecture_flops("resnet", 32, "A") == flops and architecture_flops.cache_info().hits >= 1
    assert architecture_flops("resnet", 32, "B") == flop_count(resnet(32, "B"))


def test_projection_without_bn_is_the_logs_first_attempt():
    """The seed log's 1x1 convolution without BN: option B minus the two projection BNs
    (2 x (32 + 64) weights and biases)."""
    with_bn, without_bn = resnet(32, "B"), resnet(32, "B-no-bn")
    assert count_parameters(with_bn) - count_parameters(without_bn) == 2 * (32 + 64)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without_bn.stage2[0].shortcut.modules())
    assert without_bn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_multiply_adds_count_the_convolutions_and_the_classifier():
    """The fast counter of the speed estimates: ResNet-20's 40.6M, ResNet-32's two option-B projections
    (16->32 on a 16x16 output, 32->64 on 8x8) on top, and a plain net's as many as its ResNet's."""
    from resnet_cifar.models import multiply_adds
    assert multiply_adds("resnet", 20, "A") == 40_551_040
    assert multiply_adds("resnet", 32, "B") - multiply_adds("resnet", 32, "A") == 16 * 32 * 16 * 16 + 32 * 64 * 8 * 8
    assert multiply_adds("plain", 32, "A") == multiply_adds("resnet", 32, "A")
