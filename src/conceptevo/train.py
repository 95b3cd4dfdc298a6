"""A small, deterministic trainer that checkpoints every epoch (epoch 0 = initialisation).

It exists so the demo and the tests can make their own training runs, and to reproduce the
paper's three regimes in miniature (:data:`REGIMES`): a healthy run, a run whose learning rate
is too high, and an overfitting run. Any other trainer works with ConceptEvo as long as it
saves one checkpoint per epoch (or calls :class:`conceptevo.Monitor`).

Determinism: every epoch draws its shuffling and augmentation from a generator seeded with
``(seed, epoch)``, and seeds torch's global RNG (dropout) the same way, so a run resumed
from its last checkpoint ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .schema import MAX_SEED, bounded


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (a :data:`REGIMES` preset fills the defaults).

    ``recipe``: the family of presets the ``regime`` is taken from (:data:`RECIPES`: "cnn",
    the default, or "vit" for vision transformers). ``optimizer``: "adamw" or "sgd" (with
    ``momentum``). ``train_subset``: train on this many images per class (None: all);
    ``repeat``: passes over those images per epoch (a small subset still gets a healthy
    number of steps per epoch). ``augment``: random translation by up to ``translate``
    pixels (reflect padding). ``schedule``: "cosine" decay to zero or "constant", after
    ``warmup_epochs`` of linear warm-up. ``label_noise``: this fraction of the training
    images (a seeded draw, fixed for the run) is trained with a wrong label, drawn uniformly
    among the other classes; validation labels stay clean. ``freeze``: parameter-name
    prefixes (e.g. ``"features.conv1_1"``) left at their initialisation (no gradient step, no
    weight decay): a layer someone forgot to unfreeze.
    """

    regime: str = "healthy"
    recipe: str = "cnn"
    epochs: int = bounded(8, 1, 100_000)
    optimizer: str = "adamw"
    lr: float = bounded(3e-3, 0, 100, lo_open=True)
    momentum: float = bounded(0.9, 0, 1)
    weight_decay: float = bounded(1e-4, 0, 10)
    batch_size: int = bounded(64, 1, 65_536)
    augment: bool = True
    translate: int = bounded(6, 0, 1024)
    train_subset: int | None = bounded(None, 1, 10 ** 7)
    repeat: int = bounded(1, 1, 10_000)
    schedule: str = "cosine"
    warmup_epochs: int = bounded(0, 0, 100_000)
    seed: int = bounded(0, 0, MAX_SEED)
    label_noise: float = bounded(0.0, 0, 1)
    freeze: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, values: dict) -> TrainConfig:  # (values are checked by the loader)
        """Built from a config table: the ``regime`` preset of the ``recipe``, then the keys
        given."""
        values = dict(values)
        return train_config(values.pop("regime", "healthy"), values.pop("recipe", "cnn"),
                            **values)

    def validate(self, where: str = "train") -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"[{where}] recipe must be one of {', '.join(map(repr, RECIPES))}, "
                              f"not {self.recipe!r}")
        if self.epochs < 1:
            raise ConfigError(f"[{where}] epochs must be >= 1, not {self.epochs}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"[{where}] lr must be a positive number, not {self.lr}")
        if self.repeat < 1:
            raise ConfigError(f"[{where}] repeat must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"[{where}] batch_size must be >= 1")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"[{where}] optimizer must be \"adamw\" or \"sgd\"")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"[{where}] schedule must be \"cosine\" or \"constant\"")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"[{where}] train_subset must be >= 1 image per class")
        if not 0 <= self.label_noise < 1:
            raise ConfigError(f"[{where}] label_noise must be a fraction in [0, 1), not "
                              f"{self.label_noise}")
        if not isinstance(self.freeze, (list, tuple)) or not all(
                isinstance(p, str) and p for p in self.freeze):
            raise ConfigError(f"[{where}] freeze must be a list of parameter-name prefixes, "
                              f"e.g. [\"features.conv1_1\"], not {self.freeze!r}")
        self.freeze = list(self.freeze)


_HEALTHY = {"lr": 3e-3, "augment": True, "train_subset": None, "weight_decay": 1e-4}

