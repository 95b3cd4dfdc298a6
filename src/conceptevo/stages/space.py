"""The space stage of a study: base space, image embedding, projections and the 2-D map,
stored in the workspace and skipped when their key says they are up to date.

Artifacts (see docs/workspace.md):

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

from ..data.probe import ProbeSet
from ..errors import CorruptArtifactError, WorkspaceError
from ..progress import progress_bar
from ..space.coactivation import CoActivation
from ..space.map2d import ConceptMap
from ..space.unified import (
    BaseSpace,
    SpaceParams,
    UnifiedSpace,
    base_validity,
    compare_indirect_methods,
    project_result,
)
from ..stimuli import StimuliResult
from ..workspace.artifacts import (
    load_base_space,
    load_map,
    map_path,
    save_base_space,
    save_map,
    save_projection,
)
from .context import Context, cache_key, cached, up_to_date
from .stimuli import base_descriptor, ensure_base_stimuli

log = logging.getLogger("conceptevo")


# ------------------------------------------------------------------------------- base
def space_params(ctx: Context) -> SpaceParams:
    """The base space's hyper-parameters, from ``[space]``."""
    return ctx.cfg.space.params(seed=ctx.seed, device=str(ctx.device))


def ensure_base_space(ctx: Context, base: StimuliResult, desc: dict
                      ) -> tuple[BaseSpace, str]:
    """The base space and image embedding (``space/base.npz``, ``space/images.npz``)."""
    ws, params = ctx.ws, space_params(ctx)
    key_params = {k: v for k, v in asdict(params).items() if k != "device"}
    key = cache_key(base_stimuli=base.meta.get("key"), params=key_params, base=desc)
    if up_to_date(ws, ws.space_path("images.npz"), key) and \
            up_to_date(ws, ws.space_path("base.npz"), key):
        try:
            return load_base_space(ws), key
        except CorruptArtifactError as e:  # fidelity.json (or an array) damaged: rebuilt
            log.warning("base space: %s; computing it again", e)
    log.info("base space: %s, %d neurons", _describe(desc), base.n_neurons)
    with progress_bar(params.epochs * max(1, _pairs(base, params)), "neuron embedding",
                      "pair") as bar:
        space = UnifiedSpace(params).fit(base, progress=bar.update).space_
    comparison = compare_indirect_methods(base, space, params)
    save_base_space(ws, space, {"key": key, "base": desc, "params": key_params,
                                "info": space.info},
                    {"indirect_default": params.indirect, "indirect_comparison": comparison},
                    base.layers)
    return space, key


def _pairs(base: StimuliResult, params: SpaceParams) -> int:
    return CoActivation.from_stimuli(base.stimuli, base_validity(base, params.exclude_dead)
                                     ).n_pairs


def _describe(desc: dict) -> str:
    if desc["kind"] == "run":
        return f"run {desc['run']!r} epoch {desc['epoch']}"
    return f"external {desc['arch']} ({desc['checkpoint']})"


# ------------------------------------------------------------------------ map and projections
@dataclass
class MapState:
    """The fitted 2-D map of this process (UMAP is refitted, deterministically, per process)."""

    key: str
    model: ConceptMap | None = None


def ensure_map(ctx: Context, space: BaseSpace, space_key: str) -> MapState:
    """The 2-D map of the base neurons (``space/map.npz``)."""
    sc = ctx.cfg.space
    state = MapState(cache_key(space=space_key, n_neighbors=sc.umap_neighbors,
                               min_dist=sc.umap_min_dist, metric=sc.umap_metric, seed=ctx.seed))

    def compute() -> np.ndarray:
        log.info("2-D map: UMAP of %d base neurons", int(space.valid.sum()))
        state.model = _fit_map(ctx, space)
        coords = np.full((len(space.valid), 2), np.nan, dtype=np.float32)
        coords[space.valid] = state.model.embedding_
        return coords

    ws = ctx.ws
    cached(ws, map_path(ws), state.key, compute, lambda: load_map(ws),
           lambda coords: save_map(ws, coords, state.key))
    return state


def _fit_map(ctx: Context, space: BaseSpace) -> ConceptMap:
    sc = ctx.cfg.space
    return ConceptMap(sc.umap_neighbors, sc.umap_min_dist, sc.umap_metric, ctx.seed).fit(
        space.neuron_embedding[space.valid])


def ensure_projections(ctx: Context, space: BaseSpace, space_key: str, state: MapState,
                       runs: list[str] | None = None) -> list[tuple[str, int]]:
    """v~ and 2-D coordinates of every neuron of every checkpoint with stimuli (v~ as its
    pass computed it where the pass projected into this space: ``[stimuli]
    store_activations = false``)."""
    ws, device = ctx.ws, str(ctx.device)
    done = []
    for run in ws.stimuli_runs():
        if runs is not None and run not in runs:
            continue
        todo = []
        for epoch in ws.stimuli_epochs(run):
            meta = ws.stimuli_meta(run, epoch) or {}
            key = cache_key(space=space_key, map=state.key, stimuli=meta.get("key"),
                            placement="per-checkpoint")
            if not up_to_date(ws, ws.projection_path(run, epoch), key):
                if meta.get("space") not in (None, space_key):
                    raise WorkspaceError(
                        f"the stimuli of run {run!r} epoch {epoch} were projected during "
                        "their pass into another base space and hold no activations "
                        "([stimuli] store_activations = false): run `conceptevo build`, "
                        "which computes them again for this space")
                todo.append((epoch, key, meta.get("space") == space_key))
        if not todo:
            continue
        if state.model is None:
            log.info("2-D map: refitting UMAP (deterministic) to place new neurons")
            state.model = _fit_map(ctx, space)
        # one checkpoint at a time: UMAP's transform of a point depends on the other points of
        # the same call, so placing the checkpoints together would make a checkpoint's map
        # depend on which others were (re)computed with it, and a resumed build would differ
        with progress_bar(len(todo), f"2-D map {run}", "epoch") as bar:
            for epoch, key, projected_in_pass in todo:
                r = ws.load_stimuli(run, epoch, activations=space.needs_activations
                                    and not projected_in_pass)
                projected = r.projected if projected_in_pass else \
                    project_result(r, space, device).astype(np.float32)
                coords = _place(state.model, projected)
                save_projection(ws, run, epoch, key, projected, coords, r.dead)
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


def ensure_space(ctx: Context, probe: ProbeSet) -> dict:
    """Every part of the space that is missing or stale; returns a summary."""
    ws, desc = ctx.ws, base_descriptor(ctx.cfg)
    if desc["kind"] == "run" and desc["epoch"] not in ws.stimuli_epochs(desc["run"]):
        raise WorkspaceError(f"the base checkpoint (run {desc['run']!r} epoch {desc['epoch']}) "
                             "has no stimuli yet; run the stimuli stage first")
    base = ensure_base_stimuli(ctx, probe, desc)
    space, key = ensure_base_space(ctx, base, desc)
    state = ensure_map(ctx, space, key)
    projected = ensure_projections(ctx, space, key, state)
    return {"base": desc, "projected": projected, "space": space}
