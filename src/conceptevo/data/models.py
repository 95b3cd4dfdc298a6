"""Small image classifiers for the demo and the tests: ordinary ``nn.Module``s.

Both are registered in the ``conceptevo:`` namespace of the model registry, so a study config
can say ``arch = "conceptevo:small_vgg"``. Their layers have readable names
(``features.conv2_1``, ``stage2.0.conv1``) so probed neurons are easy to locate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..models.registry import register


@register("small_vgg")
class SmallVGG(nn.Module):
    """A VGG-style CNN: stages of 3x3 conv + BatchNorm + ReLU, max-pooling between stages,
    and a two-layer classifier with dropout.

    Parameters
    ----------
    num_classes : output classes.
    widths : channels of each stage (each stage halves the resolution).
    depth : convolutions per stage (an int for all stages, or one per stage).
    dropout : dropout probability before each linear layer of the classifier.
    hidden : width of the classifier's hidden layer.
    global_pool : "max" (default: a part anywhere in the image counts) or "avg".
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64, 128),
                 depth: int | Sequence[int] = (1, 1, 2, 2), dropout: float = 0.3,
                 hidden: int = 128, global_pool: str = "max"):
        super().__init__()
        depths = [depth] * len(widths) if isinstance(depth, int) else list(depth)
        if len(depths) != len(widths):
            raise ValueError("depth needs one entry per stage of widths")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in = 3
        for s, (c_out, d) in enumerate(zip(widths, depths), start=1):
            for j in range(1, d + 1):
                layers[f"conv{s}_{j}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
                layers[f"bn{s}_{j}"] = nn.BatchNorm2d(c_out)
                layers[f"relu{s}_{j}"] = nn.ReLU(inplace=True)
                c_in = c_out
            layers[f"pool{s}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        if global_pool not in ("max", "avg"):
            raise ValueError(f"global_pool must be 'max' or 'avg', not {global_pool!r}")
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(OrderedDict([
            ("drop1", nn.Dropout(dropout)),
            ("fc1", nn.Linear(c_in, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("drop2", nn.Dropout(dropout)),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(c_out))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register("small_resnet")
class SmallResNet(nn.Module):
    """A ResNet-style CNN: a stem convolution, stages of :class:`BasicBlock` (the first block
    of each later stage halves the resolution), global average pooling and a linear head."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(3, widths[0], 3, padding=1, bias=False)),
            ("bn", nn.BatchNorm2d(widths[0])),
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(2))]))
        c_in = widths[0]
        for s, c_out in enumerate(widths, start=1):
            stage = [BasicBlock(c_in if b == 0 else c_out, c_out,
                                stride=1 if (s == 1 or b > 0) else 2) for b in range(blocks)]
            self.add_module(f"stage{s}", nn.Sequential(*stage))
            c_in = c_out
        self.n_stages = len(widths)
        self.head = nn.Sequential(OrderedDict([
            ("drop", nn.Dropout(dropout)), ("fc", nn.Linear(c_in, num_classes))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(1, self.n_stages + 1):
            x = getattr(self, f"stage{s}")(x)
        return self.head(x.mean((2, 3)))
