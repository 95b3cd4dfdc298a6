"""Activation layouts against brute force: conv [B, C, H, W], nhwc [B, H, W, C], tokens
[B, T, C] (class / register / distillation tokens first) and flat [B, C], on real vision
transformers and ConvNeXt / Swin models (torchvision, timm, Hugging Face) in tiny configs.

Every reference here is computed from the layers' FULL outputs, captured by plain forward
hooks and reduced by hand in numpy; the layouts a layer should have are written out by hand
from the architectures (patch size 8: a 32-pixel image is a 4 x 4 grid of patch tokens).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from conceptevo.errors import LayerSelectionError
from conceptevo.evolution.importance import (
    batch_sensitivity,
    class_hits,
    replace_channels,
    reversion_hits,
)
from conceptevo.models.adapter import ModelAdapter
from conceptevo.models.layouts import detect_layouts
from conceptevo.patches import crop_patches, receptive_fields
from conceptevo.stimuli import compute_stimuli

N_CLASSES = 5
TV_VIT = "encoder.layers.encoder_layer_{}"


# ------------------------------------------------------------------------------- models
def tv_vit(size: int = 32, seed: int = 0, dtype=torch.float32) -> nn.Module:
    """torchvision's VisionTransformer: patch 8, 2 layers, hidden 32, MLP 64. Its head and
    class token start at zero: both are drawn at random, so that logits depend on every
    token and gradients do not vanish."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(size, 8, 2, 2, 32, 64, num_classes=N_CLASSES)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.3)
        model.heads.head.bias.normal_(0, 0.1)
        model.class_token.normal_(0, 0.5)
    return model.to(dtype).eval()


def timm_vit(size: int = 32, seed: int = 0, **kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size,
                             patch_size=8, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2,
                             num_classes=N_CLASSES, **kwargs).eval()


def timm_deit(size: int = 32, seed: int = 0) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                             img_size=size, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                             mlp_ratio=2, num_classes=N_CLASSES).eval()


def timm_convnext(seed: int = 0, **kwargs) -> nn.Module:
    """convnext_atto with its MLP as Linear layers on [B, H, W, C] (conv_mlp=False)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model("convnext_atto", pretrained=False, conv_mlp=False,
                             num_classes=N_CLASSES, **kwargs).eval()


def timm_swin(size: int = 56, seed: int = 0) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=size,
                             embed_dim=24, depths=(1, 1), num_heads=(1, 2),
                             num_classes=N_CLASSES).eval()


def tv_swin(seed: int = 0) -> nn.Module:
    """torchvision's Swin (blocks on [B, H, W, C]): patch 4, width 8, then 16 after the
    patch merging, whose ``dim`` (8) is its input width and, at 64 pixels, also its output's
    height."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    return SwinTransformer([4, 4], 8, [1, 1], [1, 2], [4, 4], num_classes=N_CLASSES).eval()


