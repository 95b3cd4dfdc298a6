"""`conceptevo build` and `conceptevo export` on a small study of the concept world."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conceptevo import export as ex
from conceptevo.cli import main
from conceptevo.config import load_config
from conceptevo.data.concept_world import ConceptWorld
from conceptevo.errors import WorkspaceError
from conceptevo.pipeline import open_workspace, run_build
from conceptevo.space.image_embedding import ActivationWeights, fidelity, project
from conceptevo.stages.context import Context
from conceptevo.stages.train import ensure_training
from conceptevo.workspace import Workspace, atomic

MODEL = "kwargs = { num_classes = 12, widths = [4, 8, 8], depth = 1, hidden = 8 }"


def write_config(root, extra_space="", runs=("a", "b")):
    runs_text = "\n".join(f"""
[[runs]]
name = "{r}"
checkpoints = "ckpt/{r}/epoch_{{epoch}}.pt"
train = {{ regime = "healthy", epochs = 2, batch_size = 32, seed = {i} }}"""
                          for i, r in enumerate(runs))
    path = root / "study.toml"
    path.write_text(f"""
workspace = "ws"
device = "cpu"
[probe]
root = "data/train"
per_class = 8
image_size = 32
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[model]
arch = "conceptevo:small_vgg"
{MODEL}
[stimuli]
k_stimuli = 5
k_responsive = 5
[space]
dim = 8
epochs = 10
lr = 0.05
umap_neighbors = 8
{extra_space}
[training]
train_root = "data/train"
val_root = "data/val"
{runs_text}
""")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    world = ConceptWorld(image_size=32, seed=0)
    world.write_image_folder(root / "data" / "train", 192, split="train")
    world.write_image_folder(root / "data" / "val", 48, split="val")
    cfg = load_config(write_config(root))
    ensure_training(Context.create(cfg, open_workspace(cfg)))
    out = run_build(cfg)
    return root, cfg, out


def test_build_writes_every_artifact_and_skips_them_next_time(study):
    root, cfg, out = study
    ws = Workspace(root / "ws")
    assert out["space"]["base"] == {"kind": "run", "run": "a", "epoch": 2}
    for run in ("a", "b"):
        assert ws.projection_epochs(run) == [0, 1, 2]
        assert (root / "ws" / "figures" / f"space_{run}.png").is_file()
    for name in ("base.npz", "images.npz", "map.npz", "fidelity.json"):
        assert ws.space_path(name).is_file()
    files = sorted(ws.root.rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_build(cfg)
    assert again["space"]["projected"] == [] and again["stimuli"].computed == []
    assert [f.stat().st_mtime_ns for f in files] == stamps


def exp_weights(acts: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """exp((a - max a) / (T sigma)) per neuron, normalised (every activation finite and no
    neuron constant, as in this study)."""
    a = acts.astype(np.float64)
    w = np.exp((a - a.max(1, keepdims=True)) / (temperature * a.std(1, keepdims=True)))
    return w / w.sum(1, keepdims=True)


def test_stored_fidelity_is_the_projection_of_the_base_onto_itself(study):
    """The default projection: every neuron is the activation-weighted mean of the image
    embeddings; the image embedding reproduces the base neurons that way."""
    root, _, _ = study
    ws = Workspace(root / "ws")
    report = atomic.read_json(ws.space_path("fidelity.json"))
    assert report["projection"] == "activations"
    _, base = ws.load_arrays(ws.space_path("base.npz"))
    _, images = ws.load_arrays(ws.space_path("images.npz"))
    result = ws.load_stimuli("a", 2, activations=True)
    assert result.activations.dtype == np.float16
    valid = base["valid"]
    e = images["image_embedding"].astype(np.float64)
    projected = ActivationWeights(result.activations[valid], 1.0,
                                  scale=result.activation_scale[valid]).project(e)
    again = fidelity(projected, base["neuron_embedding"][valid])
    for key in ("mean_cosine", "top1", "top10"):
        assert again[key] == pytest.approx(report["fidelity"][key], abs=1e-6)
    # ... which is the weighted mean of the image embeddings, weights written out in numpy
    # from the activations themselves (float64), up to float32 rounding
    np.testing.assert_allclose(exp_weights(result.activation_matrix()[valid]) @ e, projected,
                               rtol=1e-4, atol=1e-5)
    # the stored projection of every checkpoint is that same projection
    for run, epoch in (("a", 2), ("b", 0)):
        _, proj = ws.load_arrays(ws.projection_path(run, epoch))
        w = exp_weights(ws.load_stimuli(run, epoch, activations=True).activation_matrix())
        np.testing.assert_allclose(proj["embedding"], w @ e, rtol=1e-4, atol=1e-5)
    # the base neurons sit where their own projection is placed on the map, roughly
    assert report["rmse"] < 0.1 and report["fidelity"]["mean_cosine"] > 0.98
    # the paper's image embedding is kept (the evaluation's baselines), with its own fidelity
    stim = fidelity(project(result.stimuli[valid], images["stimulus_embedding"]
                            .astype(np.float64)), base["neuron_embedding"][valid])
    assert stim["top1"] == pytest.approx(report["info"]["stimuli_fidelity"]["top1"], abs=1e-6)


def test_projection_by_stimuli(study, tmp_path):
    """``projection = "stimuli"``: the paper's projection, no activations stored."""
    root, _, _ = study
    copy = tmp_path / "stim"
    shutil.copytree(root / "data", copy / "data")
    shutil.copytree(root / "ckpt", copy / "ckpt")
    path = write_config(copy, 'projection = "stimuli"', runs=("a",))
    path.write_text(path.read_text().replace('train = { regime = "healthy", epochs = 2, '
                                             'batch_size = 32, seed = 0 }', ""))
    run_build(load_config(path))
    ws = Workspace(copy / "ws")
    report = atomic.read_json(ws.space_path("fidelity.json"))
    assert report["projection"] == "stimuli"
    _, base = ws.load_arrays(ws.space_path("base.npz"))
    _, images = ws.load_arrays(ws.space_path("images.npz"))
    np.testing.assert_array_equal(images["image_embedding"], images["stimulus_embedding"])
    valid = base["valid"]
    stimuli = ws.load_stimuli("a", 2).stimuli
    again = fidelity(project(stimuli[valid], images["image_embedding"].astype(np.float64)),
                     base["neuron_embedding"][valid])
    for key in ("mean_cosine", "top1", "top10"):
        assert again[key] == pytest.approx(report["fidelity"][key], abs=1e-6)
    _, proj = ws.load_arrays(ws.projection_path("a", 2))
    np.testing.assert_allclose(proj["embedding"][valid],
                               project(stimuli[valid], images["image_embedding"]), rtol=1e-5)
    assert report["rmse"] < 0.05 and report["fidelity"]["mean_cosine"] > 0.99
    with pytest.raises(WorkspaceError, match="holds no activations"):
        ws.load_stimuli("a", 2, activations=True)


