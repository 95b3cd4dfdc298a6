"""Concept labels of neurons against pixel-level concept masks (Network Dissection style).

For each neuron: its activation maps on the probe images are upsampled (bilinear) to the image
size and thresholded at a high quantile of the neuron's activations over the probe set (default
the top 0.5%); the resulting binary maps are compared with each concept's masks over the whole
probe set:

    IoU(n, c) = sum_x |M_n(x) & L_c(x)| / sum_x |M_n(x) | L_c(x)|

The neuron's label is the concept with the largest IoU, or none below ``min_iou`` (default
0.04, Network Dissection's). Two forward passes: the first estimates each neuron's threshold
(from at most ``max_samples`` activation values per neuron, a seeded subsample), the second
accumulates intersections and unions with one matrix product per layer and batch. The first
pass also gives each neuron's activation vector (its max over the map on every probe image),
which the activation-correlation baseline of the alignment study uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.adapter import ModelAdapter


@dataclass
class ConceptLabels:
    """Labels of every neuron of one model.

    Attributes
    ----------
    iou : float32 [n_neurons, n_concepts].
    label : int64 [n_neurons], best concept index or -1 (none).
    threshold : float32 [n_neurons], the activation quantile used.
    activations : float32 [n_neurons, n_images], max activation per probe image.
    """

    iou: np.ndarray
    label: np.ndarray
    threshold: np.ndarray
    activations: np.ndarray

    @property
    def best_iou(self) -> np.ndarray:
        return self.iou.max(1) if self.iou.size else np.zeros(len(self.label))


def _maps(adapter: ModelAdapter, x: torch.Tensor) -> list[torch.Tensor]:
    """Every probed layer's output maps [B, C, h, w] (before in-place ops; a token layer's
    patch tokens reshaped to the patch grid, a [B, H, W, C] layer's channels moved first)."""
    if adapter.layers_ is None:
        adapter.describe(x[:1])
    outs: dict[int, torch.Tensor] = {}

    def keep(i: int, out: torch.Tensor) -> torch.Tensor:
        outs[i] = out.detach()
        return out.clone()

    with torch.no_grad(), adapter.hooks(keep):
        adapter.model(x)
    # every layout as maps [B, C, h, w]: a token layer's patch tokens on their grid
    return [adapter.maps(i, outs[i]).float() for i in range(len(outs))]


def bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """float32 [size_out, size_in]: 1-D bilinear upsampling (``align_corners=False``) as a
    matrix, so that a map is upsampled by two small matrix products (``R_h @ m @ R_w.T``),
    which is several times faster than ``F.interpolate`` on CPUs and gives the same values."""
    eye = torch.eye(size_in)[None, None]
    return F.interpolate(eye, size=(size_out, size_in), mode="bilinear",
                         align_corners=False)[0, 0]


def label_neurons(adapter: ModelAdapter,
                  batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                  n_images: int, *, quantile: float = 0.995, min_iou: float = 0.04,
                  max_samples: int = 200_000, seed: int = 0,
                  device: torch.device | str = "cpu",
                  progress: Callable[[int], None] | None = None) -> ConceptLabels:
    """Label the neurons of ``adapter``'s model.

    Parameters
    ----------
    batches : called twice; yields (images [B, 3, H, W], masks bool [B, n_concepts, H', W'])
        in the same order each time (the probe set with its concept masks; the masks may have
        another resolution than the images: the maps are upsampled to the masks').
    n_images : number of probe images.
    progress : called with the number of images of each batch, twice per image.
    """
    model = adapter.model
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        samples: list[list[torch.Tensor]] | None = None
        acts = []
        for x, _ in batches():
            maps = _maps(adapter, x.to(device))
            if samples is None:
                samples = [[] for _ in maps]
            acts.append(torch.cat([m.amax(dim=(2, 3)) for m in maps], 1).cpu())
            for i, m in enumerate(maps):
                flat = m.transpose(0, 1).reshape(m.shape[1], -1).cpu()      # [C, B*h*w]
                rate = min(1.0, max_samples / (n_images * m.shape[2] * m.shape[3]))
                if rate < 1.0:
                    flat = flat[:, torch.rand(flat.shape[1], generator=g) < rate]
                samples[i].append(flat)
            if progress is not None:
                progress(len(x))
        if samples is None:
            raise ValueError("label_neurons: the probe set yielded no batch")
        thresholds = [torch.quantile(torch.cat(s, 1), quantile, dim=1) for s in samples]
        inter = torch.zeros(sum(len(t) for t in thresholds), 0, dtype=torch.float64)
        union_m = torch.zeros(len(inter), dtype=torch.float64)
        union_l = None
        resize: dict[tuple[int, int], torch.Tensor] = {}
        for x, masks in batches():
            masks = masks.to(device)
            maps = _maps(adapter, x.to(device))
            b, k, height, width = masks.shape
            lab = masks.reshape(b, k, -1).float().transpose(1, 2)             # [B, P, K]
            parts_inter, parts_m = [], []
            for i, m in enumerate(maps):
                h, w = m.shape[2:]
                if (h, height) not in resize:
                    resize[(h, height)] = bilinear_matrix(h, height).to(device)
                if (w, width) not in resize:
                    resize[(w, width)] = bilinear_matrix(w, width).to(device)
                up = resize[(h, height)] @ m @ resize[(w, width)].T             # [B, C, H, W]
                # in place: 1.0 above the threshold, 0.0 elsewhere (no bool -> float copy)
                on = up.gt_(thresholds[i].to(device).view(1, -1, 1, 1)).reshape(
                    b, m.shape[1], -1)
                parts_inter.append(torch.bmm(on, lab).sum(0))                 # [C, K]
                parts_m.append(on.sum((0, 2)))
            batch_inter = torch.cat(parts_inter).double().cpu()
            batch_l = lab.sum((0, 1)).double().cpu()
            inter = batch_inter if inter.shape[1] == 0 else inter + batch_inter
            union_m += torch.cat(parts_m).double().cpu()
            union_l = batch_l if union_l is None else union_l + batch_l
            if progress is not None:
                progress(len(x))
        union = union_m[:, None] + union_l[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        if iou.shape[1]:
            best, arg = iou.max(1)
        else:
            best, arg = torch.zeros(len(iou)), torch.zeros(len(iou), dtype=torch.long)
        label = torch.where(best >= min_iou, arg, torch.full_like(arg, -1))
    finally:
        model.train(was_training)
    return ConceptLabels(iou.float().numpy(), label.numpy().astype(np.int64),
                         torch.cat(thresholds).float().numpy(),
                         torch.cat(acts).t().contiguous().float().numpy())


def activation_vectors(adapter: ModelAdapter, batches: Iterable[torch.Tensor],
                       device: torch.device | str = "cpu") -> np.ndarray:
    """float32 [n_neurons, n_images]: each neuron's activation (max over its map) on every
    image of ``batches`` (the vectors of the activation-correlation baseline)."""
    model = adapter.model
    was_training = model.training
    model.eval()
    try:
        acts = [torch.cat([m.amax(dim=(2, 3)) for m in _maps(adapter, x.to(device))], 1).cpu()
                for x in batches]
    finally:
        model.train(was_training)
    return torch.cat(acts).t().contiguous().numpy()