def tv_convnext(seed: int = 0) -> nn.Module:
    """torchvision's ConvNeXt with two tiny stages (16 and 32 channels): its blocks permute
    to [B, H, W, C] in a module (``block.1``) for their LayerNorm and Linear MLP. At 64 pixels
    the first stage is 16 channels on a 16 x 16 map: every axis has the same size."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(seed)
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                    num_classes=N_CLASSES).eval()


def hf_vit(size: int = 32, seed: int = 0) -> nn.Module:
    pytest.importorskip("transformers")
    from conceptevo.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model("hf:vit", {"num_classes": N_CLASSES, "image_size": size,
                                   "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "intermediate_size": 64})
    with torch.no_grad():  # (drawn with std 0.02: larger, so that logits differ clearly)
        model.classifier.weight.normal_(0, 0.3)
    return model.eval()


def hf_activations(model: nn.Module) -> list[str]:
    """The MLP activations of a Hugging Face ViT, whatever transformers names them."""
    return [n for n, m in model.named_modules() if type(m).__name__ == "GELUActivation"]


# Expected layouts, by hand: {layer: (layout, prefix, (h, w), channels)} for input size s.
def tv_vit_layers(s: int) -> dict:
    g = s // 8
    return {"conv_proj": ("conv", 0, (g, g), 32),
            f"{TV_VIT.format(0)}.ln_1": ("tokens", 1, (g, g), 32),
            f"{TV_VIT.format(0)}.mlp.1": ("tokens", 1, (g, g), 64),
            f"{TV_VIT.format(1)}.mlp.1": ("tokens", 1, (g, g), 64),
            f"{TV_VIT.format(1)}.mlp.3": ("tokens", 1, (g, g), 32),
            "encoder.ln": ("tokens", 1, (g, g), 32),
            "heads.head": ("flat", 0, (1, 1), N_CLASSES)}


def timm_vit_layers(s: int, prefix: int = 1, dynamic: bool = False) -> dict:
    g = s // 8
    layers = {"patch_embed.proj": ("conv", 0, (g, g), 32),
              "blocks.0.norm1": ("tokens", prefix, (g, g), 32),
              "blocks.0.attn.qkv": ("tokens", prefix, (g, g), 96),
              "blocks.0.mlp.act": ("tokens", prefix, (g, g), 64),
              "blocks.1.mlp.act": ("tokens", prefix, (g, g), 64),
              "blocks.1.mlp.fc2": ("tokens", prefix, (g, g), 32),
              "blocks.1": ("tokens", prefix, (g, g), 32),
              "head": ("flat", 0, (1, 1), N_CLASSES)}
    if dynamic:  # the patch embedding keeps the grid: [B, h, w, C], told by a second size
        layers["patch_embed"] = ("nhwc", 0, (g, g), 32)
    return layers


def deit_layers(s: int) -> dict:
    g = s // 8
    return {"blocks.0.mlp.act": ("tokens", 2, (g, g), 64),
            "blocks.1.norm2": ("tokens", 2, (g, g), 32),
            "head_dist": ("flat", 0, (1, 1), N_CLASSES)}


def convnext_layers(s: int) -> dict:
    g = s // 4  # stem: stride 4; each further stage halves the map
    return {"stem.0": ("conv", 0, (g, g), 40),
            "stages.0.blocks.0.conv_dw": ("conv", 0, (g, g), 40),
            "stages.0.blocks.0.norm": ("nhwc", 0, (g, g), 40),
            "stages.0.blocks.0.mlp.fc1": ("nhwc", 0, (g, g), 160),
            "stages.0.blocks.0.mlp.act": ("nhwc", 0, (g, g), 160),
            "stages.1.blocks.1.mlp.act": ("nhwc", 0, (g // 2, g // 2), 320),
            "stages.1": ("conv", 0, (g // 2, g // 2), 80),
            "stages.2.blocks.0.mlp.fc2": ("nhwc", 0, (g // 4, g // 4), 160),
            "head.fc": ("flat", 0, (1, 1), N_CLASSES)}


def swin_layers(s: int) -> dict:
    g = s // 4  # patch 4; the second stage merges 2 x 2 patches
    return {"layers.0.blocks.0.norm1": ("nhwc", 0, (g, g), 24),
            "layers.0.blocks.0.mlp.act": ("tokens", 0, (g, g), 96),   # blocks' MLPs: [B, L, C]
            "layers.0.blocks.0": ("nhwc", 0, (g, g), 24),
            "layers.1.blocks.0.mlp.fc1": ("tokens", 0, (g // 2, g // 2), 192),
            "layers.1": ("nhwc", 0, (g // 2, g // 2), 48),
            "head.fc": ("flat", 0, (1, 1), N_CLASSES)}


def tv_convnext_layers(s: int) -> dict:
    g, block = s // 4, "features.1.0.block"
    return {"features.0": ("conv", 0, (g, g), 16),
            f"{block}.0": ("conv", 0, (g, g), 16),
            f"{block}.1": ("nhwc", 0, (g, g), 16),                # the Permute
            f"{block}.2": ("nhwc", 0, (g, g), 16),                # its LayerNorm
            f"{block}.4": ("nhwc", 0, (g, g), 64),
            f"{block}.5": ("nhwc", 0, (g, g), 16),
            f"{block}.6": ("conv", 0, (g, g), 16),                # permuted back
            "features.1.0": ("conv", 0, (g, g), 16),
            "features.2": ("conv", 0, (g // 2, g // 2), 32),
            "classifier.2": ("flat", 0, (1, 1), N_CLASSES)}


def tv_swin_layers(s: int) -> dict:
    g = s // 4
    return {"features.0": ("nhwc", 0, (g, g), 8),
            "features.1.0.norm1": ("nhwc", 0, (g, g), 8),
            "features.1.0.mlp.1": ("nhwc", 0, (g, g), 32),
            "features.2": ("nhwc", 0, (g // 2, g // 2), 16),     # the patch merging
            "features.3.0": ("nhwc", 0, (g // 2, g // 2), 16),
            "head": ("flat", 0, (1, 1), N_CLASSES)}


def hf_vit_layers(model: nn.Module, s: int) -> dict:
    g = s // 8
    layers = {name: ("tokens", 1, (g, g), 64) for name in hf_activations(model)}
    assert len(layers) == 2
    layers["classifier"] = ("flat", 0, (1, 1), N_CLASSES)
    layers["vit.layernorm"] = ("tokens", 1, (g, g), 32)
    return layers


# One model per input size where the model takes one size only.
CASES = {
    "torchvision-vit": (lambda s: tv_vit(s), tv_vit_layers, (32, 48)),
    "timm-vit": (lambda s: timm_vit(s), timm_vit_layers, (32, 48)),
    "timm-vit-dynamic-registers": (
        lambda s: MODEL_CACHE.setdefault("dyn", timm_vit(32, reg_tokens=4,
                                                         dynamic_img_size=True)),
        lambda s: timm_vit_layers(s, prefix=5, dynamic=True), (32, 48)),
    "timm-deit-distilled": (lambda s: timm_deit(s), deit_layers, (32,)),
    # (at 160 pixels the first stage is 40 channels on a 40 x 40 map, the LayerNorm after
    # the block's permute [B, 40, 40, 40])
    "timm-convnext": (lambda s: MODEL_CACHE.setdefault("cnx", timm_convnext()),
                      convnext_layers, (32, 160)),
    "torchvision-convnext": (lambda s: MODEL_CACHE.setdefault("tv-cnx", tv_convnext()),
                             tv_convnext_layers, (64, 96)),
    "timm-swin": (lambda s: timm_swin(s), swin_layers, (56, 112)),
    "torchvision-swin": (lambda s: MODEL_CACHE.setdefault("tv-swin", tv_swin()),
                         tv_swin_layers, (64, 96)),
    "hf-vit": (lambda s: hf_vit(s), None, (32, 48)),
}
MODEL_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run on one thread: on a shared CPU, OpenMP threads waiting for each other
    cost far more than these small operations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def case(name: str, size: int) -> tuple[nn.Module, dict]:
    build, layers, _ = CASES[name]
    model = build(size)
    return model, (hf_vit_layers(model, size) if layers is None else layers(size))


# ---------------------------------------------------------------------- references
def full_outputs(model: nn.Module, names, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each named module's whole output for ``x``, by plain forward hooks."""
    modules = dict(model.named_modules())
    outs: dict[str, np.ndarray] = {}

    def keep(name: str):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            outs.setdefault(name, output.detach().double().numpy().copy())
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outs


