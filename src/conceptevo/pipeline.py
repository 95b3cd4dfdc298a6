"""Orders the stages of a study and skips the ones already done.

Each stage reads its inputs from the workspace, computes a key from everything its result
depends on (the probe set's fingerprint, the parameters, the checkpoint file's size and
modification time, ...), and writes its artifact atomically with that key. A stage whose
stored key matches is skipped, so a killed run started again recomputes only what is
missing, and a changed parameter recomputes only what depends on it.

Under ``torchrun`` (docs/scaling.md) every process runs the same stages: the stimulus passes
are shared out (:func:`ensure_stimuli`), rank 0 alone writes the workspace, and the other
ranks wait for it where they need what it writes (:meth:`distributed.Context.main_first`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .config import ProbeConfig, RunConfig, StudyConfig
from .data.probe import ProbeSet, plan_image_folder, read_planned
from .errors import ConfigError
from .models.adapter import ModelAdapter
from .models.checkpoints import Checkpoint, find_checkpoints, load_checkpoint
from .models.registry import build_model
from .progress import progress_bar
from .stimuli import compute_stimuli, merge_shards
from .workspace import Workspace
from .workspace.atomic import atomic_path, clean_temporaries, reserve

log = logging.getLogger("conceptevo")


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU. Under torchrun, a CUDA device
    without an index is this process's GPU, ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        return distributed.device_for("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} was asked for but CUDA is not available here; "
                          "use device = \"auto\" or \"cpu\"")
    return distributed.device_for(device)


def stable_hash(obj) -> str:
    """A short hash of a JSON-able object (keys sorted): the cache key of a stage."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------- probe
def probe_key(pcfg: ProbeConfig, root: Path, classes: list[str] | None) -> str:
    return stable_hash({"root": str(root), "per_class": pcfg.per_class,
                        "fraction": pcfg.fraction, "image_size": pcfg.image_size,
                        "mean": pcfg.mean, "std": pcfg.std, "seed": pcfg.seed,
                        "skip_unreadable": pcfg.skip_unreadable, "classes": classes})


def ensure_probe(ws: Workspace, pcfg: ProbeConfig, root: Path, name: str = "probe",
                 classes: list[str] | None = None) -> ProbeSet:
    """Sample and decode a probe (or held-out) set into the workspace, unless already there."""
    key = probe_key(pcfg, root, classes)
    if ws.has_probe(name) and ws.probe_meta(name).get("key") == key:
        return ws.load_probe(name)
    plan = plan_image_folder(root, pcfg.per_class, pcfg.fraction, pcfg.seed, classes)
    n, size = len(plan.paths), pcfg.image_size
    log.info("%s set: decoding %d images of %d classes from %s at %dx%d", name, n,
             len(plan.classes), root, size, size)
    target = ws.probe_images_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, progress_bar(n, f"{name} images", "img") as bar:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        reserve(tmp)  # a full disk fails here, clearly, not as a crash while filling the map
        probe = read_planned(plan, size, pcfg.mean, pcfg.std, pcfg.skip_unreadable, out=out,
                             progress=bar.update)
        out.flush()
        if len(probe) < n:  # unreadable images were skipped: shrink the file to the kept rows
            kept = np.array(probe.images)
            del out, probe.images
            with open(tmp, "wb") as f:
                np.save(f, kept)
            probe.images = kept
        else:
            del out
    if probe.info.get("n_skipped"):
        log.warning("%s set: skipped %d unreadable images (first: %s)", name,
                    probe.info["n_skipped"], ", ".join(probe.info["skipped"][:3]))
    if probe.info.get("converted_modes"):
        log.info("%s set: converted to RGB: %s", name, probe.info["converted_modes"])
    probe.images = np.load(target, mmap_mode="r")
    ws.save_probe(probe, name, key=key)
    return ws.load_probe(name)


def ensure_probe_sets(cfg: StudyConfig, ws: Workspace) -> tuple[ProbeSet, ProbeSet | None]:
    # under torchrun, rank 0 decodes and writes the sets; the others then load them
    with distributed.current().main_first():
        probe = ensure_probe(ws, cfg.probe, cfg.resolve(cfg.probe.root), "probe")
        heldout = None
        if cfg.heldout is not None:
            heldout = ensure_probe(ws, cfg.heldout, cfg.resolve(cfg.heldout.root), "heldout",
                                   classes=probe.classes)
    return probe, heldout


# --------------------------------------------------------------------------- models
@dataclass
class RunModel:
    """A run's architecture, ready to receive each of its checkpoints."""

    name: str
    arch: str
    kwargs: dict
    checkpoints: list[Checkpoint]
    model: torch.nn.Module
    adapter: ModelAdapter

    def load(self, epoch: int, trust: bool = False) -> torch.nn.Module:
        for ckpt in self.checkpoints:
            if ckpt.epoch == epoch:
                return load_checkpoint(self.model, ckpt.path, trust, self.arch)
        from .errors import CheckpointError
        raise CheckpointError(f"run {self.name!r} has no checkpoint for epoch {epoch}; its "
                              f"epochs are {[c.epoch for c in self.checkpoints]}")


