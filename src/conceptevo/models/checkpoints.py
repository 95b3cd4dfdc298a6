"""Per-epoch checkpoints: finding them, reading them safely, fitting them to a model.

A run's checkpoints are a directory, a glob or a pattern with ``{epoch}``; the epoch of each
file is read from its name (``epoch_7.pt``, ``model-7.pth``, Lightning's
``epoch=3-step=120.ckpt``). A file may hold a bare state_dict or a dict with a
``state_dict`` / ``model_state_dict`` / ``model`` / ``state_dict_ema`` entry (timm's
``train.py`` saves ``state_dict`` and, with EMA, ``state_dict_ema``: the first is used); prefixes
added by wrappers (Lightning's ``model.``, DDP's ``module.``, ``torch.compile``'s
``_orig_mod.``) are detected and stripped.

A checkpoint may also be a directory written by Hugging Face's ``save_pretrained`` (or its
``Trainer``: ``checkpoint-500/``) or by timm's hub export: it holds ``model.safetensors`` or
``pytorch_model.bin`` (or the index of their shards), and its epoch is read from the
directory's name. Such a directory stands for its weights file (``Checkpoint.path``). The
keys of a Hugging Face model are read in the layout transformers saves them (which may differ
from the model's module names, e.g. transformers 5 saves the layout of earlier versions): when
they do not fit the model as they are, transformers' own loader renames them.

Files are read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled Python
objects (the ``argparse.Namespace`` of timm's training arguments excepted: plain values only);
``trust=True`` (``--trust-checkpoints``) lifts that for files you trust.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".safetensors")
STATE_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")
#: the weights of a Hugging Face / timm model directory, in the order they are looked for
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.", "model.module.", "model._orig_mod.",
                    "net.", "network.")
_EPOCH_WORD = re.compile(r"epoch[=_\-]?(\d+)", re.IGNORECASE)
_NEGATIVE_EPOCH = re.compile(r"epoch(?:[=_]-|--)\d", re.IGNORECASE)
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file and the epoch it was saved at (for a checkpoint directory, the
    weights file in it)."""

    epoch: int
    path: Path


def epoch_from_name(name: str) -> int | None:
    """The epoch number in a checkpoint file name, or None.

    ``epoch`` followed by a number wins (``epoch=3-step=120.ckpt`` -> 3); otherwise the last
    number of the stem (``model-7.pth`` -> 7).
    """
    stem = Path(name).name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if _NEGATIVE_EPOCH.search(stem):
        raise CheckpointError(f"checkpoint file {name} has a negative epoch number; epochs are "
                              "0 (the initialisation), 1, 2, ...")
    m = _EPOCH_WORD.search(stem)
    if m:
        return int(m.group(1))
    numbers = _DIGITS.findall(stem)
    return int(numbers[-1]) if numbers else None


