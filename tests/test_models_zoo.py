"""Models from the zoos: torchvision, timm (``timm:NAME``) and Hugging Face (``hf:TYPE``,
``hf:PATH``) built by name, their checkpoints in the layouts those libraries save, the
layers ``conceptevo layers`` lists for real sizes, and studies of timm and Hugging Face
models built end to end."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from conftest import write_image_folder, write_study
from torch import nn

from conceptevo.cli import main
from conceptevo.errors import CheckpointError, ConfigError
from conceptevo.models.adapter import default_layers
from conceptevo.models.checkpoints import find_checkpoints, load_checkpoint, read_checkpoint
from conceptevo.models.registry import BUILTIN_NAMESPACES, build_model

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SPACE = """
[space]
dim = 4
epochs = 3
umap_neighbors = 5
"""
TIMM_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2,
            "mlp_ratio": 2, "num_classes": 3}
HF_VIT = {"num_classes": 3, "image_size": 32, "patch_size": 8, "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a shared CPU, OpenMP threads waiting for each other cost far more than
    these models' operations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys, caplog):
    """Run the command line: (exit code, stdout, stderr with the log records)."""
    import logging

    def run(*argv) -> tuple[int, str, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="conceptevo"):
            code = main([*map(str, argv)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err + caplog.text

    return run


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def hf_vit(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("hf:vit", {**HF_VIT, **overrides})


def timm_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("timm:vit_tiny_patch16_224", TIMM_VIT)


# ------------------------------------------------------------------------ registry
def test_timm_models_by_name_download_nothing():
    model = build_model("timm:convnext_atto", {"num_classes": 4, "conv_mlp": False})
    assert type(model).__name__ == "ConvNeXt" and model.head.fc.out_features == 4
    with pytest.raises(ConfigError, match="did you mean vit_tiny_patch16_224"):
        build_model("timm:vit_tiny_patch16_22")
    with pytest.raises(ConfigError, match="remove `pretrained`"):
        build_model("timm:resnet18", {"pretrained": True})
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path"):
        with pytest.raises(ConfigError, match=f"remove {key} from kwargs"):
            build_model("timm:resnet18", {key: "x"})
    for name in ("hf-hub:timm/resnet18.a1_in1k", "local-dir:/tmp/model"):
        with pytest.raises(ConfigError, match="hub and directory sources"):
            build_model(f"timm:{name}")
    with pytest.raises(ConfigError, match="unexpected keyword argument 'nope'"):
        build_model("timm:resnet18", {"nope": 1})
    # a pretrained tag only names a configuration: no weights are loaded
    assert type(build_model("timm:resnet18.a1_in1k", {"num_classes": 2})).__name__ == "ResNet"


def test_hf_models_by_model_type_and_by_local_config(tmp_path):
    model = hf_vit()
    assert type(model).__name__ == "ViTForImageClassification"
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    deit = build_model("hf:deit", {**HF_VIT, "architectures":
                                   ["DeiTForImageClassificationWithTeacher"]})
    assert type(deit).__name__ == "DeiTForImageClassificationWithTeacher"
    assert type(build_model("hf:deit", HF_VIT)).__name__ == "DeiTForImageClassification"
    with pytest.raises(ConfigError, match="no image classification model type 'vitt'; did "
                                          "you mean vit"):
        build_model("hf:vitt")
    with pytest.raises(ConfigError, match="no image classification model type 'bert'"):
        build_model("hf:bert")
    with pytest.raises(ConfigError, match="no option 'hiden_size' \\(did you mean "
                                          "'hidden_size'\\?\\)"):
        build_model("hf:vit", {"hiden_size": 32})
    with pytest.raises(ConfigError, match="num_labels or num_classes, not both"):
        build_model("hf:vit", {"num_classes": 3, "num_labels": 3})
    for key in ("trust_remote_code", "revision", "token"):
        with pytest.raises(ConfigError, match=f"remove {key} from kwargs"):
            build_model("hf:vit", {key: True})

    # a config.json (as save_pretrained writes it), or the directory holding it
    model.config.save_pretrained(tmp_path / "vit")
    for where in (tmp_path / "vit", tmp_path / "vit" / "config.json"):
        built = build_model(f"hf:{where}", {"num_labels": 3})
        assert type(built).__name__ == "ViTForImageClassification"
        assert built.config.hidden_size == 32
    assert build_model(f"hf:{tmp_path / 'vit'}", {"num_hidden_layers": 1}) \
        .config.num_hidden_layers == 1
    with pytest.raises(ConfigError, match="has no option 'nope'"):
        build_model(f"hf:{tmp_path / 'vit'}", {"nope": 1})
    with pytest.raises(ConfigError, match="no Hugging Face configuration at"):
        build_model(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "config.json").write_text(json.dumps(
        {"model_type": "my_remote_vit", "auto_map": {"AutoConfig": "code.MyConfig"}}))
    with pytest.raises(ConfigError, match="transformers cannot read"):
        build_model(f"hf:{tmp_path / 'custom'}")
    (tmp_path / "custom" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no \"model_type\" entry"):
        build_model(f"hf:{tmp_path / 'custom'}")


def test_timm_and_hf_are_builtin_namespaces_built_from_a_workspace():
    assert {"timm", "hf"} <= set(BUILTIN_NAMESPACES)
    # a configuration read back from a workspace (allow_code=False) builds them
    assert type(build_model("hf:vit", HF_VIT, allow_code=False)).__name__ == \
        "ViTForImageClassification"
    assert type(build_model("timm:resnet18", {}, allow_code=False)).__name__ == "ResNet"


def test_missing_libraries_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)       # import timm raises ImportError
    with pytest.raises(ConfigError, match=r"pip install conceptevo\[timm\]"):
        build_model("timm:resnet18")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"pip install conceptevo\[hf\]"):
        build_model("hf:vit")


# ---------------------------------------------------------------------- checkpoints
def test_timm_state_dict_and_train_py_checkpoints_load(tmp_path):
    saved = timm_vit(1)
    ema = timm_vit(2)
    torch.save(saved.state_dict(), tmp_path / "epoch_1.pth")
    # timm's train.py: the model and its EMA, the optimizer, and its arguments (a Namespace)
    torch.save({"epoch": 2, "arch": "vit_tiny_patch16_224", "state_dict": saved.state_dict(),
                "optimizer": torch.optim.SGD(saved.parameters(), lr=0.1).state_dict(),
                "version": 2, "args": argparse.Namespace(model="vit_tiny_patch16_224",
                                                         lr=0.1, input_size=[3, 32, 32],
                                                         aa=None, model_ema=True),
                "metric": 0.5, "state_dict_ema": ema.state_dict()},
               tmp_path / "checkpoint-2.pth.tar")
    # a file holding the EMA weights only, with DDP's prefix
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in ema.state_dict().items()}},
               tmp_path / "checkpoint-3.pth.tar")
    assert [c.epoch for c in find_checkpoints(tmp_path)] == [1, 2, 3]
    for name, want in (("epoch_1.pth", saved), ("checkpoint-2.pth.tar", saved),
                       ("checkpoint-3.pth.tar", ema)):
        model = timm_vit(0)
        load_checkpoint(model, tmp_path / name)  # safe loading: no --trust-checkpoints
        assert same_weights(model, want), name


def test_hf_save_pretrained_directories_are_checkpoints(tmp_path):
    models = [hf_vit(seed) for seed in range(3)]
    ckpt = tmp_path / "out"
    for epoch, model in enumerate(models):
        model.save_pretrained(ckpt / f"checkpoint-{epoch}")   # as the Trainer writes them
    (ckpt / "runs").mkdir()                                   # (a directory of logs)
    for pattern in (ckpt / "checkpoint-{epoch}", ckpt, ckpt / "checkpoint-*",
                    ckpt / "checkpoint-{epoch}/"):
        found = find_checkpoints(str(pattern))
        assert [c.epoch for c in found] == [0, 1, 2], pattern
        assert all(c.path.name == "model.safetensors" for c in found)
    for epoch, model in enumerate(models):
        fresh = hf_vit(7)
        load_checkpoint(fresh, find_checkpoints(ckpt)[epoch].path)
        assert same_weights(fresh, model)
        fresh = hf_vit(7)
        load_checkpoint(fresh, ckpt / f"checkpoint-{epoch}")  # the directory itself
        assert same_weights(fresh, model)
    # the keys are in the layout transformers saves, which may not be the module names
    saved = read_checkpoint(ckpt / "checkpoint-0")
    assert any(k.startswith("vit.") for k in saved)

    with pytest.raises(CheckpointError, match=r"does not fit ViTForImageClassification.*"
                                              r"classifier\.weight \(file \(3, 32\) vs model "
                                              r"\(5, 32\)\)"):
        load_checkpoint(hf_vit(0, num_classes=5), ckpt / "checkpoint-0")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(hf_vit(0, num_hidden_layers=3), ckpt / "checkpoint-0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no model weights; expected one of "
                                              "model.safetensors"):
        read_checkpoint(tmp_path / "empty")
    # the top of a Trainer's output: one model, no epoch number
    models[0].save_pretrained(tmp_path / "final")
    with pytest.raises(CheckpointError, match="weights file of one model directory"):
        find_checkpoints(tmp_path / "final")


def test_hf_pytorch_model_bin_and_sharded_checkpoints_load(tmp_path):
    model = hf_vit(3)
    model.save_pretrained(tmp_path / "safe")
    # transformers 4's pytorch_model.bin: torch.save of the same saved layout
    (tmp_path / "bin").mkdir()
    torch.save(read_checkpoint(tmp_path / "safe"), tmp_path / "bin" / "pytorch_model.bin")
    # sharded weights: an index naming the shard of every key
    model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    for where in ("bin", "shards"):
        fresh = hf_vit(0)
        load_checkpoint(fresh, tmp_path / where)
        assert same_weights(fresh, model), where
    index = tmp_path / "shards" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../safe/model.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a file beside it"):
        read_checkpoint(tmp_path / "shards")


# ---------------------------------------------------------------- default layers
@pytest.mark.parametrize("arch,kwargs,size,expected", [
    ("torchvision:vit_b_16", {"image_size": 32}, 32,
     [f"encoder.layers.encoder_layer_{i}.mlp.1" for i in range(12)]),
    ("timm:vit_tiny_patch16_224", TIMM_VIT, 32, ["blocks.0.mlp.act", "blocks.1.mlp.act"]),
    ("timm:swin_tiny_patch4_window7_224", {"img_size": 56, "embed_dim": 24,
                                           "depths": (1, 1), "num_heads": (1, 2)}, 56,
     ["layers.0.blocks.0.mlp.act", "layers.1.blocks.0.mlp.act"]),
])
def test_default_layers_are_the_mlp_hidden_layers_of_transformers(arch, kwargs, size, expected):
    model = build_model(arch, kwargs)
    layers, rule = default_layers(model)
    assert layers == expected and rule.startswith("the MLP hidden layer")


def test_default_layers_of_a_timm_convnext_are_its_convolutions():
    model = build_model("timm:convnext_atto", {"conv_mlp": False})
    layers, rule = default_layers(model)
    assert rule == "every Conv2d"
    assert layers == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_default_layers_of_hugging_face_transformers_are_their_mlp_activations():
    model = hf_vit()
    activations = [n for n, m in model.named_modules()
                   if type(m).__name__ == "GELUActivation"]
    layers, rule = default_layers(model)
    assert len(activations) == 2
    assert layers == activations and rule.startswith("the MLP hidden layer")


# ------------------------------------------------------------- conceptevo layers
def layer_rows(out: str) -> dict[str, list[str]]:
    """``conceptevo layers`` table rows: name -> [type, layout, channels, map, neurons]."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[3].isdigit() and "x" in parts[4]:
            rows[parts[0]] = parts[1:]
    return rows


