"""Shared fixtures: tiny user-defined models, image folders and checkpoint directories."""

from __future__ import annotations

import json
import os
import shutil
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


class ColourClassifier(nn.Module):
    """Output k is the mean of colour channel k (R, G, B), read by two units of a 1x1
    convolution each: it knows red, green and blue images, in that output order, without
    training."""

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.mix = nn.Conv2d(3, 6, 1)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            eye = torch.eye(3)
            self.mix.weight.copy_(torch.cat([eye, 0.5 * eye]).view(6, 3, 1, 1) * gain)
            self.mix.bias.zero_()
            self.head.weight.copy_(torch.cat([eye, eye], dim=1))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.mix(x)).mean((2, 3)))


class LeNet(nn.Module):
    """A classifier with a flattening head: it takes 28x28 images (to 31x31) only."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class DictOutputVGG(TinyVGG):
    """TinyVGG returning a dict, like a Hugging Face model's output."""

    def forward(self, x):
        hidden = self.pool(self.features(x)).flatten(1)
        return {"hidden": hidden, "logits": self.head(hidden)}


def build_colour_classifier(gain: float = 1.0) -> nn.Module:
    return ColourClassifier(gain)


def build_lenet(num_classes: int = 3) -> nn.Module:
    return LeNet(num_classes)


def build_dict_vgg(num_classes: int = 3) -> nn.Module:
    return DictOutputVGG(num_classes)


def write_colour_folder(root: Path, classes=("one", "two", "three"), per_class: int = 8,
                        size: int = 16, seed: int = 0) -> Path:
    """root/<class>/img_<i>.png where the i-th class's images are mostly colour channel i
    (so ColourClassifier's output i is class i of ``classes``, in this order)."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., k % 3] = rng.integers(180, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"img_{i:02d}.png")
    return root


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
                arch: str = "conftest:build_tiny_vgg", image_size: int = 16,
                model: str = "") -> Path:
    """A study of one run "a" in tmp_path/study.toml (workspace tmp_path/ws); ``extra``:
    top-level lines, ``model``: lines of the [model] table after ``arch`` (its sub-tables
    included)."""
    cfg = tmp_path / "study.toml"
    cfg.write_text(f"""
workspace = "{(tmp_path / 'ws').as_posix()}"
device = "cpu"
{extra}
[probe]
root = "{image_root.as_posix()}"
image_size = {image_size}
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[model]
arch = "{arch}"
{model}

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

    # the overfit regime's 30 passes per epoch cut to 5 (they were most of the training) and
    # the importance of 3 classes rather than all 12: the readers need some, not every one
    size = DemoSize(n_train=240, n_val=96, epochs=3, probe_per_class=6, heldout_per_class=3,
                    importance_images=6, importance_classes=3, overfit_repeat=5)
    root = tmp_path_factory.mktemp("tiny-demo") / "demo"
    out = run_demo(root, size=size)
    return root, out, size


EVAL_CONCEPTS = ["disc", "square", "triangle", "stripes", "red", "green", "blue"]
EVAL_METHODS = {"unified": ("Unified space (ours)", 0.86), "no-indirect": ("No indirect", 0.81),
                "correlation": ("Activation correlation", 0.74),
                "separate": ("Separate spaces", 0.62), "random": ("Random vectors", 0.5)}

EVAL_RANKERS = {"ours": ("Gradient x change (ours)", 0.25, 0.75),
                "change": ("Feature-map change", 0.125, 0.5),
                "random": ("Random channels", 0.01, None)}


def copy_unevaluated(root: Path, dest: Path) -> Path:
    """A copy of a workspace without what ``conceptevo evaluate`` wrote (the demo evaluates)."""
    shutil.copytree(root, dest, ignore=lambda d, names: ["evaluation"] if Path(d) == root else [])
    return dest


