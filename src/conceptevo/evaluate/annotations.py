"""Pixel-level concept annotations of the probe images (the format of ``docs/concepts.md``).

An annotation file is an ``.npz`` with

* ``paths``: str [n], each image's path relative to the probe root (as in
  ``probe/index.csv``);
* ``concept_names``: the names of the concepts, a str array [K] or a 0-d string holding a
  JSON list;
* ``concept_bits``: unsigned integers [n, H, W] (uint8, uint16, uint32 or uint64), bit ``c``
  set where concept ``c`` is present, in the geometry of the image file (so K is at most the
  integer's width).

The concept world's ``annotations.npz`` is such a file. Masks are brought into the model's
geometry like the probe images (shorter side resized to the mask size, then centre-cropped),
with nearest-neighbour sampling.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.probe import resize_crop_geometry
from ..errors import ProbeSetError

ANNOTATION_FILE = "annotations.npz"


@dataclass
class ConceptMasks:
    """Concept masks of some probe images, in the model's geometry.

    Attributes
    ----------
    probe_ids : int64 [m] probe image ids.
    bits : uint64 [m, S, S] concept bits resized to the mask size S.
    concept_names : the K concept names.
    source : the annotation file.
    """

    probe_ids: np.ndarray
    bits: np.ndarray
    concept_names: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.probe_ids)

    def masks(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """bool [len(rows), K, S, S] of the images at ``rows`` (indices into ``probe_ids``)."""
        bits = torch.from_numpy(self.bits[rows].view(np.int64)).to(device)
        shifts = torch.arange(len(self.concept_names), device=device).view(1, -1, 1, 1)
        return ((bits[:, None] >> shifts) & 1).bool()


@dataclass
class AnnotationFile:
    """An annotation file, read and validated (:func:`read_annotations`)."""

    paths: list[str]
    concept_names: list[str]
    bits: np.ndarray
    source: Path

    def covers(self, probe_paths: list[str]) -> np.ndarray:
        """bool [len(probe_paths)]: which probe images the file annotates."""
        known = set(self.paths)
        return np.array([p in known for p in probe_paths], dtype=bool)

    def masks_for(self, probe_paths: list[str], probe_ids: np.ndarray, size: int
                  ) -> ConceptMasks:
        """The masks of the probe images ``probe_ids`` (every one must be annotated) at
        ``size`` x ``size``."""
        row_of = {p: i for i, p in enumerate(self.paths)}
        rows = np.array([row_of.get(probe_paths[i], -1) for i in probe_ids], dtype=np.int64)
        if (rows < 0).any():
            missing = [probe_paths[i] for i in np.asarray(probe_ids)[rows < 0][:3]]
            raise ProbeSetError(
                f"{int((rows < 0).sum())} probe images have no annotation in {self.source} "
                f"(e.g. {', '.join(missing)}); annotate them or point [evaluation] "
                "annotations at the file of the probe root")
        resized = resize_bits(self.bits[rows], size).astype(np.uint64)
        return ConceptMasks(np.asarray(probe_ids, dtype=np.int64), resized,
                            list(self.concept_names), self.source)


def read_annotations(path: str | Path) -> AnnotationFile:
    """Read and validate an annotation file."""
    path = Path(path)
    if not path.is_file():
        raise ProbeSetError(f"annotation file {path} does not exist; set [evaluation] "
                            "annotations to a file in the format of docs/concepts.md")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("paths", "concept_names", "concept_bits")
                       if k not in data.files]
            if missing:
                raise ProbeSetError(f"{path} lacks {', '.join(missing)}; see docs/concepts.md "
                                    "for the annotation format")
            paths, names, bits = data["paths"], data["concept_names"], data["concept_bits"]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ProbeSetError(f"cannot read annotation file {path} ({error})") from error
    names = json.loads(str(names)) if names.ndim == 0 else [str(n) for n in names]
    if bits.ndim != 3 or bits.dtype.kind != "u":
        raise ProbeSetError(f"{path}: concept_bits must be unsigned integers [n, H, W], not "
                            f"{bits.dtype} {bits.shape}")
    if len(bits) != len(paths):
        raise ProbeSetError(f"{path}: {len(paths)} paths but {len(bits)} concept_bits rows")
    if not 0 < len(names) <= 8 * bits.dtype.itemsize:
        raise ProbeSetError(f"{path}: {len(names)} concept names do not fit the "
                            f"{8 * bits.dtype.itemsize} bits of concept_bits ({bits.dtype})")
    return AnnotationFile([str(p) for p in paths], names, bits, path)


def resize_bits(bits: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour version of the probe's geometry: shorter side to ``size``, centre
    crop ``size`` x ``size``. bits [n, H, W] -> [n, size, size]."""
    _, h, w = bits.shape
    nw, nh, left, top = resize_crop_geometry(w, h, size)
    rows = np.minimum(((np.arange(size) + top + 0.5) * h / nh).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size) + left + 0.5) * w / nw).astype(np.int64), w - 1)
    return bits[:, rows][:, :, cols]
