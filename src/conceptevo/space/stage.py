"""The space stages of a study: base space, image embedding, projections and the 2-D map,
stored in the workspace and skipped when their key says they are up to date.

Artifacts (see docs/workspace.md):

* ``space/base_stimuli.npz``: the stimuli of an external base model (a study checkpoint's are
  already in ``stimuli/``);
* ``space/base.npz``: v_n of the base neurons, their validity, the loss per epoch;
* ``space/images.npz``: e_x of every probe image and the vocabulary mask;
* ``space/fidelity.json``: RMSE, fidelity of the base model projected onto itself, and the
  comparison of the indirect image embedding methods;
* ``space/map.npz``: 2-D coordinates of the base neurons;
* ``space/projection/<run>/epoch_NNNN.npz``: v~ and 2-D coordinates of every neuron of one
  checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ..config import StudyConfig
from ..data.probe import ProbeSet
from ..errors import ConfigError, CorruptArtifactError, WorkspaceError
from ..models.adapter import ModelAdapter, layers_array, layers_from_array
from ..models.checkpoints import find_checkpoints, load_checkpoint
from ..progress import progress_bar
from ..stimuli import StimuliResult, compute_stimuli
from ..workspace import Workspace, atomic
from .map2d import ConceptMap
from .unified import (
    BaseSpace,
    SpaceParams,
    build_base_space,
    compare_indirect_methods,
    project_result,
)

log = logging.getLogger("conceptevo")


def _hash(obj) -> str:
    from ..runs import stable_hash

    return stable_hash(obj)


# ------------------------------------------------------------------------------- base
def base_descriptor(cfg: StudyConfig) -> dict:
    """Which model is the base: a checkpoint of the study (default: the last epoch of the
    first run) or an external model."""
    sc = cfg.space
    if sc.base_arch is not None:
        return {"kind": "external", "arch": sc.base_arch, "kwargs": sc.base_kwargs or {},
                "checkpoint": str(cfg.resolve(sc.base_checkpoint).resolve())}
    run = cfg.run(sc.base_run or cfg.runs[0].name)
    epochs = [c.epoch for c in find_checkpoints(cfg.resolve(run.checkpoints), run.name)]
    epoch = epochs[-1] if sc.base_epoch is None else sc.base_epoch
    if epoch not in epochs:
        raise ConfigError(f"[space] base_epoch {epoch} has no checkpoint in run {run.name!r}; "
                          f"its epochs are {epochs}")
    return {"kind": "run", "run": run.name, "epoch": epoch}


def ensure_base_stimuli(cfg: StudyConfig, ws: Workspace, probe: ProbeSet,
                        desc: dict) -> StimuliResult:
    """The base model's stimuli: from ``stimuli/`` for a study checkpoint, computed into
    ``space/base_stimuli.npz`` for an external model."""
    activations = cfg.space.records_activations
    if desc["kind"] == "run":
        return ws.load_stimuli(desc["run"], desc["epoch"], activations=activations)
    from ..runs import resolve_device

    path = ws.space_path("base_stimuli.npz")
    ckpt = cfg.resolve(cfg.space.base_checkpoint)
    stat = ckpt.stat()
    key = _hash({"probe": probe.info.get("fingerprint"), "desc": desc, "size": stat.st_size,
                 "mtime_ns": stat.st_mtime_ns, **cfg.model.neuron_key(),
                 "k_s": cfg.stimuli.k_stimuli,
                 "k_i": cfg.stimuli.k_responsive, "activations": activations})
    if ws.arrays_key(path) == key:
        meta, arrays = ws.load_arrays(path)
        layers = layers_from_array(arrays.pop("layers"))
        return StimuliResult(layers=layers, meta=meta, **arrays)
    device = resolve_device(cfg.device)
    model = cfg.build_model(desc["arch"], desc["kwargs"])
    load_checkpoint(model, ckpt, cfg.trust_checkpoints, desc["arch"])
    model = model.to(device).eval()
    adapter = ModelAdapter(model, **cfg.model.adapter_options())
    from ..runs import check_ranking_sizes

    check_ranking_sizes(cfg, probe, adapter, f"the base model {desc['arch']}")
    with progress_bar(len(probe), "stimuli base model", "img") as bar:
        result = compute_stimuli(adapter, probe.batches(cfg.stimuli.batch_size, device),
                                 len(probe), k_stimuli=cfg.stimuli.k_stimuli,
                                 k_responsive=cfg.stimuli.k_responsive, device=device,
                                 context=f"base model {ckpt}", record_activations=activations,
                                 spill_dir=ws.root,
                                 progress=bar.update).result()
    arrays = {name: getattr(result, name) for name in StimuliResult.ARRAYS}
    if activations:
        arrays.update(activations=result.activations, activation_scale=result.activation_scale)
    arrays["layers"] = layers_array(result.layers)
    result.meta = {"key": key, "base": desc}
    ws.save_arrays(path, result.meta, **arrays)
    return result


def space_params(cfg: StudyConfig) -> SpaceParams:
    from ..runs import resolve_device

    sc = cfg.space
    return SpaceParams(dim=sc.dim, epochs=sc.epochs, lr=sc.lr, negatives=sc.negatives,
                       batch_size=sc.batch_size, image_method=sc.image_method,
                       indirect=sc.indirect, exclude_dead=sc.exclude_dead,
                       projection=sc.projection, temperature=sc.temperature, ridge=sc.ridge,
                       seed=cfg.seed,
                       device=str(resolve_device(cfg.device)))


def ensure_base_space(cfg: StudyConfig, ws: Workspace, base: StimuliResult, desc: dict
                      ) -> tuple[BaseSpace, str]:
    """The base space and image embedding (``space/base.npz``, ``space/images.npz``)."""
    params = space_params(cfg)
    key_params = {k: v for k, v in asdict(params).items() if k != "device"}
    key = _hash({"base_stimuli": base.meta.get("key"), "params": key_params, "base": desc})
    if ws.arrays_key(ws.space_path("images.npz")) == key and \
            ws.arrays_key(ws.space_path("base.npz")) == key:
        try:
            return load_base_space(ws), key
        except CorruptArtifactError as e:  # fidelity.json (or an array) damaged: rebuilt
            log.warning("base space: %s; computing it again", e)
    log.info("base space: %s, %d neurons", _describe(desc), base.n_neurons)
    with progress_bar(params.epochs * max(1, _pairs(base, params)), "neuron embedding",
                      "pair") as bar:
        space = build_base_space(base, params, progress=bar.update)
    comparison = compare_indirect_methods(base, space, params)
    meta = {"key": key, "base": desc, "params": key_params, "info": space.info}
    ws.save_arrays(ws.space_path("base.npz"), meta, neuron_embedding=space.neuron_embedding,
                   valid=space.valid, loss=np.asarray(space.loss, dtype=np.float64),
                   layers=layers_array(base.layers))
    atomic.write_json(ws.space_path("fidelity.json"), {
        "key": key, "base": desc, "rmse": space.rmse, "fidelity": space.fidelity,
        "indirect_default": params.indirect, "indirect_comparison": comparison,
        "projection": params.projection, "info": space.info, "loss": space.loss})
    ws.save_arrays(ws.space_path("images.npz"), dict(meta, rmse=space.rmse),
                   image_embedding=space.image_embedding, vocab=space.vocab,
                   stimulus_embedding=space.stimulus_embedding)
    return space, key


def _pairs(base: StimuliResult, params: SpaceParams) -> int:
    from .coactivation import CoActivation
    from .unified import base_validity

    return CoActivation.from_stimuli(base.stimuli, base_validity(base, params.exclude_dead)
                                     ).n_pairs


def _describe(desc: dict) -> str:
    if desc["kind"] == "run":
        return f"run {desc['run']!r} epoch {desc['epoch']}"
    return f"external {desc['arch']} ({desc['checkpoint']})"


def load_base_space(ws: Workspace) -> BaseSpace:
    meta, base = ws.load_arrays(ws.space_path("base.npz"))
    imeta, images = ws.load_arrays(ws.space_path("images.npz"))
    report = ws.read_json(ws.space_path("fidelity.json"))
    if not isinstance(report, dict):
        from ..workspace.store import corrupt

        raise corrupt(ws.space_path("fidelity.json"), "missing, or not a JSON object")
    params = meta.get("params", {})
    return BaseSpace(base["neuron_embedding"], base["valid"], list(base["loss"]),
                     images["image_embedding"], images["vocab"], float(imeta.get("rmse", 0.0)),
                     report.get("fidelity", {}), meta.get("info", {}),
                     images.get("stimulus_embedding", images["image_embedding"]),
                     params.get("projection", "stimuli"), params.get("temperature", 1.0))


# ------------------------------------------------------------------------ map and projections
@dataclass
class MapState:
    """The fitted 2-D map of this process (UMAP is refitted, deterministically, per process)."""

    key: str
    model: ConceptMap | None = None


def ensure_map(cfg: StudyConfig, ws: Workspace, space: BaseSpace, space_key: str) -> MapState:
    sc = cfg.space
    key = _hash({"space": space_key, "n_neighbors": sc.umap_neighbors,
                 "min_dist": sc.umap_min_dist, "metric": sc.umap_metric, "seed": cfg.seed})
    state = MapState(key)
    if ws.arrays_key(ws.space_path("map.npz")) == key:
        return state
    log.info("2-D map: UMAP of %d base neurons", int(space.valid.sum()))
    state.model = _fit_map(cfg, space)
    coords = np.full((len(space.valid), 2), np.nan, dtype=np.float32)
    coords[space.valid] = state.model.embedding_
    ws.save_arrays(ws.space_path("map.npz"), {"key": key}, coords=coords)
    return state


def _fit_map(cfg: StudyConfig, space: BaseSpace) -> ConceptMap:
    sc = cfg.space
    return ConceptMap(sc.umap_neighbors, sc.umap_min_dist, sc.umap_metric, cfg.seed).fit(
        space.neuron_embedding[space.valid])


def ensure_projections(cfg: StudyConfig, ws: Workspace, space: BaseSpace, space_key: str,
                       state: MapState, runs: list[str] | None = None) -> list[tuple[str, int]]:
    """v~ and 2-D coordinates of every neuron of every checkpoint with stimuli."""
    from ..runs import resolve_device

    activations = space.projection == "activations"
    device = str(resolve_device(cfg.device))
    done = []
    for run in ws.stimuli_runs():
        if runs is not None and run not in runs:
            continue
        todo = []
        for epoch in ws.stimuli_epochs(run):
            meta = ws.stimuli_meta(run, epoch) or {}
            key = _hash({"space": space_key, "map": state.key, "stimuli": meta.get("key"),
                         "placement": "per-checkpoint"})
            if ws.arrays_key(ws.projection_path(run, epoch)) != key:
                todo.append((epoch, key))
        if not todo:
            continue
        if state.model is None:
            log.info("2-D map: refitting UMAP (deterministic) to place new neurons")
            state.model = _fit_map(cfg, space)
        # one checkpoint at a time: UMAP's transform of a point depends on the other points of
        # the same call, so placing the checkpoints together would make a checkpoint's map
        # depend on which others were (re)computed with it, and a resumed build would differ
        with progress_bar(len(todo), f"2-D map {run}", "epoch") as bar:
            for epoch, key in todo:
                r = ws.load_stimuli(run, epoch, activations=activations)
                projected = project_result(r, space, device).astype(np.float32)
                coords = _place(state.model, projected)
                ws.save_arrays(ws.projection_path(run, epoch), {"key": key, "run": run,
                                                                "epoch": epoch},
                               embedding=projected, coords=coords, dead=r.dead)
                done.append((run, epoch))
                bar.update(1)
    return done


def _place(model, projected: np.ndarray) -> np.ndarray:
    """2-D coordinates float32 [n, 2] of projected neurons; a neuron without a finite
    projection (one whose activations are all non-finite: a diverged checkpoint recorded
    with on_nonfinite = "record") gets NaN coordinates and is not drawn."""
    coords = np.full((len(projected), 2), np.nan, dtype=np.float32)
    ok = np.isfinite(projected).all(1)
    if ok.any():
        coords[ok] = model.transform(projected[ok])
    return coords


def ensure_space(cfg: StudyConfig, ws: Workspace, probe: ProbeSet) -> dict:
    """Every space stage that is missing or stale; returns a summary."""
    desc = base_descriptor(cfg)
    if desc["kind"] == "run" and desc["epoch"] not in ws.stimuli_epochs(desc["run"]):
        raise WorkspaceError(f"the base checkpoint (run {desc['run']!r} epoch {desc['epoch']}) "
                             "has no stimuli yet; run the stimuli stage first")
    base = ensure_base_stimuli(cfg, ws, probe, desc)
    space, key = ensure_base_space(cfg, ws, base, desc)
    state = ensure_map(cfg, ws, space, key)
    projected = ensure_projections(cfg, ws, space, key, state)
    return {"base": desc, "projected": projected, "space": space}
