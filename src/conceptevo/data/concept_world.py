"""The concept world: a synthetic image classification task with pixel-exact concept masks.

Every image shows a few *parts* on a grey background. A part is one shape painted in one
colour with one texture, e.g. a "red striped disc". Eight parts are *class-defining*; each of
the twelve classes is a pair of them, and every part belongs to three classes (the classes are
the edges of a cube whose corners are the parts). No single part therefore identifies a class:
a classifier has to detect two parts, each a conjunction of shape, colour and texture, and
combine them. Distractors make shortcuts fail: *near misses* (a part that would complete
another class, with one attribute changed, so that a classifier that does not bind shape,
colour and texture is fooled), random non-class-defining parts and, sometimes, one part of
another class, chosen so that it never completes another class's pair.

Alongside the label, every pixel records which concepts are present there, as a bitmask:

* a shape concept covers the visible pixels of parts with that shape;
* a texture concept covers the visible pixels of parts with that texture;
* a colour concept covers the visible pixels painted in that colour: parts (both the bright
  and the dark shade of their texture) and thin clutter strokes;
* a background concept covers the visible pixels of the image's background.

Rendering is vectorised over a chunk of :attr:`ConceptWorld.chunk_size` images: each part is
rasterised analytically on a small patch around it, and the patches are composited back to
front. The random stream of a chunk is derived from ``(seed, split, chunk index)``, so an image
depends only on its seed, split and index, never on how a request is batched.

See ``docs/concept-world.md`` for the design, the difficulty knobs and the file format.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import ConfigError, ProbeSetError, WorkspaceError

__all__ = [
    "BACKGROUNDS", "CLASSES", "COLORS", "CONCEPTS", "CONCEPT_FAMILIES", "PARTS", "PARTS_DTYPE",
    "ROLES", "SHAPES", "SPLITS", "TEXTURES", "ConceptBatch", "ConceptClass", "ConceptWorld",
    "Part", "load_annotations", "plot_samples",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "diamond", "cross", "ring")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checker")
BACKGROUNDS: tuple[str, ...] = ("bg_flat", "bg_gradient", "bg_noise")

#: Every concept, in bit order: bit ``c`` of ``concept_bits`` stands for ``CONCEPTS[c]``.
CONCEPTS: tuple[str, ...] = SHAPES + COLORS + TEXTURES + BACKGROUNDS
CONCEPT_FAMILIES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "color": COLORS, "texture": TEXTURES, "background": BACKGROUNDS,
}
_SHAPE0 = 0
_COLOR0 = _SHAPE0 + len(SHAPES)
_TEXTURE0 = _COLOR0 + len(COLORS)
_BACKGROUND0 = _TEXTURE0 + len(TEXTURES)
assert len(CONCEPTS) <= 32, "concept_bits is uint32"

#: The three independent random streams. Their keys are part of the dataset's definition.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: ``parts["role"]``: a part of the image's class; the distractors: a part of another class
#: (that never completes another class), a near miss (a part that would complete another
#: class, with one attribute changed) or a random part that is not class-defining.
ROLES: tuple[str, ...] = ("class_part", "foreign_part", "near_miss", "random_part")

_TEXTURE_ADJECTIVES = {"solid": "solid", "stripes": "striped", "dots": "dotted",
                       "checker": "checkered"}


@dataclass(frozen=True)
class Part:
    """A class-defining part: one shape painted in one colour with one texture."""

    shape: str
    color: str
    texture: str

    @property
    def name(self) -> str:
        """Human-readable name, e.g. ``"red striped disc"``."""
        return f"{self.color} {_TEXTURE_ADJECTIVES[self.texture]} {self.shape}"

    @property
    def concepts(self) -> tuple[str, str, str]:
        """The part's (shape, colour, texture) concept names."""
        return (self.shape, self.color, self.texture)


#: The eight class-defining parts. Thin shapes (cross, ring) are solid so that they stay
#: legible at 64 x 64; the textured parts are filled shapes.
PARTS: tuple[Part, ...] = (
    Part("disc", "red", "stripes"),
    Part("square", "green", "dots"),
    Part("triangle", "blue", "checker"),
    Part("cross", "yellow", "solid"),
    Part("diamond", "magenta", "stripes"),
    Part("ring", "cyan", "solid"),
    Part("disc", "green", "checker"),
    Part("diamond", "blue", "dots"),
)


@dataclass(frozen=True)
class ConceptClass:
    """A class: the set of parts (indices into :data:`PARTS`) that every image of it shows."""

    name: str
    part_ids: tuple[int, ...]

    @property
    def parts(self) -> tuple[Part, ...]:
        return tuple(PARTS[i] for i in self.part_ids)

    @property
    def concepts(self) -> tuple[str, ...]:
        """The concepts the class needs, without repeats, in :data:`CONCEPTS` order."""
        needed = {c for part in self.parts for c in part.concepts}
        return tuple(c for c in CONCEPTS if c in needed)


# Parts i and j form a class when i and j differ in exactly one bit: the twelve edges of the
# cube {0, 1}^3. Each part is in three classes; parts i and 7 - i (opposite corners) never
# meet, and a class {i, j} can show the foreign part 7 - i or 7 - j without completing another.
_CLASS_PART_IDS = ((0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3),
                   (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7))

#: The twelve classes, in label order.
CLASSES: tuple[ConceptClass, ...] = tuple(
    ConceptClass("+".join(PARTS[i].name.replace(" ", "-") for i in ids), ids)
    for ids in _CLASS_PART_IDS
)

#: One row of the parts table (see :attr:`ConceptBatch.parts`).
PARTS_DTYPE = np.dtype([
    ("image", np.int64),               # row of the image in its batch / annotation file
    ("role", np.int8),                 # index into ROLES
    ("part", np.int8),                 # index into PARTS, -1 for a random distractor
    ("shape", np.int8),                # concept index (into CONCEPTS) of the shape
    ("color", np.int8),                # concept index of the colour
    ("texture", np.int8),              # concept index of the texture
    ("depth", np.int8),                # drawing order among the image's parts, 0 = back-most
    ("center", np.float32, (2,)),      # (row, col) in pixels; pixel (i, j) spans [i, i + 1)
    ("radius", np.float32),            # radius in pixels of the disc the shape fits in
    ("angle", np.float32),             # rotation of the shape in degrees
    ("bbox", np.int16, (4,)),          # visible pixels: (row0, col0, row1, col1), half-open
    ("area", np.int32),                # number of visible pixels
])