def run_model(cfg: StudyConfig, run_name: str, device: torch.device | str = "cpu") -> RunModel:
    run = cfg.run(run_name)
    arch, kwargs = cfg.arch_of(run)
    checkpoints = find_checkpoints(cfg.resolve(run.checkpoints), run.name)
    # channels-last weights (and inputs, see compute_stimuli) make convolutions about twice as
    # fast on CPUs; checkpoints load into them unchanged
    model = build_model(arch, kwargs).to(device, memory_format=torch.channels_last).eval()
    adapter = ModelAdapter(model, cfg.model.layers, cfg.model.reduction)
    return RunModel(run.name, arch, kwargs, checkpoints, model, adapter)


# -------------------------------------------------------------------------- stimuli
def stimuli_key(cfg: StudyConfig, probe: ProbeSet, rm: RunModel, ckpt: Checkpoint) -> str:
    stat = ckpt.path.stat()
    return stable_hash({
        "probe": probe.info.get("fingerprint") or probe.fingerprint(),
        "arch": rm.arch, "kwargs": rm.kwargs, "layers": cfg.model.layers,
        "reduction": cfg.model.reduction, "k_stimuli": cfg.stimuli.k_stimuli,
        "k_responsive": cfg.stimuli.k_responsive, "checkpoint": str(ckpt.path.resolve()),
        "activations": cfg.space.records_activations,
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


@dataclass
class StageReport:
    computed: list[tuple[str, int]]
    skipped: list[tuple[str, int]]


def ensure_stimuli(cfg: StudyConfig, ws: Workspace, probe: ProbeSet,
                   runs: list[str] | None = None) -> StageReport:
    """Stimuli of every checkpoint of every run (or of ``runs``) that lacks them.

    Under torchrun the checkpoints to compute are shared out: whole checkpoints, one per
    process, as long as there are at least as many left as processes; the probe images of the
    remaining ones (fewer than the processes), in blocks of whole batches. Rank 0 gathers the
    results, merges the partial ones exactly (:func:`conceptevo.stimuli.merge_shards`) and
    writes them; the result is the one a single process computes.
    """
    device = resolve_device(cfg.device)
    ctx = distributed.current()
    report = StageReport([], [])
    for run in cfg.runs:
        if runs is not None and run.name not in runs:
            continue
        rm = run_model(cfg, run.name, device)
        keys = {ckpt.epoch: (ckpt, stimuli_key(cfg, probe, rm, ckpt)) for ckpt in rm.checkpoints}
        todo_epochs = []
        for epoch, (_, key) in keys.items():
            meta = ws.stimuli_meta(run.name, epoch)
            if meta is not None and meta.get("key") == key:
                report.skipped.append((run.name, epoch))
            else:
                todo_epochs.append(epoch)
        # every process works through rank 0's list
        todo = [keys[e] for e in ctx.broadcast(todo_epochs)]
        if not todo:
            continue
        log.info("run %s: stimuli for %d checkpoint(s) on %s%s (%d already done)", run.name,
                 len(todo), device, f", {ctx.describe()}" if ctx.enabled else "",
                 len(rm.checkpoints) - len(todo))
        _stimuli_passes(cfg, ws, probe, rm, todo, device, ctx, report)
    return report


def _stimuli_passes(cfg: StudyConfig, ws: Workspace, probe: ProbeSet, rm: RunModel,
                    todo: list[tuple[Checkpoint, str]], device: torch.device,
                    ctx: distributed.Context, report: StageReport) -> None:
    """The stimulus passes of ``todo`` [(checkpoint, key)], shared out among the processes."""
    n, bs, w = len(probe), cfg.stimuli.batch_size, ctx.world_size
    whole = len(todo) - len(todo) % w  # checkpoints computed whole, one per process
    n_batches = -(-n // bs)
    mine = ctx.shard(n_batches)  # batches of this process in the other checkpoints
    my_ids = np.arange(mine.start * bs, min(mine.stop * bs, n), dtype=np.int64)
    total = whole // w * n + (len(todo) - whole) * len(my_ids)

    def one_pass(ckpt: Checkpoint, ids: np.ndarray | None, bar, shard: bool):
        rm.load(ckpt.epoch, cfg.trust_checkpoints)
        return compute_stimuli(
            rm.adapter, probe.batches(bs, device, ids=ids), n,
            k_stimuli=cfg.stimuli.k_stimuli, k_responsive=cfg.stimuli.k_responsive,
            device=device, on_nonfinite=cfg.stimuli.on_nonfinite,
            context=f"run {rm.name!r} epoch {ckpt.epoch} ({ckpt.path})", channels_last=True,
            record_batches=shard, record_activations=cfg.space.records_activations,
            progress=bar.update)

    def save(ckpt: Checkpoint, key: str, result) -> None:
        if ctx.is_main:
            result.meta.update({"key": key, "run": rm.name, "epoch": ckpt.epoch,
                                "checkpoint": str(ckpt.path), "arch": rm.arch,
                                "reduction": cfg.model.reduction})
            ws.save_stimuli(rm.name, ckpt.epoch, result)
        report.computed.append((rm.name, ckpt.epoch))

    with progress_bar(total, f"stimuli {rm.name}", "img") as bar:
        for start in range(0, whole, w):
            ckpt, _ = todo[start + ctx.rank]
            bar.set_postfix_str(f"epoch {ckpt.epoch}")
            result = one_pass(ckpt, None, bar, shard=False).result()
            for (ckpt, key), res in zip(todo[start:start + w], ctx.gather(result) or [None] * w):
                save(ckpt, key, res)
        for ckpt, key in todo[whole:]:
            bar.set_postfix_str(f"epoch {ckpt.epoch}")
            acc = one_pass(ckpt, my_ids, bar, shard=True).to("cpu") if len(my_ids) else None
            parts = ctx.gather(acc)
            save(ckpt, key, merge_shards(parts).result() if ctx.is_main else None)


def open_workspace(cfg: StudyConfig) -> Workspace:
    """Create or open the study's workspace, remove temporaries of killed processes and
    record the configuration (under torchrun, rank 0 does that and the others then open it)."""
    ctx = distributed.current()
    with ctx.main_first():
        if ctx.is_main:
            ws = Workspace(cfg.workspace_path, create=True)
            clean_temporaries(ws.root)
            ws.save_study(dict(cfg.to_dict(), base_dir=str(cfg.base_dir)))
        else:
            ws = Workspace(cfg.workspace_path)
    return ws


def run_stimuli_stage(cfg: StudyConfig) -> tuple[Workspace, StageReport]:
    """``conceptevo stimuli``: probe set(s) then stimuli of every checkpoint."""
    ws = open_workspace(cfg)
    probe, _ = ensure_probe_sets(cfg, ws)
    return ws, ensure_stimuli(cfg, ws, probe)


# ------------------------------------------------------------------------- training
def checkpoint_target(cfg: StudyConfig, run: RunConfig, epoch: int) -> Path:
    """Where ConceptEvo's trainer writes ``run``'s checkpoint of ``epoch``."""
    pattern = str(cfg.resolve(run.checkpoints))
    if "{epoch}" in pattern:
        return Path(pattern.replace("{epoch}", f"{epoch:04d}"))
    return Path(pattern) / f"epoch_{epoch:04d}.pt"


def save_checkpoint(path: Path, model: torch.nn.Module, epoch: int, arch: str,
                    kwargs: dict) -> None:
    """A checkpoint that safe loading (weights_only) reads: the state_dict plus plain data."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "epoch": epoch, "arch": arch,
                    "kwargs": kwargs}, tmp)


def ensure_training(cfg: StudyConfig, ws: Workspace, runs: list[str] | None = None
                    ) -> StageReport:
    """Train every run that has a ``train`` table and is not finished; resume a run that
    was interrupted from its last checkpoint (the result is identical to an uninterrupted
    run)."""
    from .data.probe import load_image_folder

    report = StageReport([], [])
    todo = [r for r in cfg.runs if r.train is not None and (runs is None or r.name in runs)]
    data = None
    for run in todo:
        state = _train_state(cfg, ws, run)
        if state["done"] >= run.train.epochs:
            report.skipped.append((run.name, state["done"]))
            continue
        if data is None:
            data = tuple(load_image_folder(cfg.resolve(root), cfg.probe.image_size,
                                           mean=cfg.probe.mean, std=cfg.probe.std)
                         for root in (cfg.training.train_root, cfg.training.val_root))
        _train_run(cfg, ws, run, state, *data, report)
    return report


def _train_key(cfg: StudyConfig, run: RunConfig) -> str:
    from .train import config_dict

    arch, kwargs = cfg.arch_of(run)
    return stable_hash({"train": config_dict(run.train), "arch": arch, "kwargs": kwargs,
                        "data": [cfg.training.train_root, cfg.training.val_root],
                        "size": cfg.probe.image_size, "mean": cfg.probe.mean,
                        "std": cfg.probe.std})


def _train_state(cfg: StudyConfig, ws: Workspace, run: RunConfig) -> dict:
    """What is already trained: the last finished epoch ("done", -1 for none), the optimizer
    state then, the files written and the metrics. Settings that changed since discard it."""
    key = _train_key(cfg, run)
    path = ws.path("runs", run.name, "train_state.pt")
    state = torch.load(path, weights_only=True) if path.is_file() else None
    if state is not None and state.get("key") != key:
        log.warning("run %s: training settings changed; training it again", run.name)
        for p in state.get("files", []):
            Path(p).unlink(missing_ok=True)
        state = None
    if state is None:
        return {"done": -1, "key": key, "optimizer": None, "files": [], "metrics": [],
                "path": path}
    metrics = [m for m in ws.load_metrics(run.name) if m["epoch"] <= state["epoch"]]
    return {"done": state["epoch"], "key": key, "optimizer": state["optimizer"],
            "files": list(state["files"]), "metrics": metrics, "path": path}


def _train_run(cfg: StudyConfig, ws: Workspace, run: RunConfig, state: dict, train_set,
               val_set, report: StageReport) -> None:
    from .train import subset_per_class, train

    arch, kwargs = cfg.arch_of(run)
    tcfg = run.train
    device = resolve_device(cfg.device)
    torch.manual_seed(tcfg.seed)  # the initialisation (epoch 0) is part of the run
    model = build_model(arch, kwargs)
    start = max(state["done"], 0)
    if state["done"] >= 0:
        load_checkpoint(model, checkpoint_target(cfg, run, state["done"]), False, arch)
        log.info("run %s: resuming training after epoch %d", run.name, state["done"])
    files, metrics = state["files"], state["metrics"]
    per_epoch = len(subset_per_class(train_set.labels, tcfg.train_subset, tcfg.seed)) \
        * tcfg.repeat
    log.info("run %s: training %s for %d epochs on %s (%s regime)", run.name, arch,
             tcfg.epochs, device, tcfg.regime)
    with progress_bar((tcfg.epochs - start) * per_epoch, f"train {run.name}", "img") as bar:

        def on_epoch_end(epoch, model, optimizer, row):
            path = checkpoint_target(cfg, run, epoch)
            save_checkpoint(path, model, epoch, arch, kwargs)
            files.append(str(path))
            metrics.append(row)
            ws.save_metrics(run.name, metrics)
            with atomic_path(state["path"]) as tmp:
                torch.save({"epoch": epoch, "key": state["key"],
                            "optimizer": optimizer.state_dict(), "files": files}, tmp)
            report.computed.append((run.name, epoch))
            bar.set_postfix_str(f"epoch {epoch} val acc {row['val_acc']:.2f}")

        train(model, train_set.images, train_set.labels, val_set.images, val_set.labels,
              tcfg, mean=cfg.probe.mean, std=cfg.probe.std, device=device,
              on_epoch_end=on_epoch_end, start_epoch=start,
              optimizer_state=state["optimizer"], progress=bar.update)


# ---------------------------------------------------------------------------- build
def write_space_figures(ws: Workspace) -> list[Path]:
    """``figures/space_<run>.png``: each run's neurons by epoch on the grey base map."""
    from .export import run_order
    from .viz import plot_run_map

    _, base = ws.load_arrays(ws.space_path("map.npz"))
    paths = []
    for run in run_order(ws):
        epochs = ws.projection_epochs(run)
        if not epochs:
            continue
        coords = [ws.load_arrays(ws.projection_path(run, e))[1]["coords"] for e in epochs]
        paths.append(plot_run_map(base["coords"], epochs, coords,
                                  ws.path("figures", f"space_{run}.png"),
                                  f"run {run}: neurons by epoch on the base model (grey)"))
    return paths


def store_receptive_fields(cfg: StudyConfig, ws: Workspace) -> None:
    """The receptive fields of every run's layers, stored for the dashboard and the report
    (which never build a model from a factory that a workspace names)."""
    from .patches import cached_receptive_fields

    size = (cfg.probe.image_size, cfg.probe.image_size)
    for run in cfg.runs:
        arch, kwargs = cfg.arch_of(run)
        cached_receptive_fields(ws, arch, kwargs, cfg.model.layers, size, allow_code=True)


def run_build(cfg: StudyConfig) -> dict:
    """``conceptevo build``: every stage that is missing, in order (probe sets, stimuli, base
    space, image embedding, projections, 2-D map, figures).

    Under torchrun the stimuli are shared out and the space stages run on rank 0 alone (the
    other ranks get ``space`` None and no figures, once rank 0 is done)."""
    from .space.stage import ensure_space

    ctx = distributed.current()
    ws = open_workspace(cfg)
    probe, _ = ensure_probe_sets(cfg, ws)
    stimuli = ensure_stimuli(cfg, ws, probe)
    space, figures = None, []
    if ctx.is_main:
        space = ensure_space(cfg, ws, probe)
        figures = write_space_figures(ws)
        store_receptive_fields(cfg, ws)
    ctx.barrier()
    return {"workspace": ws, "stimuli": stimuli, "space": space, "figures": figures}
