"""Probe sets: deterministic sampling, stable ids, unreadable and odd images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from conceptevo.data.probe import from_dataset, load_image_folder, sample_per_class
from conceptevo.errors import ProbeSetError


def test_sampling_is_deterministic_per_class():
    labels = np.repeat(np.arange(4), [10, 3, 7, 5])
    a = sample_per_class(labels, per_class=4, seed=1)
    assert np.array_equal(a, sample_per_class(labels, per_class=4, seed=1))
    assert not np.array_equal(a, sample_per_class(labels, per_class=4, seed=2))
    assert np.bincount(labels[a]).tolist() == [4, 3, 4, 4]          # class 1 has only 3
    f = sample_per_class(labels, fraction=0.5, seed=0)
    assert np.bincount(labels[f]).tolist() == [5, 2, 4, 3]           # ceil(0.5 * size)
    assert np.array_equal(sample_per_class(labels), np.arange(len(labels)))


def test_image_folder_probe_set(image_folder):
    probe = load_image_folder(image_folder, image_size=16, per_class=4, seed=0)
    assert len(probe) == 12 and probe.classes == ["cat", "dog", "eel"]
    assert probe.images.shape == (12, 16, 16, 3) and probe.images.dtype == np.uint8
    assert np.bincount(probe.labels).tolist() == [4, 4, 4]
    # ids follow class order then file order, and paths point at the sampled files
    assert probe.paths == sorted(probe.paths, key=lambda p: (p.split("/")[0], p))
    first = np.asarray(Image.open(image_folder / probe.paths[0]).resize((16, 16),
                                                                        Image.BILINEAR))
    assert np.abs(first.astype(int) - probe.images[0].astype(int)).mean() < 1.0
    x = probe.tensor([0, 5])
    ref = (torch.from_numpy(probe.images[[0, 5]]).permute(0, 3, 1, 2).float() / 255
           - torch.tensor(probe.mean).view(1, 3, 1, 1)) / torch.tensor(probe.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, ref)


def test_corrupt_image_fails_with_its_path_or_is_skipped(image_folder):
    bad = image_folder / "dog" / "img_03.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ProbeSetError, match=r"dog/img_03\.png"):
        load_image_folder(image_folder, image_size=16)
    probe = load_image_folder(image_folder, image_size=16, skip_unreadable=True)
    assert len(probe) == 17 and probe.info["n_skipped"] == 1
    assert "dog/img_03.png" not in probe.paths


def test_grayscale_rgba_and_odd_sizes_are_converted(tmp_path):
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    Image.new("L", (30, 20), 128).save(root / "a" / "gray.png")
    Image.new("RGBA", (12, 40), (255, 0, 0, 128)).save(root / "a" / "rgba.png")
    probe = load_image_folder(root, image_size=16)
    assert probe.images.shape == (2, 16, 16, 3)
    assert probe.info["converted_modes"] == {"L": 1, "RGBA": 1}
    assert (probe.images[0] == 128).all()


def test_empty_folders_are_errors(tmp_path):
    with pytest.raises(ProbeSetError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", 16)
    (tmp_path / "root").mkdir()
    with pytest.raises(ProbeSetError, match="no class sub-directories"):
        load_image_folder(tmp_path / "root", 16)
    write_image_folder(tmp_path / "root", classes=("a",), per_class=2)
    (tmp_path / "root" / "b").mkdir()
    with pytest.raises(ProbeSetError, match="'b'.*contain no image"):
        load_image_folder(tmp_path / "root", 16)


def test_map_style_dataset():
    class DS(torch.utils.data.Dataset):
        targets = (0, 1, 0, 1, 1)

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((3, 8, 8), i / 10), self.targets[i]

    probe = from_dataset(DS(), image_size=8, classes=["x", "y"], per_class=2, seed=0)
    assert len(probe) == 4 and probe.paths[0].startswith("#")
    i = int(probe.paths[0][1:])
    assert probe.images[0, 0, 0, 0] == round(i / 10 * 255)

    class Normalised(DS):
        def __getitem__(self, i):
            return torch.full((3, 8, 8), -2.0), 0

    with pytest.raises(ProbeSetError, match=r"un-normalised images in \[0, 1\]"):
        from_dataset(Normalised(), image_size=8)