def capture(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module ``name`` in one forward pass of ``x`` (a tensor, as it is)."""
    found = {}

    def keep(module, inputs, output):
        found.setdefault("out", output)

    handle = dict(model.named_modules())[name].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return found["out"]


def by_hand(out: np.ndarray, layout: str, prefix: int, tokens: str = "patches",
            reduction: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """(activation [B, C], arg-max location [B, C]: flat index on the map / patch grid)."""
    b = out.shape[0]
    if layout == "flat":
        return out, np.zeros(out.shape, dtype=np.int64)
    if layout == "tokens":
        if tokens == "cls":
            return out[:, 0, :], np.zeros((b, out.shape[2]), dtype=np.int64)
        patches = np.transpose(out[:, prefix:, :], (0, 2, 1))     # [B, C, P]
        pool = np.transpose(out, (0, 2, 1)) if tokens == "all" else patches
        value = pool.max(2) if reduction == "max" else pool.mean(2)
        return value, patches.argmax(2)
    if layout == "nhwc":
        out = np.transpose(out, (0, 3, 1, 2))
    flat = out.reshape(b, out.shape[1], -1)
    value = flat.max(2) if reduction == "max" else flat.mean(2)
    return value, flat.argmax(2)


def reference(model, expected: dict, x: torch.Tensor, tokens="patches", reduction="max",
              order=None):
    outs = full_outputs(model, list(expected), x)
    names = order or list(expected)
    acts, where = zip(*(by_hand(outs[n], expected[n][0], expected[n][1], tokens, reduction)
                        for n in names))
    return np.concatenate(acts, 1), np.concatenate(where, 1), outs


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def check_layers(infos, expected: dict) -> None:
    for info in infos:
        layout, prefix, grid, channels = expected[info.name]
        assert (info.layout, info.prefix, tuple(info.map_size), info.channels) == \
            (layout, prefix, grid, channels), info.name


# ------------------------------------------------------------------- brute force
@pytest.mark.parametrize("name,size", [(n, s) for n, c in CASES.items() for s in c[2]])
def test_activations_and_stimuli_equal_brute_force(name, size):
    model, expected = case(name, size)
    adapter = ModelAdapter(model, list(expected))
    check_layers(adapter.describe(images(1, size)), expected)
    order = adapter.layer_names  # (named_modules() order: the global neuron numbering)
    x = images(10, size, seed=1)
    acts, where, outs = reference(model, expected, x, order=order)

    with torch.no_grad():
        ours, loc, logits = adapter.activations(x)
    np.testing.assert_allclose(ours.numpy(), acts, rtol=1e-5, atol=1e-6)
    assert np.array_equal(loc.numpy(), where)
    assert logits.shape == (10, N_CLASSES)
    assert float(logits.std(0).min()) > 1e-4  # (a head that is not all zeros)

    k = 3
    batches = [(x[i:i + 4], torch.arange(i, min(i + 4, 10))) for i in range(0, 10, 4)]
    grid_w = np.concatenate([[expected[n][2][1]] * expected[n][3] for n in order])
    # as the pipeline runs it too: channels-last weights and images (convolution outputs in
    # channels-last memory)
    for channels_last in (False, True):
        if channels_last:
            model.to(memory_format=torch.channels_last)
        res = compute_stimuli(adapter, batches, 10, k_stimuli=k, k_responsive=4,
                              channels_last=channels_last).result()
        for neuron in range(acts.shape[1]):
            top = np.lexsort((np.arange(10), -acts[:, neuron]))[:k]     # value desc, id asc
            assert res.stimuli[neuron].tolist() == top.tolist(), neuron
            np.testing.assert_allclose(res.stimuli_act[neuron], acts[top, neuron],
                                       rtol=1e-4, atol=1e-5)
            h, w = np.divmod(where[top, neuron], grid_w[neuron])
            assert res.stimuli_loc[neuron].tolist() == np.stack([h, w], 1).tolist(), neuron
        for image in range(10):
            top = np.lexsort((np.arange(acts.shape[1]), -acts[image]))[:4]
            assert res.responsive[image].tolist() == top.tolist()
    model.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("tokens", ["patches", "all", "cls"])
@pytest.mark.parametrize("reduction", ["max", "mean"])
@pytest.mark.parametrize("name", ["torchvision-vit", "timm-vit-dynamic-registers", "hf-vit"])
def test_token_modes_and_reductions_equal_brute_force(name, tokens, reduction):
    model, expected = case(name, 32)
    expected = {n: v for n, v in expected.items() if v[0] == "tokens"}
    if tokens == "cls":  # one position, the class token
        expected = {n: (k, p, (1, 1), c) for n, (k, p, _, c) in expected.items()}
    adapter = ModelAdapter(model, list(expected), reduction, tokens=tokens)
    check_layers(adapter.describe(images(1, 32)), expected)
    x = images(6, 32, seed=2)
    acts, where, _ = reference(model, expected, x, tokens, reduction, adapter.layer_names)
    with torch.no_grad():
        ours, loc, _ = adapter.activations(x)
    np.testing.assert_allclose(ours.numpy(), acts, rtol=1e-5, atol=1e-6)
    assert np.array_equal(loc.numpy(), where)


def test_register_and_distillation_tokens_are_excluded_from_patches():
    """The prefix tokens are not patch tokens: 'patches' never reads them, 'all' does."""
    model = timm_vit(32, reg_tokens=4)
    assert model.num_prefix_tokens == 5
    layer = "blocks.1.mlp.act"
    x = images(4, 32, seed=3)
    out = full_outputs(model, [layer], x)[layer]                   # [4, 5 + 16, 64]
    assert out.shape == (4, 21, 64)
    patches = ModelAdapter(model, [layer])
    every = ModelAdapter(model, [layer], tokens="all")
    for a in (patches, every):
        a.describe(x[:1])
    with torch.no_grad():
        on_patches, on_all = patches.activations(x)[0], every.activations(x)[0]
    np.testing.assert_allclose(on_patches.numpy(), out[:, 5:].max(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(on_all.numpy(), out.max(1), rtol=1e-6, atol=1e-6)
    deit = timm_deit()
    info = ModelAdapter(deit, ["blocks.0.mlp.act"]).describe(x[:1])[0]
    assert (info.prefix, info.map_size) == (2, (4, 4))


def test_cls_mode_refuses_a_layer_without_class_token():
    with pytest.raises(LayerSelectionError, match=r"tokens = \"cls\".*no class token"):
        ModelAdapter(timm_swin(), ["layers.0.blocks.0.mlp.act"], tokens="cls").describe(
            images(1, 56))


# ------------------------------------------------------------------------- maps
@pytest.mark.parametrize("name", ["torchvision-vit", "timm-convnext", "timm-swin", "hf-vit"])
def test_evaluation_maps_are_the_token_grid(name):
    size = CASES[name][2][0]
    model, expected = case(name, size)
    adapter = ModelAdapter(model, list(expected))
    adapter.describe(images(1, size))
    x = images(3, size, seed=4)
    from conceptevo.evaluate.labels import _maps  # (what the concept labels are computed on)

    evaluation = _maps(adapter, x)
    for i, name_i in enumerate(adapter.layer_names):
        layout, prefix, (h, w), c = expected[name_i]
        out = full_outputs(model, [name_i], x)[name_i]
        if layout == "tokens":
            want = out[:, prefix:, :].reshape(3, h, w, c).transpose(0, 3, 1, 2)
        elif layout == "nhwc":
            want = out.transpose(0, 3, 1, 2)
        elif layout == "flat":
            want = out[:, :, None, None]
        else:
            want = out
        maps = adapter.maps(i, capture(model, name_i, x).detach())
        assert tuple(maps.shape) == tuple(evaluation[i].shape) == (3, c, h, w), name_i
        np.testing.assert_allclose(maps.double().numpy(), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(evaluation[i].double().numpy(), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- patches
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0])
def test_token_patches_are_the_patch_and_its_margin(margin):
    """A patch token's field is its 8 x 8 patch widened by ``margin`` patches on each side,
    shifted inwards at the border; the crop of a stimulus is cut at its arg-max token."""
    model = tv_vit(32)
    layer = f"{TV_VIT.format(1)}.mlp.1"
    adapter = ModelAdapter(model, [layer, "conv_proj"])
    adapter.describe(images(1, 32))
    fields = receptive_fields(adapter, (32, 32), margin=margin)
    token, conv = fields[adapter.layer_names.index(layer)], \
        fields[adapter.layer_names.index("conv_proj")]
    side = int(round(8 * (1 + 2 * margin)))
    assert token.size == (side, side) and token.stride == (8.0, 8.0)
    for h in range(4):
        for w in range(4):
            top = min(max(8 * h - int(round(8 * margin)), 0), 32 - side)
            left = min(max(8 * w - int(round(8 * margin)), 0), 32 - side)
            assert token.box(h, w, (32, 32)) == (top, left, top + side, left + side)
    # the patch embedding is an 8 x 8 convolution of stride 8: its field is the patch itself
    assert conv.size == (8, 8)
    assert conv.box(2, 1, (32, 32)) == (16, 8, 24, 16)

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    res = compute_stimuli(adapter, [(x, torch.arange(6))], 6, k_stimuli=2,
                          k_responsive=3).result()
    out = full_outputs(model, [layer], x)[layer]                    # [6, 17, 64]
    offset = adapter.layers_[adapter.layer_names.index(layer)].offset
    for channel in (0, 7, 63):
        image = int(res.stimuli[offset + channel, 0])
        assert image == int(out[:, 1:, channel].max(1).argmax())
        token_index = int(out[image, 1:, channel].argmax())          # class token excluded
        h, w = divmod(token_index, 4)
        assert res.stimuli_loc[offset + channel, 0].tolist() == [h, w]
        (crop,) = crop_patches(pixels, np.array([image]), np.array([[h, w]]), token)
        top = min(max(8 * h - int(round(8 * margin)), 0), 32 - side)
        left = min(max(8 * w - int(round(8 * margin)), 0), 32 - side)
        assert np.array_equal(crop, pixels[image, top:top + side, left:left + side])
        if margin == 0:
            assert np.array_equal(crop, pixels[image, 8 * h:8 * h + 8, 8 * w:8 * w + 8])


def test_class_token_field_is_the_whole_image():
    adapter = ModelAdapter(tv_vit(32), [f"{TV_VIT.format(0)}.mlp.1"], tokens="cls")
    (field,) = receptive_fields(adapter, (32, 32))
    assert field.size == (32, 32) and field.box(0, 0, (32, 32)) == (0, 0, 32, 32)


# ------------------------------------------------------------ detection, overrides
class Scale(nn.Module):
    """Declares no feature size: its layout cannot be read from the module."""

    def forward(self, x):
        return 2 * x


class ToTokens(nn.Module):
    """[B, C, H, W] -> [B, H * W, C], declaring nothing."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class FixedSizeNet(nn.Module):
    """An undeclared module first, then a flattening head: one input size only."""

    def __init__(self):
        super().__init__()
        self.scale = Scale()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x):
        return self.head(self.conv(self.scale(x)).flatten(1))


