"""Does the importance ranking beat the obvious rankers? The reversion check, per ranker.

:mod:`conceptevo.evolution.importance` ranks the neurons of each layer by gradient x change
(the paper's fraction of class images with a positive sensitivity) and verifies the ranking by
reverting bins of it to the earlier checkpoint. An expert's first question is whether a
simpler ranking would do as well. For one run, class and epoch pair M^t -> M^t' this module
ranks the same neurons, on the same class images, by

* ``magnitude``: the mean sensitivity, E_x[s_n(x)]: the magnitude variant of our score (how
  far the evolution moves the class logit on average, not how often it helps); where the
  importance was ranked by it (``[importance] ranking = "mean"``), ``fraction`` (the paper's
  score) takes its place;
* ``change``: the size of the feature-map change, E_x[sum_{h,w} |A_n^t'(x) - A_n^t(x)|];
* ``weight``: the norm of the change of the neuron's own weights (the row of the layer's
  weight and bias that produces channel n); only for a layer whose module holds such
  parameters (a convolution, a linear layer, a norm), else the ranker is skipped there;
* ``taylor``: gradient x activation at the later epoch, E_x[|sum_{h,w} dF_c^t'(x)/dA_n^t'(x)
  A_n^t'(x)|], the first-order Taylor pruning criterion (Molchanov et al., "Pruning
  Convolutional Neural Networks for Resource Efficient Inference", ICLR 2017);
* ``activation``: activation magnitude at the later epoch, E_x[sum_{h,w} |A_n^t'(x)|];

and compares their reversion drops, bin by bin, with ours and with random sets (the stored
reversion of the importance stage, measured on the same images with the same plan). A ranker
is *monotone* on a layer when the drops of its bins never rise from the most to the least
important bin and the first hurts more than the last (the paper's table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..models.adapter import LayerInfo, ModelAdapter
from ..models.layouts import spatial_sum
from .importance import _check_pair, paired_pass, rank_within_layers

#: the simple rankers, in the order tables show them (ours and random come from the stored
#: reversion of the importance stage)
RANKERS = ("magnitude", "change", "weight", "taylor", "activation")
TITLES = {"ours": "Gradient x change, fraction of images (ours, the paper's)",
          "ours_mean": "Gradient x change, mean (ours, [importance] ranking = \"mean\")",
          "magnitude": "Gradient x change, mean (magnitude variant)",
          "fraction": "Gradient x change, fraction of images (the paper's)",
          "change": "Feature-map change (sum of abs dF)",
          "weight": "Weight-change norm",
          "taylor": "Gradient x activation at the later epoch (Taylor)",
          "activation": "Activation magnitude at the later epoch",
          "random": "Random channels"}


@dataclass
class RankerSums:
    """Per-neuron float64 sums over a batch of images (CPU): |dF|, |g . A'| and |A'|."""

    n: int
    change: torch.Tensor
    taylor: torch.Tensor
    activation: torch.Tensor


def batch_ranker_sums(adapter_t: ModelAdapter, adapter_t2: ModelAdapter, x: torch.Tensor,
                      class_index: int) -> RankerSums:
    """The image-dependent rankers' sums over one batch: one forward pass of M^t (no
    gradient) and one forward and backward pass of M^t' (the gradient of every probed
    layer's output at once)."""
    _check_pair(adapter_t, adapter_t2, x)
    before, after, grads = paired_pass(adapter_t, adapter_t2, x, class_index,
                                       ("the earlier checkpoint", "the later checkpoint"))
    change, taylor, act = [], [], []
    for i, g in enumerate(grads):
        layout = adapter_t2.layers_[i].shape_layout
        a2 = after[i]
        change.append(spatial_sum((a2 - before[i]).abs(), layout))
        taylor.append(spatial_sum(g * a2, layout).abs())
        act.append(spatial_sum(a2.abs(), layout))

    def total(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=1).double().sum(0).cpu()

    return RankerSums(len(x), total(change), total(taylor), total(act))


