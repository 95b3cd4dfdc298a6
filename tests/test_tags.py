"""Image-level concept presence: tag files, presence from masks, neuron and class concepts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import write_image_folder

from conceptevo.data.concept_world import BACKGROUNDS, CLASSES, CONCEPTS, ConceptWorld
from conceptevo.data.probe import ProbeSet, load_image_folder
from conceptevo.errors import ConfigError, ProbeSetError
from conceptevo.evaluate import tags as tags_module
from conceptevo.evaluate.annotations import AnnotationFile, read_annotations, resize_bits
from conceptevo.evaluate.tags import (
    ImageConcepts,
    class_concepts,
    describe,
    neuron_concepts,
    presence_from_masks,
    read_tags,
)


# ------------------------------------------------------------------------- tag files
@pytest.fixture
def probe_folder(tmp_path):
    """A probe set of 4 of the 6 images of each of 3 classes, and its root."""
    root = write_image_folder(tmp_path / "images", per_class=6, size=8)
    return load_image_folder(root, image_size=8, per_class=4, seed=0), root


def unsampled(probe, root) -> list[str]:
    every = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.png"))
    return [p for p in every if p not in set(probe.paths)]


def write(path, text: str, bom: bool = False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_read_tags_accepts_lenient_files(probe_folder, tmp_path):
    probe, root = probe_folder
    p0, p1, p5 = probe.paths[0], probe.paths[1], probe.paths[5]
    other = unsampled(probe, root)[0]
    text = ("note, Concept ,PATH\n"                      # extra column, any order and case
            f"x,striped,./{p0}\n"
            f"x,red,{p0}\n"
            f"x,red,{p0}\n"                              # duplicate
            "\n"                                         # blank line
            f"x, red ,{p1.replace('/', chr(92))}\n"      # backslashes, spaces
            f"x,blue,{root / p5}\n"                      # absolute path under the root
            f"x,blue,{other}\n")                         # not sampled: ignored
    ic = read_tags(write(tmp_path / "tags.csv", text, bom=True), probe)
    assert isinstance(ic, ImageConcepts) and ic.source.endswith("tags.csv")
    assert ic.concepts == ["blue", "red", "striped"]    # sorted by name
    assert ic.presence.shape == (len(probe), 3) and ic.presence.dtype == bool
    expected = np.zeros((len(probe), 3), bool)
    expected[0, [1, 2]] = expected[1, 1] = expected[5, 0] = True
    assert np.array_equal(ic.presence, expected)
    assert np.flatnonzero(ic.known).tolist() == [0, 1, 5] and ic.n_known == 3
    # an explicit root gives the same
    again = read_tags(tmp_path / "tags.csv", probe, root=root)
    assert np.array_equal(again.presence, ic.presence)


BAD = {
    "missing column": ("path,label\ncat/img_00.png,red\n", "line 1", "concept"),
    "empty concept": ("path,concept\n{p0},red\n{p0}, \n", "line 3", "empty concept"),
    "empty path": ("path,concept\n\n{p0},red\n,red\n", "line 4", "empty path"),
    "short row": ("concept,path\nred,{p0}\nred\n", "line 3", "empty path"),
    "unknown path": ("path,concept\n{p0},red\ncat/nope.png,red\n", "line 3", "cat/nope.png"),
    "outside root": ("path,concept\n{p0},red\n../x.png,red\n", "line 3", "../x.png"),
    "header only": ("path,concept\n", None, "no rows"),
    "empty file": ("", None, "empty"),
    "no probe image": ("path,concept\n{other},red\n", None, "none of its 1 row(s)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_read_tags_errors_name_file_and_line(probe_folder, tmp_path, case):
    probe, root = probe_folder
    text, line, what = BAD[case]
    path = write(tmp_path / "my tags.csv",
                 text.format(p0=probe.paths[0], other=unsampled(probe, root)[0]))
    with pytest.raises(ConfigError) as info:
        read_tags(path, probe)
    message = str(info.value)
    assert str(path) in message and what in message
    if line:
        assert line in message


def test_read_tags_lists_the_first_unknown_rows(probe_folder, tmp_path):
    probe, _ = probe_folder
    rows = [f"{probe.paths[0]},red"] + [f"dog/missing_{i}.png,red" for i in range(7)] + \
        ["cat/readme.txt,red"]
    path = write(tmp_path / "tags.csv", "path,concept\n" + "\n".join(rows) + "\n")
    with pytest.raises(ConfigError) as info:
        read_tags(path, probe)
    message = str(info.value)
    assert "8 row(s)" in message and "and 3 more" in message
    assert "line 4: 'dog/missing_1.png'" in message and "missing_5" not in message
    assert probe.paths[0] in message                     # an example of a good path


def test_read_tags_other_failures(probe_folder, tmp_path):
    probe, _ = probe_folder
    with pytest.raises(ConfigError, match="does not exist"):
        read_tags(tmp_path / "absent.csv", probe)
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"path,concept\n{probe.paths[0]},caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"line 2: not UTF-8"):
        read_tags(path, probe)
    dataset_probe = ProbeSet(probe.images, probe.labels, [f"#{i}" for i in range(len(probe))],
                             probe.classes)
    good = write(tmp_path / "tags.csv", f"path,concept\n{probe.paths[0]},red\n")
    with pytest.raises(ConfigError, match="ImageFolder"):
        read_tags(good, dataset_probe)


# ----------------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def world_folder(tmp_path_factory):
    root = ConceptWorld(seed=0).write_image_folder(tmp_path_factory.mktemp("cw") / "cw", 48)
    return root, load_image_folder(root, image_size=64, per_class=3, seed=0)


def brute_presence(ann: AnnotationFile, probe: ProbeSet, size: int, min_pixels: int):
    out = np.zeros((len(probe), len(ann.concept_names)), bool)
    for i, path in enumerate(probe.paths):
        if path not in ann.paths:
            continue
        bits = resize_bits(ann.bits[[ann.paths.index(path)]], size)[0].astype(np.int64)
        for c in range(len(ann.concept_names)):
            out[i, c] = ((bits >> c) & 1).sum() >= min_pixels
    return out


@pytest.mark.parametrize("size", [64, 40])
def test_presence_from_masks_matches_a_loop(world_folder, size):
    root, probe = world_folder
    ann = read_annotations(root / "annotations.npz")
    ic = presence_from_masks(root / "annotations.npz", probe, size=size, chunk=5)
    assert ic.concepts == list(CONCEPTS) and ic.known is None
    assert np.array_equal(ic.presence, brute_presence(ann, probe, size,
                                                      math.ceil(0.01 * size * size)))
    assert ic.presence.any(0).sum() >= 10                 # not trivially empty
    few = presence_from_masks(ann, probe, min_pixels=200, size=size)
    assert np.array_equal(few.presence, brute_presence(ann, probe, size, 200))


def test_presence_from_masks_partial_annotations(world_folder):
    root, probe = world_folder
    ann = read_annotations(root / "annotations.npz")
    keep = [i for i, p in enumerate(ann.paths) if p in set(probe.paths[::2])]
    half = AnnotationFile(["./" + ann.paths[i].replace("/", "\\") for i in keep],
                          ann.concept_names, ann.bits[keep], ann.source)
    ic = presence_from_masks(half, probe)
    assert np.flatnonzero(ic.known).tolist() == list(range(0, len(probe), 2))
    full = presence_from_masks(ann, probe)
    assert np.array_equal(ic.presence, full.presence & ic.known[:, None])
    none = AnnotationFile(["elsewhere.png"], ann.concept_names, ann.bits[:1], ann.source)
    with pytest.raises(ProbeSetError, match="no probe image is annotated"):
        presence_from_masks(none, probe)


# --------------------------------------------------------------------------- neurons
def brute_neuron_concepts(stimuli, presence, known, min_purity):
    n_images, n_concepts = presence.shape
    b = presence[known].mean(0)
    concept, purity = [], []
    for row in stimuli:
        ids = [i for i in row if 0 <= i < n_images and known[i]]
        if not ids:
            concept.append(-1)
            purity.append(0.0)
            continue
        pur = []
        for j in range(n_concepts):
            s = np.mean([presence[i, j] for i in ids])
            pur.append((s - b[j]) / (1 - b[j]) if b[j] < 1 else 0.0)
        best = int(np.argmax(pur))
        concept.append(best if pur[best] >= min_purity else -1)
        purity.append(pur[best])
    return np.array(concept), np.array(purity)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neuron_concepts_matches_a_loop(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    presence = rng.random((60, 8)) < rng.random(8)
    presence[:, 0] = True                                 # b == 1: purity 0
    presence[:, 1] = False                                # never present
    known = rng.random(60) < 0.8
    stimuli = rng.integers(0, 60, (300, 6))
    stimuli[rng.random(stimuli.shape) < 0.1] = -1         # padding
    stimuli[5] = np.iinfo(np.int64).max                   # a neuron without stimuli
    shown = np.flatnonzero(presence[:, 4] & known)
    stimuli[7] = rng.choice(shown, 6)                     # a pure detector of concept 4
    monkeypatch.setattr(tags_module, "_GATHER_ELEMENTS", 6 * 8 * 17)   # chunks of 17
    concept, purity = neuron_concepts(stimuli, presence, 0.3, known=known)
    ref_concept, ref_purity = brute_neuron_concepts(stimuli, presence, known, 0.3)
    assert concept.dtype == np.int64 and purity.dtype == np.float32
    assert np.array_equal(concept, ref_concept)
    np.testing.assert_allclose(purity, ref_purity, rtol=1e-6, atol=1e-6)
    assert concept[5] == -1 and purity[5] == 0 and concept[7] == 4 and purity[7] == 1
    assert (concept >= 0).any() and (concept == -1).any()
    # an ImageConcepts brings its own known images
    ic = ImageConcepts([str(j) for j in range(8)], presence & known[:, None], "x", known)
    assert np.array_equal(neuron_concepts(stimuli, ic, 0.3)[0], concept)


def test_neuron_concepts_rejects_foreign_ids():
    with pytest.raises(ProbeSetError, match="probe image 10"):
        neuron_concepts(np.array([[0, 10]]), np.ones((10, 2), bool))


# --------------------------------------------------------------------------- classes
def brute_class_concepts(labels, presence, n_classes, min_lift, min_share, known):
    out = np.zeros((n_classes, presence.shape[1]), bool)
    overall = presence[known].mean(0)
    for c in range(n_classes):
        members = (labels == c) & known
        if members.any():
            given = presence[members].mean(0)
            out[c] = (given >= min_share) & (given >= min_lift * overall)
    return out


def test_class_concepts_matches_a_loop():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 200)
    labels[labels == 3] = 4                               # class 3 has no image
    presence = rng.random((200, 9)) < 0.3
    presence |= (labels[:, None] == np.arange(9) % 5) & (rng.random((200, 9)) < 0.8)
    known = rng.random(200) < 0.9
    got = class_concepts(labels, presence, 6, 1.5, 0.2, known=known)
    assert got.shape == (6, 9) and got.dtype == bool
    assert np.array_equal(got, brute_class_concepts(labels, presence, 6, 1.5, 0.2, known))
    assert not got[3].any() and not got[5].any() and got.any()


def test_class_concepts_recovers_the_concept_world_parts():
    batch = ConceptWorld(seed=0).generate(600, split="train")
    paths = [f"{i:06d}.png" for i in range(len(batch))]
    ann = AnnotationFile(paths, list(CONCEPTS), batch.concept_bits, "memory")
    probe = ProbeSet(batch.images, batch.labels, paths, list(batch.class_names))
    ic = presence_from_masks(ann, probe)
    got = class_concepts(probe.labels, ic, len(CLASSES))
    truth = np.array([[name in cls.concepts for name in CONCEPTS] for cls in CLASSES])
    wrong = {cls.name: sorted(CONCEPTS[j] for j in np.flatnonzero(got[c] != truth[c]))
             for c, cls in enumerate(CLASSES) if (got[c] != truth[c]).any()}
    assert not wrong, wrong
    assert not got[:, [CONCEPTS.index(b) for b in BACKGROUNDS]].any()


def test_describe():
    assert describe("bg_noise") == "noise background"
    assert describe("bg_flat") == "flat background"
    assert describe("bg_gradient") == "gradient background"
    assert [describe(c) for c in ("disc", "red", "stripes", "bg_sky", "wheel")] == \
        ["disc", "red", "stripes", "bg_sky", "wheel"]
