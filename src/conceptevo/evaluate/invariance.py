"""Checks of the unified space that need no concept annotations: function-identical copies.

A model's function does not change when the channels of a layer are put in another order (and
the next layer reads them in that order), nor when a channel is multiplied by a positive
factor that the next layer divides out again across the ReLU (or that the batch norm after it
normalises away). A neuron's place in the unified space should follow what it does, so:

* **permuted copy**: every neuron of a channel-permuted copy of a checkpoint, projected into
  the space, has its original neuron as its nearest neighbour among the original's neurons
  (the recovery rate; neurons whose position another original neuron shares exactly, e.g.
  duplicates, count as recovered when the original is among the nearest);
* **rescaled copy**: every neuron of a copy whose channels were rescaled by factors in
  [e^-1, e^1] lands where the original did (the largest shift, relative to the spread of the
  original's neurons), projected from the activations as computed (float32); the shift
  through the activations as the workspace stores them (float16, relative to each neuron's
  largest) is reported next to it: that is the storage's rounding, about 1e-3 of the spread
  on a 72-image probe, not the method's.

Both run on any study, with or without masks or tags. The copies are built for the probed
convolutions whose channels flow, through batch norms and channel-wise modules (activations,
pooling, dropout, flattening), into the next convolution or linear layer, in the order the
modules are registered (plain chains such as VGGs); each copy is checked to compute the same
logits as the original on probe images, and a check that cannot build such a copy (residual
connections, grouped convolutions, ...) is skipped, saying why.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: modules that act on every channel alike (or only reshape them, as Flatten does to NCHW)
CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity)
#: of those, the ones positive rescaling passes through (positively homogeneous)
HOMOGENEOUS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Identity)


@dataclass
class ChannelFlow:
    """Where the channels of a probed convolution go: its batch norm (or None), the modules
    in between, and the layer that reads them (a Conv2d or Linear)."""

    conv: str
    norm: str | None
    between: list[str]
    consumer: str


def channel_flows(model: nn.Module, layers: list[str]) -> tuple[list[ChannelFlow], str | None]:
    """The flows of ``layers`` (module names), or ([], why) when one cannot be followed."""
    modules = dict(model.named_modules())
    leaves = [n for n, m in modules.items() if not any(True for _ in m.children())]
    flows = []
    for name in layers:
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or name not in leaves:
            return [], f"layer {name} is not a plain (ungrouped) Conv2d"
        norm, between, consumer = None, [], None
        for follower in leaves[leaves.index(name) + 1:]:
            m = modules[follower]
            if isinstance(m, nn.BatchNorm2d) and norm is None and not between and \
                    m.num_features == conv.out_channels:
                norm = follower
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                consumer = follower
                break
            elif isinstance(m, CHANNELWISE):
                between.append(follower)
            else:
                return [], (f"after layer {name} comes {follower} ({type(m).__name__}), "
                            "which the check cannot follow")
        if consumer is None:
            return [], f"no layer reads the channels of {name}"
        reads = modules[consumer].weight.shape[1]
        if reads % conv.out_channels or (isinstance(modules[consumer], nn.Conv2d)
                                         and reads != conv.out_channels):
            return [], (f"{consumer} reads {reads} inputs, not the {conv.out_channels} "
                        f"channels of {name}")
        flows.append(ChannelFlow(name, norm, between, consumer))
    return flows, None


def _consumer_view(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The consumer's weight as [out, channels, rest] (a Linear after Flatten reads each
    channel's block of features; :func:`channel_flows` checked that it does)."""
    return weight.reshape(weight.shape[0], channels, -1)


