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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .config import ProbeConfig, RunConfig, StudyConfig
from .data.probe import ProbeSet, plan_image_folder, read_planned
from .errors import ConceptEvoError, ConfigError, CorruptArtifactError
from .models.adapter import ModelAdapter
from .models.checkpoints import Checkpoint, find_checkpoints, load_checkpoint
from .progress import progress_bar
from .runs import (  # noqa: F401  (also part of this module's API)
    RunModel,
    check_ranking_sizes,
    probe_classes,
    resolve_device,
    run_model,
    stable_hash,
    stimuli_key,
)
from .stimuli import compute_stimuli, merge_shards
from .workspace import Workspace
from .workspace.atomic import atomic_path, clean_temporaries, reserve

log = logging.getLogger("conceptevo")


# ---------------------------------------------------------------------------- probe
def probe_key(pcfg: ProbeConfig, root: Path, classes: list[str] | None) -> str:
    return stable_hash({"root": str(root), "per_class": pcfg.per_class,
                        "fraction": pcfg.fraction, "image_size": pcfg.image_size,
                        "mean": pcfg.mean, "std": pcfg.std, "seed": pcfg.seed,
                        "skip_unreadable": pcfg.skip_unreadable, "classes": classes})


def ensure_probe(ws: Workspace, pcfg: ProbeConfig, root: Path, name: str = "probe",
                 classes: list[str] | None = None, class_source: str = "") -> ProbeSet:
    """Sample and decode a probe (or held-out) set into the workspace, unless already there.
    ``classes``: the class names in the model's output order (None: the sorted folder names);
    ``class_source`` says where they come from (recorded in the set's info)."""
    key = probe_key(pcfg, root, classes)
    try:
        if ws.has_probe(name) and ws.probe_meta(name).get("key") == key:
            return ws.load_probe(name)
    except CorruptArtifactError as e:  # decoded again from the image folder
        log.warning("%s set: %s; decoding it again", name, e)
    plan = plan_image_folder(root, pcfg.per_class, pcfg.fraction, pcfg.seed, classes)
    if classes is not None and name == "probe":
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            log.warning("%s set: class(es) %s of the class list have no folder in %s; they "
                        "get no probe image", name, ", ".join(missing[:5]), root)
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
    probe.info["class_order"] = class_source or ("given" if classes else "sorted folder names")
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
    classes, source = probe_classes(cfg)
    with distributed.current().main_first():
        probe = ensure_probe(ws, cfg.probe, cfg.resolve(cfg.probe.root), "probe", classes,
                             source)
        heldout = None
        if cfg.heldout is not None:
            heldout = ensure_probe(ws, cfg.heldout, cfg.resolve(cfg.heldout.root), "heldout",
                                   classes=probe.classes, class_source="the probe set's")
        record_study(cfg, ws)
    return probe, heldout


# --------------------------------------------------------------------------- models
def resolve_input_size(cfg: StudyConfig) -> int:
    """Check that every run's model takes the probe's image size, or choose one.

    With ``[probe] image_size`` set, a model that cannot take it is a :class:`ConfigError`
    naming the size that fits. Without it, 224 is used when every model takes it, else the
    size that the model with a fixed-size head needs (logged). Sets ``cfg.probe.image_size``
    (and the held-out set's) and returns it."""
    from .models.input_size import check_input_size

    given = cfg.probe.image_size
    archs: dict[str, tuple[str, dict, str]] = {}
    for run in cfg.runs:
        arch, kwargs = cfg.arch_of(run)
        archs.setdefault(stable_hash([arch, kwargs]), (arch, kwargs, run.name))
    models = [(cfg.build_model(arch, kwargs), arch, name) for arch, kwargs, name in archs.values()]
    size = given or 224
    for model, arch, name in models:
        check = check_input_size(model, size)
        if check.fits:
            continue
        fit = f"; set [probe] image_size = {check.suggestion} (a size that fits)" \
            if check.suggestion else "; set [probe] image_size to the size it was trained on"
        if given is not None or check.suggestion is None:
            raise ConfigError(f"model {arch} (run {name!r}) does not take {size}x{size} "
                              f"images: {check.reason}{fit}")
        log.info("[probe] image_size is not set: using %d, the size that model %s (run %r) "
                 "takes (at 224: %s)", check.suggestion, arch, name, check.reason)
        size = check.suggestion
        break
    for model, arch, name in models:  # every model must take the chosen size
        check = check_input_size(model, size)
        if not check.fits:
            raise ConfigError(f"model {arch} (run {name!r}) does not take {size}x{size} "
                              f"images, which another run's model needs: {check.reason}; "
                              "probe runs that take one image size in one study")
    cfg.set_image_size(size)
    return size


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
        load_checkpoint(cfg.build_model(arch, kwargs), checkpoints[-1].path,
                        cfg.trust_checkpoints, arch)
        found[run.name] = checkpoints
    return found


