"""Activation layouts: where a layer's channels and positions are in its output tensor.

A neuron is one channel (hidden unit) of a layer. Where the channels are depends on the layer:

==========  ================  ==================================================================
layout      output            examples
==========  ================  ==================================================================
``conv``    [B, C, H, W]      ``Conv2d``, ``BatchNorm2d``, pooling, activations after them; also
            (or [B, C, L])    1-D convolutions (the map is L x 1)
``nhwc``    [B, H, W, C]      timm ConvNeXt blocks with a ``Linear`` MLP, Swin stages
``tokens``  [B, T, C]         vision transformers (torchvision, timm, Hugging Face): T tokens,
                              ``prefix`` of them class / register / distillation tokens before
                              a square grid of patch tokens
``flat``    [B, C]            pooled features, linear heads
==========  ================  ==================================================================

:func:`detect_layouts` tells them apart from the model itself, in one traced forward pass: the
feature size a module declares (``out_channels``, ``out_features``, ``num_features``,
``normalized_shape``; a width such as ``embed_dim`` or timm's ``dim``, which may be the
module's input width, only for a channels-last output) says which axis holds the channels; a
module that declares none (an activation, a dropout, a custom block) has the layout of the
module that ran just before it with an output of the same shape. What is still ambiguous (a
custom module first in a chain, a map whose channel count equals its width) is decided by a
second pass at another input size (the axes that change are positions), and otherwise is an
error that names the layer and the setting to use (``[model] layouts = { "<layer>" =
"tokens" }``): a layout is never guessed.

For a token layer the activation of a neuron is reduced over the patch tokens (``tokens =
"patches"``, the default: class and register tokens excluded), over all tokens (``"all"``) or
read at the class token (``"cls"``); its location is the arg-max patch token, a cell of the
patch grid, so that example patches are cut at that token's patch.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LayerSelectionError
from ..params import LAYOUTS, TOKEN_MODES  # noqa: F401 (part of this module's API)

_CHANNEL_FIRST_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.BatchNorm1d,
                        nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.MaxPool2d,
                        nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Layout:
    """How one layer's output holds its neurons.

    Attributes
    ----------
    kind : one of :data:`LAYOUTS`.
    prefix : tokens before the patch tokens (``tokens`` only).
    grid : (h, w) of the map a neuron's location indexes: the feature map, the patch grid,
        or (1, 1).
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, int] = (1, 1)

    @property
    def channel_axis(self) -> int:
        return 1 if self.kind in ("conv", "flat") else -1


#: modules whose ``dim`` is an axis, not a feature size
_AXIS_TYPES = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.GLU, nn.CosineSimilarity,
               nn.PairwiseDistance, nn.Flatten, nn.Unflatten)


#: attributes that name the size of a module's output
_OUTPUT_SIZES = ("out_channels", "out_features", "num_features")
#: attributes that name a width which may be the module's input, not its output (a patch
#: merging's ``dim`` is its input width, its output has twice as many channels; Hugging
#: Face's ``num_channels`` is the image's 3 channels): trusted on the last axis only, where a
#: channels-last block keeps its width
_WIDTHS = ("embed_dim", "hidden_size", "num_channels", "dim")


def feature_size(module: nn.Module) -> int | None:
    """The number of channels a module says it outputs, or None (see
    :func:`declared_size`)."""
    return declared_size(module)[0]


def declared_size(module: nn.Module) -> tuple[int | None, bool]:
    """(the channel count a module declares, whether it names its output for sure) or
    (None, False): ``out_channels`` / ``out_features`` / ``num_features`` /
    ``normalized_shape`` / timm's ``out_dim`` name the output; ``embed_dim``,
    ``hidden_size``, ``num_channels`` and timm's ``dim`` (:data:`_WIDTHS`) may name the
    input."""
    axis_type = isinstance(module, _AXIS_TYPES)  # (their ``dim`` is an axis)
    for attr in _OUTPUT_SIZES + (() if axis_type else ("out_dim",)):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, True
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape:
        return int(shape[-1]), True
    for attr in _WIDTHS:
        if axis_type and attr == "dim":
            continue
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, False
    return None, False