#: The paper's three VGG16 regimes in miniature, calibrated on the concept world with
#: ``conceptevo:small_vgg``, and the issue zoo's other regimes (benchmarks/diagnosis_zoo.py).
#: ``lr-too-high`` keeps the healthy recipe with a learning rate 10x too large: most concept
#: detectors are lost within an epoch while the loss stays finite. ``overfit`` drops
#: augmentation and weight decay and trains on 10 images per class (seen 30 times per epoch,
#: so an epoch has as many steps as a healthy one); run it with ``dropout = 0`` in the model's
#: kwargs. Training accuracy reaches 100% while validation accuracy stays about 30 points
#: lower. The zoo adds: ``lr-high`` (3x: still learns, ends worse), ``lr-too-low`` (1/100:
#: learns very slowly), ``label-noise`` (30% of the training labels wrong), ``frozen-layer``
#: (the first convolution of ``small_vgg`` left at its random initialisation) and
#: ``shortcut``, the healthy recipe on training and validation data with a planted cue (the
#: run's ``train_root`` / ``val_root``: a concept world with ``shortcut_class``).
REGIMES: dict[str, dict] = {
    "healthy": dict(_HEALTHY),
    "lr-too-high": dict(_HEALTHY, lr=3e-2),
    "overfit": {"lr": 3e-3, "augment": False, "train_subset": 10, "repeat": 30,
                "batch_size": 32, "weight_decay": 0.0},
    "lr-high": dict(_HEALTHY, lr=1e-2),
    "lr-too-low": dict(_HEALTHY, lr=3e-5),
    "label-noise": dict(_HEALTHY, label_noise=0.3),
    "frozen-layer": dict(_HEALTHY, freeze=["features.conv1_1", "features.bn1_1"]),
    "shortcut": dict(_HEALTHY),
}


#: The same three regimes for vision transformers, calibrated on the concept world with
#: ``conceptevo:small_vit`` (the demo's 4,000 training images). A ViT from scratch wants more
#: epochs than the CNN (20), a linear warm-up (2 epochs) before the cosine decay, and AdamW's
#: decoupled weight decay at ViT strength (0.05). ``overfit`` is the CNN's overfitting recipe
#: (10 images per class seen 30 times per epoch, no augmentation, no weight decay; run it with
#: ``dropout = 0``) with the ViT's warm-up. ``lr-too-high`` is the healthy recipe with a
#: learning rate 100x too large (a pre-norm transformer under AdamW is far more tolerant of a
#: large rate than the CNN): it stays near chance for most of the run and recovers part of the
#: way only once the cosine schedule has brought the rate back down. Measured per seed in
#: benchmarks/results/architectures.json (``python benchmarks/demo_architectures.py``).
VIT_REGIMES: dict[str, dict] = {
    "healthy": {"epochs": 20, "lr": 2e-3, "augment": True, "train_subset": None,
                "weight_decay": 0.05, "warmup_epochs": 2},
    "lr-too-high": {"epochs": 20, "lr": 2e-1, "augment": True, "train_subset": None,
                    "weight_decay": 0.05, "warmup_epochs": 2},
    "overfit": {"epochs": 20, "lr": 2e-3, "augment": False, "train_subset": 10, "repeat": 30,
                "batch_size": 32, "weight_decay": 0.0, "warmup_epochs": 2},
}

#: The regime presets of each architecture family (``TrainConfig.recipe``).
RECIPES: dict[str, dict[str, dict]] = {"cnn": REGIMES, "vit": VIT_REGIMES}


