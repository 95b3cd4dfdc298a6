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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .params import (  # noqa: F401 (the training parameters: part of this module's API)
    RECIPES,
    REGIMES,
    VIT_REGIMES,
    TrainConfig,
    config_dict,
    train_config,
)


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
