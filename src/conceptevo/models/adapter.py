"""Probe the layers of any ``torch.nn.Module``.

A *layer* is a module named by its qualified name in ``model.named_modules()`` (the names
``print(model)`` shows). A *neuron* is one output channel (hidden unit) of a layer, wherever
the layer keeps its channels: [B, C, H, W], [B, H, W, C], [B, T, C] tokens or [B, C]
(:mod:`.layouts` detects which). Its activation on an image is a single number obtained by
reducing the channel's feature map (for tokens: the patch tokens) over its positions:

* ``"max"`` (default, as in the paper's reference implementation): the largest value of the
  map. A neuron that detects a small part fires strongly wherever the part appears, so the
  maximum ranks images by *whether* the concept is present, not by how much of the image it
  covers. The location of the maximum is kept: it is where the example patch is cut.
* ``"mean"``: the average over the map, which favours concepts that fill the image.

The value is read from the module's output before any in-place operation that follows it
(for a ``Conv2d`` followed by ``ReLU(inplace=True)`` this is the pre-activation, as in the
reference), because the reduction happens inside the forward hook.

Neurons of all selected layers are numbered globally, layer after layer in the order of
``named_modules()``: neuron ``offset(layer) + channel``.

Without a selection, a CNN is probed at every ``Conv2d`` and a transformer (a model with
attention modules) at the MLP hidden layer of every block: the activation function after the
expanding ``Linear`` (torchvision's ``mlp.1``, timm's ``mlp.act``, Hugging Face's
``intermediate.intermediate_act_fn``).

The model's logits are its output when that is a tensor. A model that returns a tuple or
list (torchvision's GoogLeNet / Inception in training mode, many research models) gives its
first element; a dict or a Hugging Face ``ModelOutput`` its ``"logits"`` entry. ``output``
(``[model] output`` in a study) names another key or index.
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerSelectionError
from .layouts import TOKEN_MODES, Layout, as_maps, channels_of, detect_layouts

LayerSelection = None | str | Sequence[str] | Callable[[str, nn.Module], bool]
REDUCTIONS = ("max", "mean")
OutputRule = None | str | int


def select_logits(output, rule: OutputRule = None) -> torch.Tensor:
    """The logits [B, n_outputs] in a model's output (see the module docstring).

    Raises :class:`~conceptevo.errors.ConfigError` naming the output's structure and the
    setting to use when they cannot be found."""
    from ..errors import ConfigError

    value = output
    if rule is not None:
        try:
            if isinstance(rule, int):
                value = output[rule]
            elif isinstance(output, Mapping):
                value = output[rule]
            else:
                value = getattr(output, rule)
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ConfigError(f"[model] output = {rule!r}, but the model returns "
                              f"{_describe_output(output)}") from None
    elif isinstance(output, Mapping):
        if "logits" not in output:
            raise ConfigError(f"the model returns {_describe_output(output)} without a "
                              "\"logits\" entry; set [model] output to the key of its logits")
        value = output["logits"]
    elif isinstance(output, (tuple, list)) and output:
        value = output[0]
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        raise ConfigError(f"the model's logits must be a tensor [batch, classes]; it returns "
                          f"{_describe_output(output)}"
                          + (f" (output {rule!r})" if rule is not None else "")
                          + "; set [model] output to the key or index of its logits")
    return value


def _describe_output(output) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {', '.join(map(str, list(output)[:8]))}"
    if isinstance(output, (tuple, list)):
        kinds = ", ".join(tuple(v.shape).__repr__() if isinstance(v, torch.Tensor)
                          else type(v).__name__ for v in list(output)[:6])
        return f"a {type(output).__name__} of {len(output)} ({kinds})"
    return f"a {type(output).__name__}"


@dataclass(frozen=True)
class LayerInfo:
    """One probed layer.

    Attributes
    ----------
    name : qualified module name.
    type : class name of the module (``Conv2d``, ...).
    channels : number of neurons (output channels).
    offset : global index of the layer's first neuron.
    map_size : (H, W) of the map a neuron's location indexes, for the probe image size: the
        feature map, a token layer's patch grid, or (1, 1) for a layer without positions.
    layout : where the layer's output keeps its channels (:data:`.layouts.LAYOUTS`).
    prefix : class / register tokens before the patch tokens (a ``tokens`` layer).
    """

    name: str
    type: str
    channels: int
    offset: int
    map_size: tuple[int, int]
    layout: str = "conv"
    prefix: int = 0

    @property
    def shape_layout(self) -> Layout:
        return Layout(self.layout, self.prefix, tuple(self.map_size))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "channels": self.channels,
            "offset": self.offset,
            "map_size": list(self.map_size),
            "layout": self.layout,
            "prefix": self.prefix,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        return cls(d["name"], d["type"], int(d["channels"]), int(d["offset"]),
                   (int(d["map_size"][0]), int(d["map_size"][1])), str(d.get("layout", "conv")),
                   int(d.get("prefix", 0)))


def layers_array(layers: Sequence[LayerInfo]) -> np.ndarray:
    """The probed layers as a 0-d string array of JSON, the form every ``.npz`` artifact of
    the workspace stores them in (key ``layers``)."""
    return np.array(json.dumps([li.to_dict() for li in layers]))


def layers_from_array(value) -> list[LayerInfo]:
    """The inverse of :func:`layers_array` (also takes the JSON string itself)."""
    return [LayerInfo.from_dict(d) for d in json.loads(str(value))]


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def select_layers(model: nn.Module, selection: LayerSelection = None) -> list[str]:
    """Names of the modules of ``model`` chosen by ``selection``, in ``named_modules()`` order.

    Parameters
    ----------
    selection : None, str, sequence of str, or callable
        ``None``: :func:`default_layers`. A string is an exact module name, a glob
        (``"layer*.conv2"``) or several of those separated by commas. A sequence combines
        names and globs. A callable ``(name, module) -> bool`` is a predicate.
    """
    modules = [(name, m) for name, m in model.named_modules() if name]
    names = [name for name, _ in modules]
    if selection is None:
        return default_layers(model)[0]
    if callable(selection) and not isinstance(selection, str):
        chosen = [name for name, m in modules if selection(name, m)]
        if not chosen:
            raise LayerSelectionError("the layer predicate selected no module of "
                                      f"{type(model).__name__}")
        return chosen
    patterns = selection.split(",") if isinstance(selection, str) else list(selection)
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise LayerSelectionError("the layer selection is empty")
    wanted: set[str] = set()
    name_set = set(names)
    for pattern in patterns:
        if _is_glob(pattern):
            hits = fnmatch.filter(names, pattern)
            if not hits:
                raise LayerSelectionError(
                    f"layer pattern {pattern!r} matches no module of {type(model).__name__}; "
                    f"module names look like: {', '.join(names[:8])} "
                    "(run `conceptevo layers` to list them)")
            wanted.update(hits)
        elif pattern in name_set:
            wanted.add(pattern)
        else:
            close = difflib.get_close_matches(pattern, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise LayerSelectionError(
                f"no module named {pattern!r} in {type(model).__name__}{hint} "
                "(run `conceptevo layers` to list them)")
    return [name for name in names if name in wanted]


_ACTIVATIONS = (nn.GELU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Mish, nn.Hardswish, nn.LeakyReLU,
                nn.ELU, nn.SELU, nn.CELU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def _is_activation(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, _ACTIVATIONS) or name.endswith(("Activation", "GELU", "QuickGELU",
                                                               "SiLU", "Swish"))


def is_transformer(model: nn.Module) -> bool:
    """Whether the model has attention modules (``nn.MultiheadAttention``, or a module whose
    class name says attention: timm's, Hugging Face's, Swin's window attention)."""
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
               for m in model.modules())


