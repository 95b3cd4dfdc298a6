"""The probe set: a fixed, ordered sample of images on which every checkpoint is probed.

Image ids are the rows of the probe set (0 .. n-1) and never change. The images are decoded,
resized (shorter side) and centre-cropped to the model's input size once, and kept as one
uint8 array [n, H, W, 3] (memory-mapped from the workspace), so that probing dozens of
checkpoints decodes nothing again and example patches are cut from exactly what the model saw.
Normalisation (mean / std) is applied on the fly on the model's device.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ProbeSetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ProbeSet:
    """Images with stable integer ids (their row), labels and source paths.

    Attributes
    ----------
    images : uint8 [n, H, W, 3], what the model sees before normalisation.
    labels : int64 [n] class index of each image.
    paths : list of n source paths (relative to ``source``; "" when the images came from a
        dataset object, in which case the path records the dataset index as ``#i``).
    classes : class names, indexed by label.
    mean, std : per-channel normalisation applied before the model.
    info : provenance (source directory, sampling parameters, skipped / converted counts).
    """

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    classes: list[str]
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ProbeSetError(f"probe images must be uint8 [n, H, W, 3], got "
                                f"{self.images.dtype} {tuple(self.images.shape)}")
        if len(self.labels) != n or len(self.paths) != n:
            raise ProbeSetError("images, labels and paths of a probe set differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_ids(self, label: int) -> np.ndarray:
        """int64 ids of the images of class ``label``."""
        return np.flatnonzero(self.labels == label)

    def tensor(self, ids: np.ndarray | Sequence[int], device: torch.device | str = "cpu"
               ) -> torch.Tensor:
        """Normalised float32 [len(ids), 3, H, W] on ``device``."""
        ids = np.asarray(ids, dtype=np.int64)
        raw = torch.from_numpy(np.ascontiguousarray(self.images[ids]))
        x = raw.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    def batches(self, batch_size: int, device: torch.device | str = "cpu",
                ids: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalised images [B, 3, H, W], ids int64 [B]) in id order."""
        ids = np.arange(len(self), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            yield self.tensor(chunk, device), torch.from_numpy(chunk)

    def fingerprint(self) -> str:
        """A short hash of the images, labels and normalisation (part of every cache key)."""
        import hashlib

        h = hashlib.sha1()
        h.update(repr((self.images.shape, list(self.mean), list(self.std), self.classes,
                       self.paths)).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        step = max(1, len(self.images) // 4096)
        h.update(np.ascontiguousarray(self.images[::step]).tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- sampling
def sample_per_class(labels: np.ndarray, per_class: int | None = None,
                     fraction: float | None = None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic per-class sample of ``labels``.

    ``per_class`` items of each class (all when a class has fewer), or ``ceil(fraction *
    size)`` of each class, or everything when both are None.
    """
    labels = np.asarray(labels)
    if per_class is None and fraction is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = per_class if per_class is not None else int(np.ceil(fraction * len(members)))
        take = min(max(take, 1), len(members))
        chosen.append(np.sort(rng.choice(members, size=take, replace=False)))
    return np.sort(np.concatenate(chosen))


def list_image_folder(root: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, relative paths, labels) of an ImageFolder tree ``root/<class>/<image>``.

    Classes are the sub-directory names in sorted order, as ``torchvision.datasets.ImageFolder``
    numbers them; files are sorted by name within each class. Links to directories are
    followed, but a directory is read once: a link back up the tree (a loop) or into another
    class's folder (which would label its images twice) is skipped. Only regular files are
    images: a FIFO, a socket or a device named ``*.png`` is skipped (reading it could block).
    """
    root = Path(root)
    if not root.is_dir():
        raise ProbeSetError(f"probe directory {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ProbeSetError(f"probe directory {root} has no class sub-directories; lay it out "
                            "as root/<class name>/<image files> (torchvision ImageFolder)")
    paths, labels, empty = [], [], []
    seen_dirs: set[str] = {os.path.realpath(root / name) for name in classes}
    for label, name in enumerate(classes):
        files = sorted(_class_files(root, root / name, seen_dirs))
        if not files:
            empty.append(name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if empty:
        raise ProbeSetError(
            f"class folder(s) {', '.join(map(repr, empty[:5]))} in {root} contain no image "
            f"({', '.join(IMAGE_SUFFIXES)}); remove them or add images")
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _class_files(root: Path, folder: Path, seen_dirs: set[str]) -> list[str]:
    """Image files under one class folder (relative to ``root``), see list_image_folder."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen_dirs:  # a loop, or another class's folder: read once only
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if not f.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = os.path.join(dirpath, f)
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:
                regular = True  # a dangling link: reported as unreadable when decoded
            if regular:
                out.append(str(Path(path).relative_to(root)))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """An RGB image. 16-bit grey levels (modes ``I;16*``, and ``I`` with values above 255) are
    scaled to 8 bits (Pillow's own conversion would clip them, turning most images white);
    floating-point images (mode ``F``, e.g. a float TIFF) with values in [0, 1] are scaled to
    0..255 (Pillow would truncate them to 0, a black image), others clipped to 0..255."""
    if img.mode == "F":
        levels = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        if levels.size and levels.max() <= 1.0 and levels.min() >= 0.0:
            levels = levels * 255.0
        grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        levels = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or levels.max(initial=0) > 255:
            levels = levels / 257.0
        grey = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def resize_crop_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top): the shorter side of a w x h image resized
    to ``size``, then the centred ``size`` x ``size`` crop (the probe's geometry, which
    concept masks follow too)."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def to_model_size(img: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3]: shorter side resized to ``size``, then centre-cropped."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    w, h = img.size
    if (w, h) != (size, size):
        nw, nh, left, top = resize_crop_geometry(w, h, size)
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


#: largest ratio of an image's long side to its short side: resizing the short side of a
#: 1 x 20,000,000 strip to the model's size would allocate billions of pixels
MAX_ASPECT = 50


def _read_image(path: Path, size: int) -> tuple[np.ndarray | None, str, str | None]:
    """(pixels or None, original mode, error message or None)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            w, h = img.size
            if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
                return None, mode, (f"an image of {w} x {h} pixels (sides in a ratio above "
                                    f"{MAX_ASPECT}:1 cannot be resized to a square)")
            img.load()
            return to_model_size(img, size), mode, None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        # DecompressionBombError: a file declaring more pixels than Pillow's safety limit
        return None, "", f"{e.__class__.__name__}: {e}"


def load_image_folder(root: str | Path, image_size: int, per_class: int | None = None,
                      fraction: float | None = None, seed: int = 0,
                      mean: Sequence[float] = (0.485, 0.456, 0.406),
                      std: Sequence[float] = (0.229, 0.224, 0.225),
                      skip_unreadable: bool = False, classes: list[str] | None = None,
                      out: np.ndarray | None = None, workers: int | None = None,
                      progress: Callable[[int], None] | None = None) -> ProbeSet:
    """Sample an ImageFolder directory into a :class:`ProbeSet`.

    Parameters
    ----------
    classes : the class list the labels must follow (for a held-out set, the probe set's
        classes); a class folder missing from ``root`` is allowed, an extra one is an error.
    out : optional preallocated uint8 array [n, size, size, 3] (e.g. a memory map); pass a
        callable via :func:`plan_image_folder` to learn n first.
    skip_unreadable : drop images that cannot be decoded (counted in ``info``) instead of
        failing with their path.
    """
    plan = plan_image_folder(root, per_class, fraction, seed, classes)
    return read_planned(plan, image_size, mean, std, skip_unreadable, out, workers, progress)


@dataclass
class FolderPlan:
    """Which files of an ImageFolder a probe set takes (before any image is decoded)."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    info: dict


def plan_image_folder(root: str | Path, per_class: int | None = None,
                      fraction: float | None = None, seed: int = 0,
                      classes: list[str] | None = None) -> FolderPlan:
    root = Path(root)
    found_classes, paths, labels = list_image_folder(root)
    if classes is not None:
        extra = [c for c in found_classes if c not in classes]
        if extra:
            raise ProbeSetError(f"{root} has class folder(s) {', '.join(extra[:5])} that the "
                                f"probe set does not have; classes are: {', '.join(classes)}")
        remap = np.array([classes.index(c) for c in found_classes], dtype=np.int64)
        labels = remap[labels]
    else:
        classes = found_classes
    keep = sample_per_class(labels, per_class, fraction, seed)
    info = {"source": str(root), "per_class": per_class, "fraction": fraction, "seed": seed,
            "n_available": len(paths)}
    return FolderPlan(root, list(classes), [paths[i] for i in keep], labels[keep], info)


def read_planned(plan: FolderPlan, image_size: int, mean, std, skip_unreadable: bool = False,
                 out: np.ndarray | None = None, workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> ProbeSet:
    n = len(plan.paths)
    images = out if out is not None else np.empty((n, image_size, image_size, 3), np.uint8)
    ok = np.ones(n, dtype=bool)
    converted: dict[str, int] = {}
    errors: list[str] = []
    workers = workers or min(8, (os.cpu_count() or 2) * 2)

    def work(i: int):
        return i, _read_image(plan.root / plan.paths[i], image_size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (pixels, mode, error) in pool.map(work, range(n), chunksize=64):
            if error is not None:
                if not skip_unreadable:
                    raise ProbeSetError(
                        f"cannot read image {plan.root / plan.paths[i]} ({error}); fix or "
                        "remove it, or set skip_unreadable = true to skip such images")
                ok[i] = False
                errors.append(plan.paths[i])
            else:
                images[i] = pixels
                if mode != "RGB":
                    converted[mode] = converted.get(mode, 0) + 1
            if progress is not None:
                progress(1)
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise ProbeSetError(f"no readable image in {plan.root}")
    if len(keep) < n:
        images = images[keep] if out is None else _compact(images, keep)
    info = dict(plan.info, n_skipped=int(n - len(keep)), skipped=errors[:20],
                converted_modes=converted, image_size=image_size)
    labels = plan.labels[keep]
    empty = [plan.classes[c] for c in np.unique(plan.labels) if not (labels == c).any()]
    if empty:
        raise ProbeSetError(f"class(es) {', '.join(empty[:5])} of {plan.root} have no readable "
                            "image left")
    return ProbeSet(images, labels, [plan.paths[i] for i in keep], plan.classes,
                    tuple(mean), tuple(std), info)


def _compact(images: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Move the kept rows of a preallocated array to the front; returns the prefix view."""
    for dst, src in enumerate(keep):
        if dst != src:
            images[dst] = images[src]
    return images[: len(keep)]


def from_dataset(dataset, image_size: int, classes: Sequence[str] | None = None,
                 per_class: int | None = None, fraction: float | None = None, seed: int = 0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> ProbeSet:
    """A probe set from any map-style dataset returning ``(image, label)``.

    The image may be a PIL image, a uint8 array/tensor [H, W, 3], or a float tensor
    [3, H, W] with values in [0, 1] (un-normalised: ConceptEvo applies ``mean``/``std``).
    Labels are read from ``dataset.targets`` when present (no image is decoded to sample).
    """
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    labels_all = np.asarray(targets, dtype=np.int64)
    keep = sample_per_class(labels_all, per_class, fraction, seed)
    if classes is None:
        classes = getattr(dataset, "classes", None) or \
            [str(c) for c in range(int(labels_all.max()) + 1)]
    images = np.empty((len(keep), image_size, image_size, 3), dtype=np.uint8)
    for row, i in enumerate(keep):
        images[row] = _to_pixels(dataset[int(i)][0], image_size, i)
    return ProbeSet(images, labels_all[keep], [f"#{i}" for i in keep], list(classes),
                    tuple(mean), tuple(std), {"source": type(dataset).__name__,
                                              "per_class": per_class, "fraction": fraction,
                                              "seed": seed, "image_size": image_size})


def _to_pixels(item, size: int, index: int) -> np.ndarray:
    if isinstance(item, Image.Image):
        return to_model_size(item, size)
    arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ProbeSetError(f"dataset item {index} has shape {arr.shape}; expected an image "
                            "[3, H, W], [H, W, 3] or [H, W]")
    if arr.dtype != np.uint8:
        if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
            raise ProbeSetError(
                f"dataset item {index} has values in [{arr.min():.2f}, {arr.max():.2f}]; give "
                "un-normalised images in [0, 1] (ConceptEvo applies mean/std itself)")
        arr = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return to_model_size(Image.fromarray(arr), size)