def test_map_coordinates_are_identical_when_recomputed(study, tmp_path):
    root, _, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ws = Workspace(copy / "ws")
    before = {r: [ws.load_arrays(ws.projection_path(r, e))[1]["coords"] for e in (0, 2)]
              for r in ("a", "b")}
    base_before = ws.load_arrays(ws.space_path("map.npz"))[1]["coords"]
    shutil.rmtree(ws.space_path("projection"))
    ws.space_path("map.npz").unlink()
    run_build(load_config(copy / "study.toml"))
    np.testing.assert_array_equal(ws.load_arrays(ws.space_path("map.npz"))[1]["coords"],
                                  base_before)
    for r in ("a", "b"):
        after = [ws.load_arrays(ws.projection_path(r, e))[1]["coords"] for e in (0, 2)]
        for x, y in zip(before[r], after):
            np.testing.assert_array_equal(x, y)


def test_projections_missing_after_an_interruption_are_identical(study):
    """A build stopped among the projections (some written, the others not: what a kill
    leaves, every write being atomic) places the missing ones, in a new process's refitted
    map, exactly where the uninterrupted build did: each checkpoint is placed on its own."""
    root, cfg, _ = study
    ws = Workspace(root / "ws")
    before = {(r, e): ws.load_arrays(ws.projection_path(r, e)) for r in ("a", "b")
              for e in ws.projection_epochs(r)}
    missing = [("a", 1), ("a", 2), ("b", 0)]
    for run, epoch in missing:
        ws.projection_path(run, epoch).unlink()
    out = run_build(cfg)
    assert out["space"]["projected"] == missing
    for (run, epoch), (meta, arrays) in before.items():
        meta_after, after = ws.load_arrays(ws.projection_path(run, epoch))
        assert meta_after == meta and sorted(after) == sorted(arrays)
        for name, values in arrays.items():
            np.testing.assert_array_equal(after[name], values, err_msg=f"{run} {epoch} {name}")


