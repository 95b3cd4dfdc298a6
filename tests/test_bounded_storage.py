"""Bounded storage (``[stimuli] store_activations = false``): every checkpoint but the base is
projected at the end of its own stimulus pass, from its activations streamed block by block,
and stores its projection instead of its activations (docs/scaling.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyVGG, randomise, write_image_folder, write_study

from conceptevo.config import load_config
from conceptevo.errors import WorkspaceError
from conceptevo.models.adapter import LayerInfo
from conceptevo.pipeline import run_build, run_stimuli_stage
from conceptevo.space.image_embedding import ActivationWeights, project_streamed
from conceptevo.space.unified import project_result
from conceptevo.stimuli import StimulusAccumulator
from conceptevo.workspace import Workspace
from conceptevo.workspace.artifacts import load_base_space, load_projection

WIDTH = 60  # TinyVGG probes 5 x WIDTH neurons: 300


def by_hand(a: np.ndarray, e: np.ndarray, temperature: float) -> np.ndarray:
    """The activation-weighted projection, neuron by neuron, as docs/space.md defines it."""
    out = np.full((a.shape[0], e.shape[1]), np.nan)
    for n, row in enumerate(a.astype(np.float64)):
        ok = np.isfinite(row)
        if not ok.any():
            continue
        sigma, top = row[ok].std(), row[ok].max()
        w = np.zeros_like(row)
        if sigma > 1e-6 * abs(top):
            w[ok] = np.exp((row[ok] - top) / (temperature * sigma))
        else:  # a flat neuron weighs every image alike
            w[ok] = 1.0
        out[n] = w @ e / w.sum()
    return out


def test_the_streamed_projection_is_the_weighted_mean_by_hand():
    rng = np.random.default_rng(0)
    n, n_images, d = 40, 230, 6
    a = rng.normal(size=(n, n_images)).astype(np.float32)
    a[3] = 2.0                     # flat
    a[4, :17] = np.nan             # some activations non-finite
    a[5, 9] = np.inf
    a[6] = np.nan                  # none finite: no place
    e = rng.normal(size=(n_images, d))
    order = rng.permutation(n_images)  # blocks arrive in any order and size

    def blocks():
        for s in range(0, n_images, 37):
            ids = order[s:s + 37]
            yield ids, torch.from_numpy(np.ascontiguousarray(a[:, ids].T))

    expected = by_hand(a, e, 0.7)
    got = project_streamed(blocks, n, e, temperature=0.7)
    assert np.isnan(got[6]).all() and np.isnan(expected[6]).all()
    keep = np.arange(n) != 6
    np.testing.assert_allclose(got[keep], expected[keep], rtol=1e-5, atol=1e-6)
    # and the in-memory projection of the stored mode gives the same
    stored = ActivationWeights(a, 0.7).project(e)
    np.testing.assert_allclose(got[keep], stored[keep], rtol=1e-5, atol=1e-6)


def test_the_accumulator_streams_its_activations_rounded_as_stored(tmp_path):
    layers = [LayerInfo("conv", "Conv2d", 5, 0, (1, 1))]
    acc = StimulusAccumulator(layers, 12, 2, 2, record_activations=True, spill_dir=tmp_path)
    rng = np.random.default_rng(1)
    acts = torch.tensor(rng.normal(size=(12, 5)) * 37.3, dtype=torch.float32)
    for ids in (torch.arange(6, 12), torch.arange(0, 6)):
        acc.update(acts[ids], torch.zeros(len(ids), 5, dtype=torch.long), ids)
    streamed = np.full((5, 12), np.nan, dtype=np.float32)
    for ids, rows in acc.activation_blocks():
        streamed[:, ids] = rows.numpy().T
    assert np.array_equal(streamed, acc.result().activation_matrix())  # bit for bit

    acc = StimulusAccumulator(layers, 12, 2, 2, record_activations=True, spill_dir=tmp_path)
    acc.update(acts, torch.zeros(12, 5, dtype=torch.long), torch.arange(12))
    acc.drop_activations()
    assert acc.result().activations is None
    with pytest.raises(RuntimeError, match="no recorded activations"):
        next(acc.activation_blocks())


def _study(tmp_path, per_class: int, store: bool, space: str = ""):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    for epoch in range(3):
        torch.save(randomise(TinyVGG(width=WIDTH), epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    images = write_image_folder(tmp_path / "images", per_class=per_class)
    cfg = write_study(tmp_path, images, (ckpt / "epoch_{epoch}.pt").as_posix(),
                      model=f"kwargs = {{ width = {WIDTH} }}")
    text = cfg.read_text().replace("batch_size = 5", "batch_size = 64")
    if not store:
        text = text.replace("[stimuli]", "[stimuli]\nstore_activations = false")
    cfg.write_text(text + "\n[space]\nepochs = 3\n" + space)
    return cfg


def _stimuli_bytes(ws: Workspace, epoch: int) -> int:
    return ws.stimuli_path("a", epoch).stat().st_size


def test_a_bounded_build_projects_as_the_stored_one_and_stores_no_activations(tmp_path):
    exact, _ = run_stimuli_stage(load_config(_study(tmp_path / "exact", 8, store=True)))
    cfg_path = _study(tmp_path / "bounded", 8, store=False)
    out = run_build(load_config(cfg_path))
    ws = out["workspace"]
    assert sorted(out["stimuli"].computed) == [("a", 0), ("a", 1), ("a", 2)]
    space, space_key = load_base_space(ws), ws.stimuli_meta("a", 0)["space"]
    for epoch in (0, 1):  # projected during their passes
        stored = ws.load_stimuli("a", epoch)
        assert stored.activations is None and stored.projected is not None
        assert stored.responsive.shape == (24, 0)
        with pytest.raises(WorkspaceError, match="store_activations"):
            ws.load_stimuli("a", epoch, activations=True)
        # the stored mode's projection: the same pass's stored activations, projected
        ref = exact.load_stimuli("a", epoch, activations=True)
        np.testing.assert_allclose(load_projection(ws, "a", epoch)["embedding"],
                                   project_result(ref, space), rtol=1e-5, atol=1e-6)
        for name in ("stimuli", "stimuli_act", "act_max", "act_mean", "predicted"):
            assert np.array_equal(getattr(stored, name), getattr(ref, name)), name
    base = ws.load_stimuli("a", 2, activations=True)  # the base keeps what its space needs
    assert base.activations is not None and base.projected is None
    assert np.array_equal(base.activations, exact.load_stimuli("a", 2, activations=True)
                          .activations)

    again = run_build(load_config(cfg_path))  # up to date: nothing recomputed
    assert again["stimuli"].computed == [] and again["space"]["projected"] == []
    # another space: the passes that projected into the old one run again, the base's not
    cfg_path.write_text(cfg_path.read_text().replace("epochs = 3", "epochs = 4"))
    _, changed = run_stimuli_stage(load_config(cfg_path))
    assert sorted(changed.computed) == [("a", 0), ("a", 1)] and changed.skipped == [("a", 2)]
    assert ws.stimuli_meta("a", 0)["space"] != space_key


def test_stored_bytes_per_checkpoint_do_not_grow_with_the_probe_set(tmp_path):
    """500 vs 1,400 probe images (3 classes), same model: a projected checkpoint's stored
    bytes within 1.2x; with the activations stored they grow about with the images."""
    sizes = {}
    for store in (False, True):
        for per_class in (167, 467):
            ws, _ = run_stimuli_stage(load_config(_study(tmp_path / f"{store}_{per_class}",
                                                         per_class, store)))
            sizes[store, per_class] = _stimuli_bytes(ws, 0)
    assert sizes[False, 467] / sizes[False, 167] < 1.2
    assert sizes[True, 467] / sizes[True, 167] > 2.0