def test_layers_of_torchvision_vit_b_16_at_its_real_size(cli):
    code, out, err = cli("layers", "--arch", "torchvision:vit_b_16", "--kwargs",
                         '{"num_classes": 10}')
    assert code == 0, err
    assert "layers: the MLP hidden layer (after the activation) of every block (the default " \
           "for this model" in out
    rows = layer_rows(out)
    assert list(rows) == [f"encoder.layers.encoder_layer_{i}.mlp.1" for i in range(12)]
    for i, (kind, layout, channels, grid, neurons) in enumerate(rows.values()):
        assert (kind, layout, channels, grid) == ("GELU", "tokens+1", "3072", "14x14")
        assert neurons == f"{3072 * i}-{3072 * (i + 1) - 1}"
    assert "12 layers, 36864 neurons (input 224x224" in out

    # the user's report: every module of one MLP, read on the channel axis (not 197 tokens)
    code, out, err = cli("layers", "--arch", "torchvision:vit_b_16", "--kwargs",
                         '{"num_classes": 10}', "--layers",
                         "encoder.layers.encoder_layer_0.mlp.*")
    assert code == 0, err
    rows = layer_rows(out)
    mlp = "encoder.layers.encoder_layer_0.mlp"
    assert {name: (r[0], r[1], r[2], r[3]) for name, r in rows.items()} == {
        f"{mlp}.0": ("Linear", "tokens+1", "3072", "14x14"),
        f"{mlp}.1": ("GELU", "tokens+1", "3072", "14x14"),
        f"{mlp}.2": ("Dropout", "tokens+1", "3072", "14x14"),
        f"{mlp}.3": ("Linear", "tokens+1", "768", "14x14"),
        f"{mlp}.4": ("Dropout", "tokens+1", "768", "14x14")}
    assert "layers: " not in out.splitlines()[0]  # (a selection: no default said)


