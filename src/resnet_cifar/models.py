"""The CIFAR-10 ResNets of He et al. 2016, Sec. 4.2:

    "The first layer is 3x3 convolutions. Then we use a stack of 6n layers with 3x3
    convolutions on the feature maps of sizes {32, 16, 8} respectively, with 2n layers
    for each feature map size. The numbers of filters are {16, 32, 64} respectively.
    The subsampling is performed by convolutions with a stride of 2. The network ends
    with a global average pooling, a 10-way fully-connected layer, and softmax."

`resnet(depth)` for depth 6n+2 (20, 32, 44, 56, 110, 1202), `plain(depth)` without shortcuts
(Fig. 6, left), `resnet34_imagenet()` the ImageNet network the seed log first trained on 32x32
images.
"""
from __future__ import annotations

import copy
import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

SHORTCUTS = ("A", "B", "B-no-bn")
ARCHS = ("resnet", "plain", "resnet34-imagenet")


def check_depth(depth: int) -> int:
    """n for a depth 6n+2, else ValueError."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110, 1202), "
                         f"got {depth!r}")
    return (depth - 2) // 6


class PadShortcut(nn.Module):
    """Option A (Sec. 3.3): identity, subsampled by the stride, extra channels zero-padded: no
    parameters. The zeros are appended, as fb.resnet.torch does (akamaster pads both sides: the same
    function up to a permutation of channels), so channel k of a stage's input is channel k of its
    shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x):
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))


def projection(in_channels: int, out_channels: int, stride: int, bn: bool = True) -> nn.Module:
    """Option B (Sec. 3.3): a 1x1 convolution + BN; without BN, the seed log's first try."""
    conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if bn else nn.Sequential(conv)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions, BN after each and before the ReLU (Sec. 3.4), the shortcut added before
    the second ReLU (Fig. 2). `shortcut=None`: the plain block."""

    def __init__(self, in_channels, out_channels, stride=1, shortcut: str | None = "A", bn_eps=1e-5,
                 bn_momentum=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.residual = shortcut is not None
        if not self.residual or (stride == 1 and in_channels == out_channels):
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = projection(in_channels, out_channels, stride, bn=shortcut == "B")

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """conv3x3(16) -> 3 stages of n blocks, 16/32/64 filters, stride 2 entering stages 2 and 3 ->
    global average pool -> FC. 6n+2 weighted layers."""

    def __init__(self, depth=32, shortcut: str | None = "A", num_classes=10, final_relu=False,
                 bn_eps=1e-5, bn_momentum=0.1):
        super().__init__()
        n = check_depth(depth)
        if shortcut is not None and shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        self.shortcut_option = shortcut
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, eps=bn_eps, momentum=bn_momentum)
        stages, in_channels = [], 16
        for channels, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_channels, channels, stride if i == 0 else 1, shortcut,
                                         bn_eps, bn_momentum))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(64, num_classes)
        self.final_relu = final_relu  # the seed log's question: it clamps every negative logit to 0
        he_init(self)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(F.relu(self.bn1(self.conv1(x))))))
        x = self.fc(torch.flatten(F.avg_pool2d(x, x.shape[-1]), 1))  # global average pool
        return F.relu(x) if self.final_relu else x


def he_init(model: nn.Module) -> None:
    """He et al. 2015 initialization of conv and linear weights (Sec. 3.4); BN: gamma 1, beta 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mode = "fan_out" if isinstance(m, nn.Conv2d) else "fan_in"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def resnet(depth: int = 32, shortcut: str = "A", num_classes: int = 10, **kwargs) -> CifarResNet:
    """The paper's CIFAR ResNet; shortcut "A" (zero-pad, the paper's choice), "B" or "B-no-bn"."""
    return CifarResNet(depth, shortcut, num_classes, **kwargs)


def plain(depth: int = 32, num_classes: int = 10, **kwargs) -> CifarResNet:
    """The plain twin of `resnet(depth)`: the same layers, no shortcuts."""
    return CifarResNet(depth, None, num_classes, **kwargs)


def resnet34_imagenet(num_classes: int = 10) -> nn.Module:
    """torchvision's ImageNet ResNet-34 (Table 1), 10 classes: 21.3M parameters, 46x ResNet-32."""
    from torchvision.models import resnet34
    return resnet34(num_classes=num_classes)


def build_model(arch="resnet", depth=32, shortcut="A", num_classes=10, final_relu=False,
                bn_eps=1e-5, bn_momentum=0.1) -> nn.Module:
    """The model a TrainConfig names (arch in ARCHS)."""
    if arch == "resnet34-imagenet":
        return resnet34_imagenet(num_classes)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    shortcut = shortcut if arch == "resnet" else None
    return CifarResNet(depth, shortcut, num_classes, final_relu, bn_eps, bn_momentum)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_count(model: nn.Module, image_size=32, by_module=False) -> int | dict | None:
    """fvcore's FLOPs (a multiply-add is one) of an image, all or per submodule; None without it."""
    try:
        with warnings.catch_warnings():  # fvcore uses torch.jit.script, which PyTorch deprecates
            warnings.filterwarnings("ignore", ".*torch.jit.script.*", FutureWarning)
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    model = copy.deepcopy(model).float().cpu().eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, image_size, image_size))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return dict(analysis.by_module()) if by_module else int(analysis.total())


@functools.cache
def architecture_flops(arch: str, depth: int, shortcut: str) -> int | None:
    """`flop_count` of an architecture, once per process, leaving the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        return flop_count(build_model(arch, depth, shortcut))


@functools.cache
def multiply_adds(arch: str = "resnet", depth: int = 32, shortcut: str = "A") -> int:
    """Multiply-adds of one 32x32 image through the convolutions and the classifier (torch's
    FlopCounterMode counts two FLOPs each): milliseconds where fvcore's trace takes seconds."""
    with torch.random.fork_rng(devices=[]):
        model = build_model(arch, depth, shortcut).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() // 2
