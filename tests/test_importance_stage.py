"""`conceptevo importance`: storage, CLI, export and the errors users meet."""

from __future__ import annotations

import numpy as np
import pytest

from conceptevo import export as ex
from conceptevo.cli import main
from conceptevo.config import load_config
from conceptevo.data.concept_world import ConceptWorld
from conceptevo.errors import CheckpointError, ConfigError
from conceptevo.models.checkpoints import Checkpoint
from conceptevo.pipeline import open_workspace
from conceptevo.stages.context import Context
from conceptevo.stages.importance import (
    ensure_importance,
    load_importance,
    resolve_class,
    resolve_pair,
)
from conceptevo.stages.probe import ensure_probe_sets
from conceptevo.stages.train import ensure_training


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("imp")
    world = ConceptWorld(image_size=32, seed=1)
    world.write_image_folder(root / "data" / "train", 144, split="train")
    world.write_image_folder(root / "data" / "val", 72, split="val")
    path = root / "study.toml"
    path.write_text("""
workspace = "ws"
device = "cpu"
[probe]
root = "data/train"
image_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[heldout]
root = "data/val"
[model]
arch = "conceptevo:small_vgg"
kwargs = { num_classes = 12, widths = [4, 8, 8], depth = 1, hidden = 8 }
[importance]
images = 8
bins = 2
random_draws = 2
[training]
train_root = "data/train"
val_root = "data/val"
[[runs]]
name = "r"
checkpoints = "ckpt/epoch_{epoch}.pt"
train = { regime = "healthy", epochs = 2, batch_size = 32 }
""")
    cfg = load_config(path)
    ws = open_workspace(cfg)
    ensure_training(Context.create(cfg, ws))
    probe, heldout = ensure_probe_sets(Context.create(cfg, ws))
    return cfg, ws, probe, heldout, path


def test_cli_stores_and_exports_importance(study, tmp_path, capsys):
    cfg, ws, probe, _, path = study
    name = probe.classes[2]
    assert main(["-q", "importance", "--config", str(path), "--run", "r", "--class", name,
                 "--to", "2"]) == 0
    printed = capsys.readouterr().out
    assert "epochs 1 -> 2" in printed and "reversion check" in printed
    result, rev = load_importance(ws, "r", 2, 1, 2)
    assert len(result.image_ids) == 8 and set(probe.labels[result.image_ids]) == {2}
    n_layers = len(result.layers)
    # per split: the unreverted model, then per layer 2 bins and 2 random sets
    assert len(rev.layer) == 2 * (1 + n_layers * 4)
    assert set(rev.split) == {"train", "heldout"}
    assert main(["-q", "export", str(ws.root), "--out", str(tmp_path / "x")]) == 0
    imp = ex.Table.read_csv(tmp_path / "x" / "importance.csv")
    assert imp.columns == ["run", "class", "from_epoch", "to_epoch", "layer", "channel",
                           "score", "rank"]
    assert len(imp) == result.score.size and set(imp["class"]) == {name}
    np.testing.assert_allclose(imp["score"], result.score)
    rv = ex.Table.read_csv(tmp_path / "x" / "reversion.csv")
    assert rv.columns == ["run", "class", "from_epoch", "to_epoch", "layer", "set", "split",
                          "top1", "top5"]
    sets = [str(s) for s in rv["set"]]
    assert sets.count("none") == 2 and "random" in sets and "0" in sets and "1" in sets
    none_rows = [i for i, s in enumerate(sets) if s == "none"]
    assert all(rv["layer"][i] != rv["layer"][i] or rv["layer"][i] == "" for i in none_rows)


def test_default_pair_and_cache(study):
    cfg, ws, probe, heldout, _ = study
    first = ensure_importance(Context.create(cfg, ws), probe, heldout, "r", [0], [(None, None)])
    assert (first[0]["from"], first[0]["to"]) == (1, 2)
    path = ws.path("importance", "r", "c000", "from_0001_to_0002.npz")
    stamp = path.stat().st_mtime_ns
    again = ensure_importance(Context.create(cfg, ws), probe, heldout, "r", [0], [(1, None)])
    assert path.stat().st_mtime_ns == stamp and again[0]["train"] == first[0]["train"]


def test_ranking_by_the_mean_is_stored_and_recomputes(study):
    """[importance] ranking = "mean" is part of the cache key: the stored result is computed
    again, ranked by the mean sensitivity, and says so; back to the paper's it is again."""
    import dataclasses

    cfg, ws, probe, heldout, _ = study
    ensure_importance(Context.create(cfg, ws), probe, heldout, "r", [1], [(1, 2)])
    paper, _ = load_importance(ws, "r", 1, 1, 2)
    mean_cfg = dataclasses.replace(cfg, importance=dataclasses.replace(cfg.importance,
                                                                        ranking="mean"))
    ensure_importance(Context.create(mean_cfg, ws), probe, heldout, "r", [1], [(1, 2)])
    mean, _ = load_importance(ws, "r", 1, 1, 2)
    assert (paper.meta["ranking"], mean.meta["ranking"]) == ("fraction", "mean")
    np.testing.assert_array_equal(paper.score, mean.score)
    for info in mean.layers:
        sl = slice(info.offset, info.offset + info.channels)
        assert np.all(np.diff(mean.mean_sensitivity[sl][np.argsort(mean.rank[sl])]) <= 0)
    ensure_importance(Context.create(cfg, ws), probe, heldout, "r", [1], [(1, 2)])
    assert load_importance(ws, "r", 1, 1, 2)[0].meta["ranking"] == "fraction"


def test_errors_name_what_is_wrong(study):
    cfg, ws, probe, heldout, path = study
    with pytest.raises(ConfigError, match="no class 'giraffe'"):
        resolve_class(probe, "giraffe")
    with pytest.raises(ConfigError, match="class index 40 is out of range"):
        resolve_class(probe, 40)
    assert resolve_class(probe, "3") == 3 and resolve_class(probe, probe.classes[5]) == 5
    ckpts = [Checkpoint(e, path) for e in (0, 1, 2)]
    with pytest.raises(CheckpointError, match="no checkpoint for epoch 7"):
        resolve_pair(ckpts, "r", 7, None)
    with pytest.raises(ConfigError, match="both epoch 1"):
        resolve_pair(ckpts, "r", 1, 1)
    with pytest.raises(ConfigError, match="last of run"):
        resolve_pair(ckpts, "r", 2, None)
    assert resolve_pair(ckpts, "r", None, 1) == (0, 1)
    # a class without images in the held-out set
    empty = heldout.__class__(heldout.images[:0], heldout.labels[:0], [], heldout.classes,
                              heldout.mean, heldout.std, dict(heldout.info))
    with pytest.raises(ConfigError, match="no image in the held-out set"):
        ensure_importance(Context.create(cfg, ws), probe, empty, "r", [1], [(0, 1)])
    assert main(["-q", "importance", "--config", str(path), "--run", "nope",
                 "--all-classes"]) == 2
    assert main(["-q", "importance", "--config", str(path), "--run", "r"]) == 2
