"""Orders the stages of a study (:mod:`conceptevo.stages`) and skips the ones already done.

Each stage reads its inputs from the workspace, computes a key from everything its result
depends on (the probe set's fingerprint, the parameters, the checkpoint file's size and
modification time, ...), and writes its artifact atomically with that key. A stage whose
stored key matches is skipped, so a killed run started again recomputes only what is
missing, and a changed parameter recomputes only what depends on it.

Under ``torchrun`` (docs/scaling.md) every process runs the same stages: the stimulus passes
are shared out (:func:`conceptevo.stages.stimuli.ensure_stimuli`), rank 0 alone writes the
workspace, and the other ranks wait for it where they need what it writes
(:meth:`distributed.Context.main_first`).
"""

from __future__ import annotations

import logging
import warnings

import torch

from . import distributed
from .common import resolve_device, stable_hash
from .config import RunConfig, StudyConfig
from .data.probe import ProbeSet, plan_image_folder
from .errors import CheckpointError, ConfigError
from .models.adapter import ModelAdapter
from .models.checkpoints import Checkpoint, find_checkpoints, load_checkpoint
from .runs import build_model, probe_classes, streams_projection
from .stages import diagnosis, figures, probe, space, stimuli, train
from .stages.context import Context, StageReport
from .workspace import Workspace
from .workspace.atomic import clean_temporaries

log = logging.getLogger("conceptevo")


def preflight(cfg: StudyConfig) -> None:
    """Check, before the workspace is touched, what can be checked without the long passes:
    the device, the image size against every model (or choose it), the layer selection, the
    ranking sizes against the probe images (listed, not decoded) and the probed neurons,
    every run's checkpoints (found, the last one fitted) and training logs. A bad study then
    fails with its error and leaves an existing workspace exactly as it was."""
    resolve_device(cfg.device)
    size = probe.resolve_input_size(cfg)
    classes, _ = probe_classes(cfg)
    root = cfg.resolve(cfg.probe.root)
    n_images = probe.stored_probe_size(cfg, probe.probe_key(cfg.probe, root, classes))
    if n_images is None:  # list the files (nothing is decoded)
        n_images = len(plan_image_folder(root, cfg.probe.per_class, cfg.probe.fraction,
                                         cfg.probe.seed, classes).paths)
    if cfg.stimuli.k_stimuli > n_images:
        raise ConfigError(f"[stimuli] k_stimuli = {cfg.stimuli.k_stimuli} exceeds the "
                          f"{n_images} probe images; lower it or add probe images")
    seen = set()
    for run in cfg.runs:
        arch, kwargs = cfg.arch_of(run)
        if stable_hash([arch, kwargs]) in seen:
            continue
        seen.add(stable_hash([arch, kwargs]))
        adapter = ModelAdapter(build_model(cfg, arch, kwargs).eval(),
                               **cfg.model.adapter_options())
        adapter.describe(torch.zeros(1, 3, size, size))
        if cfg.stimuli.k_responsive > adapter.n_neurons:
            raise ConfigError(f"[stimuli] k_responsive = {cfg.stimuli.k_responsive} exceeds "
                              f"the {adapter.n_neurons} probed neurons of {arch} (run "
                              f"{run.name!r}); lower it or probe more layers")
    check_checkpoints(cfg)
    _check_base(cfg)
    for run in cfg.runs:
        if run.metrics is not None and not cfg.resolve(run.metrics).exists():
            raise ConfigError(f"run {run.name!r}: metrics {str(cfg.resolve(run.metrics))!r} "
                              "does not exist; give a CSV file with an epoch column, a "
                              "Lightning log directory or TensorBoard event files (relative "
                              "paths start at the config file's directory)")


def check_checkpoints(cfg: StudyConfig) -> dict[str, list[Checkpoint]]:
    """Every run's checkpoint list, found and its last checkpoint fitted to the run's
    architecture before any long pass starts (so that a typo in the third run's pattern
    does not wait for the first two runs' passes)."""
    found = {}
    for run in cfg.runs:
        if run.train is not None and not _has_checkpoints(cfg, run):
            continue  # ConceptEvo trains it: its checkpoints come later
        arch, kwargs = cfg.arch_of(run)
        checkpoints = find_checkpoints(cfg.resolve(run.checkpoints), run.name)
        load_checkpoint(build_model(cfg, arch, kwargs), checkpoints[-1].path,
                        cfg.trust_checkpoints, arch)
        found[run.name] = checkpoints
    return found


def _check_base(cfg: StudyConfig) -> None:
    """The base model of the space exists: its run's epoch, or the external checkpoint fitted
    to its architecture."""
    sc = cfg.space
    if sc.base_arch is not None:
        load_checkpoint(build_model(cfg, sc.base_arch, sc.base_kwargs or {}),
                        cfg.resolve(sc.base_checkpoint), cfg.trust_checkpoints, sc.base_arch)
        return
    run = cfg.run(sc.base_run or cfg.runs[0].name)
    if run.train is None or _has_checkpoints(cfg, run):
        stimuli.base_descriptor(cfg)