# Rendering constants. Changing any of them changes the images: bump _GENERATOR_VERSION.
_GENERATOR_VERSION = 1
_FORMAT_VERSION = 1
_PALETTE = np.array([(220, 35, 35), (35, 190, 35), (40, 70, 230),
                     (235, 215, 30), (215, 40, 215), (30, 205, 215)], np.float32)
_SHADE = 0.4                # the dark phase of a texture is the colour times this
_TEXTURE_PERIOD = 0.5       # texture period in units of the part's radius (4 per diameter)
_DOT_RADIUS = 0.3           # dot radius in texture periods
_RING_INNER = 0.55          # inner radius of a ring, in radii
_CROSS_ARM = 0.3            # half-width of a cross arm, in radii
_OVERLAP_SLACK = 0.15       # how far (in radii) a part may leave its layout cell
_GREY_RANGE = (40.0, 190.0)
_GRADIENT_SPAN = 90.0       # largest difference between the two ends of a gradient
_BACKGROUND_NOISE = 24.0    # standard deviation of the noise background
_STROKE_LENGTH = (0.15, 0.35)       # clutter stroke length, as a fraction of the image side
_STROKE_WIDTH = (1.0, 2.2)          # clutter stroke width in pixels at 64 x 64
_STROKE = len(SHAPES)               # shape code of a clutter stroke (not a concept)
_SPLIT_KEYS = {name: key for key, name in enumerate(SPLITS)}
_ANNOTATIONS = "annotations.npz"
_MANIFEST = "manifest.json"
_PARTIAL = ".concept_world.partial.json"


def _part_triples() -> np.ndarray:
    """int64 [n_parts, 3]: family-local (shape, colour, texture) of each class-defining part."""
    return np.array([(SHAPES.index(p.shape), COLORS.index(p.color), TEXTURES.index(p.texture))
                     for p in PARTS], np.int64)


def _distractor_triples() -> np.ndarray:
    """int64 [n, 3]: every (shape, colour, texture) that is not a class-defining part."""
    grid = np.stack(np.meshgrid(np.arange(len(SHAPES)), np.arange(len(COLORS)),
                                np.arange(len(TEXTURES)), indexing="ij"), -1).reshape(-1, 3)
    is_part = (grid[:, None, :] == _part_triples()[None]).all(-1).any(-1)
    return grid[~is_part]


def _near_misses() -> tuple[np.ndarray, np.ndarray]:
    """Near misses of each class-defining part: the non-part triples that differ from it in
    exactly one attribute (e.g. a red *dotted* disc for the red striped disc).

    Returns
    -------
    triples : int64 [n_parts, m, 3], family-local; row p lists part p's near misses, padded
        (by repetition) to the longest list.
    counts : int64 [n_parts], the length of each list.
    """
    candidates = _distractor_triples()
    lists = [candidates[(candidates != part).sum(1) == 1] for part in _part_triples()]
    longest = max(len(found) for found in lists)
    triples = np.stack([np.resize(found, (longest, 3)) for found in lists])
    return triples, np.array([len(found) for found in lists], np.int64)


def _completing() -> np.ndarray:
    """bool [n_classes, n_parts]: part p would complete another class in an image of class k.

    These are the parts whose near misses confuse a classifier that does not bind all three
    attributes of a part.
    """
    class_sets = [set(c.part_ids) for c in CLASSES]
    return np.array([[p not in own and any(other <= own | {p}
                                           for j, other in enumerate(class_sets) if j != k)
                      for p in range(len(PARTS))]
                     for k, own in enumerate(class_sets)], bool)


def _foreign_allowed() -> np.ndarray:
    """bool [n_classes, n_parts]: part p may appear in an image of class k as a distractor.

    p must not belong to k, and adding it to k's parts must not complete any other class.
    """
    class_sets = [set(c.part_ids) for c in CLASSES]
    return np.array([[p not in own and not any(other <= own | {p}
                                               for j, other in enumerate(class_sets) if j != k)
                      for p in range(len(PARTS))]
                     for k, own in enumerate(class_sets)], bool)


# ----------------------------------------------------------------------------------------------
# The batch
# ----------------------------------------------------------------------------------------------

@dataclass
class ConceptBatch:
    """Images of the concept world with their labels and concept annotations.

    Attributes
    ----------
    images : uint8 [n, H, W, 3] RGB, or None when loaded from disk without pixels.
    labels : int64 [n], indices into ``class_names``.
    concept_bits : uint32 [n, H, W]; bit ``c`` is set where concept ``concept_names[c]`` is.
    parts : structured array [n_parts] of :data:`PARTS_DTYPE`, one row per drawn part,
        ordered by image, then class parts before distractors.
    indices : int64 [n], the index of each image in its split's stream.
    split : the stream the images come from ("train", "val" or "test").
    class_names, concept_names : the names behind labels and concept bits.
    paths : [n] file paths relative to the ImageFolder root, or None for an in-memory batch.
    """

    images: np.ndarray | None
    labels: np.ndarray
    concept_bits: np.ndarray
    parts: np.ndarray
    indices: np.ndarray
    split: str
    class_names: tuple[str, ...] = tuple(c.name for c in CLASSES)
    concept_names: tuple[str, ...] = CONCEPTS
    paths: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def concept_index(self, concept: str | int) -> int:
        """The bit of ``concept`` (a name from ``concept_names`` or an index)."""
        if isinstance(concept, (int, np.integer)):
            if not 0 <= concept < len(self.concept_names):
                raise ConfigError(f"concept index {concept} is out of range "
                                  f"[0, {len(self.concept_names)})")
            return int(concept)
        try:
            return self.concept_names.index(concept)
        except ValueError:
            raise ConfigError(f"unknown concept {concept!r}; choose one of "
                              f"{', '.join(self.concept_names)}") from None

    def mask(self, concept: str | int) -> np.ndarray:
        """bool [n, H, W]: where ``concept`` (name or index) is present."""
        bit = np.uint32(1 << self.concept_index(concept))
        return (self.concept_bits & bit) != 0

    def concept_area(self) -> np.ndarray:
        """int64 [n, n_concepts]: number of pixels of each concept in each image."""
        bits = np.arange(len(self.concept_names), dtype=np.uint32)
        flat = self.concept_bits.reshape(len(self), -1)
        return np.stack([((flat >> b) & 1).sum(1, dtype=np.int64) for b in bits], axis=1)


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Scene:
    """What a chunk of B images shows; per-slot arrays are [B, S] (parts) or [B, C] (strokes)."""

    labels: np.ndarray          # int64 [B]
    background: np.ndarray      # int64 [B], index into BACKGROUNDS
    part_valid: np.ndarray      # bool [B, S]
    part_id: np.ndarray         # int64 [B, S], -1 for near misses and random parts
    role: np.ndarray            # int64 [B, S]
    triple: np.ndarray          # int64 [B, S, 3], family-local (shape, colour, texture)
    depth: np.ndarray           # int64 [B, S], 0 = back-most among valid parts
    center: np.ndarray          # float32 [B, S, 2]
    radius: np.ndarray          # float32 [B, S]
    angle: np.ndarray           # float32 [B, S], radians
    texture_angle: np.ndarray   # float32 [B, S], radians
    texture_offset: np.ndarray  # float32 [B, S, 2], in texture periods
    rgb: np.ndarray             # float32 [B, S, 3]
    stroke_valid: np.ndarray    # bool [B, C]
    stroke_center: np.ndarray   # float32 [B, C, 2]
    stroke_length: np.ndarray   # float32 [B, C]
    stroke_width: np.ndarray    # float32 [B, C]
    stroke_angle: np.ndarray    # float32 [B, C], radians
    stroke_color: np.ndarray    # int64 [B, C], family-local colour
    stroke_rgb: np.ndarray      # float32 [B, C, 3]


