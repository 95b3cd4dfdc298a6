"""Which concept evolutions matter for a class: sensitivity, importance, and reversion.

For a class c, two checkpoints M^t -> M^t' of one run and images x of class c:

* evolution of neuron n:  D_n(x) = A_n^t'(x) - A_n^t(x), its feature map's change;
* sensitivity:  s_n(x) = sum_{h,w} dF_c^t(x)/dA_n^t(x)[h, w] * D_n(x)[h, w], a first-order
  estimate of how much the evolution of n alone moves the class-c logit of M^t;
* importance:  I_n = fraction of the class images with s_n(x) > 0; neurons are ranked per layer.

In eval mode an image's logit depends on that image only, so one backward pass of
sum_x F_c(x) over a batch gives every per-image gradient, for every layer at once (the
reference calls autograd once per image and per layer and loops over neurons in Python).

Verification by reversion: run M^t' but replace some channels of one layer's output by M^t's
(a forward hook, so any architecture works, residual ones included) and measure how class
accuracy changes. Reverting important evolutions should hurt more than reverting random ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..models.adapter import LayerInfo, ModelAdapter
from ..models.layouts import Layout, index_channels, spatial_sum
from ..params import RANKINGS


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters without gradient while active: the backward pass then computes only the
    gradients of the probed layers' outputs, not of the weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _check_finite(logits: torch.Tensor, which: str) -> None:
    """Importance and reversion mean nothing for a model whose logits are NaN/inf (a
    diverged run): say so instead of ranking NaNs (or counting a NaN head as 100% right)."""
    if not bool(torch.isfinite(logits).all()):
        from ..errors import NonFiniteActivationError

        bad = int((~torch.isfinite(logits).all(1)).sum())
        raise NonFiniteActivationError(
            f"{which} produces NaN/inf logits on {bad} of {len(logits)} class images (its "
            "weights have probably diverged); importance needs two finite checkpoints: "
            "choose other epochs (--from / --to)")


def _check_pair(adapter_t: ModelAdapter, adapter_t2: ModelAdapter,
                x: torch.Tensor | None = None) -> None:
    """Same layers; both described (their layouts known), on ``x[:1]`` if needed."""
    if adapter_t.layer_names != adapter_t2.layer_names:
        raise ValueError("the two checkpoints must be probed on the same layers")
    for adapter in (adapter_t, adapter_t2):
        if adapter.layers_ is None and x is not None:
            adapter.describe(x[:1])


def paired_pass(plain: ModelAdapter, graded: ModelAdapter, x: torch.Tensor, class_index: int,
                names: tuple[str, str]) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                 tuple[torch.Tensor, ...]]:
    """Every probed layer's output of two checkpoints on a batch, and the gradient of the
    summed class logit of ``graded`` with respect to its own layer outputs: one forward pass
    of ``plain`` (no gradient), one forward and one backward pass of ``graded``. Returns
    (plain outputs, graded outputs (detached), gradients), one per layer; ``names``: what an
    error calls ``plain`` and ``graded`` (a checkpoint with NaN/inf logits).

    In eval mode an image's logit depends on that image only, so the gradient of the summed
    logit is every image's own."""
    n_layers = len(graded.layer_names)
    kept: dict[int, torch.Tensor] = {}

    def keep_plain(i: int, out: torch.Tensor) -> None:
        kept[i] = out.detach().clone()

    with torch.no_grad(), plain.hooks(keep_plain):
        _check_finite(plain.logits(x), names[0])

    graph: dict[int, torch.Tensor] = {}

    def keep_graded(i: int, out: torch.Tensor) -> torch.Tensor:
        if not out.requires_grad:  # the first probed layer: the graph starts here
            out.requires_grad_(True)
        graph[i] = out
        # downstream layers get a copy, so an in-place op after the layer (ReLU(inplace=True))
        # cannot change the map whose gradient we take
        return out.clone()

    with torch.enable_grad(), _frozen(graded.model), graded.hooks(keep_graded):
        logits = graded.logits(x)
        _check_finite(logits, names[1])
        grads = torch.autograd.grad(logits[:, class_index].sum(),
                                    [graph[i] for i in range(n_layers)])
    return ([kept[i] for i in range(n_layers)], [graph[i].detach() for i in range(n_layers)],
            grads)


