"""Example patches: what a neuron detects, cut from its stimuli around the arg-max.

The crop around a stimulus is sized by the neuron's receptive field, computed generically from
the model (no per-architecture table): the support of the input gradient of the units at the
centre of the layer's map, the union over 16 random inputs (ReLUs and max pooling route the
gradient along one path per input; over many inputs every path is taken). The field of a unit
at (h, w) is that of the centre unit shifted by the layer's stride. A field cut by the image
border is as large as the image in that direction.

A token of a vision transformer sees the whole image (attention), so its gradient support is
no useful crop: a patch token's field is its patch, widened by ``margin`` patches on each side
(``[model] patch_margin``, default 0.5: a crop two patches wide). A class token's field is the
whole image.

Patches are cropped from the probe images as the model saw them (``ProbeSet.images``), clipped
at the image border (a field larger than the image gives the whole image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models.adapter import ModelAdapter
from .models.registry import BUILTIN_NAMESPACES


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's units, in input pixels.

    Attributes
    ----------
    size : (height, width) of the field (clipped to the input).
    stride : (sh, sw): input pixels per step of the layer's map.
    center : (ch, cw): input coordinate of the centre of the field of unit (0, 0).
    """

    size: tuple[int, int]
    stride: tuple[float, float]
    center: tuple[float, float]

    def to_dict(self) -> dict:
        return {"size": list(self.size), "stride": list(self.stride),
                "center": list(self.center)}

    @classmethod
    def from_dict(cls, d: dict) -> ReceptiveField:
        return cls(tuple(d["size"]), tuple(d["stride"]), tuple(d["center"]))

    def box(self, h: int, w: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (h, w)'s field, clipped to the image; the box
        keeps its size by shifting inwards at the borders when the image allows it."""
        height, width = image_size
        out = []
        for pos, size, stride, center, limit in ((h, self.size[0], self.stride[0],
                                                  self.center[0], height),
                                                 (w, self.size[1], self.stride[1],
                                                  self.center[1], width)):
            size = min(size, limit)
            start = int(round(center + pos * stride - size / 2))
            start = min(max(start, 0), limit - size)
            out.append((start, start + size))
        (top, bottom), (left, right) = out
        return top, left, bottom, right


def token_field(grid: tuple[int, int], image_size: tuple[int, int], margin: float = 0.5
                ) -> ReceptiveField:
    """The field of a patch token on a ``grid`` of patches: its patch and ``margin`` patches
    around it."""
    sh, sw = image_size[0] / grid[0], image_size[1] / grid[1]
    size = (int(round(sh * (1 + 2 * margin))), int(round(sw * (1 + 2 * margin))))
    return ReceptiveField((min(size[0], image_size[0]), min(size[1], image_size[1])),
                          (sh, sw), (sh / 2, sw / 2))


def receptive_fields(adapter: ModelAdapter, image_size: tuple[int, int], n_inputs: int = 16,
                     seed: int = 0, device: torch.device | str = "cpu", margin: float = 0.5
                     ) -> list[ReceptiveField]:
    """The receptive field of every probed layer of ``adapter`` (see the module docstring);
    ``margin``: patches around a token's patch."""
    model = adapter.model
    was_training = model.training
    model.eval()
    if adapter.layers_ is None:
        adapter.describe(torch.zeros(1, 3, *image_size, device=device))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_inputs, 3, *image_size, generator=g).to(device).requires_grad_(True)
    outs: dict[int, torch.Tensor] = {}

    def keep(i: int, out: torch.Tensor) -> torch.Tensor:
        outs[i] = out
        return out.clone()

    try:
        with torch.enable_grad(), adapter.hooks(keep):
            model(x)
            fields = []
            for i, info in enumerate(adapter.layers_):
                if info.layout == "tokens":
                    fields.append(token_field(info.map_size, image_size, margin)
                                  if info.map_size != (1, 1) else
                                  ReceptiveField(tuple(image_size), (1.0, 1.0),
                                                 (image_size[0] / 2, image_size[1] / 2)))
                    continue
                out = adapter.maps(i, outs[i])
                if info.layout == "flat":
                    fields.append(ReceptiveField(tuple(image_size), (1.0, 1.0),
                                                 (image_size[0] / 2, image_size[1] / 2)))
                    continue
                _, _, hl, wl = out.shape
                ch, cw = hl // 2, wl // 2
                (grad,) = torch.autograd.grad(out[:, :, ch, cw].sum(), x, retain_graph=True)
                support = grad.abs().sum((0, 1)) > 0                  # [H, W]
                rows = torch.nonzero(support.any(1)).squeeze(1)
                cols = torch.nonzero(support.any(0)).squeeze(1)
                if rows.numel() == 0:  # a unit that ignores its input (constant layer)
                    rows = cols = torch.tensor([0])
                top, bottom = int(rows.min()), int(rows.max()) + 1
                left, right = int(cols.min()), int(cols.max()) + 1
                sh, sw = image_size[0] / hl, image_size[1] / wl
                center_h = (top + bottom) / 2 - ch * sh
                center_w = (left + right) / 2 - cw * sw
                fields.append(ReceptiveField((bottom - top, right - left), (sh, sw),
                                             (center_h, center_w)))
    finally:
        model.train(was_training)
    return fields


