"""Generic helpers every layer may use, importing nothing of ConceptEvo but its errors and the
process's place under torchrun: the device a study runs on, and the hash of a cache key."""

from __future__ import annotations

import hashlib
import json

import torch

from . import distributed
from .errors import ConfigError


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
