"""Typed readers of the artifacts the stages write, for every reader of a workspace (the
stages after the writer, export, the dashboard, the report, the CLI): the base space, the
importance files and their reversion tables, and the order of the runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import StudyConfig, config_from_dict
from ..errors import WorkspaceError
from ..evolution.importance import ImportanceResult
from ..models.adapter import layers_from_array
from ..space.unified import BaseSpace
from .store import Workspace, corrupt

SPLITS = ("train", "heldout")


def run_order(ws: Workspace, among: list[str] | None = None) -> list[str]:
    """Runs in the order of the study config: those with stimuli, or those of ``among``
    (runs the config does not name, e.g. a live Monitor's, follow in sorted order)."""
    have = ws.stimuli_runs() if among is None else list(among)
    study = [r["name"] for r in ws.load_study().get("runs", [])]
    return [r for r in study if r in have] + sorted(set(have) - set(study))


def load_base_space(ws: Workspace) -> BaseSpace:
    meta, base = ws.load_arrays(ws.space_path("base.npz"))
    imeta, images = ws.load_arrays(ws.space_path("images.npz"))
    report = ws.read_json(ws.space_path("fidelity.json"))
    if not isinstance(report, dict):
        raise corrupt(ws.space_path("fidelity.json"), "missing, or not a JSON object")
    params = meta.get("params", {})
    return BaseSpace(base["neuron_embedding"], base["valid"], list(base["loss"]),
                     images["image_embedding"], images["vocab"], float(imeta.get("rmse", 0.0)),
                     report.get("fidelity", {}), meta.get("info", {}),
                     images.get("stimulus_embedding", images["image_embedding"]),
                     params.get("projection", "stimuli"), params.get("temperature", 1.0))


@dataclass
class Reversion:
    """Accuracy of M^t' with each set reverted. Arrays of equal length, one row per (set,
    split): ``layer`` (-1 for the unreverted model), ``set`` ("none", "0".."bins-1" or
    "random<d>"), ``split`` ("train" / "heldout"), ``top1``, ``top5``."""

    layer: np.ndarray
    set: np.ndarray
    split: np.ndarray
    top1: np.ndarray
    top5: np.ndarray

    def summary(self, split: str = "train") -> dict:
        """Mean top-1 drop (from the unreverted model) of the top bin, of the other bins and
        of the random sets, averaged over layers; and their ratio."""
        sel = self.split == split
        if not sel.any():
            return {}
        base = float(self.top1[sel & (self.set == "none")][0])
        drops = base - self.top1
        top = drops[sel & (self.set == "0")]
        rand = drops[sel & np.char.startswith(self.set.astype(str), "random")]
        rest = drops[sel & (self.layer >= 0) & (self.set != "0")
                     & ~np.char.startswith(self.set.astype(str), "random")]
        return {"accuracy": base, "top_bin_drop": float(top.mean()),
                "other_bins_drop": float(rest.mean()) if rest.size else float("nan"),
                "random_drop": float(rand.mean()) if rand.size else float("nan"),
                "random_drop_std": float(rand.std()) if rand.size else float("nan")}


_IMPORTANCE_FILE = re.compile(r"from_(\d{1,9})_to_(\d{1,9})\.npz")
_CLASS_DIR = re.compile(r"c(\d{1,6})")


def importance_path(ws: Workspace, run: str, class_index: int, t: int, t2: int) -> Path:
    return ws.path("importance", run, f"c{class_index:03d}", f"from_{t:04d}_to_{t2:04d}.npz")


def load_importance(ws: Workspace, run: str, class_index: int, t: int, t2: int
                    ) -> tuple[ImportanceResult, Reversion]:
    """The stored importance and reversion of one run, class and epoch pair."""
    meta, a = ws.load_arrays(importance_path(ws, run, class_index, t, t2))
    layers = layers_from_array(a["layers"])
    result = ImportanceResult(layers, a["score"], a["mean_sensitivity"], a["rank"],
                              a["image_ids"], meta)
    rev = Reversion(a["rev_layer"], a["rev_set"], a["rev_split"], a["rev_top1"], a["rev_top5"])
    return result, rev


def stored_importance(ws: Workspace) -> list[tuple[str, int, int, int]]:
    """(run, class, from, to) of every stored importance file."""
    out = []
    root = ws.path("importance")
    if not root.is_dir():
        return out
    found = []
    for path in sorted(root.glob("*/c*/from_*_to_*.npz")):
        m = _IMPORTANCE_FILE.fullmatch(path.name)
        c = _CLASS_DIR.fullmatch(path.parent.name)
        if m and c:  # any other file name is not ConceptEvo's: ignored
            found.append((path.parent.parent.name, int(c.group(1)), int(m.group(1)),
                          int(m.group(2))))
    order = {run: i for i, run in enumerate(run_order(ws, sorted({f[0] for f in found})))}
    return sorted(found, key=lambda f: (order.get(f[0], len(order)), f[1:]))


def study_config(ws: Workspace) -> StudyConfig:
    """The config a workspace was built with (``study.json``), as data only: a workspace may
    come from anyone, so this configuration builds no model factory it names (only
    ``torchvision:`` and ``conceptevo:`` models) and unpickles no checkpoint because it says
    ``trust_checkpoints`` (``--trust-checkpoints`` on the command line still can)."""
    study = ws.load_study()
    if not study:
        raise WorkspaceError(f"{ws.root} has no study.json; run `conceptevo build CONFIG` "
                             "first, or give the study config: `conceptevo evaluate CONFIG`")
    data = {k: v for k, v in study.items() if k not in ("base_dir", "trust_checkpoints")}
    cfg = config_from_dict(data, study.get("base_dir", "."), str(ws.path("study.json")))
    cfg.allow_code = False
    cfg.trust_checkpoints = False
    return cfg


def load_evaluation(ws: Workspace) -> dict | None:
    path = ws.path("evaluation", "evaluation.json")
    return ws.read_json(path)