def batch_sensitivity(adapter_t: ModelAdapter, adapter_t2: ModelAdapter, x: torch.Tensor,
                      class_index: int) -> torch.Tensor:
    """Sensitivity s [B, n_neurons] of every neuron of every probed layer for a batch.

    Both models must be in eval mode. One forward pass of M^t' (no gradient), one forward
    and one backward pass of M^t.
    """
    _check_pair(adapter_t, adapter_t2, x)
    after, before, grads = paired_pass(adapter_t2, adapter_t, x, class_index,
                                       ("the later checkpoint", "the earlier checkpoint"))
    parts = []
    for i, g in enumerate(grads):
        # summed over every position of the map (every token of a token layer)
        parts.append(spatial_sum(g * (after[i] - before[i]), adapter_t.layers_[i].shape_layout))
    return torch.cat(parts, dim=1)


@dataclass
class ImportanceResult:
    """Importance of every neuron for one class and one epoch pair.

    Attributes
    ----------
    layers : the probed layers.
    score : float64 [n_neurons], I_n: fraction of class images with s_n(x) > 0.
    mean_sensitivity : float64 [n_neurons], mean of s_n(x) over the images.
    rank : int64 [n_neurons], rank within the neuron's layer (0 = most important): by the
        score, ties broken by the larger mean sensitivity, then the smaller channel; or, with
        ``meta["ranking"] == "mean"``, by the mean sensitivity, ties by the score.
    image_ids : int64 [n_images], the class images used (probe-set ids).
    """

    layers: list[LayerInfo]
    score: np.ndarray
    mean_sensitivity: np.ndarray
    rank: np.ndarray
    image_ids: np.ndarray
    meta: dict = field(default_factory=dict)

    def layer_ranking(self, layer: int) -> np.ndarray:
        """Channels of ``layer`` (an index) from most to least important."""
        info = self.layers[layer]
        sl = slice(info.offset, info.offset + info.channels)
        return np.argsort(self.rank[sl], kind="stable")


def rank_within_layers(layers: list[LayerInfo], score: np.ndarray, tie: np.ndarray
                       ) -> np.ndarray:
    """Rank of each neuron inside its layer by (score desc, tie desc, channel asc)."""
    rank = np.empty(len(score), dtype=np.int64)
    for info in layers:  # one lexsort per layer (a handful of layers), never per neuron
        sl = slice(info.offset, info.offset + info.channels)
        order = np.lexsort((np.arange(info.channels), -tie[sl], -score[sl]))
        rank[sl.start + order] = np.arange(info.channels)
    return rank


@dataclass
class SensitivitySums:
    """What one batch contributes to the importance: its image ids, the count of images with
    a positive sensitivity and the float64 sum of the sensitivities, per neuron (CPU)."""

    image_ids: np.ndarray
    positive: torch.Tensor
    total: torch.Tensor


def sensitivity_sums(adapter_t: ModelAdapter, adapter_t2: ModelAdapter,
                     batches: Iterable[tuple[torch.Tensor, np.ndarray]], class_index: int,
                     device: torch.device | str = "cpu",
                     progress: Callable[[int], None] | None = None) -> list[SensitivitySums]:
    """The per-batch sums of the sensitivity of every image of ``batches`` (a shard of the
    class images, in a distributed run); :func:`combine_sensitivity` turns the batches of
    every shard into the :class:`ImportanceResult`."""
    for adapter in (adapter_t, adapter_t2):
        adapter.model.eval()
    out = []
    for x, batch_ids in batches:
        x = x.to(device)
        if adapter_t.layers_ is None:
            adapter_t.describe(x[:1])
        if adapter_t2.layers_ is None:
            adapter_t2.describe(x[:1])
        s = batch_sensitivity(adapter_t, adapter_t2, x, class_index).double()
        out.append(SensitivitySums(np.asarray(batch_ids), (s > 0).sum(0).cpu(),
                                   s.sum(0).cpu()))
        if progress is not None:
            progress(len(x))
    return out


#: what orders the neurons: the fraction of images with s_n(x) > 0 (the paper's), or the
#: mean of s_n(x) (the magnitude variant); each breaks its ties by the other


