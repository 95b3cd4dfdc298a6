"""The figures stage: each run's neurons by epoch on the base map (``figures/``), and the
receptive fields of every run's layers, stored for the dashboard and the report."""

from __future__ import annotations

from pathlib import Path

from ..patches import cached_receptive_fields
from ..viz import plot_run_map
from ..workspace import Workspace
from ..workspace.artifacts import load_map, load_projection, run_order
from .context import Context


def ensure_figures(ctx: Context) -> list[Path]:
    """The per-run maps (redrawn) and the receptive fields (cached); returns the maps."""
    paths = write_space_figures(ctx.ws)
    store_receptive_fields(ctx)
    return paths


def write_space_figures(ws: Workspace) -> list[Path]:
    """``figures/space_<run>.png``: each run's neurons by epoch on the grey base map."""
    base = load_map(ws)
    paths = []
    for run in run_order(ws):
        epochs = ws.projection_epochs(run)
        if not epochs:
            continue
        coords = [load_projection(ws, run, e)["coords"] for e in epochs]
        paths.append(plot_run_map(base, epochs, coords,
                                  ws.path("figures", f"space_{run}.png"),
                                  f"run {run}: neurons by epoch on the base model (grey)"))
    return paths


def store_receptive_fields(ctx: Context) -> None:
    """The receptive fields of every run's layers, stored for the dashboard and the report
    (which never build a model from a factory that a workspace names)."""
    cfg, ws = ctx.cfg, ctx.ws
    size = (cfg.probe.image_size, cfg.probe.image_size)
    for run in cfg.runs:
        arch, kwargs = cfg.arch_of(run)
        cached_receptive_fields(ws, arch, kwargs, cfg.model.layers, size,
                                allow_code=cfg.allow_code, layouts=cfg.model.layouts,
                                tokens=cfg.model.tokens, margin=cfg.model.patch_margin)
