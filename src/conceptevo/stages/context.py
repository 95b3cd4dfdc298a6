"""What every stage is given and shares: the command's :class:`Context`, a model opened at a
checkpoint (:func:`open_model`), and the keyed cache (:func:`cached`, :func:`up_to_date`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from .. import distributed
from ..common import resolve_device, stable_hash
from ..config import StudyConfig
from ..data.probe import ProbeSet
from ..errors import CorruptArtifactError
from ..models.adapter import ModelAdapter
from ..models.checkpoints import load_checkpoint
from ..runs import build_model
from ..workspace import Workspace
from ..workspace.atomic import read_json

log = logging.getLogger("conceptevo")


@dataclass(frozen=True)
class Context:
    """One command's study: built once (:meth:`create`), handed to every stage."""

    cfg: StudyConfig
    ws: Workspace
    device: torch.device
    seed: int

    @classmethod
    def create(cls, cfg: StudyConfig, ws: Workspace) -> Context:
        return cls(cfg, ws, resolve_device(cfg.device), cfg.seed)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the workspace (rank 0 under torchrun; always without)."""
        return distributed.current().is_main


@dataclass
class StageReport:
    """The (run, epoch) a stage computed and those it found up to date."""

    computed: list[tuple[str, int]]
    skipped: list[tuple[str, int]]


def record_study(ctx: Context) -> None:
    """``study.json``: the resolved configuration the workspace's artifacts are computed
    with (rank 0 writes it)."""
    if ctx.is_main:
        ctx.ws.save_study(dict(ctx.cfg.to_dict(), base_dir=str(ctx.cfg.base_dir)))


# ------------------------------------------------------------------------------- models
def open_model(cfg: StudyConfig, arch: str, kwargs: dict, checkpoint: Path | None,
               device: torch.device | str, *, channels_last: bool = True,
               example: torch.Tensor | None = None) -> ModelAdapter:
    """The adapter of ``arch`` built from the study's factory, ``checkpoint`` loaded into it
    (``weights_only`` unless the study trusts its checkpoints; None: as built), moved to
    ``device`` (channels-last weights: about twice as fast convolutions on CPUs) in eval mode,
    and described on ``example`` when given."""
    model = build_model(cfg, arch, kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, cfg.trust_checkpoints, arch)
    model = (model.to(device, memory_format=torch.channels_last) if channels_last
             else model.to(device)).eval()
    adapter = ModelAdapter(model, **cfg.model.adapter_options())
    if example is not None:
        adapter.describe(example)
    return adapter


def first_image(probe: ProbeSet, device) -> torch.Tensor:
    """The first probe image as a channels-last batch of one: what models are described on."""
    return probe.tensor([0], device).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------- the cache
T = TypeVar("T")


def cache_key(**inputs) -> str:
    """The key of an artifact: a hash of everything its content depends on."""
    return stable_hash(inputs)


def stored_key(ws: Workspace, path: Path) -> str | None:
    """The key an artifact was stored with (an ``.npz``'s meta, a JSON object's ``key``);
    None when it is missing or unreadable."""
    if path.suffix == ".npz":
        return ws.arrays_key(path)
    try:
        value = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return value.get("key") if isinstance(value, dict) else None


def up_to_date(ws: Workspace, path: Path, key: str) -> bool:
    return stored_key(ws, path) == key


def cached(ws: Workspace, path: Path, key: str, compute: Callable[[], T],
           load: Callable[[], T], save: Callable[[T], None]) -> T:
    """The artifact at ``path``, read by ``load()`` when its stored key is ``key``; else
    ``compute()``, written by ``save(value)`` (a typed writer of
    :mod:`conceptevo.workspace.artifacts` that stores ``key`` with it). A damaged file is
    computed again (with a warning)."""
    if stored_key(ws, path) == key:
        try:
            return load()
        except CorruptArtifactError as e:
            log.warning("%s; computing it again", e)
    value = compute()
    save(value)
    return value
