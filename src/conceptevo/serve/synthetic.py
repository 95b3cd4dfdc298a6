"""A synthetic workspace of any size for the dashboard's scale test and benchmark
(``tests/test_browser_scale.py``, ``benchmarks/dashboard_scale.py``): no model, no training,
no UMAP. Its neurons sit in random clusters of the map and move a little from epoch to epoch;
every artifact is written through the workspace's own typed writers (``Workspace.save_probe``,
``save_stimuli``, ``save_study``; :func:`~conceptevo.workspace.artifacts.save_projection`,
``save_map``, ``save_receptive_fields``, ``save_labels``), so the dashboard reads it exactly as
it reads a built one, patches included. A million neurons take a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.probe import ProbeSet
from ..evaluate.labels import ConceptLabels
from ..models.adapter import LayerInfo
from ..patches import ReceptiveField
from ..stimuli import StimuliResult
from ..workspace import Workspace
from ..workspace.artifacts import save_labels, save_map, save_projection, save_receptive_fields

ARCH = "synthetic:clusters"  # never built: its receptive fields are stored (see _fields)
MAP_SIZE = (4, 4)            # every layer's map, for the probe images' 16 x 16 pixels
CONCEPTS = ["disc", "square", "stripes", "red", "green", "blue"]


def synthetic_layers(n_neurons: int, n_layers: int) -> list[LayerInfo]:
    """``n_layers`` layers (fewer when there are fewer neurons) sharing ``n_neurons``."""
    n_layers = max(1, min(n_layers, n_neurons))
    sizes = np.full(n_layers, n_neurons // n_layers)
    sizes[: n_neurons % n_layers] += 1
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [LayerInfo(f"block{i}.conv", "Conv2d", int(c), int(o), MAP_SIZE)
            for i, (c, o) in enumerate(zip(sizes, offsets))]


def _probe(rng: np.random.Generator, n_images: int, size: int = 16) -> ProbeSet:
    classes = ["alpha", "beta", "gamma", "delta"]
    images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    labels = np.arange(n_images, dtype=np.int64) % len(classes)
    return ProbeSet(images, labels, [f"synthetic/{i}.png" for i in range(n_images)], classes,
                    info={"source": "synthetic"})


def _stimuli(rng: np.random.Generator, layers: list[LayerInfo], n_images: int, k: int,
             run: str, epoch: int) -> StimuliResult:
    n = sum(li.channels for li in layers)
    act = np.sort(rng.gamma(2.0, 1.0, (n, k)).astype(np.float32), axis=1)[:, ::-1]
    dead = rng.random(n) < 0.03
    act[dead] = -act[dead]
    k_resp = min(5, n)
    return StimuliResult(
        layers=layers,
        stimuli=rng.integers(0, n_images, (n, k), dtype=np.int64),
        stimuli_act=np.ascontiguousarray(act),
        stimuli_loc=rng.integers(0, MAP_SIZE[0], (n, k, 2), dtype=np.int16),
        responsive=rng.integers(0, n, (n_images, k_resp), dtype=np.int64),
        responsive_act=rng.random((n_images, k_resp), dtype=np.float32),
        act_max=np.ascontiguousarray(act[:, 0]), act_mean=act.mean(1).astype(np.float32),
        frac_positive=np.where(dead, 0, rng.random(n)).astype(np.float32),
        n_nonfinite=np.zeros(n, dtype=np.int64),
        meta={"run": run, "epoch": epoch, "key": f"synthetic-{run}-{epoch}"})


def clustered_coords(rng: np.random.Generator, layer_of: np.ndarray, n_clusters: int = 60
                     ) -> np.ndarray:
    """float32 [n, 2]: each neuron near one of ``n_clusters`` centres, the deeper layers'
    neurons in the later clusters (as a real map groups a layer's neurons)."""
    n = len(layer_of)
    centres = rng.normal(0, 10, (n_clusters, 2))
    spread = rng.uniform(0.3, 1.5, n_clusters)
    depth = layer_of / max(1, layer_of.max())
    which = np.clip((depth * 0.7 + rng.random(n) * 0.3) * n_clusters, 0, n_clusters - 1)
    which = which.astype(np.int64)
    return (centres[which] + rng.normal(0, 1, (n, 2)) * spread[which, None]).astype(np.float32)


def _fields(ws: Workspace, layers: list[LayerInfo], image_size: tuple[int, int]) -> None:
    """The receptive fields of ARCH's layers, stored under the key the readers look up
    (:func:`conceptevo.patches.cached_receptive_fields`: arch, kwargs, layers, image size)."""
    key = json.dumps([ARCH, {}, None, list(image_size)], sort_keys=True)
    field = ReceptiveField((8, 8), (4.0, 4.0), (1.5, 1.5)).to_dict()
    save_receptive_fields(ws, {key: [field] * len(layers)})


def build_synthetic(root: str | Path, n_neurons: int = 1_000_000, runs: tuple[str, ...] =
                    ("synthetic",), epochs: tuple[int, ...] = (0, 1), n_layers: int = 20,
                    n_base: int | None = None, n_images: int = 32, k_stimuli: int = 4,
                    dim: int = 4, labels: bool = False, seed: int = 0) -> Workspace:
    """A workspace at ``root`` (created) with ``n_neurons`` neurons per checkpoint in each run
    of ``runs`` at each epoch of ``epochs``, a base map of ``n_base`` neurons (default
    ``n_neurons``), ``n_images`` random probe images and, with ``labels``, concept labels of
    every run's last epoch."""
    rng = np.random.default_rng(seed)
    ws = Workspace(root, create=True)
    probe = _probe(rng, n_images)
    ws.save_probe(probe)
    ws.save_study({"name": "synthetic", "runs": [{"name": r, "checkpoints": "synthetic"}
                                                  for r in runs],
                   "model": {"arch": ARCH, "kwargs": {}}})
    layers = synthetic_layers(n_neurons, n_layers)
    _fields(ws, layers, probe.image_size)
    layer_of = np.repeat(np.arange(len(layers)), [li.channels for li in layers])
    n_base = n_neurons if n_base is None else n_base
    base = clustered_coords(rng, np.sort(rng.integers(0, len(layers), n_base)))
    save_map(ws, base, "synthetic-map")
    for run in runs:
        coords = clustered_coords(rng, layer_of)
        for epoch in epochs:
            stimuli = _stimuli(rng, layers, n_images, k_stimuli, run, epoch)
            ws.save_stimuli(run, epoch, stimuli)
            coords = coords + rng.normal(0, 0.15, coords.shape).astype(np.float32)
            embedding = np.concatenate([coords, rng.normal(0, 1, (n_neurons, max(0, dim - 2)))
                                        .astype(np.float32)], axis=1)
            save_projection(ws, run, epoch, f"synthetic-{run}-{epoch}", embedding, coords,
                            stimuli.dead)
        if labels:
            _labels(ws, rng, run, epochs[-1], n_neurons)
    return ws


def _labels(ws: Workspace, rng: np.random.Generator, run: str, epoch: int, n: int) -> None:
    """Made-up concept labels of one checkpoint (about half its neurons labelled)."""
    iou = (rng.random((n, len(CONCEPTS)), dtype=np.float32) ** 4 * 0.4).astype(np.float32)
    label = np.where(iou.max(1) >= 0.1, iou.argmax(1), -1).astype(np.int64)
    labelled = ConceptLabels(iou, label, rng.random(n, dtype=np.float32),
                             np.zeros((n, 1), dtype=np.float32))
    save_labels(ws, run, epoch, labelled, CONCEPTS, {"key": f"synthetic-labels-{run}"})