def test_layers_of_timm_convnext_tiny_follow_its_stage_widths(cli):
    model = timm.create_model("convnext_tiny", pretrained=False)
    widths = [info["num_chs"] for info in model.feature_info]
    assert widths == [96, 192, 384, 768]
    code, out, err = cli("layers", "--arch", "timm:convnext_tiny", "--input-size", "64")
    assert code == 0, err
    assert "layers: every Conv2d (the default for this model" in out
    rows = layer_rows(out)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert list(rows) == list(convs)
    for name, (kind, layout, channels, grid, _) in rows.items():
        assert (kind, layout) == ("Conv2d", "conv")
        assert int(channels) == convs[name].out_channels
        if ".conv_dw" in name:
            stage = int(name.split(".")[1])
            assert int(channels) == widths[stage], name
            side = 64 // 4 // 2 ** stage
            assert grid == f"{side}x{side}", name
    assert sum(".conv_dw" in n for n in rows) == 3 + 3 + 9 + 3


def test_layers_of_a_timm_convnext_with_linear_mlps_are_channels_last(cli):
    code, out, err = cli("layers", "--arch", "timm:convnext_atto", "--kwargs",
                         '{"conv_mlp": false}', "--input-size", "32", "--layers",
                         "stages.0.blocks.0.*")
    assert code == 0, err
    rows = layer_rows(out)
    block = "stages.0.blocks.0"
    assert rows[f"{block}.conv_dw"][:4] == ["Conv2d", "conv", "40", "8x8"]
    assert rows[f"{block}.norm"][:4] == ["LayerNorm", "nhwc", "40", "8x8"]
    assert rows[f"{block}.mlp.fc1"][:4] == ["Linear", "nhwc", "160", "8x8"]
    assert rows[f"{block}.mlp.act"][:4] == ["GELU", "nhwc", "160", "8x8"]


