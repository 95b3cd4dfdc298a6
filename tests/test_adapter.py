"""The model adapter: layer selection, shapes, and activations on any nn.Module."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import TinyResNet, TinyVGG
from torch import nn

from conceptevo.errors import LayerSelectionError
from conceptevo.models.adapter import ModelAdapter, select_layers


def test_default_selection_is_every_conv2d_in_module_order():
    model = TinyResNet()
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert select_layers(model) == expected
    assert expected[0] == "stem" and len(expected) == 6


def test_selection_by_names_globs_commas_and_predicate():
    model = torchvision.models.resnet18()
    assert select_layers(model, "layer1.0.conv1") == ["layer1.0.conv1"]
    assert select_layers(model, "layer*.0.conv2") == [
        f"layer{i}.0.conv2" for i in range(1, 5)]
    assert select_layers(model, "conv1, layer4.1.conv2") == ["conv1", "layer4.1.conv2"]
    # a list keeps named_modules() order, whatever order it is given in
    assert select_layers(model, ["layer4.1.conv2", "conv1"]) == ["conv1", "layer4.1.conv2"]
    picked = select_layers(model, lambda name, m: isinstance(m, nn.BatchNorm2d)
                           and name.startswith("layer2"))
    assert picked and all((p.startswith("layer2") and ".bn" in p) or "downsample" in p
                          for p in picked)


def test_selection_errors_name_the_layer_and_suggest():
    model = torchvision.models.resnet18()
    with pytest.raises(LayerSelectionError, match=r"'layer1\.0\.conv'.*did you mean"):
        select_layers(model, "layer1.0.conv")
    with pytest.raises(LayerSelectionError, match="matches no module"):
        select_layers(model, "block*.conv")
    with pytest.raises(LayerSelectionError, match="neither an nn.Conv2d nor a transformer MLP"):
        select_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("name,size", [("vgg16", 32), ("resnet18", 32),
                                       ("convnext_tiny", 32), ("inception_v3", 80)])
def test_torchvision_architectures_unchanged(name, size):
    kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=5, **kwargs).eval()
    adapter = ModelAdapter(model)
    infos = adapter.describe(torch.zeros(1, 3, size, size))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert [i.name for i in infos] == list(convs)
    assert [i.channels for i in infos] == [m.out_channels for m in convs.values()]
    assert infos[-1].offset + infos[-1].channels == adapter.n_neurons
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        acts, _, logits = adapter.activations(x)
    assert acts.shape == (2, adapter.n_neurons) and logits.shape == (2, 5)
    # the adapter's activations are the max over each conv output map, taken before any
    # in-place activation that follows the conv
    first = infos[0]
    with torch.no_grad():
        out = convs[first.name](_input_of(model, first.name, x))
    torch.testing.assert_close(acts[:, :first.channels], out.flatten(2).amax(2))


def _input_of(model, layer, x):
    captured = {}
    module = dict(model.named_modules())[layer]
    h = module.register_forward_pre_hook(lambda m, inp: captured.setdefault("x", inp[0].clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    return captured["x"]


def test_activation_is_pre_inplace_relu_max_and_location():
    torch.manual_seed(0)
    model = TinyVGG().eval()
    with torch.no_grad():
        model.features[0].bias.fill_(-50.0)  # every pre-activation negative
    adapter = ModelAdapter(model, "features.0")
    infos = adapter.describe(torch.zeros(1, 3, 16, 16))
    assert infos[0].map_size == (16, 16)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        acts, where, _ = adapter.activations(x)
        conv_out = model.features[0](x)
    assert (acts < 0).all(), "pre-ReLU values must survive the in-place ReLU"
    flat = conv_out.flatten(2)
    torch.testing.assert_close(acts, flat.amax(2))
    torch.testing.assert_close(flat.gather(2, where.unsqueeze(2)).squeeze(2), acts)


def test_mean_reduction():
    model = TinyVGG().eval()
    adapter = ModelAdapter(model, "features.3", reduction="mean")
    adapter.describe(torch.zeros(1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        acts, _, _ = adapter.activations(x)
        ref = model.features[3](model.features[2](model.features[1](model.features[0](x))))
    torch.testing.assert_close(acts, ref.mean((2, 3)))


def test_layer_that_is_not_on_the_forward_path_is_reported():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 2, 1)
            self.spare = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.used(x).mean((2, 3))

    with pytest.raises(LayerSelectionError, match="'spare' did not run"):
        ModelAdapter(Unused()).describe(torch.zeros(1, 3, 4, 4))


def test_shared_module_running_twice_is_an_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x)).mean((2, 3))

    with pytest.raises(LayerSelectionError, match="more than once"):
        ModelAdapter(Twice()).describe(torch.zeros(1, 3, 4, 4))