class SquareTokens(nn.Module):
    """Tokens whose count equals their width (16 patches of 16 channels), any input size."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.tokens = ToTokens()
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.mix(self.tokens(self.embed(x))).mean(1))


def test_undeclared_layer_of_a_fixed_size_model_is_a_clear_error_fixed_by_layouts():
    model = FixedSizeNet().eval()
    x = images(1, 8)
    with pytest.raises(LayerSelectionError) as err:
        ModelAdapter(model, ["scale", "conv"]).describe(x)
    message = str(err.value)
    assert "'scale'" in message and "[1, 3, 8, 8]" in message
    assert "[model] layouts" in message and "docs/models.md" in message
    infos = ModelAdapter(model, ["scale", "conv"], layouts={"scale": "conv"}).describe(x)
    assert [(i.layout, i.channels, i.map_size) for i in infos] == \
        [("conv", 3, (8, 8)), ("conv", 4, (8, 8))]
    # an override is obeyed, and globs work: "nhwc" reads the channels on the last axis
    (info,) = ModelAdapter(model, ["scale"], layouts={"sc*": "nhwc"}).describe(x)
    assert (info.layout, info.channels, info.map_size) == ("nhwc", 8, (3, 8))
    with pytest.raises(LayerSelectionError, match="'scale' = 'chw' is not a layout"):
        ModelAdapter(model, ["scale"], layouts={"scale": "chw"}).describe(x)
    # an override of the wrong rank names the layer
    with pytest.raises(LayerSelectionError, match=r"'scale'.*not a 'tokens' layout"):
        ModelAdapter(model, ["scale"], layouts={"scale": "tokens"}).describe(x)


def test_ambiguous_square_tokens_are_settled_by_a_second_input_size():
    model = SquareTokens().eval()
    x = images(2, 16)                                               # 16 tokens x 16 channels
    adapter = ModelAdapter(model, ["tokens", "mix"])
    infos = adapter.describe(x[:1])
    assert [(i.layout, i.prefix, i.map_size, i.channels) for i in infos] == \
        [("tokens", 0, (4, 4), 16)] * 2
    expected = {"tokens": ("tokens", 0, (4, 4), 16), "mix": ("tokens", 0, (4, 4), 16)}
    acts, where, _ = reference(model, expected, x, order=adapter.layer_names)
    with torch.no_grad():
        ours, loc, _ = adapter.activations(x)
    np.testing.assert_allclose(ours.numpy(), acts, rtol=1e-6, atol=1e-6)
    assert np.array_equal(loc.numpy(), where)
    # without the second pass (detect_layouts alone) the same layers are an error
    with pytest.raises(LayerSelectionError, match="cannot tell the channels of layer 'tokens'"):
        detect_layouts(model, ["tokens"], x[:1], model)
    found = detect_layouts(model, ["tokens"], x[:1], model, layouts={"tokens": "tokens"})
    assert found["tokens"].kind == "tokens"


def test_a_layer_whose_first_axis_is_not_the_image_is_refused():
    """Swin's window attention works on [B * windows, N, C]: no row per image."""
    model = timm_swin(56)
    with pytest.raises(LayerSelectionError, match=r"'layers\.0\.blocks\.0\.attn\.qkv'.*first "
                                                  r"axis is not the image"):
        ModelAdapter(model, ["layers.0.blocks.0.attn.qkv"]).describe(images(1, 56))

    class SequenceFirst(nn.Module):  # nn.MultiheadAttention without batch_first: [T, B, C]
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.attn = nn.MultiheadAttention(8, 2)
            self.proj = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            t = self.embed(x).flatten(2).permute(2, 0, 1)           # [T, B, C]
            return self.head(self.proj(self.attn(t, t, t)[0]).mean(0))

    with pytest.raises(LayerSelectionError, match="'proj'.*first axis is not the image"):
        ModelAdapter(SequenceFirst().eval(), ["proj"]).describe(images(1, 16))


