"""Tests of the concept world generator (conceptevo.data.concept_world).

Expected values are derived from the documented definitions (the part and class lists, the
shape geometry, the hue of each colour name), not from the generator's own bookkeeping.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from PIL import Image

from conceptevo.data.concept_world import (
    BACKGROUNDS,
    CLASSES,
    COLORS,
    CONCEPTS,
    PARTS,
    ROLES,
    SHAPES,
    TEXTURES,
    ConceptWorld,
    load_annotations,
    plot_samples,
)
from conceptevo.errors import ConfigError, ProbeSetError, WorkspaceError

# Hue (degrees) of each colour name, by its usual definition.
HUES = {"red": 0, "yellow": 60, "green": 120, "cyan": 180, "blue": 240, "magenta": 300}
# Area of each shape in units of radius^2, from the geometry documented in
# docs/concept-world.md (every shape fits in the disc of radius `radius`).
_ARM, _ARM_LENGTH = 0.3, np.sqrt(1 - 0.3 ** 2)
SHAPE_AREAS = {
    "disc": np.pi,
    "square": 2.0,
    "triangle": 3 * np.sqrt(3) / 4,
    "diamond": 2.0,
    "cross": 2 * (2 * _ARM) * (2 * _ARM_LENGTH) - (2 * _ARM) ** 2,
    "ring": np.pi * (1 - 0.55 ** 2),
}


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(seed=7)


@pytest.fixture(scope="module")
def batch(world):
    return world.generate(600, split="train", start=100)


def bit(name: str) -> np.uint32:
    return np.uint32(1 << CONCEPTS.index(name))


def family_mask(bits: np.ndarray, family: tuple[str, ...]) -> np.uint32:
    return np.uint32(sum(1 << CONCEPTS.index(name) for name in family))


def popcount(bits: np.ndarray) -> np.ndarray:
    return np.unpackbits(bits[..., None].view(np.uint8), axis=-1).sum(-1)


def part_id_of(shape: int, color: int, texture: int) -> int:
    """Index of the class-defining part with these concept indices, or -1."""
    names = (CONCEPTS[shape], CONCEPTS[color], CONCEPTS[texture])
    for i, part in enumerate(PARTS):
        if (part.shape, part.color, part.texture) == names:
            return i
    return -1


# -- vocabulary -------------------------------------------------------------------------------

def test_vocabulary_is_rich_enough_and_fits_in_uint32():
    assert len(SHAPES) >= 5 and len(COLORS) >= 6 and len(TEXTURES) >= 4
    assert len(CLASSES) >= 10
    assert len(CONCEPTS) == len(set(CONCEPTS)) <= 32
    assert len({c.name for c in CLASSES}) == len(CLASSES)


def test_every_part_is_shared_so_no_part_identifies_a_class():
    uses = np.zeros(len(PARTS), int)
    for cls in CLASSES:
        assert len(cls.part_ids) >= 2
        uses[list(cls.part_ids)] += 1
    assert (uses >= 2).all()
    part_sets = [frozenset(c.part_ids) for c in CLASSES]
    assert len(set(part_sets)) == len(part_sets)
    # No class's parts contain another class's parts (the label could not be unambiguous).
    assert not any(a < b for a in part_sets for b in part_sets)


# -- determinism ------------------------------------------------------------------------------

def assert_batches_equal(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.concept_bits, b.concept_bits)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.parts.tobytes() == b.parts.tobytes()


def test_same_seed_gives_identical_arrays(world, batch):
    assert_batches_equal(batch, ConceptWorld(seed=7).generate(600, split="train", start=100))


def test_images_do_not_depend_on_how_the_request_is_split(world, batch):
    # Cuts inside and across the generator's chunks.
    cuts = [100, 101, 250, 256, 257, 600, 700]
    pieces = [world.generate(hi - lo, "train", lo) for lo, hi in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate([p.images for p in pieces]), batch.images)
    np.testing.assert_array_equal(np.concatenate([p.labels for p in pieces]), batch.labels)
    np.testing.assert_array_equal(np.concatenate([p.concept_bits for p in pieces]),
                                  batch.concept_bits)
    np.testing.assert_array_equal(np.concatenate([p.indices for p in pieces]), batch.indices)
    tables = []
    for lo, piece in zip(cuts, pieces):
        table = piece.parts.copy()
        table["image"] += lo - cuts[0]
        tables.append(table)
    assert np.concatenate(tables).tobytes() == batch.parts.tobytes()


def test_seeds_and_splits_are_different_streams(world):
    train = world.generate(64, "train")
    others = [world.generate(64, "val"), world.generate(64, "test"),
              ConceptWorld(seed=8).generate(64, "train")]
    seen = {image.tobytes() for image in train.images}
    for other in others:
        assert not seen & {image.tobytes() for image in other.images}


def test_empty_request(world):
    empty = world.generate(0, "val", start=300)
    assert empty.images.shape == (0, 64, 64, 3) and len(empty.parts) == 0


# -- annotations ------------------------------------------------------------------------------

def test_shapes_and_dtypes(batch):
    n = len(batch)
    assert batch.images.shape == (n, 64, 64, 3) and batch.images.dtype == np.uint8
    assert batch.labels.shape == (n,) and batch.labels.dtype == np.int64
    assert batch.concept_bits.shape == (n, 64, 64) and batch.concept_bits.dtype == np.uint32
    assert batch.labels.min() >= 0 and batch.labels.max() < len(CLASSES)
    np.testing.assert_array_equal(batch.indices, np.arange(100, 700))


def test_each_image_shows_all_concepts_of_its_class(batch):
    present = np.bitwise_or.reduce(batch.concept_bits.reshape(len(batch), -1), axis=1)
    names = [{name for part in cls.parts for name in (part.shape, part.color, part.texture)}
             for cls in CLASSES]
    needed = np.array([sum(1 << CONCEPTS.index(name) for name in class_names)
                       for class_names in names], np.uint32)[batch.labels]
    missing = np.flatnonzero((present & needed) != needed)
    assert missing.size == 0, [CLASSES[batch.labels[row]].name for row in missing[:5]]


def test_every_pixel_has_one_concept_per_family(batch):
    bits = batch.concept_bits
    count = {name: popcount(bits & family_mask(bits, family))
             for name, family in [("shape", SHAPES), ("color", COLORS),
                                  ("texture", TEXTURES), ("background", BACKGROUNDS)]}
    assert all(c.max() <= 1 for c in count.values())
    background = count["background"] == 1
    part = count["shape"] == 1
    stroke = (count["color"] == 1) & ~part
    # Exactly one of: background, a part (shape, colour and texture), a clutter stroke (colour).
    assert (background.astype(int) + part + stroke == 1).all()
    assert (count["color"][part] == 1).all() and (count["texture"][part] == 1).all()
    assert (count["texture"][~part] == 0).all() and (count["color"][background] == 0).all()


def test_colour_masks_hold_pixels_of_that_hue(batch):
    hsv = rgb_to_hsv(batch.images.astype(float) / 255)
    names = list(HUES)
    centres = np.deg2rad([HUES[c] for c in names])
    angle = 2 * np.pi * hsv[..., 0]
    distance = np.abs(np.angle(np.exp(1j * (angle[..., None] - centres))))
    nearest = np.array(names)[distance.argmin(-1)]
    for color in COLORS:
        mask = batch.mask(color)
        assert mask.sum() > 1000
        agree = (nearest[mask] == color).mean()
        assert agree > 0.97, (color, agree)
    # Pixels outside every colour mask are grey: low chroma.
    pixels = batch.images.astype(int)
    chroma = pixels.max(-1) - pixels.min(-1)
    uncoloured = (batch.concept_bits & family_mask(batch.concept_bits, COLORS)) == 0
    assert np.quantile(chroma[uncoloured], 0.99) < 40
    assert np.quantile(chroma[~uncoloured], 0.01) > 40


def test_class_parts_are_whole_inside_the_image_with_their_shape_area():
    assert all(len({p.shape for p in c.parts}) == len(c.parts) for c in CLASSES)
    world = ConceptWorld(seed=3, n_distractors=(0, 0), n_clutter=(0, 0))
    batch = world.generate(300)
    bits = batch.concept_bits
    shape_bits = family_mask(bits, SHAPES)
    # No part touches the image border.
    border = np.concatenate([bits[:, 0], bits[:, -1], bits[:, :, 0], bits[:, :, -1]], axis=1)
    assert not (border & shape_bits).any()
    rows, cols = np.mgrid[:64, :64] + 0.5
    ratios = []
    for part in batch.parts:
        assert ROLES[part["role"]] == "class_part"
        cy, cx = part["center"]
        r = float(part["radius"])
        near = (rows - cy) ** 2 + (cols - cx) ** 2 <= (r + 1) ** 2
        own = (bits[part["image"]] & np.uint32(1 << part["shape"])) != 0
        # The two parts of a class have different shapes, so `own` is this part alone, and
        # it lies in the disc of radius `radius` (to within a pixel).
        assert not (own & ~near).any()
        pixels = own
        ratios.append(pixels.sum() / (SHAPE_AREAS[CONCEPTS[part["shape"]]] * r * r))
        y0, x0, y1, x1 = part["bbox"]
        ys, xs = np.nonzero(pixels)
        assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
        assert 0 < part["area"] <= pixels.sum()
    ratios = np.array(ratios)
    # Occlusion by the neighbouring part may hide a little; rasterisation is unbiased.
    assert ratios.min() > 0.75 and ratios.max() < 1.15, (ratios.min(), ratios.max())
    assert abs(np.median(ratios) - 1) < 0.05


def test_every_concept_is_reachable():
    batch = ConceptWorld(seed=11).generate(2000, "val")
    images_with = (batch.concept_area() > 0).sum(0)
    assert (images_with >= 20).all(), dict(zip(CONCEPTS, images_with))


def test_label_is_unambiguous_and_distractors_are_as_documented():
    # Many distractors of every kind: the hardest case for unambiguity.
    world = ConceptWorld(seed=9, n_distractors=(0, 3), foreign_part_prob=0.5,
                         near_miss_prob=0.5)
    batch = world.generate(500)
    class_sets = [set(c.part_ids) for c in CLASSES]
    parts = batch.parts
    found = np.array([part_id_of(p["shape"], p["color"], p["texture"]) for p in parts])
    roles = np.array(ROLES)[parts["role"]]
    not_parts = np.isin(roles, ["near_miss", "random_part"])
    assert (found[not_parts] == -1).all() and (found[~not_parts] >= 0).all()
    for row, label in enumerate(batch.labels):
        present = set(found[(parts["image"] == row) & (found >= 0)])
        complete = [k for k, needed in enumerate(class_sets) if needed <= present]
        assert complete == [label], (row, label, present)
    per_image = np.bincount(parts["image"], minlength=len(batch))
    assert per_image.min() == 2 and per_image.max() == 5
    assert all((roles == role).sum() > 50 for role in ROLES)


def test_near_misses_differ_from_a_completing_part_in_one_attribute():
    world = ConceptWorld(seed=4, n_distractors=(2, 2), foreign_part_prob=0.0,
                         near_miss_prob=1.0)
    batch = world.generate(300)
    part_concepts = np.array([[CONCEPTS.index(name) for name in (p.shape, p.color, p.texture)]
                              for p in PARTS])
    class_sets = [set(c.part_ids) for c in CLASSES]
    changed = []
    assert (batch.parts["role"] != ROLES.index("random_part")).all()
    for row in batch.parts[batch.parts["role"] == ROLES.index("near_miss")]:
        own = class_sets[batch.labels[row["image"]]]
        # Parts that would complete another class if they were in the image.
        completing = [p for p in range(len(PARTS)) if p not in own and any(
            other <= own | {p} for other in class_sets if other != own)]
        triple = np.array([row["shape"], row["color"], row["texture"]])
        differences = (part_concepts[completing] != triple).sum(1)
        assert differences.min() == 1, (row, completing)
        changed.append(np.flatnonzero(part_concepts[completing][differences.argmin()] != triple))
    # Each attribute family gets changed.
    assert set(np.concatenate(changed)) == {0, 1, 2}


def test_mask_helper_accepts_names_and_indices(batch):
    np.testing.assert_array_equal(batch.mask("ring"), batch.mask(CONCEPTS.index("ring")))
    np.testing.assert_array_equal(batch.mask("cyan"),
                                  (batch.concept_bits & bit("cyan")) != 0)
    with pytest.raises(ConfigError, match="unknown concept 'purple'"):
        batch.mask("purple")


def test_invalid_parameters_are_reported():
    with pytest.raises(ConfigError, match="split"):
        ConceptWorld().generate(4, split="validation")
    with pytest.raises(ConfigError, match="size_range"):
        ConceptWorld(size_range=(0.9, 0.5))
    with pytest.raises(ConfigError, match="image_size"):
        ConceptWorld(image_size=8)
    with pytest.raises(ConfigError, match="n_distractors"):
        ConceptWorld(n_distractors=(2, 1))


def test_difficulty_knobs_are_honoured():
    world = ConceptWorld(seed=2, n_distractors=(3, 3), foreign_part_prob=1.0, n_clutter=(0, 0),
                         noise_std=0.0, image_size=96)
    batch = world.generate(50)
    assert batch.images.shape == (50, 96, 96, 3)
    assert (np.bincount(batch.parts["image"]) == 5).all()
    assert (batch.parts["role"] == ROLES.index("foreign_part")).sum() == 50
    # Without noise or clutter a flat background is exactly one grey level per image.
    flat = batch.mask("bg_flat")
    for row in np.flatnonzero(flat.any((1, 2)))[:5]:
        pixels = batch.images[row][flat[row]]
        assert len(np.unique(pixels)) == 1


# -- files ------------------------------------------------------------------------------------

def test_image_folder_is_readable_by_torchvision_and_annotations_round_trip(tmp_path, world):
    datasets = pytest.importorskip("torchvision.datasets")
    root = world.write_image_folder(tmp_path / "cw", 90, split="test", start=200)
    expected = world.generate(90, split="test", start=200)

    folder = datasets.ImageFolder(str(root))
    assert folder.classes == sorted(folder.classes)
    assert [name.split("_", 1)[1] for name in folder.classes] == [c.name for c in CLASSES]
    assert len(folder) == 90
    by_index = {int(os.path.basename(path)[:-4]): target for path, target in folder.samples}
    assert by_index == {int(i): int(label) for i, label in zip(expected.indices,
                                                                 expected.labels)}
    image, _ = folder[0]
    index = int(os.path.basename(folder.samples[0][0])[:-4])
    np.testing.assert_array_equal(np.asarray(image), expected.images[index - 200])

    loaded = load_annotations(root, load_images=True)
    assert_batches_equal(loaded, expected)
    assert loaded.split == "test"
    assert loaded.class_names == expected.class_names
    assert loaded.concept_names == CONCEPTS
    for path, label, index in zip(loaded.paths, loaded.labels, loaded.indices):
        assert path == f"{label:02d}_{CLASSES[label].name}/{index:06d}.png"
    with np.load(root / "annotations.npz", allow_pickle=False) as data:
        assert json.loads(str(data["part_names"])) == [p.name for p in PARTS]
        np.testing.assert_array_equal(data["class_parts"], [c.part_ids for c in CLASSES])
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["world"] == world.get_params() and manifest["n"] == 90


def test_rewrite_is_skipped_resumed_or_refused(tmp_path):
    world = ConceptWorld(seed=5)
    root = tmp_path / "cw"

    class Interrupt(Exception):
        pass

    def stop_after_first_chunk(n_images):
        raise Interrupt

    with pytest.raises(Interrupt):
        world.write_image_folder(root, 300, progress=stop_after_first_chunk)
    assert not (root / "manifest.json").exists()
    written = {p: p.stat().st_mtime_ns for p in root.glob("*/*.png")}
    assert len(written) == world.chunk_size

    world.write_image_folder(root, 300)                     # resumes
    assert len(list(root.glob("*/*.png"))) == 300
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert not list(root.glob("*/.*.tmp")) and not (root / ".concept_world.partial.json").exists()

    stamp = (root / "annotations.npz").stat().st_mtime_ns
    world.write_image_folder(root, 300)                     # complete: nothing to do
    assert (root / "annotations.npz").stat().st_mtime_ns == stamp

    with pytest.raises(WorkspaceError, match="n: 300 there, 200 requested"):
        world.write_image_folder(root, 200)
    with pytest.raises(WorkspaceError, match="seed"):
        ConceptWorld(seed=6).write_image_folder(root, 300)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty"):
        world.write_image_folder(tmp_path / "other", 10)


def test_missing_annotations_are_reported(tmp_path):
    with pytest.raises(ProbeSetError, match="annotations.npz does not exist"):
        load_annotations(tmp_path)


def test_plot_samples_writes_a_png(tmp_path, batch):
    path = plot_samples(batch, tmp_path / "samples.png", per_class=1)
    with Image.open(path) as figure:
        width, height = figure.size
    assert figure.format == "PNG" and width > 400 and height > 600
    with pytest.raises(ConfigError, match="fewer than per_class"):
        plot_samples(batch, tmp_path / "too_many.png", per_class=1000)
