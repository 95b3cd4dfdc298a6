"""The training stage: the runs ConceptEvo trains (a ``train`` table in the config), resumed
from their last checkpoint after an interruption, and every run's training log read into
``runs/<run>/metrics.csv``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..common import stable_hash
from ..config import RunConfig, StudyConfig
from ..data.metrics import read_metrics
from ..data.probe import load_image_folder
from ..errors import ConfigError
from ..models.checkpoints import find_checkpoints, load_checkpoint
from ..progress import progress_bar
from ..runs import build_model, probe_classes
from ..train import config_dict, subset_per_class, train
from ..workspace import Workspace
from ..workspace.artifacts import metrics_source_path, save_training_log
from ..workspace.atomic import atomic_path
from .context import Context, StageReport, record_study, stored_key

log = logging.getLogger("conceptevo")


def ensure_metrics(ctx: Context) -> list[str]:
    """Read the training log of every run with ``metrics`` into ``runs/<run>/metrics.csv``
    (unless it is there from the same file); returns the runs read."""
    cfg, ws = ctx.cfg, ctx.ws
    done = []
    if not ctx.is_main:
        return done
    for run in cfg.runs:
        if run.metrics is None:
            continue
        source = cfg.resolve(run.metrics)
        if not source.exists():
            raise ConfigError(f"run {run.name!r}: metrics {str(source)!r} does not exist; give "
                              "a CSV file with an epoch column, a Lightning log directory or "
                              "TensorBoard event files (relative paths start at the config "
                              "file's directory)")
        key = stable_hash({"source": str(source.resolve()), "files": _stamps(source)})
        if stored_key(ws, metrics_source_path(ws, run.name)) == key:
            continue
        rows, info = read_metrics(source, run.name)
        epochs = {c.epoch for c in find_checkpoints(cfg.resolve(run.checkpoints), run.name)}
        matched = sorted(epochs & {r["epoch"] for r in rows})
        if not matched:
            log.warning("run %s: the metrics of %s are for epochs %d..%d, none of which has a "
                        "checkpoint (%d..%d); check the epoch numbering", run.name, source,
                        min(r["epoch"] for r in rows), max(r["epoch"] for r in rows),
                        min(epochs), max(epochs))
        save_training_log(ws, run.name, rows, {"key": key, "source": str(source), **info})
        log.info("run %s: %d epochs of training metrics (%s) read from %s", run.name, len(rows),
                 ", ".join(info["columns"]), source)
        done.append(run.name)
    return done


def _stamps(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


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


def ensure_training(ctx: Context, runs: list[str] | None = None) -> StageReport:
    """Train every run that has a ``train`` table and is not finished; resume a run that
    was interrupted from its last checkpoint (the result is identical to an uninterrupted
    run)."""
    cfg, ws = ctx.cfg, ctx.ws
    report = StageReport([], [])
    record_study(ctx)
    todo = [r for r in cfg.runs if r.train is not None and (runs is None or r.name in runs)]
    data: dict[tuple[str, str], tuple] = {}  # the image sets, loaded once per pair of roots
    for run in todo:
        state = _train_state(cfg, ws, run)
        if state["done"] >= run.train.epochs:
            report.skipped.append((run.name, state["done"]))
            continue
        roots = training_roots(cfg, run)
        if roots not in data:
            # the probe's class order: the trained model's output c is the probe's class c
            classes, _ = probe_classes(cfg)
            data[roots] = tuple(load_image_folder(cfg.resolve(root), cfg.probe.image_size,
                                                  mean=cfg.probe.mean, std=cfg.probe.std,
                                                  classes=classes)
                                for root in roots)
        _train_run(ctx, run, state, *data[roots], report)
    return report


def training_roots(cfg: StudyConfig, run: RunConfig) -> tuple[str, str]:
    """The (train, val) ImageFolder roots ``run`` is trained on: its own, else [training]'s."""
    return (run.train_root or cfg.training.train_root, run.val_root or cfg.training.val_root)


def _train_key(cfg: StudyConfig, run: RunConfig) -> str:
    arch, kwargs = cfg.arch_of(run)
    key = {"train": config_dict(run.train), "arch": arch, "kwargs": kwargs,
           "data": list(training_roots(cfg, run)),
           "size": cfg.probe.image_size, "mean": cfg.probe.mean, "std": cfg.probe.std}
    classes, _ = probe_classes(cfg)
    if classes is not None:  # (keys of runs trained in sorted folder order stay the same)
        key["classes"] = classes
    return stable_hash(key)


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


def _train_run(ctx: Context, run: RunConfig, state: dict, train_set, val_set,
               report: StageReport) -> None:
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    arch, kwargs = cfg.arch_of(run)
    tcfg = run.train
    torch.manual_seed(tcfg.seed)  # the initialisation (epoch 0) is part of the run
    model = build_model(cfg, arch, kwargs)
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