def image_ranker_scores(adapter_t: ModelAdapter, adapter_t2: ModelAdapter,
                        batches: Iterable[tuple[torch.Tensor, np.ndarray]], class_index: int,
                        device: torch.device | str = "cpu",
                        progress: Callable[[int], None] | None = None
                        ) -> dict[str, np.ndarray]:
    """``change``, ``taylor`` and ``activation`` float64 [n_neurons]: the per-image values
    averaged over every image of ``batches``."""
    for adapter in (adapter_t, adapter_t2):
        adapter.model.eval()
    sums: list[RankerSums] = []
    for x, _ in batches:
        x = x.to(device)
        for adapter in (adapter_t, adapter_t2):
            if adapter.layers_ is None:
                adapter.describe(x[:1])
        sums.append(batch_ranker_sums(adapter_t, adapter_t2, x, class_index))
        if progress is not None:
            progress(len(x))
    if not sums:
        raise ValueError("no class image to rank the neurons on")
    n = sum(s.n for s in sums)
    return {key: (sum(getattr(s, key) for s in sums) / n).numpy()
            for key in ("change", "taylor", "activation")}


def channel_parameters(module: torch.nn.Module, channels: int) -> list[str]:
    """Names of ``module``'s own parameters (not its children's) with one row per output
    channel: a convolution's or linear layer's weight and bias, a norm's scale and shift."""
    return [name for name, p in module.named_parameters(recurse=False)
            if p.dim() >= 1 and p.shape[0] == channels]


def weight_change(adapter_t: ModelAdapter, adapter_t2: ModelAdapter
                  ) -> tuple[np.ndarray, dict[str, str]]:
    """The L2 norm of the change of each neuron's own parameter rows, float64 [n_neurons]
    (NaN on a layer without such parameters), and the reason per skipped layer."""
    layers = adapter_t.layers_
    out = np.full(sum(li.channels for li in layers), np.nan)
    skipped: dict[str, str] = {}
    for info, m_t, m_t2 in zip(layers, adapter_t.modules, adapter_t2.modules):
        names = channel_parameters(m_t, info.channels)
        if not names:
            skipped[info.name] = (f"{info.type} has no parameter with one row per channel "
                                  "(probe the convolution or linear layer itself to rank it "
                                  "by weight change)")
            continue
        p_t, p_t2 = dict(m_t.named_parameters(recurse=False)), \
            dict(m_t2.named_parameters(recurse=False))
        sq = torch.zeros(info.channels, dtype=torch.float64)
        for name in names:
            d = (p_t2[name].detach().double() - p_t[name].detach().double()).cpu()
            sq += d.reshape(info.channels, -1).pow(2).sum(1)
        out[info.offset:info.offset + info.channels] = sq.sqrt().numpy()
    return out, skipped


def ranker_ranks(layers: list[LayerInfo], scores: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """Within-layer rank of each neuron by each score (larger first; ties by the smaller
    channel, as a stable sort), int64 [n_neurons]; -1 on a layer where the score is NaN."""
    out = {}
    zero = np.zeros(sum(li.channels for li in layers))
    for name, score in scores.items():
        finite = np.where(np.isnan(score), -np.inf, score)
        rank = rank_within_layers(layers, finite, zero)
        for info in layers:
            sl = slice(info.offset, info.offset + info.channels)
            if np.isnan(score[sl]).any():
                rank[sl] = -1
        out[name] = rank
    return out


def ranker_sets(layers: list[LayerInfo], ranks: dict[str, np.ndarray], bins: int
                ) -> list[tuple[int, str, int, np.ndarray]]:
    """The reverted sets: (layer index, ranker, bin, channels) for every ranker, layer it
    ranks and bin of its ranking (``np.array_split`` of the ranking, the plan of the
    importance stage)."""
    rows = []
    for name, rank in ranks.items():
        for li, info in enumerate(layers):
            r = rank[info.offset:info.offset + info.channels]
            if (r < 0).any():
                continue
            ranking = np.argsort(r, kind="stable")
            for b, chunk in enumerate(np.array_split(ranking, bins)):
                rows.append((li, name, b, np.sort(chunk)))
    return rows


def bin_profile(drops: np.ndarray) -> bool:
    """Monotone bins: drops [bins] never rise from the most important bin to the least, and
    the first hurts more than the last."""
    drops = np.asarray(drops, dtype=np.float64)
    return bool(len(drops) > 1 and np.all(np.diff(drops) <= 1e-12)
                and drops[0] > drops[-1] + 1e-12)
