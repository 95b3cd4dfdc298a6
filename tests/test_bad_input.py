"""Bad input gets a clear error (what, where, what to do) and never a traceback or a partial
artifact: configs, probe folders, checkpoints, workspaces, a full or read-only disk."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyResNet, TinyVGG, randomise, write_image_folder, write_study
from PIL import Image

from conceptevo import pipeline
from conceptevo.cli import main
from conceptevo.config import load_config
from conceptevo.data.probe import load_image_folder
from conceptevo.errors import CheckpointError, ConfigError, ProbeSetError, WorkspaceError
from conceptevo.models.checkpoints import find_checkpoints
from conceptevo.stages.context import Context
from conceptevo.stages.probe import ensure_probe_sets
from conceptevo.workspace import SCHEMA_VERSION, Workspace, atomic


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *map(str, argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def stimuli_config(tmp_path, image_folder, ckpt_dir, extra: str = "") -> Path:
    return write_study(tmp_path, image_folder, (ckpt_dir / "epoch_{epoch}.pt").as_posix(),
                       extra=extra)


# ------------------------------------------------------------------------------- configs
def test_malformed_toml_names_the_file_and_the_line(tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text('workspace = "ws"\n[probe\nroot = "images"\n')
    with pytest.raises(ConfigError, match=r"study\.toml is not valid TOML.*line 2"):
        load_config(path)
    code, err = run_cli(capsys, "build", "--config", path)
    assert code == 2 and err.startswith("error: ") and "line 2" in err


def test_unknown_keys_in_nested_tables_suggest_the_right_one(tmp_path, image_folder,
                                                             vgg_checkpoints):
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    text = path.read_text()
    path.write_text(text.replace("checkpoints =", "checkpoint ="))
    with pytest.raises(ConfigError, match=r"unknown key 'checkpoint' in runs\[0\]; did you "
                                          r"mean 'checkpoints'\?"):
        load_config(path)
    path.write_text(text.replace("image_size = 16", "imagesize = 16"))
    with pytest.raises(ConfigError, match=r"study\.toml: unknown key 'imagesize' in probe; "
                                          r"did you mean 'image_size'\?"):
        load_config(path)
    path.write_text(text.replace("k_stimuli = 4", "k_stimuli = 4.5"))
    with pytest.raises(ConfigError, match=r"stimuli\.k_stimuli must be an integer, not 4\.5"):
        load_config(path)


# --------------------------------------------------------------------------- probe set
def test_probe_folder_without_images_is_refused_by_the_cli(tmp_path, vgg_checkpoints, capsys):
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog").mkdir()
    path = stimuli_config(tmp_path, root, vgg_checkpoints)
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2
    assert "'cat', 'dog'" in err and str(root) in err and "contain no image" in err
    assert "add images" in err
    assert not (tmp_path / "ws" / "probe").exists()  # refused before anything is written


def test_odd_modes_and_sizes_are_converted_and_recorded(tmp_path, vgg_checkpoints):
    root = write_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2, size=20)
    Image.new("P", (20, 30), 3).save(root / "a" / "palette.png")
    Image.new("LA", (40, 17), (200, 255)).save(root / "a" / "grey_alpha.png")
    Image.new("CMYK", (25, 25), (0, 0, 0, 0)).save(root / "b" / "cmyk.jpg")
    levels = np.full((16, 24), 40000, dtype=np.uint16)  # 16 bits: 40000 / 257 = 156
    Image.fromarray(levels).save(root / "b" / "sixteen_bit.png")
    cfg = load_config(stimuli_config(tmp_path, root, vgg_checkpoints))
    ws = pipeline.open_workspace(cfg)
    probe, _ = ensure_probe_sets(Context.create(cfg, ws))
    assert probe.images.shape == (8, 16, 16, 3)
    info = ws.probe_meta()["info"]
    assert info["converted_modes"] == {"P": 1, "LA": 1, "CMYK": 1, "I;16": 1}
    sixteen = probe.paths.index("b/sixteen_bit.png")
    assert (probe.images[sixteen] == 156).all()  # scaled, not clipped to white
    assert (probe.images[probe.paths.index("b/cmyk.jpg")] >= 250).all()  # CMYK 0 is white


def test_unreadable_images_are_rejected_with_their_path_or_skipped(tmp_path, vgg_checkpoints,
                                                                   capsys):
    root = write_image_folder(tmp_path / "images", per_class=4)
    (root / "dog" / "img_01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = root / "eel" / "img_02.png"
    (root / "eel" / "img_02.png").write_bytes(good.read_bytes()[:60])  # cut mid-stream
    path = stimuli_config(tmp_path, root, vgg_checkpoints)
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2 and "cannot read image" in err and "skip_unreadable = true" in err
    assert ("dog/img_01.png" in err) or ("eel/img_02.png" in err)
    assert not Workspace(tmp_path / "ws").has_probe()
    assert list((tmp_path / "ws").rglob(f"*{atomic.TMP_MARK}*")) == []

    path.write_text(path.read_text().replace("image_size = 16",
                                             "image_size = 16\nskip_unreadable = true"))
    cfg = load_config(path)
    ws = pipeline.open_workspace(cfg)
    probe, _ = ensure_probe_sets(Context.create(cfg, ws))
    meta = ws.probe_meta()
    assert meta["n_images"] == len(probe) == 10 and meta["info"]["n_skipped"] == 2
    assert sorted(meta["info"]["skipped"]) == ["dog/img_01.png", "eel/img_02.png"]
    # the rows kept are exactly the readable images, in order
    expected = load_image_folder(root, 16, skip_unreadable=True)
    assert probe.paths == expected.paths
    np.testing.assert_array_equal(np.load(ws.probe_images_path()), expected.images)


def test_an_image_over_the_decompression_limit_is_an_unreadable_image(image_folder,
                                                                      monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # 20x20 = 400 > 2 x 150: refused
    with pytest.raises(ProbeSetError, match=r"cannot read image .*img_00\.png "
                                            r"\(DecompressionBombError"):
        load_image_folder(image_folder, 16)


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoint_pattern_matching_nothing(tmp_path, image_folder, capsys):
    (tmp_path / "ckpt").mkdir()
    path = stimuli_config(tmp_path, image_folder, tmp_path / "ckpt")
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2
    assert "epoch_{epoch}.pt" in err and "(run 'a')" in err and "matches no file" in err
    assert "relative paths start at the config file's directory" in err


def test_duplicate_and_unordered_epochs(tmp_path):
    for name in ("epoch_10.pt", "epoch_2.pt", "epoch_9.pt"):
        torch.save({}, tmp_path / name)
    assert [c.epoch for c in find_checkpoints(tmp_path)] == [2, 9, 10]  # numeric order
    assert [c.epoch for c in find_checkpoints(str(tmp_path / "epoch_{epoch}.pt"))] == [2, 9, 10]
    torch.save({}, tmp_path / "epoch_0009.pt")  # the same epoch, zero-padded
    for pattern in (tmp_path, str(tmp_path / "epoch_{epoch}.pt"), tmp_path / "*.pt"):
        with pytest.raises(CheckpointError, match=r"two checkpoint files for epoch 9 \(run 'r'"
                                                  r"\).*epoch_0009\.pt and .*epoch_9\.pt; "
                                                  r"keep one per epoch"):
            find_checkpoints(pattern, run="r")


def test_a_checkpoint_of_another_architecture_in_a_run(tmp_path, image_folder,
                                                       vgg_checkpoints, capsys):
    torch.save(randomise(TinyResNet(), 2).state_dict(), vgg_checkpoints / "epoch_2.pt")
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2
    assert str(vgg_checkpoints / "epoch_2.pt") in err
    assert "does not fit conftest:build_tiny_vgg" in err
    assert "missing keys: features.0.weight" in err and "unexpected keys: stem.weight" in err
    assert "Check the architecture and its kwargs" in err
    # the last checkpoint of every run is fitted before any pass: no pass was spent
    assert not (tmp_path / "ws").exists() or not (tmp_path / "ws" / "stimuli").exists()


def test_a_checkpoint_with_other_shapes_names_them(tmp_path, image_folder, vgg_checkpoints,
                                                   capsys):
    torch.save(TinyVGG(width=4).state_dict(), vgg_checkpoints / "epoch_1.pt")
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2 and "epoch_1.pt" in err
    assert "features.0.weight (file (4, 3, 3, 3) vs model (6, 3, 3, 3))" in err


def test_a_truncated_checkpoint_is_named(tmp_path, image_folder, vgg_checkpoints, capsys):
    data = (vgg_checkpoints / "epoch_1.pt").read_bytes()
    (vgg_checkpoints / "epoch_1.pt").write_bytes(data[: len(data) // 3])
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2
    assert f"checkpoint {vgg_checkpoints / 'epoch_1.pt'} is corrupt or truncated" in err
    assert "re-save or re-download it" in err


# ---------------------------------------------------------------------------- workspaces
def test_a_workspace_of_a_newer_schema_is_refused_untouched(tmp_path, image_folder,
                                                            vgg_checkpoints, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    manifest = {"format": "conceptevo-workspace", "schema_version": SCHEMA_VERSION + 1,
                "created_by": "conceptevo 9.0"}
    atomic.write_json(ws / "conceptevo.json", manifest)
    with pytest.raises(WorkspaceError, match=rf"newer ConceptEvo \(schema {SCHEMA_VERSION + 1}"
                                             r", conceptevo 9\.0\).*Upgrade conceptevo"):
        Workspace(ws)
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    code, err = run_cli(capsys, "build", "--config", path)
    assert code == 2 and "written by a newer ConceptEvo" in err
    # nothing written (the workspace lock's file aside)
    assert sorted(p.name for p in ws.iterdir() if p.name != ".conceptevo.lock") == \
        ["conceptevo.json"]
    code, err = run_cli(capsys, "serve", ws)
    assert code == 2 and "newer ConceptEvo" in err
    (ws / "conceptevo.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match=r"cannot read .*conceptevo\.json"):
        Workspace(ws)
    atomic.write_json(ws / "conceptevo.json", {"format": "something else"})
    with pytest.raises(WorkspaceError, match="no schema_version; is .* a ConceptEvo workspace"):
        Workspace(ws)


def _no_space(written_fraction: float = 0.5):
    """A ``Path.write_bytes`` that writes part of the data, then fails like a full disk."""
    real = Path.write_bytes

    def write_bytes(self, data):
        real(self, data[: int(len(data) * written_fraction)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    return write_bytes


def test_a_full_disk_leaves_the_previous_artifact_and_no_partial_file(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws", create=True)
    path = ws.space_path("map.npz")
    ws.save_arrays(path, {"key": "old"}, coords=np.zeros((5, 2), np.float32))
    monkeypatch.setattr(Path, "write_bytes", _no_space())
    with pytest.raises(WorkspaceError) as err:
        ws.save_arrays(path, {"key": "new"}, coords=np.ones((5, 2), np.float32))
    msg = str(err.value)
    assert f"cannot write {path}: No space left on device" in msg
    assert "previous version, if any, is intact" in msg and "free some space" in msg
    monkeypatch.undo()
    meta, arrays = ws.load_arrays(path)
    assert meta["key"] == "old" and (arrays["coords"] == 0).all()
    assert sorted(p.name for p in path.parent.iterdir()) == ["map.npz"]


def test_a_full_disk_during_a_stage_is_a_clear_error_and_the_stage_resumes(
        tmp_path, image_folder, vgg_checkpoints, monkeypatch, capsys):
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    real = atomic.write_bytes

    def full_at_epoch_1(target, data):
        if Path(target).name != "epoch_0001.npz":
            return real(target, data)
        with atomic.atomic_path(target) as tmp:  # the real atomic write, on a full disk
            _no_space(0.3)(tmp, data)

    monkeypatch.setattr(atomic, "write_bytes", full_at_epoch_1)
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2
    assert "epoch_0001.npz: No space left on device" in err and "free some space" in err
    ws = Workspace(tmp_path / "ws")
    assert ws.stimuli_epochs("a") == [0]
    assert list(ws.root.rglob(f"*{atomic.TMP_MARK}*")) == []
    monkeypatch.undo()
    code, _ = run_cli(capsys, "stimuli", "--config", path)
    assert code == 0 and ws.stimuli_epochs("a") == [0, 1, 2]


def test_a_full_disk_while_the_probe_images_are_reserved(tmp_path, image_folder,
                                                         vgg_checkpoints, monkeypatch):
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate here")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    cfg = load_config(stimuli_config(tmp_path, image_folder, vgg_checkpoints))
    ws = pipeline.open_workspace(cfg)
    with pytest.raises(WorkspaceError, match=r"probe/images\.npy: No space left on device"):
        ensure_probe_sets(Context.create(cfg, ws))
    # (study.json is recorded once the probe sets are decoded: not here)
    assert sorted(p.name for p in ws.root.iterdir() if not p.name.startswith(".")) == [
        "conceptevo.json", "probe"]
    assert list(ws.path("probe").iterdir()) == []


@pytest.mark.parametrize("code,words", [
    (errno.EACCES, "Permission denied. The file was not changed"),
    (errno.EROFS, "the file system is read-only; choose a writable workspace directory"),
])
def test_an_unwritable_workspace_is_a_clear_error(tmp_path, monkeypatch, code, words):
    ws = Workspace(tmp_path / "ws", create=True)
    ws.save_metrics("a", [{"epoch": 0, "val_acc": 0.5}])

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(WorkspaceError, match=words) as err:
        ws.save_metrics("a", [{"epoch": 0, "val_acc": 0.9}])
    assert str(ws.metrics_path("a")) in str(err.value)
    monkeypatch.undo()
    assert ws.load_metrics("a") == [{"epoch": 0, "val_acc": 0.5}]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only directories")
def test_a_read_only_workspace_directory(tmp_path, image_folder, vgg_checkpoints, capsys):
    path = stimuli_config(tmp_path, image_folder, vgg_checkpoints)
    ws = Workspace(tmp_path / "ws", create=True)
    before = (ws.root / "conceptevo.json").read_bytes()
    ws.root.chmod(0o555)
    try:
        code, err = run_cli(capsys, "stimuli", "--config", path)
        assert code == 2 and "Permission denied" in err and "make the workspace writable" in err
        assert sorted(p.name for p in ws.root.iterdir() if not p.name.startswith(".")) == \
            ["conceptevo.json"]
        assert (ws.root / "conceptevo.json").read_bytes() == before
    finally:
        ws.root.chmod(0o755)
    shutil.rmtree(ws.root)