def mlp_hidden_layers(model: nn.Module) -> list[str]:
    """The MLP hidden layer of every block: an activation module that directly follows an
    expanding ``nn.Linear`` among its siblings (fc1 -> act), or the one activation of a
    module whose two ``nn.Linear`` expand and contract (C -> H -> C), registered in any order."""
    chosen = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        found = [name_b for (_, a), (name_b, b) in zip(children, children[1:])
                 if isinstance(a, nn.Linear) and a.out_features > a.in_features
                 and _is_activation(b)]
        if not found:  # one activation beside an MLP's fc1 (C -> H) and fc2 (H -> C), in any
            # order of registration (Hugging Face registers the activation first)
            acts = [name for name, m in children if _is_activation(m)]
            linears = [m for _, m in children if isinstance(m, nn.Linear)]
            if len(acts) == 1 and len(linears) == 2 and any(
                    up.out_features > up.in_features
                    and (up.out_features, up.in_features) == (down.in_features, down.out_features)
                    for up, down in itertools.permutations(linears)):
                found = acts
        chosen += [f"{parent_name}.{name}" if parent_name else name for name in found]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(chosen, key=order.__getitem__)


def default_layers(model: nn.Module) -> tuple[list[str], str]:
    """The layers probed without a selection, and the rule that chose them: every
    ``nn.Conv2d`` of a CNN; the MLP hidden layer of every block of a transformer (or of a
    model without convolutions)."""
    convs = [n for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)]
    mlps = mlp_hidden_layers(model)
    if mlps and (is_transformer(model) or not convs):
        return mlps, "the MLP hidden layer (after the activation) of every block"
    if convs:
        return convs, "every Conv2d"
    names = [n for n, _ in model.named_modules() if n]
    raise LayerSelectionError(
        f"{type(model).__name__} has neither an nn.Conv2d nor a transformer MLP (Linear -> "
        "activation) to probe by default; pass a layer selection (module names, a glob or a "
        f"predicate). Its modules include: {', '.join(names[:12])}")