# --------------------------------------------------------------------- importance
def per_image_sensitivity(model_t, model_t2, layers: dict[str, str], x: torch.Tensor, c: int
                          ) -> np.ndarray:
    """The reference's loop: for every image and every layer (name -> layout) separately,
    autograd of the class logit of M^t w.r.t. that layer's whole output, times the change of
    the output from M^t to M^t', summed over all tokens/positions, per channel.
    -> [B, n_neurons]"""
    modules_t = dict(model_t.named_modules())
    position_axes = {"conv": (2, 3), "nhwc": (1, 2), "tokens": (1,)}
    rows = []
    for b in range(len(x)):
        xi = x[b:b + 1]
        parts = []
        for layer, layout in layers.items():
            with torch.no_grad():
                later = capture(model_t2, layer, xi)
            earlier: list[torch.Tensor] = []
            h = modules_t[layer].register_forward_hook(
                lambda module, inputs, output, kept=earlier: kept.append(output))
            logit = model_t(xi)[0, c]
            h.remove()
            (grad,) = torch.autograd.grad(logit, earlier[0])
            product = grad * (later - earlier[0].detach())
            parts.append(product.sum(position_axes[layout])[0])
        rows.append(torch.cat(parts))
    return torch.stack(rows).numpy()


def importance_pair(family: str):
    """Two float64 models of ``family`` with different random weights, and the probed layers
    (name -> layout, in named_modules() order), for 32 x 32 images (Swin: 56)."""
    if family == "torchvision-vit":
        pair = tv_vit(32, 0, torch.float64), tv_vit(32, 1, torch.float64)
        return pair, {"conv_proj": "conv", f"{TV_VIT.format(0)}.mlp.1": "tokens",
                      f"{TV_VIT.format(1)}.ln_2": "tokens",
                      f"{TV_VIT.format(1)}.mlp.3": "tokens"}, 32
    if family == "timm-vit":
        pair = timm_vit(32, 0, reg_tokens=2).double(), timm_vit(32, 1, reg_tokens=2).double()
        for m in pair:  # timm's class and register tokens start near zero
            with torch.no_grad():
                m.cls_token.normal_(0, 0.5)
                m.reg_token.normal_(0, 0.5)
                m.head.weight.normal_(0, 0.3)
        return pair, {"blocks.0.mlp.act": "tokens", "blocks.1.attn.qkv": "tokens",
                      "blocks.1.mlp.act": "tokens"}, 32
    if family == "timm-convnext":
        pair = (timm_convnext(0, ls_init_value=1.0).double(),
                timm_convnext(1, ls_init_value=1.0).double())
        return pair, {"stages.0.blocks.0.mlp.act": "nhwc", "stages.1.blocks.0.conv_dw": "conv",
                      "stages.1.blocks.1.norm": "nhwc"}, 32
    pair = timm_swin(56, 0).double(), timm_swin(56, 1).double()
    return pair, {"layers.0.blocks.0.norm1": "nhwc", "layers.0.blocks.0.mlp.act": "tokens",
                  "layers.1.blocks.0.mlp.fc1": "tokens"}, 56