def _has_checkpoints(cfg: StudyConfig, run: RunConfig) -> bool:
    try:
        find_checkpoints(cfg.resolve(run.checkpoints), run.name)
    except CheckpointError:
        return False
    return True


def open_workspace(cfg: StudyConfig) -> Workspace:
    """Create or open the study's workspace and remove temporaries of killed processes (under
    torchrun, rank 0 does that and the others then open it). :func:`preflight` runs first
    (it also fixes the probe image size). The configuration is recorded by
    :func:`record_study` once the probe sets are decoded, so that bad input found up to then
    leaves an existing workspace unchanged."""
    preflight(cfg)
    ctx = distributed.current()
    with ctx.main_first():
        if ctx.is_main:
            ws = Workspace(cfg.workspace_path, create=True)
            clean_temporaries(ws.root)
        else:
            ws = Workspace(cfg.workspace_path)
    return ws


def ensure_all_stimuli(ctx: Context, probe_set: ProbeSet) -> StageReport:
    """The stimuli of every checkpoint. Where the passes project instead of storing their
    activations (:func:`conceptevo.runs.streams_projection`): the base checkpoint's pass
    first (it keeps its activations), the base space from it (rank 0 builds it, every
    process receives its projection), then every other checkpoint's pass, projected at its
    end (docs/scaling.md)."""
    if not streams_projection(ctx.cfg):
        return stimuli.ensure_stimuli(ctx, probe_set)
    world = distributed.current()
    desc = stimuli.base_descriptor(ctx.cfg)
    base = (desc["run"], desc["epoch"]) if desc["kind"] == "run" else None
    first = stimuli.ensure_stimuli(ctx, probe_set, only={base}) if base else \
        StageReport([], [])
    projection = world.broadcast(_pass_projection(ctx, probe_set, desc, base)
                                 if world.is_main else None)
    rest = stimuli.ensure_stimuli(ctx, probe_set, projection=projection)
    return StageReport(first.computed + rest.computed,
                       [done for done in rest.skipped if done not in first.computed])


def _pass_projection(ctx: Context, probe_set: ProbeSet, desc: dict,
                     base: tuple[str, int] | None) -> stimuli.PassProjection:
    """The base space's projection for the passes that follow (the base model's stimuli,
    with their 2 bytes per neuron and image of activations, are released on return)."""
    base_stimuli = stimuli.ensure_base_stimuli(ctx, probe_set, desc)
    built, key = space.ensure_base_space(ctx, base_stimuli, desc)
    return stimuli.PassProjection(key, built.projector(str(ctx.device)), base)


def run_stimuli_stage(cfg: StudyConfig) -> tuple[Workspace, StageReport]:
    """``conceptevo stimuli``: probe set(s), training logs, then stimuli of every checkpoint."""
    ctx = Context.create(cfg, open_workspace(cfg))
    probe_set, _ = probe.ensure_probe_sets(ctx)
    train.ensure_metrics(ctx)
    report = ensure_all_stimuli(ctx, probe_set)
    if ctx.is_main:
        probe.class_order_report(ctx, probe_set)
    return ctx.ws, report


def run_build(cfg: StudyConfig) -> dict:
    """``conceptevo build``: every stage that is missing, in order (probe sets, training logs,
    stimuli, base space, image embedding, 2-D map, projections, diagnosis, figures).

    Under torchrun the stimuli are shared out and the space stages run on rank 0 alone (the
    other ranks get ``space`` None and no figures, once rank 0 is done)."""
    world = distributed.current()
    ctx = Context.create(cfg, open_workspace(cfg))
    probe_set, _ = probe.ensure_probe_sets(ctx)
    train.ensure_metrics(ctx)
    report = ensure_all_stimuli(ctx, probe_set)
    built, maps, classes, flags = None, [], [], None
    if world.is_main:
        classes = probe.class_order_report(ctx, probe_set)
        built = space.ensure_space(ctx, probe_set)
        maps = figures.ensure_figures(ctx)
        flags = diagnosis.ensure_diagnosis(ctx)
    world.barrier()
    return {"workspace": ctx.ws, "stimuli": report, "space": built, "figures": maps,
            "classes": classes, "diagnosis": flags}


# ------------------------------------------------------------- the previous (cfg, ws) API
def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"conceptevo.pipeline.{old}(cfg, ws, ...) is deprecated and will be removed: "
                  f"use {new}", DeprecationWarning, stacklevel=3)


def ensure_training(cfg: StudyConfig, ws: Workspace, runs: list[str] | None = None
                    ) -> StageReport:
    """Deprecated: :func:`conceptevo.stages.train.ensure_training` with a Context."""
    _deprecated("ensure_training", "conceptevo.stages.train.ensure_training("
                "Context.create(cfg, ws), runs)")
    return train.ensure_training(Context.create(cfg, ws), runs)


def ensure_probe_sets(cfg: StudyConfig, ws: Workspace) -> tuple[ProbeSet, ProbeSet | None]:
    """Deprecated: :func:`conceptevo.stages.probe.ensure_probe_sets` with a Context."""
    _deprecated("ensure_probe_sets", "conceptevo.stages.probe.ensure_probe_sets("
                "Context.create(cfg, ws))")
    return probe.ensure_probe_sets(Context.create(cfg, ws))
