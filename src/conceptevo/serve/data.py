"""The data behind the dashboard and the report: JSON payloads and patch images built from a
workspace, with every parameter validated (a bad one raises :class:`BadRequest`).

The same payloads feed ``conceptevo serve`` (one HTTP endpoint each) and ``conceptevo
report`` (embedded in the HTML file), so the page code is the same in both.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import numpy as np

from ..errors import WorkspaceError
from ..export import run_order
from ..models.adapter import LayerInfo
from ..patches import (
    ReceptiveField,
    cached_receptive_fields,
    crop_patches,
    image_bytes,
    patch_strip,
)
from ..workspace import Workspace, atomic
from ..workspace.store import epoch_name

log = logging.getLogger("conceptevo")

N_PATCHES = 6          # patches shown per neuron
N_NEIGHBOURS = 8       # nearest neighbours listed for a pinned neuron
TOP_EVOLUTIONS = 5     # evolutions listed per layer in the class view
TOP_CONCEPTS = 3       # concepts (with their IoU) listed for a neuron


class BadRequest(ValueError):
    """A request parameter is invalid; the message says which and why (HTTP 400/404)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotServable(BadRequest, WorkspaceError):
    """The workspace lacks something that a reader will not compute (it would run code the
    workspace names): a 404 for the server, a clear error for ``conceptevo report``."""


def _round(values: np.ndarray, digits: int = 4) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in values]