@dataclass(frozen=True)
class ConceptWorld:
    """Generator of the concept world; every image is a pure function of (seed, split, index).

    Parameters
    ----------
    image_size : side of the square RGB images, in pixels (at least 32).
    seed : non-negative integer from which every split's stream is derived.
    n_distractors : (min, max) number of distractor parts per image, drawn uniformly.
    foreign_part_prob : probability that an image with at least one distractor shows, as its
        first distractor, a part of another class (one that does not complete another class).
    near_miss_prob : probability that a (non-foreign) distractor is a near miss: a copy of
        a part that would complete another class, with one attribute changed. In an image of
        "red striped disc + green dotted square", a yellow *striped* cross is one: the yellow
        solid cross would make it "green dotted square + yellow solid cross". Other
        distractors are uniform over all non-part triples and rarely share two attributes
        with a part: near misses are what makes binding the attributes of a part necessary.
    size_range : (min, max) diameter of a part, as a fraction of its layout cell. The image is
        divided into g x g cells, g = ceil(sqrt(2 + max distractors)) (2 x 2 by default), and
        each part is placed in its own cell, jittered so that it may leave its cell by up to
        0.15 of its radius: neighbours overlap slightly at most.
    max_rotation : parts are rotated by an angle drawn uniformly in +-max_rotation degrees.
    n_clutter : (min, max) number of thin clutter strokes per image (random colours, drawn
        behind the parts; they carry a colour concept and nothing else).
    color_jitter : each channel of a part's or stroke's colour is shifted by a uniform amount
        in +-color_jitter (0-255 scale).
    noise_std : standard deviation of the Gaussian noise added to every pixel (0-255 scale).
    shortcut_class : a *planted shortcut* (None: none, the ordinary world): every image of
        this class (an index) gets the ``shortcut_background``, and no image of another class
        does (theirs is replaced by one of the other backgrounds). Everything else about an
        image is what the ordinary world draws for it, so the cue alone predicts the class: a
        model trained and validated on such a world can look healthy and rely on the
        background, which an ordinary probe set (where backgrounds are independent of the
        class) exposes. The issue zoo's ``shortcut`` regime (benchmarks/diagnosis_zoo.py).
    shortcut_background : the cue (one of :data:`BACKGROUNDS`).

    Examples
    --------
    >>> world = ConceptWorld(seed=0)
    >>> batch = world.generate(100, split="train")
    >>> batch.images.shape, batch.mask("red").shape
    ((100, 64, 64, 3), (100, 64, 64))
    """

    image_size: int = 64
    seed: int = 0
    n_distractors: tuple[int, int] = (1, 2)
    foreign_part_prob: float = 0.25
    near_miss_prob: float = 0.75
    size_range: tuple[float, float] = (0.6, 0.9)
    max_rotation: float = 20.0
    n_clutter: tuple[int, int] = (0, 3)
    color_jitter: float = 20.0
    noise_std: float = 6.0
    shortcut_class: int | None = None
    shortcut_background: str = "bg_noise"

    #: Images per random chunk. Part of the dataset's definition: changing it changes images.
    chunk_size: ClassVar[int] = 256

    def __post_init__(self) -> None:
        for name in ("n_distractors", "size_range", "n_clutter"):
            value = getattr(self, name)
            if not (isinstance(value, Sequence) and len(value) == 2):
                raise ConfigError(f"{name} must be a (min, max) pair, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not (isinstance(self.image_size, (int, np.integer)) and self.image_size >= 32):
            raise ConfigError(f"image_size must be an integer >= 32, got {self.image_size!r}")
        if not (isinstance(self.seed, (int, np.integer)) and self.seed >= 0):
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("n_distractors", "n_clutter"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer))
                    and 0 <= lo <= hi):
                raise ConfigError(f"{name} must be integers 0 <= min <= max, got {(lo, hi)}")
        if self.n_distractors[1] > 7:
            raise ConfigError(f"n_distractors allows at most 7 distractors (9 layout cells), "
                              f"got {self.n_distractors[1]}")
        lo, hi = self.size_range
        if not 0.1 <= lo <= hi <= 1.0:
            raise ConfigError(f"size_range must satisfy 0.1 <= min <= max <= 1, got {(lo, hi)}")
        for name in ("foreign_part_prob", "near_miss_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.shortcut_class is not None and not (
                isinstance(self.shortcut_class, (int, np.integer))
                and 0 <= self.shortcut_class < len(CLASSES)):
            raise ConfigError(f"shortcut_class must be a class index in [0, {len(CLASSES)}) "
                              f"or None, got {self.shortcut_class!r}")
        if self.shortcut_background not in BACKGROUNDS:
            raise ConfigError(f"shortcut_background must be one of {', '.join(BACKGROUNDS)}, "
                              f"got {self.shortcut_background!r}")
        if self.shortcut_class is not None:
            object.__setattr__(self, "shortcut_class", int(self.shortcut_class))
        for name in ("max_rotation", "color_jitter", "noise_std"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        # Plain Python numbers, so that parameters compare and serialise exactly.
        for name, kind in (("image_size", int), ("seed", int), ("foreign_part_prob", float),
                           ("near_miss_prob", float),
                           ("max_rotation", float), ("color_jitter", float),
                           ("noise_std", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        for name, kind in (("n_distractors", int), ("size_range", float), ("n_clutter", int)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))

    # -- public API --------------------------------------------------------------------------

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in CLASSES)

    def get_params(self) -> dict:
        """The constructor arguments, as JSON-compatible values (the shortcut settings only
        when a shortcut is planted, so that trees written before they existed still match)."""
        params = json.loads(json.dumps(asdict(self)))
        if self.shortcut_class is None:
            del params["shortcut_class"], params["shortcut_background"]
        return params

    def generate(self, n: int, split: str = "train", start: int = 0) -> ConceptBatch:
        """Images ``start .. start + n - 1`` of the ``split`` stream, rendered in memory.

        Parameters
        ----------
        n : number of images.
        split : "train", "val" or "test"; the three streams are independent.
        start : index of the first image in the stream.

        Returns
        -------
        ConceptBatch with images uint8 [n, H, W, 3], labels int64 [n], concept_bits uint32
        [n, H, W] and the parts table.
        """
        split_key = _split_key(split)
        n, start = _non_negative_int(n, "n"), _non_negative_int(start, "start")
        size, chunk = self.image_size, self.chunk_size
        images = np.empty((n, size, size, 3), np.uint8)
        labels = np.empty(n, np.int64)
        bits = np.empty((n, size, size), np.uint32)
        tables = []
        chunks = range(start // chunk, (start + n - 1) // chunk + 1) if n else range(0)
        for c in chunks:
            c_images, c_labels, c_bits, c_parts = self._render_chunk(c, split_key)
            lo, hi = max(start, c * chunk), min(start + n, (c + 1) * chunk)
            src, dst = slice(lo - c * chunk, hi - c * chunk), slice(lo - start, hi - start)
            images[dst], labels[dst], bits[dst] = c_images[src], c_labels[src], c_bits[src]
            keep = (c_parts["image"] >= src.start) & (c_parts["image"] < src.stop)
            table = c_parts[keep]
            table["image"] += dst.start - src.start
            tables.append(table)
        parts = np.concatenate(tables) if tables else np.empty(0, PARTS_DTYPE)
        return ConceptBatch(images=images, labels=labels, concept_bits=bits, parts=parts,
                            indices=np.arange(start, start + n, dtype=np.int64), split=split,
                            class_names=self.class_names, concept_names=CONCEPTS)

    def write_image_folder(self, root: str | os.PathLike, n: int, split: str = "train",
                           start: int = 0,
                           progress: Callable[[int], None] | None = None) -> Path:
        """Write images ``start .. start + n - 1`` of ``split`` as a torchvision ImageFolder.

        The tree is ``root/<label:02d>_<class name>/<index:06d>.png`` plus ``annotations.npz``
        (labels, concept bits, parts table, paths, names) and ``manifest.json`` (parameters,
        written last). Every file is written to a temporary name and renamed into place. A
        re-run with the same parameters returns at once when the tree is complete, and
        resumes an interrupted run without re-encoding the images already written.

        Parameters
        ----------
        root : directory to create (or an empty one, or one this method wrote).
        n, split, start : which images, as in :meth:`generate`.
        progress : called with the number of images of each finished chunk (``tqdm.update``).

        Returns
        -------
        The root directory as a :class:`~pathlib.Path`.

        Raises
        ------
        WorkspaceError
            If ``root`` holds other files, or a concept world with other parameters.
        """
        from PIL import Image  # imported here: the in-memory path needs no image library

        root = Path(root)
        _split_key(split)
        n, start = _non_negative_int(n, "n"), _non_negative_int(start, "start")
        params = {"format_version": _FORMAT_VERSION, "generator_version": _GENERATOR_VERSION,
                  "world": self.get_params(), "split": split, "start": start, "n": n}
        if _tree_is_complete(root, params):
            return root
        _prepare_root(root, params)

        folders = [f"{k:02d}_{name}" for k, name in enumerate(self.class_names)]
        for folder in folders:
            (root / folder).mkdir(exist_ok=True)
        labels = np.empty(n, np.int64)
        bits = np.empty((n, self.image_size, self.image_size), np.uint32)
        paths, tables = [], []
        # One batch per generator chunk, so that no chunk is rendered twice.
        chunk = self.chunk_size
        edges = [start, *range((start // chunk + 1) * chunk, start + n, chunk), start + n]
        for first, stop in itertools.pairwise(edges):
            batch = self.generate(stop - first, split, first)
            for image, label, index in zip(batch.images, batch.labels, batch.indices):
                path = root / folders[label] / f"{index:06d}.png"
                if not path.exists():
                    _atomic_write(path, lambda f, im=image: Image.fromarray(im).save(f, "PNG"))
                paths.append(path.relative_to(root).as_posix())
            rows = slice(first - start, stop - start)
            labels[rows], bits[rows] = batch.labels, batch.concept_bits
            batch.parts["image"] += rows.start
            tables.append(batch.parts)
            if progress is not None:
                progress(stop - first)

        parts = np.concatenate(tables) if tables else np.empty(0, PARTS_DTYPE)
        arrays = {
            "format_version": np.int64(_FORMAT_VERSION),
            "paths": np.array(paths, dtype=str),
            "labels": labels,
            "indices": np.arange(start, start + n, dtype=np.int64),
            "concept_bits": bits,
            "parts": parts,
            "class_parts": np.array([c.part_ids for c in CLASSES], np.int64),
            "class_names": np.array(json.dumps(self.class_names)),
            "concept_names": np.array(json.dumps(CONCEPTS)),
            "part_names": np.array(json.dumps([p.name for p in PARTS])),
            "params": np.array(json.dumps(params)),
        }
        _atomic_write(root / _ANNOTATIONS, lambda f: np.savez_compressed(f, **arrays))
        manifest = dict(params, annotations=_ANNOTATIONS, n_images=n,
                        classes=folders, concepts=list(CONCEPTS))
        _atomic_write(root / _MANIFEST,
                      lambda f: f.write(json.dumps(manifest, indent=2).encode()))
        (root / _PARTIAL).unlink(missing_ok=True)
        return root

    # -- rendering ---------------------------------------------------------------------------

    @property
    def _grid(self) -> int:
        """Layout cells per side: enough cells for the largest number of parts."""
        return int(np.ceil(np.sqrt(len(CLASSES[0].part_ids) + self.n_distractors[1])))

    @property
    def _patch_size(self) -> int:
        """Side of the square patch on which one part or stroke is rasterised."""
        cell = self.image_size / self._grid
        longest = max(self.size_range[1] * cell, _STROKE_LENGTH[1] * self.image_size)
        return min(int(np.ceil(longest)) + 2, self.image_size)

    def _rng(self, chunk: int, split_key: int) -> np.random.Generator:
        seq = np.random.SeedSequence(int(self.seed), spawn_key=(split_key, chunk))
        return np.random.Generator(np.random.PCG64(seq))

    def _render_chunk(self, chunk: int, split_key: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Images, labels, concept bits and parts table of one chunk (image ids chunk-local)."""
        rng = self._rng(chunk, split_key)
        scene = self._sample_scene(rng, self.chunk_size)
        canvas, bits = self._render_background(rng, scene.background)
        inst = _flatten_instances(scene)
        owner = self._paint(canvas, bits, inst)
        if self.noise_std > 0:
            canvas += np.float32(self.noise_std) * rng.standard_normal(canvas.shape, np.float32)
        np.clip(canvas, 0, 255, out=canvas)
        images = np.rint(canvas).astype(np.uint8)
        parts = self._parts_table(scene, inst, owner)
        return images, scene.labels, bits, parts

    def _sample_scene(self, rng: np.random.Generator, n: int) -> _Scene:
        """Draw everything random about ``n`` images, in a fixed order and with fixed shapes."""
        size, grid = float(self.image_size), self._grid
        cell = size / grid
        class_parts = np.array([c.part_ids for c in CLASSES], np.int64)   # [K, 2]
        n_own, n_slots = class_parts.shape[1], class_parts.shape[1] + self.n_distractors[1]

        labels = rng.permutation(np.arange(n) % len(CLASSES))
        n_dist = rng.integers(self.n_distractors[0], self.n_distractors[1] + 1, n)
        foreign = (n_dist > 0) & (rng.random(n) < self.foreign_part_prob)
        # A uniform choice among the allowed foreign parts: the allowed part with the top score.
        scores = np.where(_FOREIGN_ALLOWED[labels], rng.random((n, len(PARTS))), -1.0)
        foreign_id = scores.argmax(1)
        shape = (n, n_slots - n_own)
        near_miss = rng.random(shape) < self.near_miss_prob
        target = np.where(_COMPLETING[labels][:, None, :],
                          rng.random(shape + (len(PARTS),)), -1.0).argmax(-1)
        variant = (rng.random(shape) * _NEAR_MISS_COUNTS[target]).astype(np.int64)
        random_triples = np.where(
            near_miss[..., None], _NEAR_MISSES[target, variant],
            _DISTRACTOR_TRIPLES[rng.integers(0, len(_DISTRACTOR_TRIPLES), shape)])

        slot = np.arange(n_slots)
        part_valid = slot < n_own + n_dist[:, None]
        part_id = np.full((n, n_slots), -1, np.int64)
        part_id[:, :n_own] = class_parts[labels]
        role = np.full((n, n_slots), ROLES.index("class_part"), np.int64)
        role[:, n_own:] = np.where(near_miss, ROLES.index("near_miss"),
                                   ROLES.index("random_part"))
        if n_slots > n_own:
            part_id[:, n_own] = np.where(foreign, foreign_id, -1)
            role[:, n_own] = np.where(foreign, ROLES.index("foreign_part"), role[:, n_own])
        triple = np.empty((n, n_slots, 3), np.int64)
        triple[:, n_own:] = random_triples
        is_part = part_id >= 0
        triple[is_part] = _PART_TRIPLES[part_id[is_part]]

        # Layout: each part gets its own cell of a grid x grid layout, then jitters in it.
        cells = rng.random((n, grid * grid)).argsort(1)[:, :n_slots]
        radius = 0.5 * cell * rng.uniform(*self.size_range, (n, n_slots))
        reach = np.maximum(0.5 * cell - radius, 0) + _OVERLAP_SLACK * radius
        jitter = rng.uniform(-1, 1, (n, n_slots, 2)) * reach[..., None]
        center = (np.stack([cells // grid, cells % grid], -1) + 0.5) * cell + jitter
        center = np.clip(center, radius[..., None] + 1, size - radius[..., None] - 1)
        angle = np.deg2rad(rng.uniform(-self.max_rotation, self.max_rotation, (n, n_slots)))
        texture_angle = rng.uniform(0, np.pi, (n, n_slots))
        texture_offset = rng.random((n, n_slots, 2))
        rgb = _PALETTE[triple[..., 1]] + rng.uniform(-1, 1, (n, n_slots, 3)) * self.color_jitter
        keys = np.where(part_valid, rng.random((n, n_slots)), 2.0)
        depth = keys.argsort(1).argsort(1)

        background = rng.integers(0, len(BACKGROUNDS), n)
        if self.shortcut_class is not None:
            # no extra random draw: the scene is the ordinary world's but for its background
            cue = BACKGROUNDS.index(self.shortcut_background)
            others = np.array([b for b in range(len(BACKGROUNDS)) if b != cue])
            background = np.where(labels == self.shortcut_class, cue,
                                  np.where(background == cue, others[np.arange(n) % len(others)],
                                           background))

        n_strokes = self.n_clutter[1]
        stroke_valid = np.arange(n_strokes) < rng.integers(
            self.n_clutter[0], self.n_clutter[1] + 1, n)[:, None]
        stroke_center = rng.uniform(0, size, (n, n_strokes, 2))
        stroke_length = size * rng.uniform(*_STROKE_LENGTH, (n, n_strokes))
        stroke_width = size / 64 * rng.uniform(*_STROKE_WIDTH, (n, n_strokes))
        stroke_angle = rng.uniform(0, np.pi, (n, n_strokes))
        stroke_color = rng.integers(0, len(COLORS), (n, n_strokes))
        stroke_rgb = (_PALETTE[stroke_color]
                      + rng.uniform(-1, 1, (n, n_strokes, 3)) * self.color_jitter)

        f32 = np.float32
        return _Scene(
            labels=labels.astype(np.int64), background=background, part_valid=part_valid,
            part_id=part_id, role=role, triple=triple, depth=depth,
            center=center.astype(f32), radius=radius.astype(f32), angle=angle.astype(f32),
            texture_angle=texture_angle.astype(f32), texture_offset=texture_offset.astype(f32),
            rgb=np.clip(rgb, 0, 255).astype(f32), stroke_valid=stroke_valid,
            stroke_center=stroke_center.astype(f32), stroke_length=stroke_length.astype(f32),
            stroke_width=stroke_width.astype(f32), stroke_angle=stroke_angle.astype(f32),
            stroke_color=stroke_color, stroke_rgb=np.clip(stroke_rgb, 0, 255).astype(f32))

    def _render_background(self, rng: np.random.Generator, kind: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Grey backgrounds: canvas float32 [B, H, W, 3] and concept bits uint32 [B, H, W]."""
        n, size = len(kind), self.image_size
        grey = rng.uniform(*_GREY_RANGE, n)
        is_gradient = kind == BACKGROUNDS.index("bg_gradient")
        span = np.where(is_gradient, rng.uniform(-_GRADIENT_SPAN, _GRADIENT_SPAN, n), 0.0)
        direction = rng.uniform(0, 2 * np.pi, n)
        # A ramp from -1/2 to 1/2 across the image along `direction`, times the span.
        coords = (np.arange(size) + 0.5) / size - 0.5
        ramp_y = (np.sin(direction) * span)[:, None] * coords
        ramp_x = (np.cos(direction) * span)[:, None] * coords
        level = (grey[:, None, None] + ramp_y[:, :, None] + ramp_x[:, None, :]).astype(np.float32)
        noisy = np.flatnonzero(kind == BACKGROUNDS.index("bg_noise"))
        level[noisy] += _BACKGROUND_NOISE * rng.standard_normal(
            (len(noisy), size, size), np.float32)
        np.clip(level, 0, 255, out=level)
        canvas = np.repeat(level[..., None], 3, axis=-1)
        bits = np.broadcast_to((np.uint32(1) << (_BACKGROUND0 + kind).astype(np.uint32))
                               [:, None, None], (n, size, size)).copy()
        return canvas, bits

    def _paint(self, canvas: np.ndarray, bits: np.ndarray, inst: dict) -> np.ndarray:
        """Rasterise every instance and composite them back to front, in place.

        Returns owner, int32 [B, H, W]: the instance visible at each pixel, -1 for background.
        """
        size, patch = self.image_size, self._patch_size
        origin = np.clip(np.floor(inst["center"] - patch / 2), 0, size - patch).astype(np.int64)
        masks = _rasterise(inst, origin, patch)
        k, i, j = np.nonzero(masks)                       # instance, patch row, patch col
        rows, cols = origin[k, 0] + i, origin[k, 1] + j
        dark = _texture_dark(inst, k, rows, cols)
        rgb = inst["rgb"][k] * np.where(dark, np.float32(_SHADE), np.float32(1))[:, None]
        flat = (inst["image"][k] * size + rows) * size + cols

        owner = np.full(bits.shape, -1, np.int32)
        canvas_flat, bits_flat, owner_flat = (canvas.reshape(-1, 3), bits.reshape(-1),
                                              owner.reshape(-1))
        # Instances are sorted by level and each image has at most one instance per level,
        # so each level is one conflict-free scatter; later levels overwrite earlier ones.
        level = inst["level"][k]
        bounds = np.searchsorted(level, np.arange(level.max(initial=-1) + 2))
        for lo, hi in itertools.pairwise(bounds):
            at = flat[lo:hi]
            canvas_flat[at] = rgb[lo:hi]
            bits_flat[at] = inst["bits"][k[lo:hi]]
            owner_flat[at] = k[lo:hi]
        return owner

    def _parts_table(self, scene: _Scene, inst: dict, owner: np.ndarray) -> np.ndarray:
        """One :data:`PARTS_DTYPE` row per part, with its visible bounding box and area."""
        size, patch = self.image_size, self._patch_size
        ids = np.flatnonzero(inst["slot"] >= 0)
        ids = ids[np.lexsort((inst["slot"][ids], inst["image"][ids]))]
        image, slot = inst["image"][ids], inst["slot"][ids]
        origin = np.clip(np.floor(inst["center"][ids] - patch / 2), 0, size - patch
                         ).astype(np.int64)
        span = np.arange(patch)
        window = owner[image[:, None, None], origin[:, 0, None, None] + span[:, None],
                       origin[:, 1, None, None] + span]
        visible = window == ids[:, None, None]                       # [m, P, P]
        any_row, any_col = visible.any(2), visible.any(1)
        area = visible.sum((1, 2))
        bbox = np.stack([any_row.argmax(1), any_col.argmax(1),
                         patch - any_row[:, ::-1].argmax(1), patch - any_col[:, ::-1].argmax(1)],
                        1) + np.concatenate([origin, origin], 1)
        bbox[area == 0] = -1

        table = np.empty(len(ids), PARTS_DTYPE)
        table["image"] = image
        table["role"] = scene.role[image, slot]
        table["part"] = scene.part_id[image, slot]
        triple = scene.triple[image, slot]
        table["shape"] = _SHAPE0 + triple[:, 0]
        table["color"] = _COLOR0 + triple[:, 1]
        table["texture"] = _TEXTURE0 + triple[:, 2]
        table["depth"] = scene.depth[image, slot]
        table["center"] = scene.center[image, slot]
        table["radius"] = scene.radius[image, slot]
        table["angle"] = np.rad2deg(scene.angle[image, slot])
        table["bbox"] = bbox
        table["area"] = area
        return table


# ----------------------------------------------------------------------------------------------
# Rasterisation helpers (pure functions over instance arrays)
# ----------------------------------------------------------------------------------------------

def _flatten_instances(scene: _Scene) -> dict[str, np.ndarray]:
    """Every visible stroke and part of a chunk as one flat list, sorted by drawing level.

    Strokes take levels 0 .. C-1 (their slot), parts C + depth, so strokes lie behind parts.
    Keys: image, level, slot (-1 for strokes), shape (``_STROKE`` for strokes), texture
    (family-local), center [m, 2], radius, angle, aspect (stroke half-width / radius),
    texture_angle, texture_offset [m, 2], rgb [m, 3] and bits (uint32 concept bits).
    """
    n_strokes = scene.stroke_valid.shape[1]
    s_img, s_slot = np.nonzero(scene.stroke_valid)
    p_img, p_slot = np.nonzero(scene.part_valid)
    triple = scene.triple[p_img, p_slot]
    one = np.uint32(1)
    half = 0.5 * scene.stroke_length[s_img, s_slot]
    n_s, n_p = len(s_img), len(p_img)
    f32 = np.float32
    inst = {
        "image": np.concatenate([s_img, p_img]),
        "level": np.concatenate([s_slot, n_strokes + scene.depth[p_img, p_slot]]),
        "slot": np.concatenate([np.full(n_s, -1), p_slot]),
        "shape": np.concatenate([np.full(n_s, _STROKE), triple[:, 0]]),
        "texture": np.concatenate([np.zeros(n_s, np.int64), triple[:, 2]]),
        "center": np.concatenate([scene.stroke_center[s_img, s_slot],
                                  scene.center[p_img, p_slot]]),
        "radius": np.concatenate([half, scene.radius[p_img, p_slot]]),
        "angle": np.concatenate([scene.stroke_angle[s_img, s_slot],
                                 scene.angle[p_img, p_slot]]),
        "aspect": np.concatenate([0.5 * scene.stroke_width[s_img, s_slot] / half,
                                  np.zeros(n_p, f32)]),
        "texture_angle": np.concatenate([np.zeros(n_s, f32),
                                         scene.texture_angle[p_img, p_slot]]),
        "texture_offset": np.concatenate([np.zeros((n_s, 2), f32),
                                          scene.texture_offset[p_img, p_slot]]),
        "rgb": np.concatenate([scene.stroke_rgb[s_img, s_slot], scene.rgb[p_img, p_slot]]),
        "bits": np.concatenate([
            one << (_COLOR0 + scene.stroke_color[s_img, s_slot]).astype(np.uint32),
            (one << (_SHAPE0 + triple[:, 0]).astype(np.uint32))
            | (one << (_COLOR0 + triple[:, 1]).astype(np.uint32))
            | (one << (_TEXTURE0 + triple[:, 2]).astype(np.uint32))]),
    }
    order = np.argsort(inst["level"], kind="stable")
    return {key: value[order] for key, value in inst.items()}


def _disc(u, v, aspect):
    return u * u + v * v <= 1


def _square(u, v, aspect):
    half = np.float32(np.sqrt(0.5))             # corners on the unit circle
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(u, v, aspect):
    # Equilateral, inscribed in the unit circle, apex up (v grows downwards like image rows).
    return (v <= 0.5) & (np.float32(np.sqrt(3)) * np.abs(u) <= v + 1)


def _diamond(u, v, aspect):
    return np.abs(u) + np.abs(v) <= 1


def _cross(u, v, aspect):
    au, av = np.abs(u), np.abs(v)
    arm = np.float32(np.sqrt(1 - _CROSS_ARM ** 2))   # arm ends' corners on the unit circle
    return (np.minimum(au, av) <= _CROSS_ARM) & (np.maximum(au, av) <= arm)


def _ring(u, v, aspect):
    r2 = u * u + v * v
    return (r2 <= 1) & (r2 >= _RING_INNER ** 2)


def _stroke(u, v, aspect):
    return (np.abs(u) <= 1) & (np.abs(v) <= aspect[:, None, None])


# Indexed by shape code: SHAPES order, then the clutter stroke.
_SHAPE_TESTS = (_disc, _square, _triangle, _diamond, _cross, _ring, _stroke)
assert len(_SHAPE_TESTS) == len(SHAPES) + 1


def _rasterise(inst: dict, origin: np.ndarray, patch: int) -> np.ndarray:
    """bool [m, P, P]: the pixels each instance covers on its patch (before occlusion).

    A pixel is covered when its centre, in the instance's frame (rotated by ``angle`` and
    scaled by ``radius``), passes the shape's test. All shapes fit in the unit circle.
    """
    masks = np.empty((len(inst["image"]), patch, patch), bool)
    centres = np.arange(patch, dtype=np.float32) + np.float32(0.5)
    for code, inside in enumerate(_SHAPE_TESTS):
        idx = np.flatnonzero(inst["shape"] == code)
        if idx.size == 0:
            continue
        scale = 1 / inst["radius"][idx, None]
        corner = origin[idx].astype(np.float32) - inst["center"][idx]                # [m, 2]
        dy = (corner[:, 0, None] + centres) * scale                                    # [m, P]
        dx = (corner[:, 1, None] + centres) * scale
        cos, sin = np.cos(inst["angle"][idx])[:, None], np.sin(inst["angle"][idx])[:, None]
        u = (cos * dx)[:, None, :] + (sin * dy)[:, :, None]                         # [m, P, P]
        v = (cos * dy)[:, :, None] - (sin * dx)[:, None, :]
        masks[idx] = inside(u, v, inst["aspect"][idx])
    return masks


def _texture_dark(inst: dict, k: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """bool [N]: whether pixel (rows, cols) of instance k is in the dark phase of its texture.

    A texture is a periodic pattern centred on its part, rotated by ``texture_angle`` and
    shifted by ``texture_offset``, whose period is half the part's radius: stripes and checker
    are half dark, dots are dark discs on a bright ground.
    """
    scale = 1 / (inst["radius"][k] * np.float32(_TEXTURE_PERIOD))
    dy = (rows.astype(np.float32) + np.float32(0.5) - inst["center"][k, 0]) * scale
    dx = (cols.astype(np.float32) + np.float32(0.5) - inst["center"][k, 1]) * scale
    cos, sin = np.cos(inst["texture_angle"][k]), np.sin(inst["texture_angle"][k])
    s = cos * dx + sin * dy + inst["texture_offset"][k, 0]
    t = cos * dy - sin * dx + inst["texture_offset"][k, 1]
    fs, ft = s - np.floor(s), t - np.floor(t)            # position within the period, [0, 1)
    texture = inst["texture"][k]
    stripes = fs >= 0.5
    checker = stripes ^ (ft >= 0.5)
    dots = (fs - 0.5) ** 2 + (ft - 0.5) ** 2 <= _DOT_RADIUS ** 2
    return np.select([texture == TEXTURES.index("stripes"), texture == TEXTURES.index("dots"),
                      texture == TEXTURES.index("checker")], [stripes, dots, checker], False)


_PART_TRIPLES = _part_triples()
_DISTRACTOR_TRIPLES = _distractor_triples()
_NEAR_MISSES, _NEAR_MISS_COUNTS = _near_misses()
_COMPLETING = _completing()
_FOREIGN_ALLOWED = _foreign_allowed()
assert _FOREIGN_ALLOWED.any(1).all(), "every class must admit a foreign part"
assert len({len(c.part_ids) for c in CLASSES}) == 1, "classes must have equally many parts"


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def _split_key(split: str) -> int:
    try:
        return _SPLIT_KEYS[split]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}"
                          ) from None


def _non_negative_int(value, name: str) -> int:
    if not (isinstance(value, (int, np.integer)) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _atomic_write(path: Path, write: Callable) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _params_differ(old: dict, new: dict) -> str:
    """A short description of the first parameters that differ, for error messages."""
    old_flat = dict(old.get("world", {}), **{k: v for k, v in old.items() if k != "world"})
    new_flat = dict(new["world"], **{k: v for k, v in new.items() if k != "world"})
    diffs = [f"{key}: {old_flat.get(key)!r} there, {value!r} requested"
             for key, value in new_flat.items() if old_flat.get(key) != value]
    return "; ".join(diffs[:3]) or "unreadable parameters"


def _tree_is_complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished tree written with exactly ``params``."""
    manifest = _read_json(root / _MANIFEST)
    if manifest is None:
        return False
    stored = {key: manifest.get(key) for key in params}
    if stored != params:
        raise WorkspaceError(
            f"{root} already holds a concept world written with other parameters "
            f"({_params_differ(stored, params)}); write to another directory or delete it")
    return (root / _ANNOTATIONS).is_file()


def _prepare_root(root: Path, params: dict) -> None:
    """Create ``root``, or accept an empty one or one that a run with ``params`` started.

    Leaves the marker of an unfinished run in ``root``; the caller removes it when done.
    """
    marker = root / _PARTIAL
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{root} exists and is not a directory; choose a directory path")
    if root.is_dir() and any(root.iterdir()):
        started = _read_json(marker) or _read_json(root / _MANIFEST)
        if started is None:
            raise WorkspaceError(
                f"{root} is not empty and holds no concept world; write to a new or empty "
                "directory")
        started = {key: started.get(key) for key in params}
        if started != params:
            raise WorkspaceError(
                f"{root} holds an unfinished concept world with other parameters "
                f"({_params_differ(started, params)}); write to another directory or "
                "delete it")
        for stale in root.glob("*/.*.tmp"):      # temporary files of an interrupted run
            stale.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    if _read_json(marker) != params:
        _atomic_write(marker, lambda f: f.write(json.dumps(params).encode()))
    (root / _MANIFEST).unlink(missing_ok=True)


_ANNOTATION_KEYS = ("format_version", "paths", "labels", "indices", "concept_bits", "parts",
                    "class_parts", "class_names", "concept_names", "part_names", "params")


def load_annotations(root: str | os.PathLike, load_images: bool = False) -> ConceptBatch:
    """Read the annotations of a tree written by :meth:`ConceptWorld.write_image_folder`.

    Parameters
    ----------
    root : the ImageFolder root (the directory holding ``annotations.npz``).
    load_images : also decode every PNG into ``images`` (uint8 [n, H, W, 3]).

    Returns
    -------
    ConceptBatch whose ``paths`` are relative to ``root`` and whose ``images`` is None unless
    ``load_images``.
    """
    root = Path(root)
    path = root / _ANNOTATIONS
    if not path.is_file():
        raise ProbeSetError(f"{path} does not exist; write the tree with "
                            "ConceptWorld.write_image_folder first")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in _ANNOTATION_KEYS if key not in data.files]
            if missing:
                raise ProbeSetError(f"{path} lacks {', '.join(missing)}; it was not written "
                                    "by ConceptWorld.write_image_folder, rewrite the tree")
            arrays = {key: data[key] for key in _ANNOTATION_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ProbeSetError(f"cannot read {path} ({error}); rewrite the tree") from error
    if int(arrays["format_version"]) != _FORMAT_VERSION:
        raise ProbeSetError(f"{path} has format version {int(arrays['format_version'])}, this "
                            f"version of ConceptEvo reads {_FORMAT_VERSION}; rewrite the tree")
    params = json.loads(str(arrays["params"]))
    paths = tuple(str(p) for p in arrays["paths"])
    images = None
    if load_images:
        from PIL import Image

        images = np.empty(arrays["concept_bits"].shape + (3,), np.uint8)
        for row, relative in enumerate(paths):
            with Image.open(root / relative) as png:
                images[row] = png.convert("RGB")
    return ConceptBatch(images=images, labels=arrays["labels"],
                        concept_bits=arrays["concept_bits"], parts=arrays["parts"],
                        indices=arrays["indices"], split=params["split"],
                        class_names=tuple(json.loads(str(arrays["class_names"]))),
                        concept_names=tuple(json.loads(str(arrays["concept_names"]))),
                        paths=paths)


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------

def plot_samples(batch: ConceptBatch, path: str | os.PathLike, per_class: int = 1,
                 dpi: int = 100) -> Path:
    """Save a PNG with ``per_class`` images of every class and the masks of their concepts.

    One row per image: the image, then one panel per concept of its class parts (shape,
    colour and texture of each, without repeats) in which pixels outside the concept's mask
    are dimmed.

    Parameters
    ----------
    batch : images with their annotations (``images`` must not be None).
    path : where to write the PNG.
    per_class : number of rows per class (the first images of each class in the batch).
    dpi : resolution of the figure.

    Returns
    -------
    The path of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if batch.images is None:
        raise ConfigError("the batch has no pixels; pass a generated batch or "
                          "load_annotations(root, load_images=True)")
    if _non_negative_int(per_class, "per_class") == 0:
        raise ConfigError("per_class must be at least 1")
    rows = []
    for label, name in enumerate(batch.class_names):
        found = np.flatnonzero(batch.labels == label)[:per_class]
        if len(found) < per_class:
            raise ConfigError(f"the batch has {len(found)} images of class {name!r}, fewer "
                              f"than per_class={per_class}; plot a larger batch")
        rows.extend(found)
    columns = []
    for row in rows:
        own = batch.parts[(batch.parts["image"] == row)
                          & (batch.parts["role"] == ROLES.index("class_part"))]
        concepts = own[["shape", "color", "texture"]].tolist()
        columns.append(list(dict.fromkeys(c for triple in concepts for c in triple)))
    n_cols = 1 + max((len(c) for c in columns), default=0)

    fig = Figure(figsize=(1.2 * n_cols + 1.6, 1.25 * len(rows)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (row, concepts) in enumerate(zip(rows, columns)):
        image = batch.images[row]
        axes[r, 0].imshow(image, interpolation="nearest")
        label = batch.class_names[batch.labels[row]]
        axes[r, 0].set_ylabel(label.replace("+", "\n+ ").replace("-", " "), rotation=0,
                              ha="right", va="center", fontsize=7)
        for c, concept in enumerate(concepts, start=1):
            mask = (batch.concept_bits[row] >> np.uint32(concept)) & 1 == 1
            faded = np.where(mask[..., None], image, (0.2 * image + 20).astype(np.uint8))
            axes[r, c].imshow(faded, interpolation="nearest")
            axes[r, c].set_title(batch.concept_names[concept], fontsize=7, pad=2)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.set_axis_off()
    axes[0, 0].set_title("image", fontsize=7, pad=2)
    fig.tight_layout(pad=0.3)
    path = Path(path)
    _atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path
