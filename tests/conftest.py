"""Shared fixtures: tiny user-defined models, image folders and checkpoint directories."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

os.environ.setdefault("CONCEPTEVO_PROGRESS", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class TinyVGG(nn.Module):
    """A user-defined VGG-style classifier (conv, ReLU in place, pooling, linear head)."""

    def __init__(self, num_classes: int = 3, width: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


class TinyBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyResNet(nn.Module):
    """A user-defined residual classifier."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.block1 = TinyBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = TinyBlock(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.block2(torch.relu(self.down(self.block1(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def build_tiny_vgg(num_classes: int = 3, width: int = 6) -> nn.Module:
    return TinyVGG(num_classes, width)


def build_tiny_resnet(num_classes: int = 3, width: int = 8) -> nn.Module:
    return TinyResNet(num_classes, width)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Fresh random weights (and BatchNorm statistics) from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return model


def write_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6,
                       size: int = 20, seed: int = 0) -> Path:
    """Random RGB PNGs in root/<class>/img_<i>.png."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"img_{i:02d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def vgg_checkpoints(tmp_path) -> Path:
    """Three checkpoints (epochs 0..2) of TinyVGG, as bare state_dicts."""
    d = tmp_path / "ckpt"
    d.mkdir()
    for epoch in range(3):
        torch.save(randomise(TinyVGG(), epoch).state_dict(), d / f"epoch_{epoch}.pt")
    return d


def write_study(tmp_path: Path, image_root: Path, ckpt_pattern: str, extra: str = "",
                arch: str = "conftest:build_tiny_vgg") -> Path:
    cfg = tmp_path / "study.toml"
    cfg.write_text(f"""
workspace = "{(tmp_path / 'ws').as_posix()}"
device = "cpu"
{extra}
[probe]
root = "{image_root.as_posix()}"
image_size = 16
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[model]
arch = "{arch}"

[stimuli]
k_stimuli = 4
k_responsive = 5
batch_size = 5

[[runs]]
name = "a"
checkpoints = "{ckpt_pattern}"
""")
    return cfg


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A complete demo workspace in a tiny size (every stage ran), shared by the tests that
    only read it."""
    from conceptevo.demo import DemoSize, run_demo

    size = DemoSize(n_train=240, n_val=96, epochs=3, probe_per_class=6, heldout_per_class=3,
                    importance_images=6)
    root = tmp_path_factory.mktemp("tiny-demo") / "demo"
    out = run_demo(root, size=size)
    return root, out, size
