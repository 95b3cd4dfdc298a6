"""Receptive fields (against the analytic formula) and patch cropping at image borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conceptevo.models.adapter import ModelAdapter
from conceptevo.patches import ReceptiveField, crop_patches, patch_strip, receptive_fields


def analytic(layers):
    """r_l = r_{l-1} + (k_l - 1) * j_{l-1}; j_l = j_{l-1} * s_l (kernel k, stride s)."""
    r, j, out = 1, 1, []
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
        out.append((r, j))
    return out


def test_receptive_field_of_a_known_conv_stack():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),                 # k3 s1
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True),     # k3 s1
        nn.MaxPool2d(2),                                          # k2 s2
        nn.Conv2d(4, 4, 3, padding=1),                            # k3 s1
        nn.Conv2d(4, 4, 5, stride=2, padding=2), nn.ReLU(),       # k5 s2
        nn.Conv2d(4, 4, 1))                                       # k1 s1
    fields = receptive_fields(ModelAdapter(model), (64, 64))
    expected = analytic([(3, 1), (3, 1), (2, 2), (3, 1), (5, 2), (1, 1)])
    probed = [expected[i] for i in (0, 1, 3, 4, 5)]
    for field, (r, j) in zip(fields, probed):
        assert field.size == (r, r)
        assert field.stride == (j, j)
    # unit (0, 0) of a stride-1 layer is centred on pixel 0
    assert fields[0].center == (0.5, 0.5)


def test_field_larger_than_the_image_is_the_whole_image():
    model = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 2, 2, 5, padding=2) for i in range(6)])
    fields = receptive_fields(ModelAdapter(model), (12, 12))
    assert fields[-1].size == (12, 12)      # analytic 25, clipped by the 12-pixel image
    assert fields[0].size == (5, 5)


def test_crops_at_the_borders_keep_their_size_inside_the_image():
    images = np.arange(2 * 10 * 10 * 3, dtype=np.uint8).reshape(2, 10, 10, 3)
    field = ReceptiveField((4, 4), (2.0, 2.0), (1.0, 1.0))     # unit (h, w) centred at 2h+1
    crops = crop_patches(images, np.array([0, 1, 1]), np.array([[0, 0], [4, 4], [2, 3]]), field)
    # top-left corner: the box would start at -1; it is shifted to 0
    assert np.array_equal(crops[0], images[0, 0:4, 0:4])
    # bottom-right: centre 9 -> box 7..11 shifted to 6..10
    assert np.array_equal(crops[1], images[1, 6:10, 6:10])
    # inside: centre (5, 7) -> rows 3..7, cols 5..9
    assert np.array_equal(crops[2], images[1, 3:7, 5:9])
    big = ReceptiveField((30, 30), (1.0, 1.0), (0.5, 0.5))
    assert crop_patches(images, np.array([0]), np.array([[5, 5]]), big)[0].shape == (10, 10, 3)
    tiny = ReceptiveField((1, 1), (1.0, 1.0), (0.5, 0.5))
    assert crop_patches(images, np.array([0]), np.array([[0, 0]]), tiny)[0].shape == (4, 4, 3)


def test_patch_strip_layout():
    crops = [np.full((3, 5, 3), v, dtype=np.uint8) for v in (10, 20)]
    strip = patch_strip(crops, tile=8, gap=2)
    assert strip.shape == (8, 18, 3)
    assert (strip[:, :8] == 10).all() and (strip[:, 8:10] == 255).all()
    assert (strip[:, 10:] == 20).all()


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_fields_grow_with_depth_on_torchvision_models(name):
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    adapter = ModelAdapter(model, "layer1.0.conv1,layer4.1.conv2" if name == "resnet18"
                           else "features.0,features.28")
    first, last = receptive_fields(adapter, (64, 64), n_inputs=2)
    assert first.size[0] < last.size[0] <= 64