def combine_sensitivity(layers: list[LayerInfo], batches: Sequence[SensitivitySums],
                        ranking: str = "fraction") -> ImportanceResult:
    """The importance ranking (by ``ranking``, one of :data:`RANKINGS`) from the sums of
    every batch, taken in the given order (the order of a single pass: the float64 totals
    are then added exactly as it adds them)."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, not {ranking!r}")
    if not batches:
        raise ValueError("no class image to compute importance on")
    positive, total = batches[0].positive, batches[0].total
    for b in batches[1:]:
        positive = positive + b.positive
        total = total + b.total
    image_ids = np.concatenate([b.image_ids for b in batches])
    n = len(image_ids)
    score = (positive.double() / n).numpy()
    mean_s = (total / n).numpy()
    rank = rank_within_layers(layers, score, mean_s) if ranking == "fraction" else \
        rank_within_layers(layers, mean_s, score)
    return ImportanceResult(list(layers), score, mean_s, rank, image_ids,
                            {"ranking": ranking})


def importance(adapter_t: ModelAdapter, adapter_t2: ModelAdapter,
               batches: Sequence[tuple[torch.Tensor, np.ndarray]], class_index: int,
               device: torch.device | str = "cpu",
               progress: Callable[[int], None] | None = None,
               ranking: str = "fraction") -> ImportanceResult:
    """Sensitivity of every image of ``batches`` [(images [B, 3, H, W], ids [B])] of class
    ``class_index``, and the importance ranking (by ``ranking``: :data:`RANKINGS`)."""
    sums = sensitivity_sums(adapter_t, adapter_t2, batches, class_index, device, progress)
    if not sums:
        raise ValueError("no class image to compute importance on")
    return combine_sensitivity(adapter_t.layers_, sums, ranking)


# ------------------------------------------------------------------------- reversion
@contextmanager
def replace_channels(adapter: ModelAdapter, layer: int, channels: torch.Tensor,
                     source: Callable[[], torch.Tensor]) -> Iterator[None]:
    """While active, ``layer``'s output has ``channels`` replaced by ``source()`` (a tensor of
    the same shape, e.g. the other checkpoint's output for the same batch)."""
    module = adapter.modules[layer]
    if adapter.layers_ is None:
        raise RuntimeError("call adapter.describe(example_batch) first")
    index = index_channels(adapter.layers_[layer].shape_layout, channels)

    def hook(mod, inputs, out):
        if channels.numel() == 0:
            return None
        new = out.clone()
        new[index] = source()[index].to(new.dtype)
        return new

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def capture_outputs(adapter: ModelAdapter, x: torch.Tensor) -> tuple[dict[int, torch.Tensor],
                                                                    torch.Tensor]:
    """Every probed layer's output (before in-place ops) and the logits, without gradient."""
    maps: dict[int, torch.Tensor] = {}

    def keep(i: int, out: torch.Tensor) -> torch.Tensor:
        maps[i] = out.detach()
        return out.clone()

    with torch.no_grad(), adapter.hooks(keep):
        logits = adapter.logits(x)
    return maps, logits


def class_hits(logits: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1 hit, top-5 hit) bool [B] for the true class ``class_index``; an image whose
    logits are not all finite is a miss (``topk`` would rank a NaN first)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    finite = torch.isfinite(logits).all(1)
    return (top[:, 0] == class_index) & finite, (top == class_index).any(1) & finite


