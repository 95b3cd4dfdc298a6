"""What every stage needs of a study's runs, below the stages themselves: the device, cache
keys, the order of the runs, the probe's class order, and each run's model ready for its
checkpoints. :mod:`conceptevo.pipeline` orders the stages; the stage modules
(:mod:`conceptevo.space.stage`, :mod:`conceptevo.evolution.stage`, ...) import from here, so
that none of them imports the pipeline that calls them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from . import distributed
from .config import StudyConfig
from .data.probe import ProbeSet
from .errors import ConfigError
from .models.adapter import ModelAdapter
from .models.checkpoints import Checkpoint, find_checkpoints, load_checkpoint
from .workspace import Workspace


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU. Under torchrun, a CUDA device
    without an index is this process's GPU, ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        return distributed.device_for("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {spec!r} is not a device; use \"auto\", \"cpu\", \"cuda\", "
                          "\"cuda:N\" or \"mps\"") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {spec!r} cannot run a study; use \"auto\", \"cpu\", "
                          "\"cuda\", \"cuda:N\" or \"mps\"")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} was asked for but CUDA is not available here; "
                              "use device = \"auto\" or \"cpu\"")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise ConfigError(f"device {spec!r} was asked for but Apple's MPS is not available "
                          "here; use device = \"auto\" or \"cpu\"")
    return distributed.device_for(device)


def stable_hash(obj) -> str:
    """A short hash of a JSON-able object (keys sorted): the cache key of a stage."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def probe_classes(cfg: StudyConfig) -> tuple[list[str] | None, str]:
    """The probe's class names in the model's output order, and where they come from:
    ``[probe] classes`` (a list or a file), else ``classes.txt`` in the probe root, else None
    (the sorted folder names)."""
    from .data.classes import CLASS_FILE, read_class_list

    given = cfg.probe.classes
    if isinstance(given, list):
        return list(given), "[probe] classes"
    if isinstance(given, str):
        path = cfg.resolve(given)
        return read_class_list(path), str(path)
    default = cfg.resolve(cfg.probe.root) / CLASS_FILE
    if default.is_file():
        return read_class_list(default), str(default)
    return None, "the sorted folder names"


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
    model = cfg.build_model(arch, kwargs).to(device, memory_format=torch.channels_last).eval()
    adapter = ModelAdapter(model, **cfg.model.adapter_options())
    return RunModel(run.name, arch, kwargs, checkpoints, model, adapter)


def stimuli_key(cfg: StudyConfig, probe: ProbeSet, rm: RunModel, ckpt: Checkpoint) -> str:
    stat = ckpt.path.stat()
    return stable_hash({
        "probe": probe.info.get("fingerprint") or probe.fingerprint(),
        "arch": rm.arch, "kwargs": rm.kwargs, **cfg.model.neuron_key(),
        "k_stimuli": cfg.stimuli.k_stimuli,
        "k_responsive": cfg.stimuli.k_responsive, "checkpoint": str(ckpt.path.resolve()),
        "activations": cfg.space.records_activations,
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def check_ranking_sizes(cfg: StudyConfig, probe: ProbeSet, adapter: ModelAdapter,
                        what: str) -> None:
    """``[stimuli] k_stimuli`` must not exceed the probe images, nor ``k_responsive`` the
    probed neurons (of ``adapter``'s model, described here on one probe image)."""
    sc = cfg.stimuli
    if sc.k_stimuli > len(probe):
        raise ConfigError(f"[stimuli] k_stimuli = {sc.k_stimuli} exceeds the {len(probe)} probe "
                          "images (a neuron's stimuli are distinct images); lower it or add "
                          "probe images")
    if adapter.layers_ is None:
        device = next(adapter.model.parameters()).device
        example = probe.tensor([0], device).contiguous(memory_format=torch.channels_last)
        adapter.describe(example)
    if sc.k_responsive > adapter.n_neurons:
        raise ConfigError(f"[stimuli] k_responsive = {sc.k_responsive} exceeds the "
                          f"{adapter.n_neurons} probed neurons of {what}; lower it or probe more "
                          "layers")


def run_order(ws: Workspace, among: list[str] | None = None) -> list[str]:
    """Runs in the order of the study config: those with stimuli, or those of ``among``
    (runs the config does not name, e.g. a live Monitor's, follow in sorted order)."""
    have = ws.stimuli_runs() if among is None else list(among)
    study = [r["name"] for r in ws.load_study().get("runs", [])]
    return [r for r in study if r in have] + sorted(set(have) - set(study))