def train_config(regime: str = "healthy", recipe: str = "cnn", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from the ``regime`` preset of ``recipe`` (:data:`RECIPES`)
    plus explicit overrides."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown training recipe {recipe!r}; choose one of "
                          f"{', '.join(RECIPES)} (cnn: convolutional networks, vit: vision "
                          "transformers)")
    presets = RECIPES[recipe]
    if regime not in presets:
        raise ConfigError(f"unknown training regime {regime!r}; choose one of "
                          f"{', '.join(presets)}")
    values = dict(presets[regime], regime=regime, recipe=recipe)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown training setting(s) {sorted(unknown)}")
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def subset_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of each class after a seeded shuffle."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def noisy_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``labels`` with round(fraction x n) of them, a seeded choice, replaced by a different
    class drawn uniformly (the classes are those present in ``labels``)."""
    labels = np.asarray(labels).copy()
    if fraction <= 0 or len(labels) == 0:
        return labels
    classes = np.unique(labels)
    if len(classes) < 2:
        return labels
    rng = np.random.default_rng([seed, 0x1AB31])
    flip = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    position = np.searchsorted(classes, labels[flip])
    # a shift by 1 .. K-1 classes: never the image's own class
    shift = rng.integers(1, len(classes), len(flip))
    labels[flip] = classes[(position + shift) % len(classes)]
    return labels


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Turn off the gradient of every parameter whose name starts with one of ``prefixes``
    (a module name matches its parameters: ``features.conv1_1`` -> ``features.conv1_1.weight``);
    returns their names. A prefix that matches nothing is a :class:`ConfigError`."""
    names = []
    for prefix in prefixes:
        hits = [(n, p) for n, p in model.named_parameters()
                if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            some = ", ".join(n for n, _ in list(model.named_parameters())[:6])
            raise ConfigError(f"[train] freeze = {prefix!r} matches no parameter of the model "
                              f"(its parameters start: {some}, ...)")
        for name, param in hits:
            param.requires_grad_(False)
            names.append(name)
    return names


def _normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> normalised float [B, 3, H, W]."""
    return (x_uint8.permute(0, 3, 1, 2).float().div_(255.0) - mean) / std


def translate_batch(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image [B, 3, H, W] by up to ``shift`` pixels (reflect padding), vectorised."""
    if shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)     # [B, H]
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)     # [B, W]
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std,
             device: torch.device | str = "cpu", batch_size: int = 256) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) in eval mode; the train/eval mode is restored."""
    was_training = model.training
    model.eval()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = _normalise(torch.from_numpy(np.ascontiguousarray(
            images[start:start + batch_size])).to(device), m, s)
        y = torch.from_numpy(np.asarray(labels[start:start + batch_size])).to(device)
        logits = model(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    n = max(len(images), 1)
    return total_loss / n, correct / n


def _lr_at(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """Learning rate for ``step`` of ``epoch`` (1-based epochs)."""
    progress = (epoch - 1 + step / steps) / cfg.epochs
    if cfg.warmup_epochs and epoch <= cfg.warmup_epochs:
        return cfg.lr * (epoch - 1 + (step + 1) / steps) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer over the parameters that train (frozen ones are left out, so
    that weight decay does not move them either)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


EpochCallback = Callable[[int, nn.Module, torch.optim.Optimizer, dict], None]


def train(model: nn.Module, train_images: np.ndarray, train_labels: np.ndarray,
          val_images: np.ndarray, val_labels: np.ndarray, cfg: TrainConfig, *,
          mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device: torch.device | str = "cpu",
          on_epoch_end: EpochCallback | None = None, start_epoch: int = 0,
          optimizer_state: dict | None = None,
          progress: Callable[[int], None] | None = None) -> list[dict]:
    """Train ``model`` for ``cfg.epochs`` epochs, calling ``on_epoch_end`` after each.

    Parameters
    ----------
    train_images, val_images : uint8 [n, H, W, 3]; train_labels, val_labels : int64 [n].
    on_epoch_end : ``(epoch, model, optimizer, metrics)``; called for epoch 0 (before any
        step, metrics from evaluation) and after every epoch. This is where checkpoints are
        saved.
    start_epoch : resume after this epoch (the model holds that epoch's weights and
        ``optimizer_state`` the optimizer's state then).
    progress : called with the number of images of each finished step.

    Returns the metrics of every epoch run here: dicts with epoch, lr, train_loss,
    train_acc, val_loss, val_acc, and ``finite`` (False once the loss is NaN/inf).
    """
    device = torch.device(device)
    # channels-last convolutions are markedly faster on CPUs (and no slower on GPUs)
    model.to(device, memory_format=torch.channels_last)
    keep = subset_per_class(np.asarray(train_labels), cfg.train_subset, cfg.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(train_images[keep]))
    y_all = torch.from_numpy(noisy_labels(np.asarray(train_labels), cfg.label_noise,
                                          cfg.seed)[keep]).long()
    freeze_parameters(model, cfg.freeze)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    optimizer = make_optimizer(model, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    history = []
    if start_epoch == 0:
        tl, ta = evaluate(model, x_all.numpy(), y_all.numpy(), mean, std, device)
        vl, va = evaluate(model, val_images, val_labels, mean, std, device)
        metrics = {"epoch": 0, "lr": 0.0, "train_loss": tl, "train_acc": ta, "val_loss": vl,
                   "val_acc": va, "finite": True, "n_train": len(keep)}
        history.append(metrics)
        if on_epoch_end:
            on_epoch_end(0, model, optimizer, metrics)
    n = len(keep) * cfg.repeat
    steps = math.ceil(n / cfg.batch_size)
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.cat([torch.randperm(len(keep), generator=g) for _ in range(cfg.repeat)])
        model.train()
        total_loss, correct, finite = 0.0, 0, True
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = _normalise(x_all[idx].to(device), m, s)
            y = y_all[idx].to(device)
            if cfg.augment:
                x = translate_batch(x, cfg.translate, g)
            x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, epoch, step, steps)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            finite = finite and math.isfinite(value)
            total_loss += value * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            if progress is not None:
                progress(len(idx))
        vl, va = evaluate(model, val_images, val_labels, mean, std, device)
        metrics = {"epoch": epoch, "lr": _lr_at(cfg, epoch, steps - 1, steps),
                   "train_loss": total_loss / n, "train_acc": correct / n,
                   "val_loss": vl, "val_acc": va, "finite": finite, "n_train": n}
        history.append(metrics)
        if on_epoch_end:
            on_epoch_end(epoch, model, optimizer, metrics)
    return history


#: settings added after the first release, with the value that behaves as before: left out
#: of :func:`config_dict` at that value, so that runs trained before keep their identity
_LATER_SETTINGS = {"recipe": "cnn", "label_noise": 0.0, "freeze": []}


def config_dict(cfg: TrainConfig) -> dict:
    """The settings that identify a run (what a finished run is recognised by): every field,
    except those of :data:`_LATER_SETTINGS` at their original value."""
    values = asdict(cfg)
    for key, original in _LATER_SETTINGS.items():
        if values.get(key) == original:
            del values[key]
    return values