def write_evaluation(root: Path, run: str = "healthy", epoch: int = 2, seed: int = 0) -> dict:
    """What ``conceptevo evaluate`` writes, made up (independently of that code) for one
    checkpoint of a workspace: ``evaluation/labels/<run>/epoch_NNNN.npz`` and
    ``evaluation/evaluation.json``, whose summaries agree with the label file. Returns the
    JSON's content and the label arrays: (evaluation, arrays)."""
    from conceptevo.workspace import Workspace, atomic

    ws = Workspace(root)
    stimuli = ws.load_stimuli(run, epoch)
    n, n_images = stimuli.n_neurons, 30
    rng = np.random.default_rng(seed)
    iou = (rng.random((n, len(EVAL_CONCEPTS))) ** 4 * 0.4).astype(np.float32)
    label = np.where(iou.max(1) >= 0.04, iou.argmax(1), -1).astype(np.int64)
    arrays = {"iou": iou, "label": label,
              "threshold": rng.random(n).astype(np.float32),
              "activations": rng.random((n, n_images)).astype(np.float32),
              "concept_names": np.array(json.dumps(EVAL_CONCEPTS))}
    ws.save_arrays(ws.path("evaluation", "labels", run, f"epoch_{epoch:04d}.npz"), {}, **arrays)

    layer_of = stimuli.layer_of()
    by_depth = [{"depth": d, "layer": li.name, "n": int(np.sum(layer_of == d)),
                 "labelled": int(np.sum((layer_of == d) & (label >= 0))),
                 "mean_best_iou": round(float(iou.max(1)[layer_of == d].mean()), 4)}
                for d, li in enumerate(stimuli.layers)]

    def method(title: str, auc: float) -> dict:
        fpr = np.linspace(0, 1, 21)
        return {"title": title, "auc": auc, "ci95": [auc - 0.03, auc + 0.03],
                "n_queries": 60 * len(stimuli.layers), "n_candidates": 360 * len(stimuli.layers),
                "positive_rate": 0.41,
                "by_depth": {str(d): {"auc": round(auc - 0.02 * d, 3),
                                      "ci95": [auc - 0.02 * d - 0.05, auc - 0.02 * d + 0.05],
                                      "n_queries": 60} for d in range(len(stimuli.layers))},
                "roc": {"fpr": fpr.tolist(), "tpr": (fpr ** (1 / auc - 1)).tolist()}}

    methods = {key: method(title, auc) for key, (title, auc) in EVAL_METHODS.items()}
    methods["separate"]["by_depth"]["0"] = {"auc": None, "ci95": None, "n_queries": 60}
    methods["random"]["by_depth"]["1"]["ci95"] = [float("nan"), float("nan")]  # written as NaN
    evaluation = {
        "schema": 1, "created": "2026-11-26T11:00:00+00:00",
        "annotations": {"path": str(root / "annotations.npz"), "n_images": n_images,
                        "concepts": EVAL_CONCEPTS},
        "settings": {"quantile": 0.995, "min_iou": 0.04, "queries_per_layer": 60,
                     "neighbours": 5, "bootstrap": 1000, "images_per_class": 25,
                     "checkpoints": [[run, epoch]]},
        "labels": {"n_neurons": n, "n_labelled": int(np.sum(label >= 0)),
                   "by_concept": {c: int(np.sum(label == i)) for i, c in enumerate(EVAL_CONCEPTS)
                                  if np.any(label == i)},
                   "by_depth": by_depth},
        "alignment": {"order": list(EVAL_METHODS), "methods": methods,
                      "depth_names": {str(d): li.name for d, li in enumerate(stimuli.layers)},
                      "beats_all_baselines": True,
                      "plots": {"roc": "evaluation/roc.png",
                                "by_depth": "evaluation/auc_by_depth.png"}},
        "faithfulness": {
            "fidelity": {"seeds": [{"seed": s, "rmse": 0.04 + 0.005 * s, "top1": 0.6 + 0.02 * s,
                                    "top10": 1.0, "mean_cosine": 0.999} for s in range(3)],
                         "spread": {"top1": [0.6, 0.64], "top10": [1.0, 1.0],
                                    "mean_cosine": [0.999, 0.999], "rmse": [0.04, 0.05]}},
            "reversion": [{"run": run, "from": 1, "to": 2, "n_classes": 12, "split": "train",
                           "top_bin_drop": 0.131, "random_drop": 0.002, "ratio": 68.0,
                           "ratio_per_class": {"mean": 60.1, "std": 20.3, "min": 10.0, "max": 90.0},
                           "heldout": {"top_bin_drop": 0.1, "random_drop": 0.004, "ratio": 28.0}}],
            "rankers": {
                "order": list(EVAL_RANKERS), "layers": ["conv1", "conv2"], "bins": 3,
                "n_cases": 4, "split": "train", "skipped": {"weight on conv2": "no rows"},
                "cases": [],
                "rankers": {name: {"title": title, "top_bin_drop": drop, "monotone_share": mono,
                                   "per_layer": {"conv1": {"bin_drops": [drop, drop / 2, 0.0],
                                                           "top_bin_drop": drop, "n": 4}}}
                            for name, (title, drop, mono) in EVAL_RANKERS.items()}}},
        "headline": "Unified space AUC 0.86 [0.83, 0.89] vs best baseline correlation 0.74 "
                    "[0.71, 0.77]",
    }
    atomic.write_json(ws.path("evaluation", "evaluation.json"), evaluation)
    return evaluation, arrays