@pytest.mark.parametrize("family", ["torchvision-vit", "timm-vit", "timm-convnext",
                                    "timm-swin"])
def test_importance_equals_the_per_image_per_layer_autograd_reference(family):
    (m_t, m_t2), layers, size = importance_pair(family)
    x = images(3, size, seed=5).double()
    a_t, a_t2 = ModelAdapter(m_t, list(layers)), ModelAdapter(m_t2, list(layers))
    assert a_t.layer_names == list(layers)
    a_t.describe(x[:1])
    assert [i.layout for i in a_t.layers_] == list(layers.values())
    for c in (0, 3):
        ours = batch_sensitivity(a_t, a_t2, x, c).numpy()
        ref = per_image_sensitivity(m_t, m_t2, layers, x, c)
        assert ours.shape == ref.shape == (3, a_t.n_neurons)
        assert np.abs(ref).max() > 1e-3  # (a reference that is not trivially zero)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


#: family -> (model of a seed, its first MLP Linear to change, the activation after it,
#: its hidden units, input size)
REVERSION_CASES = {
    "torchvision-vit": (lambda: tv_vit(32, 0, torch.float64),
                        lambda m: m.encoder.layers[1].mlp[0], f"{TV_VIT.format(1)}.mlp.1",
                        64, 32),
    "timm-convnext": (lambda: timm_convnext(0, ls_init_value=1.0).double(),
                      lambda m: m.stages[1].blocks[0].mlp.fc1, "stages.1.blocks.0.mlp.act",
                      320, 32),
    "timm-swin": (lambda: timm_swin(56, 0).double(), lambda m: m.layers[0].blocks[0].mlp.fc1,
                  "layers.0.blocks.0.mlp.act", 96, 56),
}


