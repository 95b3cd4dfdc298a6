"""The stimuli stage: one pass of the probe set through every checkpoint of every run
(shared out under torchrun and merged exactly), and through an external base model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .. import distributed
from ..config import StudyConfig
from ..data.probe import ProbeSet
from ..errors import ConfigError
from ..models.checkpoints import Checkpoint, find_checkpoints
from ..progress import progress_bar
from ..runs import RunModel, check_ranking_sizes, run_model, stimuli_key, streams_projection
from ..space.projection import ActivationWeighted
from ..stimuli import StimuliResult, StimulusAccumulator, compute_stimuli, merge_shards
from ..workspace.artifacts import base_stimuli_path, load_base_stimuli, save_base_stimuli
from .context import Context, StageReport, cache_key, cached, open_model

log = logging.getLogger("conceptevo")


@dataclass
class PassProjection:
    """The base space that stimulus passes which do not store their activations project into
    at their end (:func:`conceptevo.runs.streams_projection`): its key and its fitted
    activation-weighted projection."""

    space_key: str
    projection: ActivationWeighted
    base: tuple[str, int] | None  # the base checkpoint (run, epoch): it keeps its activations

    def key(self, cfg: StudyConfig, probe: ProbeSet, rm: RunModel, ckpt: Checkpoint) -> str:
        if (rm.name, ckpt.epoch) == self.base:
            return stimuli_key(cfg, probe, rm, ckpt)
        return stimuli_key(cfg, probe, rm, ckpt, self.space_key)

    def finish(self, acc: StimulusAccumulator, run: str, epoch: int) -> StimuliResult:
        """The result of a finished pass: projected (and its activations dropped) unless it
        is the base checkpoint's."""
        if (run, epoch) == self.base:
            return acc.result()
        projected = self.projection.transform_streamed(acc.activation_blocks, acc.n_neurons)
        acc.drop_activations()
        result = acc.result()
        result.projected = projected.astype(np.float32)
        result.meta["space"] = self.space_key
        return result

    def k_responsive(self, cfg: StudyConfig, run: str, epoch: int) -> int:
        """The pass's ranking of responsive neurons: only the base checkpoint's (the base
        model's image embedding reads it) is computed and kept; its bytes grow with the
        probe set."""
        return cfg.stimuli.k_responsive if (run, epoch) == self.base else 0


def ensure_stimuli(ctx: Context, probe: ProbeSet, runs: list[str] | None = None,
                   only: set[tuple[str, int]] | None = None,
                   projection: PassProjection | None = None) -> StageReport:
    """Stimuli of every checkpoint of every run (or of ``runs``; or the (run, epoch) pairs of
    ``only``) that lacks them; with ``projection``, each pass but the base checkpoint's ends
    with its projection into that space and stores it instead of the activations.

    Under torchrun the checkpoints to compute are shared out: whole checkpoints, one per
    process, as long as there are at least as many left as processes; the probe images of the
    remaining ones (fewer than the processes), in blocks of whole batches. Rank 0 gathers the
    results, merges the partial ones exactly (:func:`conceptevo.stimuli.merge_shards`) and
    writes them; the result is the one a single process computes.
    """
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    if projection is None and streams_projection(cfg) and only is None:
        raise RuntimeError("[stimuli] store_activations = false: the passes need the base "
                           "space to project into (conceptevo.pipeline.ensure_all_stimuli)")
    world = distributed.current()
    report = StageReport([], [])
    for run in cfg.runs:
        if runs is not None and run.name not in runs:
            continue
        if only is not None and run.name not in {r for r, _ in only}:
            continue
        rm = run_model(cfg, run.name, device)
        check_ranking_sizes(cfg, probe, rm.adapter, f"run {run.name!r}")
        keys = {ckpt.epoch: (ckpt, projection.key(cfg, probe, rm, ckpt) if projection
                             else stimuli_key(cfg, probe, rm, ckpt))
                for ckpt in rm.checkpoints if only is None or (run.name, ckpt.epoch) in only}
        todo_epochs = []
        for epoch, (_, key) in keys.items():
            meta = ws.stimuli_meta(run.name, epoch)
            if meta is not None and meta.get("key") == key:
                report.skipped.append((run.name, epoch))
            else:
                todo_epochs.append(epoch)
        # every process works through rank 0's list
        todo = [keys[e] for e in world.broadcast(todo_epochs)]
        if not todo:
            continue
        log.info("run %s: stimuli for %d checkpoint(s) on %s%s (%d already done)%s", run.name,
                 len(todo), device, f", {world.describe()}" if world.enabled else "",
                 len(keys) - len(todo),
                 ", each projected at the end of its pass" if projection else "")
        _stimuli_passes(ctx, probe, rm, todo, world, report, projection)
    return report