def _check_base(cfg: StudyConfig) -> None:
    """The base model of the space exists: its run's epoch, or the external checkpoint fitted
    to its architecture."""
    from .space.stage import base_descriptor

    sc = cfg.space
    if sc.base_arch is not None:
        load_checkpoint(cfg.build_model(sc.base_arch, sc.base_kwargs or {}),
                        cfg.resolve(sc.base_checkpoint), cfg.trust_checkpoints, sc.base_arch)
        return
    run = cfg.run(sc.base_run or cfg.runs[0].name)
    if run.train is None or _has_checkpoints(cfg, run):
        base_descriptor(cfg)


def _has_checkpoints(cfg: StudyConfig, run: RunConfig) -> bool:
    from .errors import CheckpointError

    try:
        find_checkpoints(cfg.resolve(run.checkpoints), run.name)
    except CheckpointError:
        return False
    return True


# -------------------------------------------------------------------------- stimuli
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
        check_ranking_sizes(cfg, probe, rm.adapter, f"run {run.name!r}")
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
            spill_dir=ws.root,  # the recorded activations' scratch file: the workspace's disk
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


def class_order_report(cfg: StudyConfig, ws: Workspace, probe: ProbeSet) -> list[dict]:
    """The probe accuracy of the last checkpoint of every run (from its stimulus pass),
    logged, with a warning when it is near chance or when the probe's class order probably
    differs from the model's output order (:func:`conceptevo.data.classes.check_class_order`).
    Returns one entry per run: {"run", "epoch", **check}."""
    from .data.classes import check_class_order, class_order_message

    _, source = probe_classes(cfg)
    out = []
    for run in cfg.runs:
        epochs = ws.stimuli_epochs(run.name)
        if not epochs:
            continue
        result = ws.load_stimuli(run.name, epochs[-1])
        if result.predicted is None or len(result.predicted) != len(probe):
            continue
        check = check_class_order(probe.labels, result.predicted, probe.classes)
        if check is None:
            continue
        what = f"run {run.name!r} epoch {epochs[-1]}"
        log.info("%s: probe accuracy %.1f%% (chance %.1f%%, %d images)", what,
                 100 * check.accuracy, 100 * check.chance, check.n_images)
        message = class_order_message(check, what, source)
        if message:
            log.warning("warning: %s", message)
        out.append({"run": run.name, "epoch": epochs[-1], **check.to_dict(),
                    "message": message})
    return out