def reversion_hits(adapter_t: ModelAdapter, adapter_t2: ModelAdapter, x: torch.Tensor,
                   class_index: int, sets: list[tuple[int, torch.Tensor]],
                   max_batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 / top-5 hits [n_sets, B] of M^t' with each (layer, channels) set reverted to M^t.

    A set with no channel is the unreverted M^t'. Several sets run in one forward pass: the
    batch is repeated once per set (up to ``max_batch`` images), and a hook on each layer
    swaps the channels of its sets' copies.
    """
    _check_pair(adapter_t, adapter_t2, x)
    maps_t, _ = capture_outputs(adapter_t, x)
    b = len(x)
    per_pass = max(1, max_batch // max(b, 1))
    top1 = np.zeros((len(sets), b), dtype=bool)
    top5 = np.zeros_like(top1)
    for start in range(0, len(sets), per_pass):
        group = sets[start:start + per_pass]
        g = len(group)
        swaps: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for k, (layer, channels) in enumerate(group):
            if channels.numel():
                swaps.setdefault(layer, []).append((k, channels.to(x.device)))
        handles = [adapter_t2.modules[layer].register_forward_hook(
            _swap_hook(maps_t[layer], todo, g, adapter_t2.layers_[layer].shape_layout))
            for layer, todo in swaps.items()]
        try:
            with torch.no_grad():
                logits = adapter_t2.logits(x.repeat(g, *([1] * (x.dim() - 1))))
        finally:
            for h in handles:
                h.remove()
        h1, h5 = class_hits(logits, class_index)
        top1[start:start + g] = h1.view(g, b).cpu().numpy()
        top5[start:start + g] = h5.view(g, b).cpu().numpy()
    return top1, top5


def _swap_hook(source: torch.Tensor, swaps: list[tuple[int, torch.Tensor]], groups: int,
               layout: Layout):
    """A forward hook for a batch of ``groups`` copies of the images: copy k takes the given
    channels (on the layer's channel axis, ``layout``) from ``source`` (the earlier
    checkpoint's output for the same images)."""
    b = source.shape[0]
    last = layout.channel_axis != 1

    def hook(module, inputs, out):
        # no gradient here: swap in place, unless the module passed an input through (an
        # Identity, an eval-mode Dropout), whose tensor other layers may still read
        if any(isinstance(i, torch.Tensor) and i.data_ptr() == out.data_ptr() for i in inputs):
            out = out.clone()
        for k, channels in swaps:
            rows = slice(k * b, (k + 1) * b)
            if last:
                out[rows, ..., channels] = source[..., channels].to(out.dtype)
            else:
                out[rows, channels] = source[:, channels].to(out.dtype)
        return out

    return hook


@dataclass
class ReversionPlan:
    """The channel sets reverted for one class and epoch pair: per layer, ``bins`` bins of
    the importance ranking and ``draws`` random sets of the same size, plus the unreverted
    model. ``rows`` describes each set as (layer index, set name, channels)."""

    rows: list[tuple[int, str, np.ndarray]]

    @classmethod
    def build(cls, result: ImportanceResult, bins: int = 4, draws: int = 5, seed: int = 0
              ) -> ReversionPlan:
        rng = np.random.default_rng(seed)
        rows: list[tuple[int, str, np.ndarray]] = [(-1, "none", np.zeros(0, dtype=np.int64))]
        for li, info in enumerate(result.layers):
            ranking = result.layer_ranking(li)
            chunks = np.array_split(ranking, bins)
            for b, chunk in enumerate(chunks):
                rows.append((li, str(b), np.sort(chunk)))
            size = len(chunks[0])
            for d in range(draws):
                rows.append((li, f"random{d}", np.sort(rng.choice(info.channels, size,
                                                                  replace=False))))
        return cls(rows)


def reversion_counts(adapter_t: ModelAdapter, adapter_t2: ModelAdapter, plan: ReversionPlan,
                     batches: Iterable[tuple[torch.Tensor, np.ndarray]], class_index: int,
                     device: torch.device | str = "cpu",
                     progress: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-1 and top-5 hit counts int64 [n_rows] of every set of ``plan`` over ``batches``,
    and the number of images. Counts add exactly, so shards of the images can be summed in
    any order."""
    for adapter in (adapter_t, adapter_t2):
        adapter.model.eval()
    sets = [(max(layer, 0), torch.as_tensor(ch, dtype=torch.long)) for layer, _, ch in plan.rows]
    hits1 = np.zeros(len(sets), dtype=np.int64)
    hits5 = np.zeros(len(sets), dtype=np.int64)
    n = 0
    for x, _ in batches:
        x = x.to(device)
        t1, t5 = reversion_hits(adapter_t, adapter_t2, x, class_index, sets)
        hits1 += t1.sum(1)
        hits5 += t5.sum(1)
        n += len(x)
        if progress is not None:
            progress(len(x))
    return hits1, hits5, n


def run_reversion(adapter_t: ModelAdapter, adapter_t2: ModelAdapter, plan: ReversionPlan,
                  batches: Sequence[tuple[torch.Tensor, np.ndarray]], class_index: int,
                  device: torch.device | str = "cpu",
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray,
                                                                         np.ndarray]:
    """Top-1 and top-5 accuracy [n_rows] of every set of ``plan`` over ``batches``."""
    hits1, hits5, n = reversion_counts(adapter_t, adapter_t2, plan, batches, class_index,
                                       device, progress)
    return hits1 / max(n, 1), hits5 / max(n, 1)