def _finite(value):
    """A JSON value with every NaN or infinity replaced by None (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class StudyData:
    """Read-only views of a workspace for the dashboard (thread-safe, cached)."""

    def __init__(self, root: str | Path):
        self.ws = Workspace(root)
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[int, object]] = {}
        self._rf: dict[str, list[ReceptiveField]] = {}
        self._probe = None

    # ----------------------------------------------------------------- basics
    @property
    def probe(self):
        if self._probe is None:
            self._probe = self.ws.load_probe()
        return self._probe

    def runs(self) -> list[str]:
        return [r for r in run_order(self.ws) if self.ws.projection_epochs(r)]

    def epochs(self, run: str) -> list[int]:
        return self.ws.projection_epochs(run)

    def check_run(self, run: str) -> str:
        runs = self.runs()
        if run not in runs:
            raise BadRequest(f"unknown run {run!r}; runs: {', '.join(runs)}", 404)
        return run

    def check_epoch(self, run: str, epoch: int) -> int:
        epochs = self.epochs(self.check_run(run))
        if epoch not in epochs:
            raise BadRequest(f"run {run!r} has no epoch {epoch}; epochs: {epochs}", 404)
        return epoch

    def check_neuron(self, run: str, epoch: int, neuron: int) -> int:
        n = self._n_neurons(run, epoch)
        if neuron < 0 or neuron >= n:
            raise BadRequest(f"neuron {neuron} is out of range: run {run!r} has {n} neurons "
                             f"(0..{n - 1})", 404)
        return neuron

    def _cached(self, path: Path, load):
        """``load()``, cached until the file at ``path`` changes (a build or a live monitor
        may rewrite it while the server runs)."""
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise BadRequest(f"{path.name} is missing from the workspace", 404) from None
        with self._lock:
            hit = self._files.get(path)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        value = load()
        with self._lock:
            if len(self._files) > 512:
                self._files.clear()
            self._files[path] = (stamp, value)
        return value

    def _projection(self, run: str, epoch: int) -> dict:
        path = self.ws.projection_path(run, epoch)
        return self._cached(path, lambda: self.ws.load_arrays(path)[1])

    def _stimuli(self, run: str, epoch: int):
        return self._cached(self.ws.stimuli_path(run, epoch),
                            lambda: self.ws.load_stimuli(run, epoch))

    def _layers(self, run: str, epoch: int) -> list[LayerInfo]:
        return self._stimuli(run, epoch).layers

    def _n_neurons(self, run: str, epoch: int) -> int:
        return self._stimuli(run, epoch).n_neurons

    def _layer_index(self, run: str, epoch: int) -> np.ndarray:
        return self._stimuli(run, epoch).layer_of()

    def _concepts(self, run: str, epoch: int) -> dict | None:
        """The concept labels of a checkpoint written by ``conceptevo evaluate``, or None when
        it has none: {"names": [n_concepts], "label": int64 [n_neurons] (-1: none), "iou":
        float32 [n_neurons, n_concepts], "best": float32 [n_neurons] (the largest IoU)}."""
        path = self.ws.path("evaluation", "labels", run, epoch_name(epoch) + ".npz")
        if not path.is_file():
            return None
        return self._cached(path, lambda: _load_concepts(path, self._n_neurons(run, epoch)))

    def version(self) -> str:
        """Changes whenever an artifact the page shows is added or rewritten (atomic writes
        rename into their directory, which updates the directory's modification time)."""
        root = self.ws.root
        trees = [root / "runs", root / "stimuli", root / "space" / "projection",
                 root / "importance", root / "evaluation"]
        dirs = [*trees, root]
        for d in trees:
            if d.is_dir():
                dirs.extend(p for p in d.rglob("*") if p.is_dir())
        stamps = [d.stat().st_mtime_ns for d in dirs if d.is_dir()]
        return f"{max(stamps, default=0)}-{len(stamps)}"

    # --------------------------------------------------------------- payloads
    def study(self) -> dict:
        runs = []
        for run in self.runs():
            epochs = self.epochs(run)
            layers = self._layers(run, epochs[-1])
            runs.append({"name": run, "epochs": epochs,
                         "n_neurons": sum(li.channels for li in layers),
                         "layers": [{"name": li.name, "channels": li.channels,
                                     "offset": li.offset} for li in layers]})
        if not runs:
            raise WorkspaceError(f"workspace {self.ws.root} has no unified space yet; run "
                                 "`conceptevo build --config study.toml` first")
        fid_path = self.ws.space_path("fidelity.json")
        fidelity = atomic.read_json(fid_path) if fid_path.is_file() else {}
        from ..evolution.stage import stored_importance

        importance = [{"run": r, "class": c, "class_name": self.probe.classes[c], "from": t,
                       "to": t2} for r, c, t, t2 in stored_importance(self.ws)]
        return {"name": self.ws.root.name, "runs": runs, "classes": list(self.probe.classes),
                "base": fidelity.get("base"), "fidelity": fidelity.get("fidelity"),
                "importance": importance, "has_metrics": bool(self.ws.metric_runs()),
                "has_evaluation": self._evaluation_path().is_file()}

    def base(self) -> dict:
        _, arrays = self.ws.load_arrays(self.ws.space_path("map.npz"))
        coords = arrays["coords"]
        return {"x": _round(coords[:, 0]), "y": _round(coords[:, 1])}

    def points(self, run: str, epoch: int) -> dict:
        """Every neuron of a checkpoint on the map; with concept labels (an index into
        ``concepts``, -1: none, and the best IoU) when the checkpoint has them."""
        self.check_epoch(run, epoch)
        proj = self._projection(run, epoch)
        payload = {"run": run, "epoch": epoch, "x": _round(proj["coords"][:, 0]),
                   "y": _round(proj["coords"][:, 1]),
                   "dead": proj["dead"].astype(int).tolist(),
                   "layer": self._layer_index(run, epoch).tolist()}
        concepts = self._concepts(run, epoch)
        if concepts is not None:
            payload.update(concepts=concepts["names"], label=concepts["label"].tolist(),
                           label_iou=_round(concepts["best"], 2))
        return payload

    def neuron(self, run: str, epoch: int, neuron: int) -> dict:
        self.check_epoch(run, epoch)
        self.check_neuron(run, epoch, neuron)
        s = self._stimuli(run, epoch)
        li = int(s.layer_of()[neuron])
        info = s.layers[li]
        proj = self._projection(run, epoch)
        trajectory = []
        for e in self.epochs(run):
            p = self._projection(run, e)
            if neuron < len(p["coords"]):
                trajectory.append({"epoch": e, "x": float(p["coords"][neuron, 0]),
                                   "y": float(p["coords"][neuron, 1])})
        return {"run": run, "epoch": epoch, "neuron": neuron, "layer": info.name,
                "layer_index": li, "channel": neuron - info.offset,
                "x": float(proj["coords"][neuron, 0]), "y": float(proj["coords"][neuron, 1]),
                "dead": bool(proj["dead"][neuron]), "act_max": float(s.act_max[neuron]),
                "frac_positive": float(s.frac_positive[neuron]),
                "stimuli": s.stimuli[neuron].tolist(),
                "stimuli_act": _round(s.stimuli_act[neuron]),
                "stimuli_class": [self.probe.classes[c] for c in
                                  self.probe.labels[s.stimuli[neuron]]],
                "trajectory": trajectory,
                "neighbours": self.neighbours(run, epoch, neuron),
                "concept": self.concept(run, epoch, neuron),
                "patches": patch_url(run, epoch, neuron)}

    def concept(self, run: str, epoch: int, neuron: int) -> dict | None:
        """A neuron's concept label, the IoU of its best concept and its top concepts, or None
        when its checkpoint has no labels."""
        concepts = self._concepts(run, epoch)
        if concepts is None:
            return None
        iou = concepts["iou"][neuron]
        top = [i for i in np.argsort(-iou, kind="stable")[:TOP_CONCEPTS] if iou[i] > 0]
        label = int(concepts["label"][neuron])
        best = float(concepts["best"][neuron])
        return {"label": concepts["names"][label] if label >= 0 else None,
                "iou": round(best, 4) if np.isfinite(best) else None,
                "top": [[concepts["names"][i], round(float(iou[i]), 4)] for i in top]}

    def _all_embeddings(self):
        """Every projected neuron: (keys [(run, epoch, offset, n)], unit vectors [N, d])."""
        stamp = tuple((r, e, self.ws.projection_path(r, e).stat().st_mtime_ns)
                      for r in self.runs() for e in self.epochs(r))
        cached = getattr(self, "_emb_cache", None)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        keys, parts, offset = [], [], 0
        for run, e, _ in stamp:
            emb = self._projection(run, e)["embedding"].astype(np.float32)
            keys.append((run, e, offset, len(emb)))
            parts.append(emb)
            offset += len(emb)
        all_emb = np.concatenate(parts)
        all_emb /= np.maximum(np.linalg.norm(all_emb, axis=1, keepdims=True), 1e-12)
        self._emb_cache = (stamp, keys, all_emb)
        return keys, all_emb

    def neighbours(self, run: str, epoch: int, neuron: int, k: int = N_NEIGHBOURS) -> list:
        """The nearest neurons (cosine in the unified space) of other runs or epochs."""
        keys, emb = self._all_embeddings()
        start = next(o for r, e, o, _ in keys if (r, e) == (run, epoch))
        sims = emb @ emb[start + neuron]
        for r, e, o, n in keys:
            if (r, e) == (run, epoch):
                sims[o:o + n] = -np.inf
        top = np.argsort(-sims, kind="stable")[:k]
        out = []
        for i in top:
            r, e, o, _ = next(key for key in keys if key[2] <= i < key[2] + key[3])
            n = int(i - o)
            s = self._stimuli(r, e)
            li = int(s.layer_of()[n])
            out.append({"run": r, "epoch": e, "neuron": n, "layer": s.layers[li].name,
                        "channel": n - s.layers[li].offset, "similarity": round(float(sims[i]), 4),
                        "patches": patch_url(r, e, n)})
        return out

    def metrics(self) -> dict:
        runs = {}
        for run in run_order(self.ws, self.ws.metric_runs()):
            runs[run] = [{k: v for k, v in row.items() if isinstance(v, (int, float))}
                         for row in self.ws.load_metrics(run)]
        diagnosis_path = self.ws.path("diagnosis.json")
        diagnosis = atomic.read_json(diagnosis_path) if diagnosis_path.is_file() else None
        return {"runs": runs, "diagnosis": diagnosis}

    def importance(self, run: str, class_index: int, t: int, t2: int) -> dict:
        from ..evolution.stage import importance_path, load_importance

        n_classes = len(self.probe.classes)
        if class_index < 0 or class_index >= n_classes:
            raise BadRequest(f"class {class_index} is out of range (0..{n_classes - 1})", 404)
        if not importance_path(self.ws, run, class_index, t, t2).is_file():
            raise BadRequest(f"no importance for run {run!r}, class {class_index}, epochs {t} -> "
                             f"{t2}; compute it with `conceptevo importance`", 404)
        result, rev = load_importance(self.ws, run, class_index, t, t2)
        layers = []
        for li, info in enumerate(result.layers):
            top = []
            for ch in result.layer_ranking(li)[:TOP_EVOLUTIONS]:
                n = info.offset + int(ch)
                top.append({"neuron": n, "channel": int(ch),
                            "score": round(float(result.score[n]), 4),
                            "mean_sensitivity": float(result.mean_sensitivity[n]),
                            "patches_from": patch_url(run, t, n),
                            "patches_to": patch_url(run, t2, n)})
            layers.append({"name": info.name, "index": li, "top": top})
        reversion = {}
        for split in ("train", "heldout"):
            sel = rev.split == split
            if not sel.any():
                continue
            base = float(rev.top1[sel & (rev.set == "none")][0])
            rows = []
            for li, info in enumerate(result.layers):
                here = sel & (rev.layer == li)
                bins = [float(rev.top1[here & (rev.set == str(b))][0])
                        for b in range(int(np.sum(here & np.char.isdigit(rev.set.astype(str)))))]
                rand = rev.top1[here & (rev.set == "random")]
                rows.append({"layer": info.name, "bins": bins,
                             "random_mean": float(rand.mean()) if rand.size else None,
                             "random_std": float(rand.std()) if rand.size else None})
            reversion[split] = {"accuracy": base, "layers": rows}
        return {"run": run, "class": class_index, "class_name": self.probe.classes[class_index],
                "from": t, "to": t2, "n_images": int(len(result.image_ids)), "layers": layers,
                "reversion": reversion}

    def _evaluation_path(self) -> Path:
        return self.ws.path("evaluation", "evaluation.json")

    def evaluation(self) -> dict:
        """The results of ``conceptevo evaluate`` (``evaluation/evaluation.json``) as stored,
        with non-finite numbers as null."""
        path = self._evaluation_path()
        if not path.is_file():
            raise BadRequest(f"workspace {self.ws.root.name!r} has no evaluation yet; run "
                             f"`conceptevo evaluate {self.ws.root}` to compute it", 404)

        def load() -> dict:
            try:
                value = atomic.read_json(path)
            except (OSError, ValueError) as e:
                raise BadRequest(f"cannot read {path}: {e}; run `conceptevo evaluate` "
                                 "again", 500) from None
            if not isinstance(value, dict):
                raise BadRequest(f"{path} does not hold a JSON object; run `conceptevo "
                                 "evaluate` again", 500)
            return _finite(value)

        return self._cached(path, load)

    # ----------------------------------------------------------------- patches
    def fields(self, run: str) -> list[ReceptiveField]:
        """Receptive fields of the run's layers (cached in ``patches/receptive_fields.json``)."""
        if run in self._rf:
            return self._rf[run]
        study = self.ws.load_study()
        spec = next((r for r in study.get("runs", []) if r["name"] == run), {})
        model_cfg = study.get("model", {})
        arch = spec.get("arch") or model_cfg.get("arch")
        kwargs = spec.get("kwargs") if spec.get("kwargs") is not None else \
            model_cfg.get("kwargs", {})
        try:  # never imports code a workspace names (see cached_receptive_fields)
            self._rf[run] = cached_receptive_fields(self.ws, arch, kwargs,
                                                    model_cfg.get("layers"),
                                                    tuple(self.probe.image_size))
        except WorkspaceError as e:
            raise NotServable(str(e), 404) from None
        return self._rf[run]

    def patch_image(self, run: str, epoch: int, neuron: int, count: int = N_PATCHES,
                    tile: int = 48, quality: int = 80) -> bytes:
        """The strip of a neuron's top ``count`` patches, ``tile`` pixels each, as WebP (the
        default strip is cached in ``patches/``)."""
        self.check_epoch(run, epoch)
        self.check_neuron(run, epoch, neuron)
        default = (count, tile, quality) == (N_PATCHES, 48, 80)
        path = self.ws.path("patches", run, f"{epoch:04d}", f"{neuron}.webp")
        if default and path.is_file():
            return path.read_bytes()
        s = self._stimuli(run, epoch)
        li = int(s.layer_of()[neuron])
        crops = crop_patches(self.probe.images, s.stimuli[neuron][:count],
                             s.stimuli_loc[neuron][:count], self.fields(run)[li])
        data = image_bytes(patch_strip(crops, tile=tile), quality)
        if default:
            atomic.write_bytes(path, data)
        return data

    def patches(self, run: str, epoch: int, neuron: int) -> list:
        """The neuron's top patches as PIL images (the Python API)."""
        from PIL import Image

        s = self._stimuli(run, epoch)
        li = int(s.layer_of()[neuron])
        return [Image.fromarray(c) for c in
                crop_patches(self.probe.images, s.stimuli[neuron][:N_PATCHES],
                             s.stimuli_loc[neuron][:N_PATCHES], self.fields(run)[li])]


def _load_concepts(path: Path, n_neurons: int) -> dict | None:
    """The parts of a concept-label file the dashboard shows (not its activations, the
    largest array); None, with a warning, when it does not match its checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(n) for n in json.loads(str(z["concept_names"]))]
            label = z["label"].astype(np.int64)
            iou = z["iou"].astype(np.float32)
    except (OSError, KeyError, ValueError, TypeError) as e:
        log.warning("ignoring %s: %s; run `conceptevo evaluate` again", path, e)
        return None
    if label.shape != (n_neurons,) or iou.shape != (n_neurons, len(names)) or \
            label.max(initial=-1) >= len(names):
        log.warning("ignoring %s: labels %s and an IoU table %s for %d neurons and %d "
                    "concepts; run `conceptevo evaluate` again", path, label.shape, iou.shape,
                    n_neurons, len(names))
        return None
    best = iou.max(1) if len(names) else np.full(n_neurons, np.nan, np.float32)
    return {"names": names, "label": label, "iou": iou, "best": best}


def patch_url(run: str, epoch: int, neuron: int) -> str:
    return f"/api/patches/{run}/{epoch}/{neuron}.webp"
