"""Probe the layers of any ``torch.nn.Module``.

A *layer* is a module named by its qualified name in ``model.named_modules()`` (the names
``print(model)`` shows). A *neuron* is one output channel of a layer. Its activation on an
image is a single number obtained by reducing the channel's feature map over the spatial
dimensions:

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

The model's logits are its output when that is a tensor. A model that returns a tuple or
list (torchvision's GoogLeNet / Inception in training mode, many research models) gives its
first element; a dict or a Hugging Face ``ModelOutput`` its ``"logits"`` entry. ``output``
(``[model] output`` in a study) names another key or index.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerSelectionError

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
    map_size : (H, W) of the layer's feature map for the probe image size; (1, 1) for a
        layer whose output has no spatial dimensions.
    """

    name: str
    type: str
    channels: int
    offset: int
    map_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "channels": self.channels,
            "offset": self.offset,
            "map_size": list(self.map_size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        return cls(d["name"], d["type"], int(d["channels"]), int(d["offset"]),
                   (int(d["map_size"][0]), int(d["map_size"][1])))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def select_layers(model: nn.Module, selection: LayerSelection = None) -> list[str]:
    """Names of the modules of ``model`` chosen by ``selection``, in ``named_modules()`` order.

    Parameters
    ----------
    selection : None, str, sequence of str, or callable
        ``None``: every ``nn.Conv2d``. A string is an exact module name, a glob
        (``"layer*.conv2"``) or several of those separated by commas. A sequence combines
        names and globs. A callable ``(name, module) -> bool`` is a predicate.
    """
    modules = [(name, m) for name, m in model.named_modules() if name]
    names = [name for name, _ in modules]
    if selection is None:
        chosen = [name for name, m in modules if isinstance(m, nn.Conv2d)]
        if not chosen:
            raise LayerSelectionError(
                f"{type(model).__name__} has no nn.Conv2d module to probe by default; "
                "pass a layer selection (module names, a glob or a predicate). "
                f"Its modules include: {', '.join(names[:12])}")
        return chosen
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


class ModelAdapter:
    """Hooks on the selected layers of a model, reducing each channel to one activation.

    Parameters
    ----------
    model : nn.Module
        Any module whose selected layers output tensors shaped [B, C, H, W] (or [B, C]).
    layers : LayerSelection
        See :func:`select_layers`. Default: every ``nn.Conv2d``.
    reduction : {"max", "mean"}
        How a channel's feature map becomes one activation (see the module docstring).
    output : where the logits are in the model's output: None (the rule of the module
        docstring), a key or an attribute name, or an index.

    Attributes
    ----------
    layer_names : list of the probed module names.
    modules : the probed modules, in the same order.
    layers_ : list of :class:`LayerInfo`, set by :meth:`describe`.
    """

    def __init__(self, model: nn.Module, layers: LayerSelection = None, reduction: str = "max",
                 output: OutputRule = None):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        self.model = model
        self.reduction = reduction
        self.output = output
        self.n_outputs: int | None = None
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

    def describe(self, example: torch.Tensor) -> list[LayerInfo]:
        """Run one forward pass on ``example`` [B, 3, H, W] and record each layer's shape."""
        shapes: dict[int, tuple[int, ...]] = {}

        def record(i: int, out: torch.Tensor) -> None:
            shapes.setdefault(i, tuple(out.shape))

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.hooks(record):
                logits = self.logits(example)
        finally:
            self.model.train(was_training)
        self.n_outputs = int(logits.shape[1])
        infos, offset = [], 0
        for i, (name, module) in enumerate(zip(self.layer_names, self.modules)):
            if i not in shapes:
                raise LayerSelectionError(
                    f"layer {name!r} did not run in the forward pass, so it has no activation "
                    "to probe; choose modules on the path from the input to the output")
            shape = shapes[i]
            if len(shape) > 4:
                raise LayerSelectionError(
                    f"layer {name!r} outputs shape {shape}; only [B, C] and [B, C, H, W] "
                    "outputs can be probed")
            hw = (shape[2], shape[3]) if len(shape) == 4 else (shape[2], 1) if len(shape) == 3 \
                else (1, 1)
            infos.append(LayerInfo(name, type(module).__name__, shape[1], offset, hw))
            offset += shape[1]
        self.layers_ = infos
        return infos

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
            values, loc = _spatial_reduce(out, self.reduction, threshold)
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
