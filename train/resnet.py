"""Convolutional students: ResNet-18 and friends (He et al. 2016), hand-written.

    train.students:resnet18   BasicBlocks [2, 2, 2, 2], widths 64-128-256-512 (x width/64)
    train.students:resnet34   BasicBlocks [3, 4, 6, 3]

Hand-written (~60 lines) rather than torchvision's builders: torchvision is one more
torch-pinned dependency (0.28.0 pairs with torch 2.13.0 here) for two functions, and
its stem assumes ImageNet-sized inputs. Here the stem follows the input: inputs of at
most 64 pixels a side (MNIST, CIFAR) get a 3x3 stride-1 stem without max-pooling
(the usual CIFAR ResNet), larger ones the ImageNet 7x7 stride-2 stem and max-pool.
Any channel count (1 for MNIST) is taken from `input_shape`.
"""

from __future__ import annotations

import torch
from torch import nn

from transferset.errors import UserError


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(num_classes: int, input_shape: tuple[int, ...], depths: tuple[int, ...] = (2, 2, 2, 2), width: int = 64) -> nn.Module:
    """[B, C, H, W] -> [B, num_classes]; `width` the first stage's channels (doubled per stage)."""
    if len(input_shape) != 3:
        raise UserError(f"a ResNet student takes images C,H,W; the inputs are {','.join(map(str, input_shape))} "
                        f"(generate with --input-shape C,H,W, e.g. 1,28,28)")
    if not isinstance(width, int) or width < 1:
        raise UserError(f"--student-arg width={width!r} must be a positive integer")
    channels, height, _ = input_shape
    if height <= 64:  # small images: keep the resolution (CIFAR-style stem)
        stem = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    else:
        stem = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    layers, cin = list(stem), width
    for stage, depth in enumerate(depths):
        cout = width * 2 ** stage
        for block in range(depth):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    head = nn.Linear(cin, num_classes)
    # A zero classifier starts at the uniform prediction, and each block's last BatchNorm at 0 starts the
    # block as the identity (Goyal et al. 2017): the first steps cannot blow the loss up from a random start.
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    for layer in layers:
        if isinstance(layer, BasicBlock):
            nn.init.zeros_(layer.bn2.weight)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), head]
    return nn.Sequential(*layers)


def resnet18(num_classes: int, input_shape: tuple[int, ...], width: int = 64) -> nn.Module:
    return resnet(num_classes, input_shape, (2, 2, 2, 2), width)


def resnet34(num_classes: int, input_shape: tuple[int, ...], width: int = 64) -> nn.Module:
    return resnet(num_classes, input_shape, (3, 4, 6, 3), width)
