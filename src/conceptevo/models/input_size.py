"""The input size a model accepts, checked before any image is decoded at the wrong size.

Fully convolutional models (global pooling before the head) take any image size; models with a
flattening head (``nn.Linear(C * h * w, ...)``) or a fixed position embedding take one size (or
a narrow range of them). :func:`check_input_size` runs one image of a given size through a
model and, when it fails, finds a size that fits:

* when a ``nn.Linear`` receives the wrong number of features, the size is searched by
  bisection on the number of features that reach that layer, which grows with the image size
  (the forward pass stops at that layer, so a trial costs a fraction of a forward pass);
* otherwise a list of common sizes is tried.

The result is a :class:`SizeCheck`: whether the size fits, a size that fits (or None), and one
line saying why the size failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COMMON_SIZES = (224, 32, 28, 64, 96, 128, 112, 256, 299, 384, 160, 48, 192, 227, 240, 288,
                320, 448, 512, 16, 24, 40, 56, 80)
MIN_SIZE, MAX_SIZE = 8, 1024


class _Reached(Exception):
    """Raised by a pre-hook to stop a trial forward pass at the layer it watches."""

    def __init__(self, features: int):
        self.features = features


@dataclass(frozen=True)
class SizeCheck:
    """The outcome of :func:`check_input_size`.

    Attributes
    ----------
    size : the size that was checked.
    fits : whether a 1 x 3 x size x size input runs through the model.
    suggestion : a size that fits (``size`` itself when it fits; None when none was found).
    reason : why ``size`` does not fit (one line), "" when it fits.
    """

    size: int
    fits: bool
    suggestion: int | None
    reason: str


def _runs(model: nn.Module, size: int, device) -> Exception | None:
    """None when a zero image of ``size`` passes through ``model``; else the error."""
    x = torch.zeros(1, 3, size, size, device=device)
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # any failure of the user's forward at this size
        return e
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def _linear_inputs(model: nn.Module, size: int, device) -> dict[str, int]:
    """Features reaching each ``nn.Linear`` whose input does not match its ``in_features``,
    for an image of ``size`` (the pass stops at the first such layer)."""
    found: dict[str, int] = {}
    handles = []

    def watch(name: str):
        def pre(mod, inputs):
            x = inputs[0] if inputs else None
            if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] != mod.in_features:
                found[name] = int(x.shape[-1])
                raise _Reached(int(x.shape[-1]))
        return pre

    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(watch(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    except _Reached:
        pass
    except Exception:  # fails before any Linear: no information at this size
        pass
    finally:
        for h in handles:
            h.remove()
    return found


def _features_at(model: nn.Module, layer: nn.Linear, size: int, device) -> int | None:
    """Features reaching ``layer`` for an image of ``size`` (None when the pass fails first)."""
    seen: list[int] = []

    def pre(mod, inputs):
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor):
            seen.append(int(x.shape[-1]))
        raise _Reached(seen[-1] if seen else -1)

    handle = layer.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    except _Reached:
        pass
    except Exception:
        return None
    finally:
        handle.remove()
    return seen[0] if seen else None


def _bisect_size(model: nn.Module, layer: nn.Linear, device) -> int | None:
    """A size whose features at ``layer`` equal its ``in_features``: features grow with the
    image size, so bisect on [MIN_SIZE, MAX_SIZE] (about 10 partial passes)."""
    target = layer.in_features
    lo, hi = MIN_SIZE, MAX_SIZE
    while lo <= hi:
        mid = (lo + hi) // 2
        got = _features_at(model, layer, mid, device)
        if got is None:  # too small for the layers before the head
            lo = mid + 1
        elif got == target:
            return _preferred(model, layer, mid, device)
        elif got < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return None


def _preferred(model: nn.Module, layer: nn.Linear, size: int, device) -> int:
    """Among the sizes next to ``size`` that give ``layer`` the same features (strides floor
    several sizes onto one map size), a common one, else the smallest."""
    target, sizes = layer.in_features, [size]
    for step in (-1, 1):
        s = size + step
        while MIN_SIZE <= s <= MAX_SIZE and abs(s - size) <= 64 and \
                _features_at(model, layer, s, device) == target:
            sizes.append(s)
            s += step
    common = [s for s in COMMON_SIZES if s in sizes]
    return common[0] if common else min(sizes)


def check_input_size(model: nn.Module, size: int) -> SizeCheck:
    """Whether ``model`` takes ``size`` x ``size`` images, and a size that fits if not.

    The model is run in eval mode on zero images (its mode is restored)."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        error = _runs(model, size, device)
        if error is None:
            return SizeCheck(size, True, size, "")
        reason = _first_line(error)
        candidates: list[int] = []
        modules = dict(model.named_modules())
        for name, features in _linear_inputs(model, size, device).items():
            layer = modules[name]
            reason = (f"its layer {name!r} (Linear) expects {layer.in_features} input features "
                      f"and gets {features} at this size")
            found = _bisect_size(model, layer, device)
            if found is not None:
                candidates.append(found)
        candidates += [s for s in COMMON_SIZES if s != size]
        for candidate in dict.fromkeys(candidates):
            if _runs(model, candidate, device) is None:
                return SizeCheck(size, False, candidate, reason)
        return SizeCheck(size, False, None, reason)
    finally:
        model.train(was_training)