def _spatial_reduce(out: torch.Tensor, reduction: str, locate_at_least: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, *spatial] -> (activation [B, C], flat arg-max index [B, C]).

    With ``locate_at_least`` (float [C]), the arg-max is only computed where the activation
    reaches that value (elsewhere it is -1): the stimulus pass needs locations only for the
    images that can enter a neuron's top-k, and locating is most of the cost of the
    reduction.
    """
    if out.dim() == 2:
        return out, torch.zeros_like(out, dtype=torch.long)
    if out.dim() == 4 and not out.is_contiguous() and \
            out.is_contiguous(memory_format=torch.channels_last):
        # channels-last: the pooling kernel reduces NHWC without a copy (its index is h*W+w)
        values, where = F.adaptive_max_pool2d(out, 1, return_indices=True)
        values, where = values.flatten(1), where.flatten(1)
        if reduction == "mean":
            values = out.mean(dim=(2, 3))
        return values, where
    flat = out.flatten(2)
    values = flat.mean(dim=2) if reduction == "mean" else flat.amax(dim=2)
    if locate_at_least is None:
        return values, flat.argmax(dim=2)
    where = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
    b, c = (values >= locate_at_least).nonzero(as_tuple=True)
    if b.numel():
        where[b, c] = flat[b, c].argmax(dim=1)
    return values, where


def reduce_layer(out: torch.Tensor, info: LayerInfo, reduction: str = "max",
                 tokens: str = "patches", locate_at_least: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's output -> (activation [B, C], location [B, C]: flat index h * w_grid + w
    of the arg-max in ``info.map_size``), whatever its layout. A token layer is reduced over
    its patch tokens (``tokens="patches"``), all its tokens (``"all"``: the location is still
    the arg-max patch token) or read at its class token (``"cls"``)."""
    if info.layout == "conv":
        return _spatial_reduce(out, reduction, locate_at_least)
    if info.layout == "nhwc":  # an NCHW view in channels-last memory: pooled without a copy
        return _spatial_reduce(out.permute(0, 3, 1, 2), reduction, locate_at_least)
    if info.layout == "flat":
        return out, torch.zeros_like(out, dtype=torch.long)
    if tokens == "cls":
        values = out[:, 0, :]
        return values, torch.zeros_like(values, dtype=torch.long)
    patches = out[:, info.prefix:, :]                       # [B, P, C]
    if reduction == "mean":
        whole = out if tokens == "all" else patches
        values = whole.mean(dim=1)
        return values, patches.argmax(dim=1)
    values, where = patches.max(dim=1)
    if tokens == "all" and info.prefix:
        values = torch.maximum(values, out[:, :info.prefix, :].amax(dim=1))
    return values, where


