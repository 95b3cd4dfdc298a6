"""The probe stage: the probe (and held-out) images sampled from their folders and decoded
into the workspace once, and the image size every model of the study takes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import distributed
from ..common import stable_hash
from ..config import ProbeConfig, StudyConfig
from ..data.classes import check_class_order, class_order_message
from ..data.probe import ProbeSet, plan_image_folder, read_planned
from ..errors import ConceptEvoError, ConfigError, CorruptArtifactError
from ..models.input_size import check_input_size
from ..progress import progress_bar
from ..runs import build_model, probe_classes
from ..workspace import Workspace
from ..workspace.atomic import atomic_path, reserve
from .context import Context, record_study

log = logging.getLogger("conceptevo")


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


def ensure_probe_sets(ctx: Context) -> tuple[ProbeSet, ProbeSet | None]:
    """The probe set and the held-out set (None without ``[heldout]``), decoded unless they
    are in the workspace already; then ``study.json`` is recorded. Under torchrun, rank 0
    decodes and writes the sets; the others then load them."""
    cfg, ws = ctx.cfg, ctx.ws
    classes, source = probe_classes(cfg)
    with distributed.current().main_first():
        probe = ensure_probe(ws, cfg.probe, cfg.resolve(cfg.probe.root), "probe", classes,
                             source)
        heldout = None
        if cfg.heldout is not None:
            heldout = ensure_probe(ws, cfg.heldout, cfg.resolve(cfg.heldout.root), "heldout",
                                   classes=probe.classes, class_source="the probe set's")
        record_study(ctx)
    return probe, heldout


def resolve_input_size(cfg: StudyConfig) -> int:
    """Check that every run's model takes the probe's image size, or choose one.

    With ``[probe] image_size`` set, a model that cannot take it is a :class:`ConfigError`
    naming the size that fits. Without it, 224 is used when every model takes it, else the
    size that the model with a fixed-size head needs (logged). Sets ``cfg.probe.image_size``
    (and the held-out set's) and returns it."""
    given = cfg.probe.image_size
    archs: dict[str, tuple[str, dict, str]] = {}
    for run in cfg.runs:
        arch, kwargs = cfg.arch_of(run)
        archs.setdefault(stable_hash([arch, kwargs]), (arch, kwargs, run.name))
    models = [(build_model(cfg, arch, kwargs), arch, name) for arch, kwargs, name in archs.values()]
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


def stored_probe_size(cfg: StudyConfig, key: str) -> int | None:
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


def class_order_report(ctx: Context, probe: ProbeSet) -> list[dict]:
    """The probe accuracy of the last checkpoint of every run (from its stimulus pass),
    logged, with a warning when it is near chance or when the probe's class order probably
    differs from the model's output order (:func:`conceptevo.data.classes.check_class_order`).
    Returns one entry per run: {"run", "epoch", **check}."""
    cfg, ws = ctx.cfg, ctx.ws
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