def cached_receptive_fields(ws, arch: str, kwargs: dict, layers, image_size: tuple[int, int],
                            allow_code: bool = False, layouts: dict | None = None,
                            tokens: str = "patches", margin: float = 0.5
                            ) -> list[ReceptiveField]:
    """The receptive fields of ``arch``'s probed layers, cached in the workspace
    (``patches/receptive_fields.json``).

    Computing them builds the model. The readers of a workspace (``serve``, ``report``) pass
    ``allow_code=False``: a workspace may have come from anyone, so they build only
    ``torchvision:``, ``timm:``, ``hf:`` and ``conceptevo:`` models and never import the
    ``package.module:function`` factory its ``study.json`` names (that would run its code);
    ``conceptevo build``, which runs the user's own config, stores the fields of every run so
    that readers find them.
    """
    import json

    from .errors import WorkspaceError
    from .workspace.artifacts import load_receptive_fields, save_receptive_fields

    key = json.dumps([arch, kwargs, layers, list(image_size)], sort_keys=True)
    if layouts or tokens != "patches" or margin != 0.5:  # (keys of earlier stores unchanged)
        key = json.dumps([arch, kwargs, layers, list(image_size), layouts or {}, tokens,
                          margin], sort_keys=True)
    cache = load_receptive_fields(ws)  # damaged: recomputed below (or refused, see below)
    if key not in cache:
        if not allow_code and str(arch).split(":", 1)[0] not in BUILTIN_NAMESPACES:
            raise WorkspaceError(
                f"the receptive fields of architecture {arch!r} are not stored in workspace "
                f"{ws.root}, and computing them here would import and run the code that the "
                "workspace names, which a reader of a workspace never does. Run `conceptevo "
                "build --config <study.toml>` on the machine with the model's code (it stores "
                "them), then open the workspace again.")
        from .models.registry import build_model

        torch.manual_seed(0)
        adapter = ModelAdapter(build_model(arch, kwargs), layers, "max", layouts=layouts,
                               tokens=tokens)
        cache[key] = [f.to_dict() for f in receptive_fields(adapter, tuple(image_size),
                                                            margin=margin)]
        save_receptive_fields(ws, cache)
    return [ReceptiveField.from_dict(d) for d in cache[key]]


def crop_patches(images: np.ndarray, image_ids: np.ndarray, locations: np.ndarray,
                 field: ReceptiveField, min_size: int = 4) -> list[np.ndarray]:
    """Crops [h, w, 3] of ``images`` (uint8 [n, H, W, 3]) around each (h, w) in ``locations``
    ([k, 2], positions in the layer's map), sized by ``field`` (at least ``min_size``)."""
    size = images.shape[1:3]
    grown = ReceptiveField((max(field.size[0], min_size), max(field.size[1], min_size)),
                           field.stride, field.center)
    crops = []
    for image_id, (h, w) in zip(np.asarray(image_ids), np.asarray(locations)):
        top, left, bottom, right = grown.box(int(h), int(w), size)
        crops.append(np.asarray(images[int(image_id), top:bottom, left:right]))
    return crops


def patch_strip(crops: list[np.ndarray], tile: int = 48, gap: int = 2) -> np.ndarray:
    """The crops side by side, each scaled (nearest neighbour) to ``tile`` x ``tile``:
    uint8 [tile, n * (tile + gap) - gap, 3] on a white background."""
    n = len(crops)
    strip = np.full((tile, max(n * (tile + gap) - gap, 1), 3), 255, dtype=np.uint8)
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        rows = np.minimum((np.arange(tile) * h) // tile, h - 1)
        cols = np.minimum((np.arange(tile) * w) // tile, w - 1)
        strip[:, i * (tile + gap):i * (tile + gap) + tile] = crop[rows][:, cols]
    return strip


def image_bytes(array: np.ndarray, quality: int = 80) -> bytes:
    """``array`` (uint8 [h, w, 3]) encoded as WebP: about a tenth of PNG for photographic
    patches, and read by every current browser."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()