def test_layers_of_an_hf_vit(cli, tmp_path):
    hf_vit().config.save_pretrained(tmp_path / "vit")
    code, out, err = cli("layers", "--arch", f"hf:{tmp_path / 'vit'}", "--layers",
                         "*.mlp.activation_fn,*mlp.fc2,classifier")
    assert code == 0, err
    assert "input size: 32" in out  # (the size the model takes, found and said)
    rows = layer_rows(out)
    acts = [r for n, r in rows.items() if n.endswith("activation_fn")]
    assert len(acts) == 2 and all(r[1:4] == ["tokens+1", "64", "4x4"] for r in acts)
    assert rows["classifier"][:4] == ["Linear", "flat", "3", "1x1"]
    # read at the class token: one position per hidden unit
    code, out, err = cli("layers", "--arch", f"hf:{tmp_path / 'vit'}", "--layers",
                         "*.mlp.activation_fn", "--tokens", "cls", "--input-size", "32")
    assert code == 0, err
    assert all(r[1:4] == ["tokens+1", "64", "1x1"] for r in layer_rows(out).values())


# ------------------------------------------------------------------- whole studies
def write_zoo_study(root, arch: str, kwargs: dict, checkpoints: str, layers=None):
    images = write_image_folder(root / "images", per_class=6, size=24)
    model = (f"layers = {json.dumps(layers)}\n" if layers is not None else "") + \
        "[model.kwargs]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kwargs.items())
    cfg = write_study(root, images, checkpoints, arch=arch, image_size=32, model=model)
    cfg.write_text(cfg.read_text() + "\n[importance]\nimages = 4\n" + SPACE)
    return cfg