def preflight(cfg: StudyConfig) -> None:
    """Check, before the workspace is touched, what can be checked without the long passes:
    the device, the image size against every model (or choose it), the layer selection, the
    ranking sizes against the probe images (listed, not decoded) and the probed neurons,
    every run's checkpoints (found, the last one fitted) and training logs. A bad study then
    fails with its error and leaves an existing workspace exactly as it was."""
    resolve_device(cfg.device)
    size = resolve_input_size(cfg)
    classes, _ = probe_classes(cfg)
    root = cfg.resolve(cfg.probe.root)
    n_images = _stored_probe_size(cfg, probe_key(cfg.probe, root, classes))
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
        adapter = ModelAdapter(cfg.build_model(arch, kwargs).eval(),
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


def _stored_probe_size(cfg: StudyConfig, key: str) -> int | None:
    """The size of the workspace's probe set when it is the one ``key`` describes."""
    meta = cfg.workspace_path / "probe" / "meta.json"
    if not meta.is_file():
        return None
    try:
        info = Workspace(cfg.workspace_path).probe_meta()
    except ConceptEvoError:
        return None
    return int(info["n_images"]) if info.get("key") == key and \
        isinstance(info.get("n_images"), int) else None


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


def record_study(cfg: StudyConfig, ws: Workspace) -> None:
    """``study.json``: the resolved configuration the workspace's artifacts are computed
    with (rank 0 writes it)."""
    if distributed.current().is_main:
        ws.save_study(dict(cfg.to_dict(), base_dir=str(cfg.base_dir)))


def run_stimuli_stage(cfg: StudyConfig) -> tuple[Workspace, StageReport]:
    """``conceptevo stimuli``: probe set(s), training logs, then stimuli of every checkpoint."""
    ws = open_workspace(cfg)
    probe, _ = ensure_probe_sets(cfg, ws)
    ensure_metrics(cfg, ws)
    report = ensure_stimuli(cfg, ws, probe)
    if distributed.current().is_main:
        class_order_report(cfg, ws, probe)
    return ws, report


# ---------------------------------------------------------------------- training logs
def ensure_metrics(cfg: StudyConfig, ws: Workspace) -> list[str]:
    """Read the training log of every run with ``metrics`` into ``runs/<run>/metrics.csv``
    (unless it is there from the same file); returns the runs read."""
    from .data.metrics import read_metrics

    done = []
    if not distributed.current().is_main:
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
        meta_path = ws.path("runs", run.name, "metrics_source.json")
        if meta_path.is_file() and _read_json(meta_path).get("key") == key:
            continue
        rows, info = read_metrics(source, run.name)
        epochs = {c.epoch for c in find_checkpoints(cfg.resolve(run.checkpoints), run.name)}
        matched = sorted(epochs & {r["epoch"] for r in rows})
        if not matched:
            log.warning("run %s: the metrics of %s are for epochs %d..%d, none of which has a "
                        "checkpoint (%d..%d); check the epoch numbering", run.name, source,
                        min(r["epoch"] for r in rows), max(r["epoch"] for r in rows),
                        min(epochs), max(epochs))
        ws.save_metrics(run.name, rows)
        from .workspace.atomic import write_json

        write_json(meta_path, {"key": key, "source": str(source), **info})
        log.info("run %s: %d epochs of training metrics (%s) read from %s", run.name, len(rows),
                 ", ".join(info["columns"]), source)
        done.append(run.name)
    return done


def _stamps(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _read_json(path: Path) -> dict:
    from .workspace.atomic import read_json

    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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
    record_study(cfg, ws)
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
        _train_run(cfg, ws, run, state, *data[roots], report)
    return report


def training_roots(cfg: StudyConfig, run: RunConfig) -> tuple[str, str]:
    """The (train, val) ImageFolder roots ``run`` is trained on: its own, else [training]'s."""
    return (run.train_root or cfg.training.train_root, run.val_root or cfg.training.val_root)


def _train_key(cfg: StudyConfig, run: RunConfig) -> str:
    from .train import config_dict

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


def _train_run(cfg: StudyConfig, ws: Workspace, run: RunConfig, state: dict, train_set,
               val_set, report: StageReport) -> None:
    from .train import subset_per_class, train

    arch, kwargs = cfg.arch_of(run)
    tcfg = run.train
    device = resolve_device(cfg.device)
    torch.manual_seed(tcfg.seed)  # the initialisation (epoch 0) is part of the run
    model = cfg.build_model(arch, kwargs)
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
    from .runs import run_order
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
        cached_receptive_fields(ws, arch, kwargs, cfg.model.layers, size,
                                allow_code=cfg.allow_code, layouts=cfg.model.layouts,
                                tokens=cfg.model.tokens, margin=cfg.model.patch_margin)


def run_build(cfg: StudyConfig) -> dict:
    """``conceptevo build``: every stage that is missing, in order (probe sets, stimuli, base
    space, image embedding, projections, 2-D map, figures).

    Under torchrun the stimuli are shared out and the space stages run on rank 0 alone (the
    other ranks get ``space`` None and no figures, once rank 0 is done)."""
    from .evolution.stage import run_diagnosis
    from .space.stage import ensure_space

    ctx = distributed.current()
    ws = open_workspace(cfg)
    probe, _ = ensure_probe_sets(cfg, ws)
    ensure_metrics(cfg, ws)
    stimuli = ensure_stimuli(cfg, ws, probe)
    space, figures, classes, diagnosis = None, [], [], None
    if ctx.is_main:
        classes = class_order_report(cfg, ws, probe)
        space = ensure_space(cfg, ws, probe)
        figures = write_space_figures(ws)
        store_receptive_fields(cfg, ws)
        diagnosis = run_diagnosis(ws, cfg.diagnosis)
    ctx.barrier()
    return {"workspace": ws, "stimuli": stimuli, "space": space, "figures": figures,
            "classes": classes, "diagnosis": diagnosis}
