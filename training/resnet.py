"""Residual networks (He et al. 2016) in plain PyTorch, shaped for ppml's serving.

A :class:`ResNet` is a stem convolution, stages of :class:`BasicBlock` s
(conv-BN-ReLU-conv-BN plus a shortcut, then ReLU; a stage after the first
halves the image and doubles the channels, its first block taking a 1x1
stride-2 shortcut convolution), a global average pool and a linear head.
Exported with :func:`ppml.client.model_export.export_model`, every BatchNorm
folds into its convolution and the model becomes a graph of Conv2d, ReLU,
Add, AvgPool2d and Linear layers.

:func:`resnet20` is the CIFAR-10 ResNet-20 shape (3 stages of 3 blocks, 16,
32 and 64 channels, 32x32x3 input); :func:`digits_resnet` is a small one
for sklearn's 8x8 digits, which the tests train here.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, ``len(widths)`` stages of ``blocks`` basic blocks, global average pool, head."""

    def __init__(
        self, in_channels: int, widths: tuple[int, ...], blocks: int, classes: int
    ) -> None:
        super().__init__()
        if not widths or blocks < 1:
            raise ValueError("a ResNet needs at least one stage of at least one block")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        c_in = widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet20(classes: int = 10) -> ResNet:
    """ResNet-20 for 32x32x3 images: 3 stages of 3 blocks, 16/32/64 channels (0.27 M weights)."""
    return ResNet(3, (16, 32, 64), 3, classes)


def digits_resnet(classes: int = 10) -> ResNet:
    """A small ResNet for 8x8 one-channel digits: 2 stages of 1 block, 8 and 16 channels."""
    return ResNet(1, (8, 16), 1, classes)