def _stimuli_passes(ctx: Context, probe: ProbeSet, rm: RunModel,
                    todo: list[tuple[Checkpoint, str]], world: distributed.Context,
                    report: StageReport, projection: PassProjection | None) -> None:
    """The stimulus passes of ``todo`` [(checkpoint, key)], shared out among the processes
    (``world``: this process's place under torchrun); ``projection``: see
    :func:`ensure_stimuli`."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    n, bs, w = len(probe), cfg.stimuli.batch_size, world.world_size
    whole = len(todo) - len(todo) % w  # checkpoints computed whole, one per process
    n_batches = -(-n // bs)
    mine = world.shard(n_batches)  # batches of this process in the other checkpoints
    my_ids = np.arange(mine.start * bs, min(mine.stop * bs, n), dtype=np.int64)
    total = whole // w * n + (len(todo) - whole) * len(my_ids)

    def one_pass(ckpt: Checkpoint, ids: np.ndarray | None, bar, shard: bool):
        rm.load(ckpt.epoch, cfg.trust_checkpoints)
        return compute_stimuli(
            rm.adapter, probe.batches(bs, device, ids=ids), n,
            k_stimuli=cfg.stimuli.k_stimuli,
            k_responsive=projection.k_responsive(cfg, rm.name, ckpt.epoch) if projection
            else cfg.stimuli.k_responsive, device=device, on_nonfinite=cfg.stimuli.on_nonfinite,
            context=f"run {rm.name!r} epoch {ckpt.epoch} ({ckpt.path})", channels_last=True,
            amp=cfg.stimuli.amp,
            record_batches=shard, record_activations=cfg.space.records_activations,
            spill_dir=ws.root,  # the recorded activations' scratch file: the workspace's disk
            progress=bar.update)

    def save(ckpt: Checkpoint, key: str, result) -> None:
        if world.is_main:
            result.meta.update({"key": key, "run": rm.name, "epoch": ckpt.epoch,
                                "checkpoint": str(ckpt.path), "arch": rm.arch,
                                "reduction": cfg.model.reduction})
            ws.save_stimuli(rm.name, ckpt.epoch, result)
        report.computed.append((rm.name, ckpt.epoch))

    def finish(acc: StimulusAccumulator, ckpt: Checkpoint) -> StimuliResult:
        if projection is None:
            return acc.result()
        bar.set_postfix_str(f"epoch {ckpt.epoch}: projecting")
        return projection.finish(acc, rm.name, ckpt.epoch)

    with progress_bar(total, f"stimuli {rm.name}", "img") as bar:
        for start in range(0, whole, w):
            ckpt, _ = todo[start + world.rank]
            bar.set_postfix_str(f"epoch {ckpt.epoch}")
            result = finish(one_pass(ckpt, None, bar, shard=False), ckpt)
            for (ckpt, key), res in zip(todo[start:start + w], world.gather(result) or [None] * w):
                save(ckpt, key, res)
        for ckpt, key in todo[whole:]:
            bar.set_postfix_str(f"epoch {ckpt.epoch}")
            acc = one_pass(ckpt, my_ids, bar, shard=True).to("cpu") if len(my_ids) else None
            parts = world.gather(acc)
            save(ckpt, key, finish(merge_shards(parts), ckpt) if world.is_main else None)


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


def ensure_base_stimuli(ctx: Context, probe: ProbeSet, desc: dict) -> StimuliResult:
    """The base model's stimuli (``desc``: :func:`base_descriptor`): from ``stimuli/`` for a
    study checkpoint, computed into ``space/base_stimuli.npz`` for an external model."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    activations = cfg.space.records_activations
    if desc["kind"] == "run":
        return ws.load_stimuli(desc["run"], desc["epoch"], activations=activations)
    ckpt = cfg.resolve(cfg.space.base_checkpoint)
    stat = ckpt.stat()
    key = cache_key(probe=probe.info.get("fingerprint"), desc=desc, size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns, **cfg.model.neuron_key(),
                    k_s=cfg.stimuli.k_stimuli, k_i=cfg.stimuli.k_responsive,
                    activations=activations, **({"amp": True} if cfg.stimuli.amp else {}))

    def compute() -> StimuliResult:
        adapter = open_model(cfg, desc["arch"], desc["kwargs"], ckpt, device,
                             channels_last=False)
        check_ranking_sizes(cfg, probe, adapter, f"the base model {desc['arch']}")
        with progress_bar(len(probe), "stimuli base model", "img") as bar:
            result = compute_stimuli(
                adapter, probe.batches(cfg.stimuli.batch_size, device), len(probe),
                k_stimuli=cfg.stimuli.k_stimuli, k_responsive=cfg.stimuli.k_responsive,
                device=device, context=f"base model {ckpt}", record_activations=activations,
                amp=cfg.stimuli.amp,
                spill_dir=ws.root, progress=bar.update).result()
        result.meta = {"key": key, "base": desc}
        # the external model's own predictions are of its classes, not the probe's
        result.predicted = None
        return result

    return cached(ws, base_stimuli_path(ws), key, compute, lambda: load_base_stimuli(ws),
                  lambda result: save_base_stimuli(ws, result, result.meta))
