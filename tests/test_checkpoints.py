"""Checkpoint discovery, formats, safe loading and fitting to an architecture."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from conftest import TinyVGG, randomise

from conceptevo.errors import CheckpointError, ConfigError
from conceptevo.models.checkpoints import (
    epoch_from_name,
    find_checkpoints,
    load_checkpoint,
)
from conceptevo.models.registry import build_model


@pytest.mark.parametrize("name,epoch", [
    ("epoch_7.pt", 7), ("epoch-12.pth", 12), ("model-7.pth", 7), ("ckpt_0010.pt", 10),
    ("epoch=3-step=120.ckpt", 3), ("resnet18_epoch5.pt", 5), ("run2-epoch=04.ckpt", 4),
    ("final.pt", None)])
def test_epoch_from_file_names(name, epoch):
    assert epoch_from_name(name) == epoch


def test_find_checkpoints_dir_glob_and_pattern(tmp_path):
    for e in (0, 2, 10):
        torch.save({}, tmp_path / f"epoch_{e}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    by_dir = find_checkpoints(tmp_path)
    assert [c.epoch for c in by_dir] == [0, 2, 10]
    assert [c.epoch for c in find_checkpoints(tmp_path / "epoch_*.pt")] == [0, 2, 10]
    by_pattern = find_checkpoints(str(tmp_path / "epoch_{epoch}.pt"))
    assert [(c.epoch, c.path.name) for c in by_pattern] == [
        (0, "epoch_0.pt"), (2, "epoch_2.pt"), (10, "epoch_10.pt")]


def test_find_checkpoints_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"matches no file.*run 'x'|run 'x'.*matches no"):
        find_checkpoints(tmp_path / "*.pt", run="x")
    torch.save({}, tmp_path / "epoch_1.pt")
    torch.save({}, tmp_path / "model-1.pth")
    with pytest.raises(CheckpointError, match="two checkpoint files for epoch 1"):
        find_checkpoints(tmp_path)
    (tmp_path / "model-1.pth").unlink()
    torch.save({}, tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match="cannot read an epoch number.*final.pt"):
        find_checkpoints(tmp_path)


def _formats(state):
    return {
        "bare.pt": state,
        "state_dict.pt": {"state_dict": state, "epoch": 3},
        "model_state_dict.pth": {"model_state_dict": state, "optimizer_state_dict": {}},
        "model.pt": {"model": state},
        # Lightning: weights under state_dict with the LightningModule's attribute prefix,
        # plus entries of other sub-modules (a loss with a buffer)
        "epoch=3-step=120.ckpt": {
            "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
            "state_dict": {**{f"model.{k}": v for k, v in state.items()},
                           "criterion.weight": torch.ones(3)},
            "optimizer_states": [], "lr_schedulers": []},
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
    }


def test_every_checkpoint_format_loads_the_same_weights(tmp_path):
    state = randomise(TinyVGG(), 11).state_dict()
    for name, obj in _formats(state).items():
        torch.save(obj, tmp_path / name)
        model = load_checkpoint(TinyVGG(), tmp_path / name)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)


def test_mismatched_state_dict_names_keys_and_file(tmp_path):
    state = TinyVGG(width=6).state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "epoch_1.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(TinyVGG(width=6), path)
    msg = str(err.value)
    assert str(path) in msg and "head.bias" in msg and "extra.weight" in msg
    torch.save(TinyVGG(width=4).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*features\.0\.weight"):
        load_checkpoint(TinyVGG(width=6), path)


class _Evil:
    """Unpickling this object would create a file: safe loading must never do it."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_unless_trusted(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "epoch_0.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil(str(target))}, f, protocol=2)
    with pytest.raises(CheckpointError, match="--trust-checkpoints"):
        load_checkpoint(TinyVGG(), path)
    assert not target.exists()
    # a whole pickled model is refused too, and loads when the user trusts the file
    torch.save(randomise(TinyVGG(), 2), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="--trust-checkpoints"):
        load_checkpoint(TinyVGG(), tmp_path / "whole.pt")
    model = load_checkpoint(TinyVGG(), tmp_path / "whole.pt", trust=True)
    assert torch.equal(model.head.weight, randomise(TinyVGG(), 2).head.weight)


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "epoch_1.pt"
    torch.save(TinyVGG().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"epoch_1\.pt is corrupt or truncated"):
        load_checkpoint(TinyVGG(), path)
    os.truncate(path, 0)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(TinyVGG(), path)


def test_build_model_from_names():
    assert type(build_model("torchvision:resnet18", {"num_classes": 4})).__name__ == "ResNet"
    assert isinstance(build_model("conftest:build_tiny_vgg", {"width": 4}), TinyVGG)
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        build_model("torchvision:resnet81")
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.models'"):
        build_model("no_such_pkg.models:build")
    with pytest.raises(ConfigError, match="weights are read from your checkpoints"):
        build_model("torchvision:resnet18", {"weights": "IMAGENET1K_V1"})
