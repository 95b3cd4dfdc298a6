"""The schema of every artifact a stage writes, as typed writers and readers: the stages
write through them, and every reader of a workspace (the later stages, export, the dashboard,
the report, the CLI) reads through them. One section per artifact (docs/workspace.md):

* base stimuli of an external base model (``space/base_stimuli.npz``);
* the base space (``space/base.npz``), its image embedding (``space/images.npz``) and its
  fidelity report (``space/fidelity.json``);
* the 2-D map of the base neurons (``space/map.npz``) and each checkpoint's projection
  (``space/projection/<run>/epoch_NNNN.npz``);
* importance and reversion (``importance/<run>/cNNN/from_T_to_T2.npz``);
* concept labels (``evaluation/labels/<run>/epoch_NNNN.npz``) and the evaluation report
  (``evaluation/evaluation.json``); the diagnosis (``diagnosis.json``).

An ``.npz`` holds a JSON ``meta`` next to its arrays, with the cache ``key`` that says what it
was computed from (:mod:`conceptevo.stages.context`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import StudyConfig, config_from_dict
from ..errors import CorruptArtifactError, WorkspaceError
from ..evaluate.labels import ConceptLabels
from ..evolution.importance import ImportanceResult
from ..models.adapter import layers_array, layers_from_array
from ..space.unified import BaseSpace
from ..stimuli import StimuliResult
from . import atomic
from .store import Workspace, corrupt, epoch_name, stimuli_arrays

SPLITS = ("train", "heldout")


def run_order(ws: Workspace, among: list[str] | None = None) -> list[str]:
    """Runs in the order of the study config: those with stimuli, or those of ``among``
    (runs the config does not name, e.g. a live Monitor's, follow in sorted order)."""
    have = ws.stimuli_runs() if among is None else list(among)
    study = [r["name"] for r in ws.load_study().get("runs", [])]
    return [r for r in study if r in have] + sorted(set(have) - set(study))


# ----------------------------------------------------------------------- training logs
def metrics_source_path(ws: Workspace, run: str) -> Path:
    return ws.path("runs", run, "metrics_source.json")


def save_training_log(ws: Workspace, run: str, rows: list[dict], source: dict) -> None:
    """The training metrics of a run ConceptEvo did not train (``runs/<run>/metrics.csv``)
    and where they were read from (``metrics_source.json``: key, source, columns)."""
    ws.save_metrics(run, rows)
    atomic.write_json(metrics_source_path(ws, run), source)


# ------------------------------------------------------------------- receptive fields
def receptive_fields_path(ws: Workspace) -> Path:
    return ws.path("patches", "receptive_fields.json")


def load_receptive_fields(ws: Workspace) -> dict:
    """{model key: [receptive field dicts]}; ``{}`` when missing or damaged (recomputed, or
    refused for a model the workspace names, by :func:`conceptevo.patches`)."""
    try:
        stored = ws.read_json(receptive_fields_path(ws), {})
    except CorruptArtifactError:
        return {}
    return stored if isinstance(stored, dict) else {}


def save_receptive_fields(ws: Workspace, fields: dict) -> None:
    atomic.write_json(ws.contained(receptive_fields_path(ws), write=True), fields)


# ------------------------------------------------------------------------ base stimuli
def base_stimuli_path(ws: Workspace) -> Path:
    return ws.space_path("base_stimuli.npz")


def save_base_stimuli(ws: Workspace, result: StimuliResult, meta: dict) -> None:
    """The stimulus pass of an external base model; ``meta`` holds its key."""
    arrays = stimuli_arrays(result)
    arrays.pop("meta")
    ws.save_arrays(base_stimuli_path(ws), meta, **arrays)


def load_base_stimuli(ws: Workspace) -> StimuliResult:
    meta, arrays = ws.load_arrays(base_stimuli_path(ws))
    layers = layers_from_array(arrays.pop("layers"))
    return StimuliResult(layers=layers, meta=meta, **arrays)


# -------------------------------------------------------------------------- base space
def save_base_space(ws: Workspace, space: BaseSpace, meta: dict, report: dict,
                    layers) -> None:
    """``space/base.npz`` (v_n, validity, loss, the base layers), ``space/fidelity.json``
    (``meta``'s key and base, the space's RMSE, fidelity and counts, plus ``report``: the
    indirect-method comparison and the settings it names) and ``space/images.npz`` (e_x, the
    vocabulary, the paper's embedding). ``meta``: key, base, params, info."""
    ws.save_arrays(ws.space_path("base.npz"), meta, neuron_embedding=space.neuron_embedding,
                   valid=space.valid, loss=np.asarray(space.loss, dtype=np.float64),
                   layers=layers_array(layers))
    atomic.write_json(ws.space_path("fidelity.json"), {
        "key": meta["key"], "base": meta["base"], "rmse": space.rmse,
        "fidelity": space.fidelity, "indirect_default": report["indirect_default"],
        "indirect_comparison": report["indirect_comparison"], "projection": space.projection,
        "info": space.info, "loss": space.loss})
    ws.save_arrays(ws.space_path("images.npz"), dict(meta, rmse=space.rmse),
                   image_embedding=space.image_embedding, vocab=space.vocab,
                   stimulus_embedding=space.stimulus_embedding)


def load_base_space(ws: Workspace) -> BaseSpace:
    meta, base = ws.load_arrays(ws.space_path("base.npz"))
    imeta, images = ws.load_arrays(ws.space_path("images.npz"))
    report = load_fidelity(ws)
    params = meta.get("params", {})
    return BaseSpace(base["neuron_embedding"], base["valid"], list(base["loss"]),
                     images["image_embedding"], images["vocab"], float(imeta.get("rmse", 0.0)),
                     report.get("fidelity", {}), meta.get("info", {}),
                     images.get("stimulus_embedding", images["image_embedding"]),
                     params.get("projection", "stimuli"), params.get("temperature", 1.0))


def load_fidelity(ws: Workspace, required: bool = True) -> dict:
    """``space/fidelity.json``; ``{}`` when it is missing and not ``required``."""
    path = ws.space_path("fidelity.json")
    report = ws.read_json(path, None)
    if report is None and not required and not path.exists():
        return {}
    if not isinstance(report, dict):
        raise corrupt(path, "missing, or not a JSON object")
    return report


def load_base_neurons(ws: Workspace) -> tuple[dict, list, np.ndarray]:
    """(the base descriptor, the base layers, v_n float32 [n_base, d]) of ``space/base.npz``
    (NaN rows: neurons outside the space)."""
    meta, base = ws.load_arrays(ws.space_path("base.npz"))
    return (meta.get("base", {}), layers_from_array(base["layers"]),
            base["neuron_embedding"].astype(np.float32))


# ------------------------------------------------------------------- map and projections
def map_path(ws: Workspace) -> Path:
    return ws.space_path("map.npz")


def save_map(ws: Workspace, coords: np.ndarray, key: str) -> None:
    """2-D coordinates float32 [n_base, 2] of the base neurons (NaN outside the space)."""
    ws.save_arrays(map_path(ws), {"key": key}, coords=coords)


def load_map(ws: Workspace) -> np.ndarray:
    path = map_path(ws)
    coords = ws.load_arrays(path)[1].get("coords")
    if coords is None or coords.ndim != 2 or coords.shape[1] != 2:
        raise corrupt(path, "it holds no coords array of shape [n, 2]")
    return coords


def save_projection(ws: Workspace, run: str, epoch: int, key: str, embedding: np.ndarray,
                    coords: np.ndarray, dead: np.ndarray) -> None:
    """v~ float32 [n, d], 2-D coordinates float32 [n, 2] and the dead mask of one
    checkpoint's neurons."""
    ws.save_arrays(ws.projection_path(run, epoch), {"key": key, "run": run, "epoch": epoch},
                   embedding=embedding, coords=coords, dead=dead)


def load_projection(ws: Workspace, run: str, epoch: int) -> dict:
    """{"embedding", "coords", "dead"} of one checkpoint, checked to describe the same
    neurons."""
    path = ws.projection_path(run, epoch)
    arrays = ws.load_arrays(path)[1]
    coords, dead, emb = (arrays.get(k) for k in ("coords", "dead", "embedding"))
    if coords is None or dead is None or emb is None:
        raise corrupt(path, "it lacks coords, dead or embedding")
    n = len(coords)
    if coords.shape != (n, 2) or dead.shape != (n,) or emb.ndim != 2 or len(emb) != n:
        raise corrupt(path, f"coords {coords.shape}, dead {dead.shape} and embedding "
                            f"{emb.shape} do not describe the same neurons")
    return arrays


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


def save_importance(ws: Workspace, run: str, class_index: int, t: int, t2: int,
                    result: ImportanceResult, reversion: Reversion, meta: dict) -> None:
    """One run's importance for a class between epochs ``t`` and ``t2`` and its reversion
    check; ``meta`` holds the key, the class name, the ranking and the image counts."""
    ws.save_arrays(importance_path(ws, run, class_index, t, t2), meta, score=result.score,
                   mean_sensitivity=result.mean_sensitivity, rank=result.rank,
                   image_ids=result.image_ids, layers=layers_array(result.layers),
                   rev_layer=reversion.layer.astype(np.int64),
                   rev_set=reversion.set.astype(str), rev_split=reversion.split.astype(str),
                   rev_top1=reversion.top1.astype(np.float64),
                   rev_top5=reversion.top5.astype(np.float64))


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


# --------------------------------------------------------------- labels and evaluation
def labels_path(ws: Workspace, run: str, epoch: int) -> Path:
    return ws.path("evaluation", "labels", run, f"{epoch_name(epoch)}.npz")


def save_labels(ws: Workspace, run: str, epoch: int, labels: ConceptLabels,
                concept_names: list[str], meta: dict) -> None:
    """One checkpoint's concept labels (IoU per concept, label, threshold) and its
    activation vectors on the matching images (``meta["match_ids"]``)."""
    meta = {"key": meta.get("key"), "run": run, "epoch": epoch, **meta}
    ws.save_arrays(labels_path(ws, run, epoch), meta,
                   iou=labels.iou, label=labels.label, threshold=labels.threshold,
                   activations=labels.activations,
                   concept_names=np.array(json.dumps(list(concept_names))))


def load_labels(ws: Workspace, run: str, epoch: int) -> tuple[ConceptLabels, list[str]]:
    """The stored labels of one checkpoint and the concept names. The stored activation
    vectors are those on the matching images (meta ``match_ids``), not on the labelling
    images."""
    _, a = ws.load_arrays(labels_path(ws, run, epoch))
    return (ConceptLabels(a["iou"], a["label"], a["threshold"], a["activations"]),
            json.loads(str(a["concept_names"])))


def load_label_table(ws: Workspace, run: str, epoch: int, n_neurons: int) -> dict:
    """The parts of a checkpoint's concept labels that describe its neurons (not the
    activation vectors, the largest array): {"names", "label" int64 [n] (-1: none), "iou"
    float32 [n, n_concepts], "best" float32 [n]}, checked against ``n_neurons``."""
    path = labels_path(ws, run, epoch)
    with ws.reading(path) as checked, np.load(checked, allow_pickle=False) as z:
        try:
            names = [str(n) for n in json.loads(str(z["concept_names"]))]
            label = z["label"].astype(np.int64)
            iou = z["iou"].astype(np.float32)
        except (KeyError, ValueError, TypeError) as e:
            raise corrupt(path, e) from e
    if label.shape != (n_neurons,) or iou.shape != (n_neurons, len(names)) or \
            label.max(initial=-1) >= len(names):
        raise corrupt(path, f"labels {label.shape} and an IoU table {iou.shape} for "
                            f"{n_neurons} neurons and {len(names)} concepts")
    best = iou.max(1) if len(names) else np.full(n_neurons, np.nan, np.float32)
    return {"names": names, "label": label, "iou": iou, "best": best}


def evaluation_path(ws: Workspace) -> Path:
    return ws.path("evaluation", "evaluation.json")


def save_evaluation(ws: Workspace, report: dict) -> None:
    atomic.write_json(evaluation_path(ws), report)


def load_evaluation(ws: Workspace) -> dict | None:
    return ws.read_json(evaluation_path(ws))


def diagnosis_path(ws: Workspace) -> Path:
    return ws.path("diagnosis.json")


def save_diagnosis(ws: Workspace, report: dict) -> None:
    """Written under :func:`conceptevo.workspace.lock.file_lock` of :func:`diagnosis_path`
    by the caller: several runs' monitors may share it."""
    atomic.write_json(diagnosis_path(ws), report)


def load_diagnosis(ws: Workspace, default=None) -> dict | None:
    return ws.read_json(diagnosis_path(ws), default)
