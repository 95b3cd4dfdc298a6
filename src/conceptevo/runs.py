"""What the stages need of a study's runs, below the stages themselves: the order of the
runs' checkpoints, the probe's class order, each run's model ready for its checkpoints, and
the key of a stimulus pass. The stages (:mod:`conceptevo.stages`) import from here;
``resolve_device`` and ``stable_hash`` live in :mod:`conceptevo.common`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import resolve_device, stable_hash  # noqa: F401 (re-exported)
from .config import StudyConfig
from .data.probe import ProbeSet
from .errors import ConfigError
from .models import registry
from .models.adapter import ModelAdapter
from .models.checkpoints import Checkpoint, find_checkpoints, load_checkpoint
from .workspace.artifacts import run_order  # noqa: F401 (re-exported)


def build_model(cfg: StudyConfig, arch: str, kwargs: dict | None = None) -> torch.nn.Module:
    """The model ``arch`` of a study (a factory only when ``cfg`` may run code). An
    ``hf:PATH`` to a local config is relative to the config file, like every path."""
    if isinstance(arch, str) and arch.startswith("hf:"):
        local = cfg.resolve(arch[3:])
        if ("/" in arch[3:] or arch[3:].endswith(".json")) and local.exists():
            arch = f"hf:{local}"
    return registry.build_model(arch, kwargs, allow_code=cfg.allow_code)


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
    model = build_model(cfg, arch, kwargs).to(device, memory_format=torch.channels_last).eval()
    adapter = ModelAdapter(model, **cfg.model.adapter_options())
    return RunModel(run.name, arch, kwargs, checkpoints, model, adapter)


def streams_projection(cfg: StudyConfig) -> bool:
    """Whether the stimulus passes project each checkpoint into the base space at their end
    instead of storing its activations (the activation-weighted projection with ``[stimuli]
    store_activations = false``): bounded storage, docs/scaling.md."""
    return cfg.space.records_activations and not cfg.stimuli.store_activations


def stimuli_key(cfg: StudyConfig, probe: ProbeSet, rm: RunModel, ckpt: Checkpoint,
                space_key: str | None = None) -> str:
    """The key of a checkpoint's stored stimulus pass; ``space_key``: the pass projects into
    that space (:func:`streams_projection`) and stores the projection, not the activations."""
    stat = ckpt.path.stat()
    if space_key is not None:
        return stable_hash([stimuli_key(cfg, probe, rm, ckpt), "projected", space_key])
    return stable_hash({
        "probe": probe.info.get("fingerprint") or probe.fingerprint(),
        "arch": rm.arch, "kwargs": rm.kwargs, **cfg.model.neuron_key(),
        "k_stimuli": cfg.stimuli.k_stimuli,
        "k_responsive": cfg.stimuli.k_responsive, "checkpoint": str(ckpt.path.resolve()),
        "activations": cfg.space.records_activations,
        **({"amp": True} if cfg.stimuli.amp else {}),  # (absent when off: old keys hold)
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def pass_is_current(meta: dict | None, key: str) -> bool:
    """Whether a stored stimulus pass (its ``meta``) is the one of key ``key`` (of
    :func:`stimuli_key` without a space), projected into a space or not."""
    if meta is None:
        return False
    return meta.get("key") == key or (
        "space" in meta and meta.get("key") == stable_hash([key, "projected", meta["space"]]))


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