@torch.no_grad()
def permuted_copy(model: nn.Module, flows: list[ChannelFlow], seed: int = 0
                  ) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """A copy of ``model`` whose probed channels are shuffled: channel j of layer L in the
    copy is channel ``perms[L][j]`` of the original."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    rng = np.random.default_rng(seed)
    perms = {}
    for flow in flows:
        conv = modules[flow.conv]
        perm = rng.permutation(conv.out_channels)
        idx = torch.as_tensor(perm, device=conv.weight.device)
        conv.weight.copy_(conv.weight[idx])
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[idx])
        if flow.norm is not None:
            bn = modules[flow.norm]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                if t is not None:
                    t.copy_(t[idx])
        w = modules[flow.consumer].weight
        view = _consumer_view(w, conv.out_channels)
        w.copy_(view[:, idx].reshape(w.shape))
        perms[flow.conv] = perm
    return out, perms


@torch.no_grad()
def rescaled_copy(model: nn.Module, flows: list[ChannelFlow], seed: int = 0,
                  spread: float = 1.0) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """A copy of ``model`` whose probed channels are multiplied by exp(U(-spread, spread)):
    undone by the batch norm after the convolution (its running statistics rescaled, exactly,
    eps included) or, without one, by the layer that reads the channels (across a ReLU)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    rng = np.random.default_rng(seed + 1)
    scales = {}
    for flow in flows:
        conv = modules[flow.conv]
        s = np.exp(rng.uniform(-spread, spread, conv.out_channels))
        st = torch.as_tensor(s, dtype=conv.weight.dtype, device=conv.weight.device)
        conv.weight.mul_(st.view(-1, 1, 1, 1))
        if conv.bias is not None:
            conv.bias.mul_(st)
        if flow.norm is not None:
            bn = modules[flow.norm]
            # (s x - s m) / sqrt(s^2 v + (s^2 - 1) eps + eps) = (x - m) / sqrt(v + eps)
            bn.running_mean.mul_(st)
            bn.running_var.mul_(st ** 2).add_((st ** 2 - 1) * bn.eps)
        else:
            w = modules[flow.consumer].weight
            view = _consumer_view(w, conv.out_channels)
            w.copy_((view / st.view(1, -1, 1)).reshape(w.shape))
        scales[flow.conv] = s
    return out, scales


def rescaling_blocker(model: nn.Module, flows: list[ChannelFlow]) -> str | None:
    """Why a rescaled copy would not be function-identical (a non-homogeneous module between
    a convolution without batch norm and its reader), or None."""
    modules = dict(model.named_modules())
    for flow in flows:
        if flow.norm is None:
            for name in flow.between:
                if not isinstance(modules[name], HOMOGENEOUS):
                    return (f"{name} ({type(modules[name]).__name__}) after layer {flow.conv} "
                            "does not commute with a positive rescaling")
    return None


def nearest_recovery(copy_emb: np.ndarray, original_emb: np.ndarray, truth: np.ndarray,
                     use: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(rows, hit): the copy's neurons whose original (``truth[i]``, an index into
    ``original_emb``) is among the ``use`` neurons of the original, and for each whether that
    original is its nearest (cosine, ties within ``tol`` included) among them."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)

    pool = np.flatnonzero(use)
    rows = np.flatnonzero(use[truth])
    a = unit(copy_emb[rows])
    sims = a @ unit(original_emb[pool]).T                               # [r, pool]
    own = (a * unit(original_emb[truth[rows]])).sum(1)
    return rows, own >= sims.max(1, initial=-np.inf) - tol


def same_function(a: nn.Module, b: nn.Module, x: torch.Tensor, output=None,
                  tol: float = 1e-4) -> float | None:
    """The largest logit difference of ``a`` and ``b`` on ``x`` relative to the largest
    logit, or None when it exceeds ``tol``."""
    from ..models.adapter import select_logits

    with torch.no_grad():
        la = select_logits(a.eval()(x), output).double()
        lb = select_logits(b.eval()(x), output).double()
    diff = float((la - lb).abs().max() / la.abs().max().clamp(min=1e-12))
    return diff if diff <= tol else None


def checks_text(checks: dict) -> list[str]:
    """One pass/fail (or skipped) line per check."""
    lines = []
    where = checks.get("checkpoint", {})
    at = f" ({where.get('run')} epoch {where.get('epoch')})" if where else ""
    p = checks.get("permuted_copy", {})
    if "skipped" in p:
        lines.append(f"permuted-copy check skipped: {p['skipped']}")
    else:
        lines.append(f"permuted-copy check{at}: {'PASS' if p['passed'] else 'FAIL'}, "
                     f"{p['recovery']:.1%} of {p['n_neurons']} alive neurons have their "
                     f"original as nearest neighbour (needs >= {p['threshold']:.0%})")
    r = checks.get("rescaled_copy", {})
    if "skipped" in r:
        lines.append(f"rescaled-copy check skipped: {r['skipped']}")
    else:
        stored = r.get("max_shift_stored")
        extra = f"; {stored:.1e} through the stored float16 activations" \
            if stored is not None else ""
        lines.append(f"rescaled-copy check{at}: {'PASS' if r['passed'] else 'FAIL'}, "
                     f"largest shift {r['max_shift']:.1e} of the neurons' spread "
                     f"(needs <= {r['threshold']:.0e}){extra}")
    return lines