def _glob_regex(text: str) -> str:
    """A regular expression for a glob (``*``, ``?``, ``[...]``), none of which crosses a
    path separator."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "*":
            out.append(r"[^/\\]*")
        elif c == "?":
            out.append(r"[^/\\]")
        elif c == "[" and (end := text.find("]", i + 2)) != -1:
            body = text[i + 1:end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace(r"\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def epoch_pattern(pattern: str) -> re.Pattern:
    """The regular expression of a checkpoint pattern with ``{epoch}`` (and any globs), over
    the whole path: one group per ``{epoch}``."""
    return re.compile(r"(\d+)".join(_glob_regex(part) for part in pattern.split("{epoch}")))


def weights_file(directory: str | Path) -> Path | None:
    """The weights file of a checkpoint directory (:data:`WEIGHT_FILES`), or None."""
    for name in WEIGHT_FILES:
        f = Path(directory) / name
        if f.is_file():
            return f
    return None


def find_checkpoints(pattern: str | Path, run: str = "") -> list[Checkpoint]:
    """The checkpoints named by ``pattern``, sorted by epoch.

    Parameters
    ----------
    pattern : a directory (every checkpoint file in it, and every sub-directory holding a
        model's weights, :data:`WEIGHT_FILES`), a glob (``ckpt/*.pt``), or a path with
        ``{epoch}`` standing for the epoch number, which may hold globs too
        (``ckpt/epoch_{epoch}.pt``, ``ckpt/epoch={epoch}-step=*.ckpt``,
        ``out/checkpoint-{epoch}``). A directory that a glob or a pattern names is a
        checkpoint when it holds a model's weights.
    run : the run's name, for error messages.
    """
    pattern = str(pattern)
    label = f" (run {run!r})" if run else ""
    regex = None
    if "{epoch}" in pattern:
        files = glob.glob(pattern.replace("{epoch}", "*"))
        regex = epoch_pattern(pattern)
    elif Path(pattern).is_dir():
        files = [str(p) for p in Path(pattern).iterdir()
                 if (p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
                 or (p.is_dir() and weights_file(p) is not None)]
    else:
        files = glob.glob(pattern)
    found: dict[int, Path] = {}
    for f in sorted(files):
        name = Path(f).name
        if Path(f).is_dir():
            weights = weights_file(f)
            if weights is None:
                continue  # a directory without a model's weights: no checkpoint
        else:
            weights = Path(f)
        if regex is not None:
            m = regex.fullmatch(f)
            if m is None or len(set(m.groups())) != 1:
                continue  # e.g. epoch_7_old.pt for epoch_{epoch}.pt: not one of the run's
            epoch = int(m.group(1))
        else:
            epoch = epoch_from_name(name)
        if epoch is None and name in WEIGHT_FILES:
            raise CheckpointError(
                f"{f}{label} is the weights file of one model directory (save_pretrained), "
                "which has no epoch number; a run has one checkpoint per epoch: point "
                "`checkpoints` at the directories that hold them, e.g. "
                "\"out/checkpoint-{epoch}\" or \"ckpt/epoch_{epoch}\"")
        if epoch is None:
            raise CheckpointError(
                f"cannot read an epoch number from checkpoint file {f}{label}; name files like "
                "epoch_7.pt, model-7.pth or epoch=7-step=100.ckpt, or use a pattern with {epoch}")
        if epoch in found:
            raise CheckpointError(
                f"two checkpoint files for epoch {epoch}{label}: {found[epoch]} and {f}; keep "
                "one per epoch or narrow the pattern")
        found[epoch] = weights
    if not found and regex is not None and files:
        raise CheckpointError(
            f"checkpoint pattern {pattern!r}{label} matches no file: {len(files)} file(s) "
            f"look alike (e.g. {Path(sorted(files)[0]).name}) but have no epoch number where "
            "{epoch} stands; {epoch} matches digits only, and * any other part of a name")
    if not found:
        where = "directory" if Path(pattern).is_dir() else "pattern"
        raise CheckpointError(
            f"checkpoint {where} {pattern!r}{label} matches no file; check the path (relative "
            f"paths start at the config file's directory) and the extension "
            f"({', '.join(CHECKPOINT_SUFFIXES)}; or directories holding "
            f"{' or '.join(WEIGHT_FILES[::2])})")
    return [Checkpoint(e, found[e]) for e in sorted(found)]


def read_checkpoint(path: str | Path, trust: bool = False):
    """``torch.load`` a file on the CPU, safely unless ``trust``; errors name the file. A
    checkpoint directory is read from its weights file (:data:`WEIGHT_FILES`), the index of
    sharded weights (``*.index.json``) from every shard it names."""
    path = Path(path)
    if path.is_dir():
        weights = weights_file(path)
        if weights is None:
            raise CheckpointError(f"checkpoint directory {path} holds no model weights; "
                                  f"expected one of {', '.join(WEIGHT_FILES)}")
        path = weights
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if path.name.endswith(".index.json"):
        return _read_shards(path, trust)
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs `pip install "
                                  "safetensors`") from None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with _safe_extras():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise CheckpointError(
                f"checkpoint {path} contains Python objects that safe loading refuses (a pickle "
                "can run arbitrary code). If you trust where this file comes from, pass "
                "--trust-checkpoints (trust_checkpoints = true in the config); better, save "
                "model.state_dict() instead of the whole model.") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e}); "
                              "re-save or re-download it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e}); "
                              "re-save or re-download it") from None


def _safe_extras():
    """Safe loading that also accepts ``argparse.Namespace`` (timm's ``train.py`` saves its
    arguments, plain values, beside the weights); without ``torch.serialization.safe_globals``
    (torch < 2.5) the plain safe loading."""
    from contextlib import nullcontext

    allow = getattr(torch.serialization, "safe_globals", None)
    return allow([argparse.Namespace]) if allow is not None else nullcontext()


def _read_shards(index: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The weights of every shard named by a Hugging Face index (``weight_map``), merged."""
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.loads(f.read(1 << 26)).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint index {index} is unreadable ({e}); re-save the "
                              "model") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"checkpoint index {index} has no \"weight_map\" of keys to "
                              "shard files; re-save the model")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(map(str, weight_map.values()))):
        if Path(shard).name != shard or shard.startswith("."):
            raise CheckpointError(f"checkpoint index {index} names the shard {shard!r}, which "
                                  "is not a file beside it; shards are read from the index's "
                                  "directory only")
        part = read_checkpoint(index.parent / shard, trust)
        state.update(extract_state_dict(part, index.parent / shard))
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise CheckpointError(f"the shards of {index} lack {len(missing)} of the keys its index "
                              f"lists: {_first(missing)}; a shard is missing or truncated")
    return state


