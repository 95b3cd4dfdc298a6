"""The stimuli stage from a config file: workspace contents, resume, cache keys."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TinyVGG, randomise, write_study

from conceptevo import pipeline
from conceptevo.cli import main
from conceptevo.config import load_config
from conceptevo.models.adapter import ModelAdapter
from conceptevo.stages import stimuli as stimuli_stage
from conceptevo.stimuli import compute_stimuli
from conceptevo.workspace import Workspace


def test_stimuli_stage_writes_every_checkpoint(tmp_path, image_folder, vgg_checkpoints):
    cfg_path = write_study(tmp_path, image_folder, (vgg_checkpoints / "epoch_{epoch}.pt")
                           .as_posix())
    assert main(["-q", "stimuli", "--config", str(cfg_path)]) == 0
    ws = Workspace(tmp_path / "ws")
    assert ws.stimuli_epochs("a") == [0, 1, 2]
    probe = ws.load_probe()
    assert len(probe) == 18 and probe.classes == ["cat", "dog", "eel"]
    r = ws.load_stimuli("a", 1)
    assert r.stimuli.shape == (r.n_neurons, 4) and r.responsive.shape == (18, 5)
    assert [li.name for li in r.layers] == ["features.0", "features.3", "features.7"]
    # identical to computing them directly on the stored probe images
    model = randomise(TinyVGG(), 1).eval()
    direct = compute_stimuli(ModelAdapter(model), probe.batches(7), len(probe), k_stimuli=4,
                             k_responsive=5).result()
    np.testing.assert_array_equal(r.stimuli, direct.stimuli)
    np.testing.assert_array_equal(r.responsive, direct.responsive)


class Killed(BaseException):
    """Stands for an interruption (pytest reserves KeyboardInterrupt for itself)."""


def test_interrupted_run_resumes_without_recomputing(tmp_path, image_folder, vgg_checkpoints,
                                                     monkeypatch):
    cfg = load_config(write_study(tmp_path, image_folder, vgg_checkpoints.as_posix()))
    calls = []
    armed = [True]
    real = stimuli_stage.compute_stimuli

    def dies_on_second_checkpoint(*args, **kwargs):
        calls.append(kwargs["context"])
        if armed[0] and len(calls) == 2:
            raise Killed  # as if the process died mid-pass
        return real(*args, **kwargs)

    monkeypatch.setattr(stimuli_stage, "compute_stimuli", dies_on_second_checkpoint)
    try:
        pipeline.run_stimuli_stage(cfg)
        raise AssertionError("the interruption did not propagate")
    except Killed:
        pass
    ws = Workspace(cfg.workspace_path)
    assert ws.stimuli_epochs("a") == [0]
    first = ws.stimuli_path("a", 0).stat()
    assert not list(ws.root.rglob("*.tmp-*")), "no partial file may be left behind"

    calls.clear()
    armed[0] = False
    _, report = pipeline.run_stimuli_stage(cfg)
    assert report.skipped == [("a", 0)] and report.computed == [("a", 1), ("a", 2)]
    assert len(calls) == 2 and "epoch 0" not in " ".join(calls)
    assert ws.stimuli_path("a", 0).stat().st_mtime_ns == first.st_mtime_ns
    # a third run does nothing; a re-saved checkpoint is recomputed, and only that one
    _, report = pipeline.run_stimuli_stage(cfg)
    assert report.computed == []
    torch.save(randomise(TinyVGG(), 9).state_dict(), vgg_checkpoints / "epoch_1.pt")
    _, report = pipeline.run_stimuli_stage(cfg)
    assert report.computed == [("a", 1)]


def test_changed_parameters_invalidate_the_cache(tmp_path, image_folder, vgg_checkpoints):
    path = write_study(tmp_path, image_folder, vgg_checkpoints.as_posix())
    cfg = load_config(path)
    pipeline.run_stimuli_stage(cfg)
    cfg.stimuli.k_stimuli = 3
    _, report = pipeline.run_stimuli_stage(cfg)
    assert len(report.computed) == 3
    assert Workspace(cfg.workspace_path).load_stimuli("a", 0).stimuli.shape[1] == 3


def test_nan_checkpoint_is_reported_by_the_cli(tmp_path, image_folder, vgg_checkpoints, capsys):
    state = torch.load(vgg_checkpoints / "epoch_2.pt", weights_only=True)
    state["features.3.weight"][0] = float("nan")
    torch.save(state, vgg_checkpoints / "epoch_2.pt")
    cfg_path = write_study(tmp_path, image_folder, vgg_checkpoints.as_posix())
    assert main(["-q", "stimuli", "--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "epoch 2" in err and "epoch_2.pt" in err and "features.3" in err
    assert Workspace(tmp_path / "ws").stimuli_epochs("a") == [0, 1]
