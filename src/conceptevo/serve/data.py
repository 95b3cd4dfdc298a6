"""The data behind the dashboard and the report: JSON payloads and patch images built from a
workspace, with every parameter validated (a bad one raises :class:`BadRequest`).

The same payloads feed ``conceptevo serve`` (one HTTP endpoint each) and ``conceptevo
report`` (embedded in the HTML file), so the page code is the same in both.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..errors import CorruptArtifactError, WorkspaceError
from ..models.adapter import LayerInfo
from ..patches import (
    ReceptiveField,
    cached_receptive_fields,
    crop_patches,
    image_bytes,
    patch_strip,
)
from ..workspace import atomic
from ..workspace.artifacts import (
    evaluation_path,
    importance_path,
    labels_path,
    load_diagnosis,
    load_evaluation,
    load_fidelity,
    load_importance,
    load_label_table,
    load_map,
    load_projection,
    map_path,
    receptive_fields_path,
    run_order,
    stored_importance,
)
from ..workspace.store import corrupt
from . import binary
from .consistency import (  # noqa: F401 (BadRequest, WorkspaceChanging: this module's API)
    BadRequest,
    ConsistentReader,
    WorkspaceChanging,
)

log = logging.getLogger("conceptevo")

N_PATCHES = 6          # patches shown per neuron
N_NEIGHBOURS = 8       # nearest neighbours listed for a pinned neuron
TOP_EVOLUTIONS = 5     # evolutions listed per layer in the class view
TOP_CONCEPTS = 3       # concepts (with their IoU) listed for a neuron
MAX_EPOCH = 10**9      # epochs of an importance request: whole numbers below this
WEBP_MAGIC = (b"RIFF", b"WEBP")


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


class StudyData(ConsistentReader):
    """Read-only views of a workspace for the dashboard (thread-safe, cached)."""

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._rf: dict[str, list[ReceptiveField]] = {}

    # ----------------------------------------------------------------- basics
    @property
    def probe(self):
        """The probe set, read again when ``conceptevo build`` rewrote it (its ``meta.json``,
        written last)."""
        if not self.ws.has_probe():
            return self.ws.load_probe()  # raises: the workspace has no probe set yet
        return self._cached(self.ws.path("probe", "meta.json"), self.ws.load_probe)

    def runs(self) -> list[str]:
        try:
            order = run_order(self.ws)
        except CorruptArtifactError as e:  # study.json only orders the runs: go on without it
            log.warning("%s; listing the runs in name order", e)
            order = self.ws.stimuli_runs()
        return [r for r in order if self.ws.projection_epochs(r)]

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

    def _projection(self, run: str, epoch: int) -> dict:
        return self._cached(self.ws.projection_path(run, epoch),
                            lambda: load_projection(self.ws, run, epoch))

    def _stimuli(self, run: str, epoch: int):
        path = self.ws.stimuli_path(run, epoch)

        def load():
            s = self.ws.load_stimuli(run, epoch)
            n_images = len(self.probe)
            if s.stimuli.size and not (0 <= s.stimuli.min() and s.stimuli.max() < n_images):
                raise corrupt(path, f"its stimuli name images that the probe set ({n_images} "
                                    "images) does not have")
            return s

        return self._cached(path, load)

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
        path = labels_path(self.ws, run, epoch)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            return self._cached(path, lambda: load_label_table(self.ws, run, epoch,
                                                               self._n_neurons(run, epoch)))
        except (CorruptArtifactError, FileNotFoundError) as e:  # ignored like no labels
            log.warning("ignoring %s: %s; run `conceptevo evaluate` again", path, e)
            return None

    # --------------------------------------------------------------- payloads
    def study(self) -> dict:
        runs = []
        for run in self.runs():
            epochs = self.epochs(run)
            layers = self._run_layers(run, epochs)
            runs.append({"name": run, "epochs": epochs,
                         "n_neurons": sum(li.channels for li in layers),
                         "layers": [{"name": li.name, "channels": li.channels,
                                     "offset": li.offset, "layout": li.layout,
                                     "prefix": li.prefix, "map": list(li.map_size)}
                                    for li in layers]})
        if not runs:
            raise WorkspaceError(f"workspace {self.ws.root} has no unified space yet; run "
                                 "`conceptevo build --config study.toml` first")
        fidelity = load_fidelity(self.ws, required=False)
        try:
            stored = stored_importance(self.ws)
        except ValueError as e:  # a stray file name under importance/
            log.warning("cannot list the importance files of %s (%s); listing none",
                        self.ws.root, e)
            stored = []
        classes = self.probe.classes
        importance = [{"run": r, "class": c, "class_name": classes[c], "from": t, "to": t2}
                      for r, c, t, t2 in stored if 0 <= c < len(classes)]
        return {"name": self.ws.root.name, "runs": runs, "classes": list(self.probe.classes),
                "base": fidelity.get("base"), "fidelity": fidelity.get("fidelity"),
                "importance": importance, "has_metrics": bool(self.ws.metric_runs()),
                "has_evaluation": self._evaluation_path().is_file()}

    def _run_layers(self, run: str, epochs: list[int]) -> list[LayerInfo]:
        """The layers of a run, from its last checkpoint whose stimuli can be read (a damaged
        file fails the requests that need it, not the study)."""
        for i, epoch in enumerate(reversed(epochs)):
            try:
                return self._layers(run, epoch)
            except CorruptArtifactError:
                if i == len(epochs) - 1:
                    raise
        raise BadRequest(f"run {run!r} has no checkpoint", 404)

    def _checkpoint(self, run: str, epoch: int):
        """(stimuli, projection) of a checkpoint, checked to describe the same neurons."""
        s = self._stimuli(run, epoch)
        proj = self._projection(run, epoch)
        if len(proj["coords"]) != s.n_neurons:
            raise corrupt(self.ws.projection_path(run, epoch),
                          f"{len(proj['coords'])} neurons, but its stimuli have {s.n_neurons}")
        return s, proj

    def base(self) -> dict:
        coords = self._cached(map_path(self.ws), lambda: load_map(self.ws))
        return {"x": _round(coords[:, 0]), "y": _round(coords[:, 1])}

    def points(self, run: str, epoch: int) -> dict:
        """Every neuron of a checkpoint on the map; with concept labels (an index into
        ``concepts``, -1: none, and the best IoU) when the checkpoint has them."""
        self.check_epoch(run, epoch)
        s, proj = self._checkpoint(run, epoch)
        payload = {"run": run, "epoch": epoch, "x": _round(proj["coords"][:, 0]),
                   "y": _round(proj["coords"][:, 1]),
                   "dead": proj["dead"].astype(int).tolist(),
                   "layer": s.layer_of().tolist()}
        concepts = self._concepts(run, epoch)
        if concepts is not None:
            payload.update(concepts=concepts["names"], label=concepts["label"].tolist(),
                           label_iou=_round(concepts["best"], 2))
        return payload

    def points_binary(self, run: str, epoch: int) -> bytes:
        """:meth:`points` as a binary payload (:mod:`.binary`): header {run, epoch, n,
        concepts (names, or null)}, arrays x, y float32 (NaN: not placed, full precision),
        dead uint8, layer uint16 (uint32 past 65,535 layers) and, with labels, label int16
        (int32 past 32,767 concepts; -1: none) and label_iou float32."""
        self.check_epoch(run, epoch)
        s, proj = self._checkpoint(run, epoch)
        coords = np.asarray(proj["coords"], dtype=np.float32)
        layer = s.layer_of()
        arrays = {"x": coords[:, 0], "y": coords[:, 1],
                  "dead": np.asarray(proj["dead"]).astype(np.uint8),
                  "layer": layer.astype(np.uint16 if len(s.layers) <= 65535 else np.uint32)}
        concepts = self._concepts(run, epoch)
        names = None
        if concepts is not None:
            names = concepts["names"]
            arrays["label"] = concepts["label"].astype(np.int16 if len(names) < 32767
                                                       else np.int32)
            arrays["label_iou"] = concepts["best"].astype(np.float32)
        return binary.encode({"run": run, "epoch": epoch, "n": len(coords),
                              "concepts": names}, arrays)

    def base_binary(self) -> bytes:
        """:meth:`base` as a binary payload: header {n}, arrays x, y float32."""
        coords = self._cached(map_path(self.ws), lambda: load_map(self.ws))
        coords = np.asarray(coords, dtype=np.float32)
        return binary.encode({"n": len(coords)}, {"x": coords[:, 0], "y": coords[:, 1]})

    def neuron(self, run: str, epoch: int, neuron: int) -> dict:
        """One neuron. Its trajectory and neighbours leave out the checkpoints whose files
        cannot be read; ``skipped`` lists them ({run, epoch, error})."""
        self.check_epoch(run, epoch)
        self.check_neuron(run, epoch, neuron)
        s, proj = self._checkpoint(run, epoch)
        li = int(s.layer_of()[neuron])
        info = s.layers[li]
        trajectory, skipped = [], {}
        for e in self.epochs(run):
            try:
                p = self._projection(run, e)
            except CorruptArtifactError as err:
                skipped[run, e] = str(err)
                continue
            if neuron < len(p["coords"]):
                trajectory.append({"epoch": e, "x": float(p["coords"][neuron, 0]),
                                   "y": float(p["coords"][neuron, 1])})
        neighbours, unreadable = self._neighbours(run, epoch, neuron)
        skipped.update(unreadable)
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
                "neighbours": neighbours,
                "skipped": [{"run": r, "epoch": e, "error": why}
                            for (r, e), why in sorted(skipped.items())],
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
        """Every projected neuron of a readable checkpoint: (keys [(run, epoch, offset, n)],
        unit vectors [N, d], {(run, epoch): error} of the checkpoints left out)."""
        stamp = tuple((r, e, self._file_stamp(self.ws.projection_path(r, e)))
                      for r in self.runs() for e in self.epochs(r))
        for r, e, st in stamp:
            self._used(self.ws.projection_path(r, e), st)
        cached = getattr(self, "_emb_cache", None)
        if cached is not None and cached[0] == stamp:
            return cached[1:]
        keys, parts, offset, skipped = [], [], 0, {}
        for run, e, _ in stamp:
            try:
                emb = self._projection(run, e)["embedding"].astype(np.float32)
            except (CorruptArtifactError, BadRequest) as err:
                skipped[run, e] = str(err)
                continue
            keys.append((run, e, offset, len(emb)))
            parts.append(emb)
            offset += len(emb)
        all_emb = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
        all_emb /= np.maximum(np.linalg.norm(all_emb, axis=1, keepdims=True), 1e-12)
        self._emb_cache = (stamp, keys, all_emb, skipped)
        return keys, all_emb, skipped

    def neighbours(self, run: str, epoch: int, neuron: int, k: int = N_NEIGHBOURS) -> list:
        """The nearest neurons (cosine in the unified space) of other runs or epochs."""
        return self._neighbours(run, epoch, neuron, k)[0]

    def _neighbours(self, run: str, epoch: int, neuron: int, k: int = N_NEIGHBOURS):
        """(neighbours, {(run, epoch): error} of the checkpoints that could not be searched)."""
        keys, emb, skipped = self._all_embeddings()
        start = next((o for r, e, o, _ in keys if (r, e) == (run, epoch)), None)
        if start is None:  # this checkpoint itself changed or broke since it was read
            raise corrupt(self.ws.projection_path(run, epoch), skipped.get((run, epoch), "?"))
        sims = emb @ emb[start + neuron]
        for r, e, o, n in keys:
            if (r, e) == (run, epoch):
                sims[o:o + n] = -np.inf
        skipped = dict(skipped)
        out = []
        for i in np.argsort(-sims, kind="stable"):
            if len(out) == k or not np.isfinite(sims[i]):
                break
            r, e, o, _ = next(key for key in keys if key[2] <= i < key[2] + key[3])
            n = int(i - o)
            if (r, e) in skipped:
                continue
            try:
                s = self._stimuli(r, e)
                if n >= s.n_neurons:
                    raise corrupt(self.ws.projection_path(r, e), "more neurons than its "
                                  f"stimuli ({s.n_neurons})")
            except (CorruptArtifactError, BadRequest) as err:
                skipped[r, e] = str(err)
                continue
            li = int(s.layer_of()[n])
            out.append({"run": r, "epoch": e, "neuron": n, "layer": s.layers[li].name,
                        "channel": n - s.layers[li].offset, "similarity": round(float(sims[i]), 4),
                        "patches": patch_url(r, e, n)})
        return out, skipped

    def metrics(self) -> dict:
        runs = {}
        for run in run_order(self.ws, self.ws.metric_runs()):
            runs[run] = [{k: v for k, v in row.items() if isinstance(v, (int, float))}
                         for row in self.ws.load_metrics(run)]
        return {"runs": runs, "diagnosis": load_diagnosis(self.ws)}

    def importance(self, run: str, class_index: int, t: int, t2: int) -> dict:
        n_classes = len(self.probe.classes)
        if class_index < 0 or class_index >= n_classes:
            raise BadRequest(f"class {class_index} is out of range (0..{n_classes - 1})", 404)
        for value in (t, t2):
            if not 0 <= value < MAX_EPOCH:
                raise BadRequest(f"epoch {value} is out of range: epochs are whole numbers from "
                                 f"0 to {MAX_EPOCH - 1}", 404)
        path = importance_path(self.ws, run, class_index, t, t2)
        if not path.exists() and not path.is_symlink():
            raise BadRequest(f"no importance for run {run!r}, class {class_index}, epochs {t} -> "
                             f"{t2}; compute it with `conceptevo importance`", 404)
        self.ws.contained(path)  # a link out or a FIFO: refused before it is opened
        try:
            return self._importance_payload(run, class_index, t, t2,
                                            *load_importance(self.ws, run, class_index, t, t2))
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
            raise corrupt(path, e) from None  # read, but not the arrays it should hold

    def _importance_payload(self, run: str, class_index: int, t: int, t2: int, result,
                            rev) -> dict:
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
        return evaluation_path(self.ws)

    def evaluation(self) -> dict:
        """The results of ``conceptevo evaluate`` (``evaluation/evaluation.json``) as stored,
        with non-finite numbers as null."""
        path = self._evaluation_path()
        if not path.exists() and not path.is_symlink():
            raise BadRequest(f"workspace {self.ws.root.name!r} has no evaluation yet; run "
                             f"`conceptevo evaluate {self.ws.root}` to compute it", 404)

        def load() -> dict:
            value = load_evaluation(self.ws)  # a damaged file: CorruptArtifactError (503)
            if not isinstance(value, dict):
                raise corrupt(path, "not a JSON object; run `conceptevo evaluate` again")
            return _finite(value)

        return self._cached(path, load)

    # ----------------------------------------------------------------- patches
    def fields(self, run: str) -> list[ReceptiveField]:
        """Receptive fields of the run's layers (cached in ``patches/receptive_fields.json``)."""
        if run in self._rf:
            return self._rf[run]
        # computing missing fields writes them there: never through a link out of the workspace
        self.ws.contained(receptive_fields_path(self.ws), write=True)
        study = self.ws.load_study()
        spec = next((r for r in study.get("runs", []) if r["name"] == run), {})
        model_cfg = study.get("model", {})
        arch = spec.get("arch") or model_cfg.get("arch")
        kwargs = spec.get("kwargs") if spec.get("kwargs") is not None else \
            model_cfg.get("kwargs", {})
        try:  # never imports code a workspace names (see cached_receptive_fields)
            self._rf[run] = cached_receptive_fields(
                self.ws, arch, kwargs, model_cfg.get("layers"), tuple(self.probe.image_size),
                layouts=model_cfg.get("layouts"), tokens=model_cfg.get("tokens", "patches"),
                margin=model_cfg.get("patch_margin", 0.5))
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
        if default and (cached := self._stored_patch(path)) is not None:
            return cached
        s = self._stimuli(run, epoch)
        li = int(s.layer_of()[neuron])
        crops = crop_patches(self.probe.images, s.stimuli[neuron][:count],
                             s.stimuli_loc[neuron][:count], self.fields(run)[li])
        data = image_bytes(patch_strip(crops, tile=tile), quality)
        if default:
            self._store_patch(path, data)
        return data

    def _stored_patch(self, path: Path) -> bytes | None:
        """A stored patch strip, or None (rendered again) when it is missing, is not a
        regular file inside the workspace (a link to /etc/passwd, a FIFO) or is no WebP."""
        if not path.exists() and not path.is_symlink():
            return None
        try:
            with self.ws.reading(path) as checked:
                data = checked.read_bytes()
        except (CorruptArtifactError, FileNotFoundError) as e:
            log.warning("not serving the stored patch %s (%s); rendering it again", path, e)
            return None
        if (data[:4], data[8:12]) != WEBP_MAGIC:
            log.warning("the stored patch %s is not a WebP image; rendering it again", path)
            return None
        return data

    def _store_patch(self, path: Path, data: bytes) -> None:
        """Cache a rendered strip, only inside the workspace (never through a directory
        linked out of it); a workspace that cannot be written is served all the same."""
        try:
            atomic.write_bytes(self.ws.contained(path, write=True), data)
        except (WorkspaceError, OSError) as e:
            log.warning("not caching the patch %s: %s", path, e)

    def patches(self, run: str, epoch: int, neuron: int) -> list:
        """The neuron's top patches as PIL images (the Python API)."""
        from PIL import Image

        s = self._stimuli(run, epoch)
        li = int(s.layer_of()[neuron])
        return [Image.fromarray(c) for c in
                crop_patches(self.probe.images, s.stimuli[neuron][:N_PATCHES],
                             s.stimuli_loc[neuron][:N_PATCHES], self.fields(run)[li])]


def patch_url(run: str, epoch: int, neuron: int) -> str:
    return f"/api/patches/{run}/{epoch}/{neuron}.webp"