class ModelAdapter:
    """Hooks on the selected layers of a model, reducing each channel to one activation.

    Parameters
    ----------
    model : nn.Module
        Any module whose selected layers output tensors shaped [B, C, H, W], [B, H, W, C],
        [B, T, C] or [B, C].
    layers : LayerSelection
        See :func:`select_layers`. Default: every ``nn.Conv2d``.
    reduction : {"max", "mean"}
        How a channel's feature map becomes one activation (see the module docstring).
    output : where the logits are in the model's output: None (the rule of the module
        docstring), a key or an attribute name, or an index.
    layouts : layout of layers (names or globs) that cannot be detected
        (:mod:`.layouts`); ``tokens``: how a token layer's neurons are read ("patches",
        "all" or "cls").

    Attributes
    ----------
    layer_names : list of the probed module names.
    modules : the probed modules, in the same order.
    layers_ : list of :class:`LayerInfo`, set by :meth:`describe`.
    """

    def __init__(self, model: nn.Module, layers: LayerSelection = None, reduction: str = "max",
                 output: OutputRule = None, layouts: Mapping[str, str] | None = None,
                 tokens: str = "patches"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        if tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, not {tokens!r}")
        self.model = model
        self.reduction = reduction
        self.output = output
        self.layouts = dict(layouts or {})
        self.tokens = tokens
        self.n_outputs: int | None = None
        self.default_rule = default_layers(model)[1] if layers is None else None
        self.layer_names = select_layers(model, layers)
        modules = dict(model.named_modules())
        self.modules = [modules[name] for name in self.layer_names]
        self.layers_: list[LayerInfo] | None = None

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def hooks(self, fn: Callable[[int, torch.Tensor], torch.Tensor | None],
              once: bool = True) -> Iterator[None]:
        """Call ``fn(layer_index, output)`` on each selected layer's output while active.

        Whatever ``fn`` returns (if not None) replaces the module's output, which is how
        reversion swaps channels. With ``once`` (default) the context must span one forward
        pass, and a layer that runs twice in it is an error, because its neurons would have
        two activations per image.
        """
        calls = [0] * len(self.modules)

        def make(i: int):
            def hook(module, inputs, output):
                if not isinstance(output, torch.Tensor) or output.dim() < 2:
                    raise LayerSelectionError(
                        f"layer {self.layer_names[i]!r} ({type(module).__name__}) returns "
                        f"{type(output).__name__}"
                        + (f" of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
                           else "")
                        + "; a probed layer must output a tensor [batch, channels, H, W]")
                calls[i] += 1
                return fn(i, output)
            return hook

        handles = [m.register_forward_hook(make(i)) for i, m in enumerate(self.modules)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if once:
            twice = [self.layer_names[i] for i, c in enumerate(calls) if c > 1]
            if twice:
                raise LayerSelectionError(
                    f"layer(s) {', '.join(twice)} ran more than once in one forward pass (a "
                    "shared module); probe modules that run once per image")

    def describe(self, example: torch.Tensor, other_size: int | None = None
                 ) -> list[LayerInfo]:
        """Run one forward pass on ``example`` [B, 3, H, W] and record each layer's shape and
        layout (:func:`.layouts.detect_layouts`; ``other_size``: an input size for the second
        pass that settles a layout the modules do not declare, default H + H // 2)."""
        was_training = self.model.training
        self.model.eval()
        h = example.shape[-1]
        other = torch.zeros(1, 3, other_size or h + max(h // 2, 8), other_size or
                            h + max(h // 2, 8), device=example.device, dtype=example.dtype)
        try:
            with torch.no_grad():
                found = detect_layouts(self.model, self.layer_names, example, self.model,
                                       self.layouts, self.tokens, other)
                shapes: dict[int, tuple[int, ...]] = {}

                def record(i: int, out: torch.Tensor) -> None:
                    shapes.setdefault(i, tuple(out.shape))

                with self.hooks(record):
                    output = self.model(example)
        finally:
            self.model.train(was_training)
        from ..errors import ConfigError

        try:  # (a model probed for its features only may have no logits)
            self.n_outputs = int(select_logits(output, self.output).shape[1])
        except ConfigError:
            if self.output is not None:
                raise
            self.n_outputs = None
        infos, offset = [], 0
        for i, (name, module) in enumerate(zip(self.layer_names, self.modules)):
            if i not in shapes or name not in found:
                raise LayerSelectionError(
                    f"layer {name!r} did not run in the forward pass, so it has no activation "
                    "to probe; choose modules on the path from the input to the output")
            shape, layout = shapes[i], found[name]
            if len(shape) > 4:
                raise LayerSelectionError(
                    f"layer {name!r} outputs shape {shape}; only [B, C], [B, C, H, W], "
                    "[B, H, W, C] and [B, T, C] outputs can be probed")
            channels = channels_of(layout, shape)
            infos.append(LayerInfo(name, type(module).__name__, channels, offset, layout.grid,
                                   layout.kind, layout.prefix))
            offset += channels
        self.layers_ = infos
        return infos

    def maps(self, i: int, out: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s output as maps [B, C, h, w] (the grid its locations index)."""
        return as_maps(out, self.layers_[i].shape_layout, self.tokens)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits [B, n_outputs] for images ``x`` (hooks that are active run)."""
        return select_logits(self.model(x), self.output)

    @property
    def n_neurons(self) -> int:
        self._check_described()
        return sum(info.channels for info in self.layers_)

    def _check_described(self) -> None:
        if self.layers_ is None:
            raise RuntimeError("call describe(example_batch) first")

    # ------------------------------------------------------------ activations
    def activations(self, x: torch.Tensor, locate_at_least: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Neuron activations of a batch, with the location of each maximum.

        Parameters
        ----------
        x : images [B, 3, H, W].
        locate_at_least : optional float [n_neurons]; locations are only guaranteed where
            the activation reaches it (elsewhere they may be -1), which is cheaper.

        Returns
        -------
        acts : float32 [B, n_neurons]
        where : int64 [B, n_neurons], flat index h * W + w of the arg-max in the layer's map
        logits : the model's logits [B, n_outputs] for the batch
        """
        self._check_described()
        b = x.shape[0]
        acts = torch.empty(b, self.n_neurons, dtype=torch.float32, device=x.device)
        where = torch.empty(b, self.n_neurons, dtype=torch.long, device=x.device)
        infos = self.layers_

        def reduce(i: int, out: torch.Tensor) -> None:
            info = infos[i]
            sl = slice(info.offset, info.offset + info.channels)
            threshold = None if locate_at_least is None else locate_at_least[sl]
            values, loc = reduce_layer(out, info, self.reduction, self.tokens, threshold)
            acts[:, sl] = values
            where[:, sl] = loc

        with self.hooks(reduce):
            logits = self.logits(x)
        return acts, where, logits

    def neuron_layer(self) -> torch.Tensor:
        """int64 [n_neurons]: index of each neuron's layer."""
        self._check_described()
        return torch.repeat_interleave(
            torch.arange(len(self.layers_)), torch.tensor([i.channels for i in self.layers_]))