def check_study(cli, cfg, root, layer_names: list[str]) -> None:
    code, out, err = cli("build", "--config", cfg)
    assert code == 0, err
    code, out, err = cli("importance", "--config", cfg, "--run", "a", "--class", "cat")
    assert code == 0, err
    from conceptevo.serve.data import StudyData
    from conceptevo.stages.importance import load_importance, stored_importance
    from conceptevo.workspace import Workspace

    ws = Workspace(root / "ws")
    (run, c, t, t2), = stored_importance(ws)
    result, _ = load_importance(ws, run, c, t, t2)
    assert [i.name for i in result.layers] == layer_names
    assert all(i.layout == "tokens" and i.prefix == 1 and i.map_size == (4, 4)
               for i in result.layers)
    assert np.isfinite(result.mean_sensitivity).all()

    data = StudyData(ws.root)
    stimuli = ws.load_stimuli("a", 2)
    assert [i.name for i in stimuli.layers] == layer_names
    assert stimuli.stimuli_loc.max() < 4  # (h, w) on the 4 x 4 patch grid
    neuron = stimuli.layers[-1].offset + 3
    info = data.neuron("a", 2, neuron)
    assert info["layer"] == layer_names[-1] and info["channel"] == 3
    assert info["stimuli"] == stimuli.stimuli[neuron].tolist()
    strip = data.patch_image("a", 2, neuron)
    assert strip[:4] == b"RIFF" and strip[8:12] == b"WEBP"
    fields = data.fields("a")
    # a token's field: its 8 x 8 patch and half a patch around it (patch_margin 0.5)
    assert all(f.size == (16, 16) and f.stride == (8.0, 8.0) for f in fields)


def test_a_timm_vit_study_builds_and_ranks_importance(tmp_path, cli):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for epoch in range(3):  # as timm's train.py saves them
        model = timm_vit(epoch)
        torch.save({"epoch": epoch, "arch": "vit_tiny_patch16_224",
                    "state_dict": model.state_dict(), "version": 2,
                    "args": argparse.Namespace(model="vit_tiny_patch16_224", lr=0.01)},
                   ckpt / f"checkpoint-{epoch}.pth.tar")
    cfg = write_zoo_study(tmp_path, "timm:vit_tiny_patch16_224", TIMM_VIT,
                          (ckpt / "checkpoint-{epoch}.pth.tar").as_posix())
    check_study(cli, cfg, tmp_path, ["blocks.0.mlp.act", "blocks.1.mlp.act"])


def test_an_hf_vit_study_builds_and_ranks_importance(tmp_path, cli):
    ckpt = tmp_path / "out"
    for epoch in range(3):  # as the Trainer saves them
        hf_vit(epoch).save_pretrained(ckpt / f"checkpoint-{epoch}")
    layers = [n for n, m in hf_vit().named_modules() if type(m).__name__ == "GELUActivation"]
    cfg = write_zoo_study(tmp_path, "hf:vit", HF_VIT, (ckpt / "checkpoint-{epoch}").as_posix())
    check_study(cli, cfg, tmp_path, layers)  # the default layers: the MLP activations