def extract_state_dict(obj, path: str | Path = "") -> dict[str, torch.Tensor]:
    """The state_dict inside whatever a checkpoint file holds."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
                return extract_state_dict(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(
            f"checkpoint {path} holds a dict with keys [{keys}] but no state_dict; expected a "
            f"bare state_dict or a dict with one of {', '.join(STATE_KEYS)}")
    raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]
                  ) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefix that makes most keys match ``expected``."""
    best, best_hits = "", sum(k in expected for k in state)
    for prefix in WRAPPER_PREFIXES:
        hits = sum(k[len(prefix):] in expected for k in state if k.startswith(prefix))
        if hits > best_hits:
            best, best_hits = prefix, hits
    if not best:
        return state
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def _first(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _misfit(path, what: str, missing: list[str], unexpected: list[str],
            mismatched: list[str], size_kwarg: str) -> CheckpointError:
    """The error of a checkpoint whose keys do not fit the model: how many of each kind,
    the first few named, and the kwarg that most often explains it."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches: {_first(mismatched, 3)}")
    return CheckpointError(
        f"checkpoint {path} does not fit {what}: " + "; ".join(parts)
        + f". Check the architecture and its kwargs (e.g. {size_kwarg}) in the config.")


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path = "",
                   arch: str = "") -> None:
    """Load ``state`` into ``model``, or fail listing missing/unexpected/mis-shaped keys."""
    expected = model.state_dict()
    state = _strip_prefix(state, set(expected))
    if set(state) != set(expected) and _is_transformers_model(model):
        state = _transformers_layout(model, state, path, arch)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {tuple(state[k].shape)} vs model {tuple(v.shape)})"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise _misfit(path, arch or type(model).__name__, missing, unexpected, mismatched,
                      "num_classes")
    for k, v in expected.items():
        if k not in state:
            state[k] = v
    model.load_state_dict(state, strict=True)


def _is_transformers_model(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")  # (never imported here for other models)
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def _transformers_layout(model: nn.Module, state: dict[str, torch.Tensor], path, arch: str
                         ) -> dict[str, torch.Tensor]:
    """``state`` (keys as transformers saves them) under ``model``'s module names: loaded by
    transformers' own ``from_pretrained`` (its renamings and conversions of earlier layouts)
    into a copy of the model, from this in-memory state dict (nothing else is read). Raises a
    :class:`CheckpointError` naming the keys (in the checkpoint's layout) that do not fit."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        loaded, info = type(model).from_pretrained(
            None, config=copy.deepcopy(model.config), state_dict=state,
            output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception:  # transformers cannot convert it: the plain key check reports why
        return state
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(map(str, info.get("missing_keys") or ()))
    unexpected = sorted(map(str, info.get("unexpected_keys") or ()))
    mismatched = sorted(f"{m[0]} (file {tuple(m[1])} vs model {tuple(m[2])})"
                        if isinstance(m, tuple) and len(m) == 3 else str(m)
                        for m in info.get("mismatched_keys") or ())
    if missing or unexpected or mismatched:
        raise _misfit(path, f"{arch or type(model).__name__} (keys read as transformers "
                      "saves them)", missing, unexpected, mismatched, "num_labels")
    return dict(loaded.state_dict())


def load_checkpoint(model: nn.Module, path: str | Path, trust: bool = False,
                    arch: str = "") -> nn.Module:
    """Read ``path`` and load its weights into ``model`` (in place); returns the model."""
    fit_state_dict(model, extract_state_dict(read_checkpoint(path, trust), path), path, arch)
    return model