def test_export_round_trips_through_the_python_api(study, tmp_path):
    root, _, _ = study
    out = tmp_path / "export"
    assert main(["-q", "export", str(root / "ws"), "--out", str(out)]) == 0
    ws = Workspace(root / "ws")
    table, emb, stim, act = ex.neurons(ws)
    read = ex.Table.read_csv(out / "neurons.csv")
    assert read.columns == ["row", "run", "epoch", "layer", "layout", "channel", "x", "y"]
    assert set(read["layout"]) == {"conv"}
    assert len(read) == len(table) == 2 * 3 * 20
    for col in ("row", "epoch", "channel"):
        np.testing.assert_array_equal(read[col], table[col])
    assert list(read["run"]) == list(table["run"]) and list(read["layer"]) == list(table["layer"])
    np.testing.assert_allclose(read["x"], table["x"])
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), emb)
    np.testing.assert_array_equal(np.load(out / "stimuli.npy"), stim)
    np.testing.assert_array_equal(np.load(out / "stimuli_act.npy"), act)
    assert np.load(out / "embeddings.npy").dtype == np.float32
    assert np.load(out / "stimuli.npy").dtype == np.int64
    images = ex.Table.read_csv(out / "images.csv")
    assert images.columns == ["image_id", "path", "label", "class_name"]
    np.testing.assert_array_equal(images["label"], ws.load_probe().labels)
    base, base_emb = ex.base_neurons(ws)
    read_base = ex.Table.read_csv(out / "base_neurons.csv")
    assert read_base.columns == ["row", "layer", "channel", "run", "epoch"]
    assert set(read_base["run"]) == {"a"} and set(read_base["epoch"]) == {2}
    np.testing.assert_array_equal(np.load(out / "base_embeddings.npy"), base_emb)
    metrics = ex.Table.read_csv(out / "metrics.csv")
    assert metrics.columns[:4] == ["run", "epoch", "train_acc", "val_acc"]
    np.testing.assert_allclose(metrics["val_acc"], ex.metrics(ws)["val_acc"])
    # rows of neurons.csv line up with the arrays: row r is (run, epoch, layer, channel)
    r = 25
    s = ws.load_stimuli(table["run"][r], int(table["epoch"][r]))
    sl = s.layer_slice(table["layer"][r])
    np.testing.assert_array_equal(stim[r], s.stimuli[sl][table["channel"][r]])


def test_external_base_model(study, tmp_path):
    root, _, _ = study
    copy = tmp_path / "ext"
    shutil.copytree(root / "data", copy / "data")
    shutil.copytree(root / "ckpt", copy / "ckpt")
    path = write_config(copy, 'base_arch = "conceptevo:small_vgg"\n'
                              'base_checkpoint = "ckpt/b/epoch_0002.pt"\n'
                              'base_kwargs = { num_classes = 12, widths = [4, 8, 8], depth = 1, '
                              'hidden = 8 }', runs=("a",))
    path.write_text(path.read_text().replace('train = { regime = "healthy", epochs = 2, '
                                             'batch_size = 32, seed = 0 }', ""))
    out = run_build(load_config(path))
    assert out["space"]["base"]["kind"] == "external"
    ws = Workspace(copy / "ws")
    assert ws.space_path("base_stimuli.npz").is_file()
    table, _ = ex.base_neurons(ws)
    assert set(table["run"]) == {""} and np.isnan(table["epoch"]).all()
    # the external base is run b's last checkpoint: its stimuli equal run b's
    _, base_stim = ws.load_arrays(ws.space_path("base_stimuli.npz"))
    np.testing.assert_array_equal(base_stim["stimuli"],
                                  Workspace(root / "ws").load_stimuli("b", 2).stimuli)