@pytest.mark.parametrize("family", list(REVERSION_CASES))
def test_reverting_a_layer_gives_the_earlier_model_downstream(family):
    """M^t and M^t' differ only in one MLP's first Linear; the activation after it is the
    probed layer (tokens or [B, H, W, C]). Reverting all its channels gives M^t's logits,
    none M^t''s, and some as if those hidden units (rows of the Linear) were M^t's."""
    build, fc1_of, layer, hidden, size = REVERSION_CASES[family]
    m_t, m_t2 = build(), build()
    fc1 = fc1_of(m_t2)
    with torch.no_grad():
        fc1.weight.add_(torch.randn(fc1.weight.shape, generator=torch.Generator()
                                    .manual_seed(9), dtype=torch.float64) * 0.5)
        fc1.bias.add_(0.3)
    a_t, a_t2 = ModelAdapter(m_t, [layer]), ModelAdapter(m_t2, [layer])
    x = images(8, size, seed=6).double()
    for a in (a_t, a_t2):
        a.describe(x[:1])
    assert a_t2.layers_[0].channels == hidden
    with torch.no_grad():
        logits_t, logits_t2 = m_t(x), m_t2(x)
    assert (logits_t - logits_t2).abs().max() > 1e-3      # the models do differ
    source = capture(m_t, layer, x)
    every = torch.arange(hidden)
    with torch.no_grad(), replace_channels(a_t2, 0, every, lambda: source):
        reverted = m_t2(x)
    torch.testing.assert_close(reverted, logits_t, rtol=0, atol=1e-12)
    with torch.no_grad(), replace_channels(a_t2, 0, every[:0], lambda: source):
        torch.testing.assert_close(m_t2(x), logits_t2, rtol=0, atol=0)

    some = torch.tensor([0, 5, 17, 40, hidden - 1])
    hybrid = build()
    hybrid.load_state_dict(m_t2.state_dict())
    fc1_t, fc1_h = fc1_of(m_t), fc1_of(hybrid)
    with torch.no_grad():
        fc1_h.weight[some] = fc1_t.weight[some]
        fc1_h.bias[some] = fc1_t.bias[some]
        want = hybrid(x)
    with torch.no_grad(), replace_channels(a_t2, 0, some, lambda: source):
        torch.testing.assert_close(m_t2(x), want, rtol=0, atol=1e-12)
    assert (want - logits_t).abs().max() > 1e-6 and (want - logits_t2).abs().max() > 1e-6

    # reversion_hits: every set in one pass (the batch repeated per set)
    for c in range(N_CLASSES):
        top1, top5 = reversion_hits(a_t, a_t2, x, c, [(0, every), (0, every[:0]), (0, some)])
        for row, logits in ((0, logits_t), (1, logits_t2), (2, want)):
            h1, h5 = class_hits(logits, c)
            assert top1[row].tolist() == h1.tolist() and top5[row].tolist() == h5.tolist()