def _kind_from_module(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    """The layout a module's declared feature size implies for ``shape``, or None."""
    if len(shape) == 2:
        return "flat"
    if isinstance(module, _CHANNEL_FIRST_TYPES):
        return "conv"
    f, sure = declared_size(module)
    if f is None:
        return None
    first, last = shape[1] == f, shape[-1] == f
    if first and not last and sure:
        return "conv"
    if last and not first:
        return "nhwc" if len(shape) == 4 else "tokens"
    return None


def token_prefix(model: nn.Module, tokens: int) -> int | None:
    """Class / register / distillation tokens before the patch tokens of a layer with
    ``tokens`` tokens: the model's own count when it declares one (timm's
    ``num_prefix_tokens``; torchvision's and Hugging Face's class token) and the rest is a
    square grid, else the smallest count leaving a square grid; None when none does."""
    declared = getattr(model, "num_prefix_tokens", None)
    if not isinstance(declared, int):
        declared = None
        for module in model.modules():
            n = 0
            for attr in ("class_token", "cls_token", "distillation_token", "dist_token",
                         "register_tokens", "reg_token"):
                t = getattr(module, attr, None)
                if isinstance(t, torch.Tensor) and t.dim() >= 2:
                    n += int(t.shape[-2]) if t.dim() == 3 else 1
            if n:
                declared = n
                break
    candidates = ([declared] if declared is not None else []) + list(range(0, 17))
    for p in candidates:
        rest = tokens - p
        if rest > 0 and math.isqrt(rest) ** 2 == rest:
            return p
    return None


def _override(name: str, layouts: Mapping[str, str] | None) -> str | None:
    if not layouts:
        return None
    if name in layouts:
        return layouts[name]
    for pattern, kind in layouts.items():
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


def trace_shapes(model: nn.Module, example: torch.Tensor, forward
                 ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) of every module that returns a tensor, in the order
    they ran (first call of each), for one forward pass of ``forward(example)``."""
    seen: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
    order: list[str] = []

    def make(name: str):
        def hook(module, inputs, output):
            if name not in seen and isinstance(output, torch.Tensor):
                seen[name] = (module, tuple(output.shape))
                order.append(name)
        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            forward(example)
    finally:
        for h in handles:
            h.remove()
    return [(n, seen[n][0], seen[n][1]) for n in order]


def detect_layouts(model: nn.Module, names: list[str], example: torch.Tensor, forward,
                   layouts: Mapping[str, str] | None = None, tokens: str = "patches",
                   other_example: torch.Tensor | None = None) -> dict[str, Layout]:
    """The :class:`Layout` of each layer of ``names`` (see the module docstring).

    ``forward(x)`` runs the model; ``other_example`` (images of another size) settles what
    the modules do not (skipped when the model does not take that size)."""
    if tokens not in TOKEN_MODES:
        raise LayerSelectionError(f"tokens must be one of {', '.join(TOKEN_MODES)}, not "
                                  f"{tokens!r}")
    for pattern, kind in (layouts or {}).items():
        if kind not in LAYOUTS:
            raise LayerSelectionError(f"[model] layouts: {pattern!r} = {kind!r} is not a "
                                      f"layout; use one of {', '.join(LAYOUTS)}")
    trace = trace_shapes(model, example, forward)
    kinds: dict[str, str | None] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    previous: tuple[tuple[int, ...], str | None] | None = None
    for name, module, shape in trace:
        kind = _override(name, layouts) or _kind_from_module(module, shape)
        if kind is None and previous is not None and previous[0] == shape \
                and shape[1] != shape[-1]:
            # an activation, dropout or block after a module: its layout. Not when the first
            # and last axes have the same size: a permute in the forward code (ConvNeXt's
            # [B, C, H, W] -> [B, H, W, C] before its LayerNorm, at C = H = W) would keep the
            # shape and move the channels unseen; the second pass decides those
            kind = previous[1]
        kinds[name], shapes[name] = kind, shape
        previous = (shape, kind)
    batch = example.shape[0]
    unresolved = [n for n in names if n in shapes and kinds.get(n) is None]
    if unresolved and other_example is not None:
        for name, kind in _by_two_sizes(model, unresolved, shapes, other_example,
                                        forward).items():
            kinds[name] = kind
    out = {}
    for name in names:
        if name not in shapes:
            continue  # did not run: the adapter says so
        shape, kind = shapes[name], kinds[name]
        if shape[0] != batch:
            raise LayerSelectionError(
                f"layer {name!r} outputs shape {shape} for a batch of {batch} image(s): its "
                "first axis is not the image (e.g. attention over windows); probe a layer "
                "whose output has one row per image")
        if kind is None:
            raise LayerSelectionError(
                f"cannot tell the channels of layer {name!r} (output {list(shape)}) from its "
                "positions; say which axis holds them: [model] layouts = "
                f"{{ \"{name}\" = \"conv\" }} for [B, C, H, W], \"nhwc\" for [B, H, W, C], "
                "\"tokens\" for [B, T, C] (docs/models.md)")
        out[name] = _layout(model, name, kind, shape, tokens)
    return out


def _by_two_sizes(model, names, shapes, other_example, forward) -> dict[str, str]:
    """Layouts from a pass at another input size: the axes that changed are positions."""
    try:
        other = {n: s for n, _, s in trace_shapes(model, other_example, forward)}
    except Exception:  # the model takes one input size only: nothing to learn here
        return {}
    found = {}
    for name in names:
        a, b = shapes[name], other.get(name)
        if b is None or len(a) != len(b):
            continue
        changed = [i for i in range(1, len(a)) if a[i] != b[i]]
        if len(a) == 4 and changed == [2, 3]:
            found[name] = "conv"
        elif len(a) == 4 and changed == [1, 2]:
            found[name] = "nhwc"
        elif len(a) == 3 and changed == [1]:
            found[name] = "tokens"
        elif len(a) == 3 and changed == [2]:
            found[name] = "conv"
    return found


def _layout(model: nn.Module, name: str, kind: str, shape: tuple[int, ...], tokens: str
            ) -> Layout:
    want = {"conv": (3, 4), "nhwc": (4,), "tokens": (3,), "flat": (2,)}[kind]
    if len(shape) not in want:
        raise LayerSelectionError(f"layer {name!r} outputs shape {list(shape)}, which is not "
                                  f"a {kind!r} layout ({' or '.join(f'{d}-D' for d in want)}); "
                                  "fix [model] layouts for it")
    if kind == "conv":
        return Layout("conv", 0, (shape[2], shape[3]) if len(shape) == 4 else (shape[2], 1))
    if kind == "nhwc":
        return Layout("nhwc", 0, (shape[1], shape[2]))
    if kind == "flat":
        return Layout("flat")
    prefix = token_prefix(model, shape[1])
    if prefix is None:
        raise LayerSelectionError(
            f"layer {name!r} outputs {shape[1]} tokens, which are no square grid of patch "
            "tokens after up to 16 class/register tokens; probe another layer")
    if tokens == "cls" and prefix == 0:
        raise LayerSelectionError(f"[model] tokens = \"cls\", but layer {name!r} has no class "
                                  "token; use \"patches\" or \"all\"")
    g = math.isqrt(shape[1] - prefix)
    return Layout("tokens", prefix, (1, 1) if tokens == "cls" else (g, g))


def channels_of(layout: Layout, shape: tuple[int, ...]) -> int:
    return int(shape[1] if layout.channel_axis == 1 else shape[-1])


def as_maps(out: torch.Tensor, layout: Layout, tokens: str = "patches") -> torch.Tensor:
    """[B, C, h, w] view of a layer's output in ``layout`` (h, w = ``layout.grid``)."""
    if layout.kind == "conv":
        return out if out.dim() == 4 else out[..., None]
    if layout.kind == "nhwc":
        return out.permute(0, 3, 1, 2)
    if layout.kind == "flat":
        return out[:, :, None, None]
    if tokens == "cls":
        return out[:, 0, :, None, None]
    b, _, c = out.shape
    return out[:, layout.prefix:, :].transpose(1, 2).reshape(b, c, *layout.grid)


def spatial_sum(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """[B, C]: the sum of ``x`` (shaped like the layer's output) over every axis but the
    image and the channel (all tokens of a token layer, class tokens included)."""
    if layout.kind == "flat":
        return x
    if layout.channel_axis == 1:
        return x.flatten(2).sum(2)
    return x.flatten(1, -2).sum(1)


def index_channels(layout: Layout, channels) -> tuple:
    """The index that selects ``channels`` of a layer's output (all images, all positions)."""
    if layout.channel_axis == 1:
        return (slice(None), channels)
    return (Ellipsis, channels)
