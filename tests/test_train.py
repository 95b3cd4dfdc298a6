"""The trainer: per-epoch checkpoints, regimes, determinism and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptevo.config import load_config
from conceptevo.data.concept_world import ConceptWorld
from conceptevo.data.models import SmallResNet, SmallVGG, SmallViT
from conceptevo.errors import ConfigError
from conceptevo.models.checkpoints import find_checkpoints, load_checkpoint
from conceptevo.stages import train as train_stage
from conceptevo.stages.context import Context
from conceptevo.train import (
    RECIPES,
    REGIMES,
    VIT_REGIMES,
    TrainConfig,
    config_dict,
    train,
    train_config,
    translate_batch,
)
from conceptevo.workspace import Workspace

TINY = {"widths": [4, 8], "depth": 1, "hidden": 8}


@pytest.fixture(scope="module")
def world_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    world = ConceptWorld(image_size=32, seed=3)
    world.write_image_folder(root / "train", 96, split="train")
    world.write_image_folder(root / "val", 48, split="val")
    return root


def study(tmp_path, world_dirs, epochs=2, regime="healthy"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "study.toml"
    path.write_text(f"""
workspace = "ws"
device = "cpu"
[probe]
root = "{(world_dirs / 'train').as_posix()}"
per_class = 2
image_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[model]
arch = "conceptevo:small_vgg"
kwargs = {{ num_classes = 12, widths = [4, 8], depth = 1, hidden = 8 }}
[stimuli]
k_stimuli = 3
k_responsive = 3
[training]
train_root = "{(world_dirs / 'train').as_posix()}"
val_root = "{(world_dirs / 'val').as_posix()}"
[[runs]]
name = "r"
checkpoints = "ckpt/r"
train = {{ regime = "{regime}", epochs = {epochs}, batch_size = 16 }}
""")
    return load_config(path)


def test_training_writes_a_loadable_checkpoint_per_epoch_and_metrics(tmp_path, world_dirs):
    cfg = study(tmp_path, world_dirs, epochs=2)
    ws = Workspace(cfg.workspace_path, create=True)
    report = train_stage.ensure_training(Context.create(cfg, ws))
    assert report.computed == [("r", 0), ("r", 1), ("r", 2)]
    ckpts = find_checkpoints(tmp_path / "ckpt" / "r")
    assert [c.epoch for c in ckpts] == [0, 1, 2]
    models = [load_checkpoint(SmallVGG(12, **TINY), c.path) for c in ckpts]
    assert not torch.equal(models[0].features.conv1_1.weight, models[2].features.conv1_1.weight)
    rows = ws.load_metrics("r")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["val_acc"] <= 1 and r["train_loss"] > 0 for r in rows)
    # a finished run is not trained again
    assert train_stage.ensure_training(Context.create(cfg, ws)).computed == []


def test_resumed_training_ends_with_identical_weights(tmp_path, world_dirs, monkeypatch):
    whole = study(tmp_path / "a", world_dirs, epochs=3)
    train_stage.ensure_training(Context.create(whole, Workspace(whole.workspace_path, create=True)))

    cfg = study(tmp_path / "b", world_dirs, epochs=3)
    ws = Workspace(cfg.workspace_path, create=True)
    real = train_stage.save_checkpoint

    class Killed(BaseException):
        pass

    def die_at_epoch_2(path, model, epoch, *a):
        if epoch == 2:
            raise Killed
        real(path, model, epoch, *a)

    monkeypatch.setattr(train_stage, "save_checkpoint", die_at_epoch_2)
    try:
        train_stage.ensure_training(Context.create(cfg, ws))
        raise AssertionError("not interrupted")
    except Killed:
        pass
    monkeypatch.setattr(train_stage, "save_checkpoint", real)
    report = train_stage.ensure_training(Context.create(cfg, ws))
    assert report.computed == [("r", 2), ("r", 3)]
    a = torch.load(tmp_path / "a" / "ckpt" / "r" / "epoch_0003.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt" / "r" / "epoch_0003.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert [r["epoch"] for r in ws.load_metrics("r")] == [0, 1, 2, 3]


def test_same_seed_same_weights_and_regimes_differ():
    world = ConceptWorld(image_size=32, seed=1)
    tr, va = world.generate(48, "train"), world.generate(24, "val")

    def run(regime, seed=0):
        torch.manual_seed(seed)
        model = SmallVGG(12, **TINY)
        train(model, tr.images, tr.labels, va.images, va.labels,
              train_config(regime, epochs=1, seed=seed, batch_size=16))
        return model.state_dict()

    a, b = run("healthy"), run("healthy")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = run("lr-too-high")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_regime_presets_and_errors():
    assert set(REGIMES) == {"healthy", "lr-too-high", "overfit",   # the paper's, and the zoo's
                            "lr-high", "lr-too-low", "label-noise", "frozen-layer", "shortcut"}
    hi, ok = train_config("lr-too-high"), train_config("healthy")
    assert hi.lr >= 5 * ok.lr
    over = train_config("overfit", epochs=3)
    assert not over.augment and over.train_subset and over.epochs == 3
    with pytest.raises(ConfigError, match="unknown training regime"):
        train_config("too-fast")
    with pytest.raises(ConfigError, match="lr must be a positive"):
        train_config("healthy", lr=-1.0)


def test_vit_recipe_presets_and_errors():
    assert RECIPES == {"cnn": REGIMES, "vit": VIT_REGIMES}
    assert set(VIT_REGIMES) == {"healthy", "lr-too-high", "overfit"} <= set(REGIMES)
    vit = {r: train_config(r, "vit") for r in VIT_REGIMES}
    assert all(c.recipe == "vit" and c.optimizer == "adamw" and c.warmup_epochs >= 1
               for c in vit.values())
    assert vit["healthy"].epochs > train_config("healthy").epochs  # ViTs need more epochs
    assert vit["lr-too-high"].lr >= 10 * vit["healthy"].lr
    assert not vit["overfit"].augment and vit["overfit"].train_subset == 10
    # the table of a study file: recipe and regime, then the keys given
    cfg = TrainConfig.from_mapping({"recipe": "vit", "regime": "overfit", "epochs": 3})
    assert (cfg.recipe, cfg.regime, cfg.epochs, cfg.lr) == ("vit", "overfit", 3,
                                                           VIT_REGIMES["overfit"]["lr"])
    with pytest.raises(ConfigError, match="unknown training recipe 'transformer'"):
        train_config("healthy", "transformer")
    with pytest.raises(ConfigError, match="recipe must be one of"):
        TrainConfig(recipe="rnn").validate()


def test_the_cnn_regimes_and_their_run_identity_are_unchanged():
    """The CNN's presets, and the settings that identify a run (a finished run is found by
    them): as before recipes existed, so existing demo workspaces are not trained again."""
    assert {k: REGIMES[k] for k in ("healthy", "lr-too-high", "overfit")} == {
        "healthy": {"lr": 3e-3, "augment": True, "train_subset": None, "weight_decay": 1e-4},
        "lr-too-high": {"lr": 3e-2, "augment": True, "train_subset": None,
                        "weight_decay": 1e-4},
        "overfit": {"lr": 3e-3, "augment": False, "train_subset": 10, "repeat": 30,
                    "batch_size": 32, "weight_decay": 0.0}}
    assert config_dict(train_config("healthy")) == {
        "regime": "healthy", "epochs": 8, "optimizer": "adamw", "lr": 3e-3, "momentum": 0.9,
        "weight_decay": 1e-4, "batch_size": 64, "augment": True, "translate": 6,
        "train_subset": None, "repeat": 1, "schedule": "cosine", "warmup_epochs": 0,
        "seed": 0}
    assert config_dict(train_config("healthy", "vit"))["recipe"] == "vit"


def test_a_tiny_vit_trains_and_its_cnn_twin_is_unaffected():
    world = ConceptWorld(image_size=32, seed=1)
    tr, va = world.generate(48, "train"), world.generate(24, "val")
    torch.manual_seed(0)
    model = SmallViT(12, image_size=32, patch_size=8, dim=16, depth=1, heads=2, mlp_dim=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = train(model, tr.images, tr.labels, va.images, va.labels,
                    train_config("healthy", "vit", epochs=2, batch_size=16))
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(h["finite"] for h in history)
    # the warm-up: the first epoch's last step is at a fraction of the peak rate
    assert 0 < history[1]["lr"] <= VIT_REGIMES["healthy"]["lr"] / 2 + 1e-12
    after = model.state_dict()
    assert not torch.equal(before["blocks.0.mlp.fc1.weight"], after["blocks.0.mlp.fc1.weight"])


def test_translate_batch_matches_a_per_image_crop():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out = translate_batch(x, 2, g1)
    dy, dx = torch.randint(0, 5, (2,), generator=g2), torch.randint(0, 5, (2,), generator=g2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        ref = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]
        assert torch.equal(out[i], ref)


def test_demo_models_are_plain_modules():
    for model in (SmallVGG(12), SmallResNet(12), SmallViT(12)):
        out = model(torch.zeros(2, 3, 64, 64))
        assert out.shape == (2, 12)
        assert isinstance(model, torch.nn.Module)
    assert np.isclose(sum(p.numel() for p in SmallVGG(12).parameters()) / 1e3, 300, atol=200)


def test_small_vit_is_probed_at_its_mlp_hidden_units_on_the_patch_grid():
    from conceptevo.models.adapter import ModelAdapter
    from conceptevo.models.registry import build_model

    model = build_model("conceptevo:small_vit", {"num_classes": 12, "dropout": 0.0}).eval()
    adapter = ModelAdapter(model)
    layers = adapter.describe(torch.zeros(1, 3, 64, 64))
    assert [li.name for li in layers] == [f"blocks.{i}.mlp.act" for i in range(4)]
    assert all((li.layout, li.prefix, li.map_size, li.channels) == ("tokens", 1, (8, 8), 128)
               for li in layers)
    # a unit's activation is its maximum over the 64 patch tokens (the class token left out),
    # located at the arg-max token: the cell of the 8x8 patch grid
    x = torch.randn(3, 3, 64, 64)
    acts, where, _ = adapter.activations(x)
    seen = {}
    handle = model.blocks[2].mlp.act.register_forward_hook(
        lambda m, i, out: seen.setdefault("out", out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    patches = seen["out"][:, 1:, :]                                  # [3, 64, 128]
    sl = slice(layers[2].offset, layers[2].offset + 128)
    assert torch.allclose(acts[:, sl], patches.amax(1))
    assert torch.equal(where[:, sl], patches.argmax(1))
    with pytest.raises(ValueError, match="must divide"):
        SmallViT(12, image_size=64, patch_size=7)
    with pytest.raises(ValueError, match="multiple of heads"):
        SmallViT(12, dim=30, heads=4)
