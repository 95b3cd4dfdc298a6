"""The workspace: one directory per study holding every artifact ConceptEvo computes.

The layout is documented in ``docs/workspace.md``. Every file is written atomically (see
:mod:`.atomic`), and each stage artifact records the key of the inputs it was computed from,
so an interrupted or re-configured run recomputes exactly what is missing or stale.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.probe import ProbeSet
from ..errors import CorruptArtifactError, WorkspaceError
from ..models.adapter import layers_array, layers_from_array
from ..stimuli import StimuliResult
from . import atomic

SCHEMA_VERSION = 1
MANIFEST = "conceptevo.json"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.npz$")


def epoch_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


# what reading a damaged file raises: a cut zip (npz), a bad CRC, a short .npy, bad JSON/CSV
READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error,
               csv.Error, json.JSONDecodeError, UnicodeDecodeError, IndexError, TypeError)


def stimuli_arrays(result: StimuliResult) -> dict[str, np.ndarray]:
    """The arrays of a stored stimulus pass: its stimuli and statistics, the activations and
    predictions when recorded, the layers and (as JSON) its meta."""
    arrays = {name: getattr(result, name) for name in StimuliResult.ARRAYS}
    if result.activations is not None:
        arrays["activations"] = result.activations
        arrays["activation_scale"] = result.activation_scale
    if result.predicted is not None:
        arrays["predicted"] = result.predicted
    if result.projected is not None:
        arrays["projected"] = result.projected
    arrays["layers"] = layers_array(result.layers)
    arrays["meta"] = np.array(json.dumps(result.meta, default=str))
    return arrays


def corrupt(path: Path, error: BaseException | str) -> CorruptArtifactError:
    """The error of an unreadable workspace file, naming it and what to do."""
    why = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return CorruptArtifactError(
        f"workspace file {path} cannot be read ({why}); it was probably cut short (a full disk, "
        "an interrupted copy): delete it and run the command that writes it again "
        "(`conceptevo build` recomputes what is missing)", path)


class Workspace:
    """A study directory.

    Parameters
    ----------
    root : the directory.
    create : make it (and its manifest) when missing; otherwise a missing or foreign
        directory is an error.
    """

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root).resolve()
        manifest = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(f"workspace path {self.root} is a file, not a directory; "
                                 "choose a directory for the workspace")
        if create and not manifest.is_file():
            self._create(manifest)
        if not manifest.is_file():
            raise WorkspaceError(f"{self.root} is not a ConceptEvo workspace (no {MANIFEST}); "
                                 "build one first with `conceptevo build --config study.toml`")
        try:
            info = atomic.read_json(self.contained(manifest))
        except (OSError, ValueError) as e:
            raise WorkspaceError(f"cannot read {manifest}: {e}") from None
        version = info.get("schema_version") if isinstance(info, dict) else None
        if not isinstance(version, int):
            raise WorkspaceError(f"{manifest} has no schema_version; is {self.root} a "
                                 "ConceptEvo workspace?")
        if version > SCHEMA_VERSION:
            raise WorkspaceError(
                f"workspace {self.root} was written by a newer ConceptEvo (schema "
                f"{version}, {info.get('created_by', '?')}); this is conceptevo "
                f"{__version__} (schema {SCHEMA_VERSION}). Upgrade conceptevo "
                "(pip install -U conceptevo) or use a new workspace directory.")
        self.info = info

    def _create(self, manifest: Path) -> None:
        """Make the directory and its manifest, under the workspace lock: of two processes
        creating one workspace at once, one creates it and the other opens it."""
        from .lock import LOCK_FILES, workspace_lock

        with workspace_lock(self.root, "create"):
            if manifest.is_file():
                return  # another process created it meanwhile
            others = [p.name for p in self.root.iterdir()
                      if p.name not in LOCK_FILES and atomic.TMP_MARK not in p.name]
            if others:
                raise WorkspaceError(
                    f"{self.root} exists, is not empty and is not a ConceptEvo workspace; "
                    "choose an empty or new directory")
            self.info = {"format": "conceptevo-workspace", "schema_version": SCHEMA_VERSION,
                         "created_by": f"conceptevo {__version__}",
                         "created": datetime.now(UTC).isoformat(timespec="seconds")}
            atomic.write_json(manifest, self.info)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def contained(self, path: Path, write: bool = False) -> Path:
        """``path``, checked: resolved (symlinks followed) it must be inside the workspace, and
        a regular file to read (for ``write``: its directory, resolved, inside the workspace; a
        link at ``path`` itself is replaced by the atomic write, its target never written). A
        file linked to somewhere else, a FIFO or a device is refused with a
        :class:`~conceptevo.errors.CorruptArtifactError`: a received workspace cannot make
        ConceptEvo read or write outside it."""
        path = Path(path)
        target = path.parent if write else path
        try:
            resolved = target.resolve(strict=not write)
        except (OSError, RuntimeError) as e:  # missing, or a symlink loop
            if isinstance(e, FileNotFoundError):
                raise
            raise corrupt(path, e) from None
        if not resolved.is_relative_to(self.root):
            raise CorruptArtifactError(
                f"workspace file {path} resolves to {resolved}, outside the workspace {self.root}; "
                "ConceptEvo neither reads nor writes through such links: replace the link by "
                "the file itself", path)
        if write:
            # the file itself may be a link: an atomic write replaces the link, never its target
            return path
        if not resolved.is_file():
            raise CorruptArtifactError(f"workspace path {path} is not a regular file; remove it "
                                       "and run the command that writes it again", path)
        return resolved

    @contextmanager
    def reading(self, path: Path) -> Iterator[Path]:
        """Read ``path`` inside this block: a damaged file becomes a
        :class:`~conceptevo.errors.CorruptArtifactError` naming it (a missing one stays a
        :class:`FileNotFoundError`)."""
        checked = self.contained(path)
        try:
            yield checked
        except FileNotFoundError:
            raise
        except CorruptArtifactError:
            raise
        except READ_ERRORS as e:
            raise corrupt(path, e) from None

    def read_json(self, path: Path, default=None):
        """A JSON file of the workspace (``default`` when it is missing)."""
        if not path.exists() and not path.is_symlink():
            return default
        with self.reading(path) as p:
            return atomic.read_json(p)

    # ------------------------------------------------------------------ study
    def save_study(self, study: dict) -> None:
        """The resolved study configuration the artifacts were computed with."""
        atomic.write_json(self.path("study.json"), study)

    def load_study(self) -> dict:
        study = self.read_json(self.path("study.json"), {})
        if not isinstance(study, dict):
            raise corrupt(self.path("study.json"), "not a JSON object")
        return study

    # ------------------------------------------------------------ probe sets
    def has_probe(self, name: str = "probe") -> bool:
        return self.path(name, "meta.json").is_file()

    def probe_images_path(self, name: str = "probe") -> Path:
        return self.path(name, "images.npy")

    def save_probe(self, probe: ProbeSet, name: str = "probe", key: str = "") -> None:
        """Write a probe set: images first, the index, then ``meta.json`` last (its presence
        marks a complete probe set)."""
        d = self.path(name)
        d.mkdir(parents=True, exist_ok=True)
        target = d / "images.npy"
        if not (isinstance(probe.images, np.memmap) and Path(probe.images.filename) == target):
            atomic.write_npy(target, probe.images)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image_id", "path", "label", "class_name"])
        for i, (path, label) in enumerate(zip(probe.paths, probe.labels)):
            w.writerow([i, path, int(label), probe.classes[int(label)]])
        atomic.write_text(d / "index.csv", buf.getvalue())
        meta = {"n_images": len(probe), "image_size": list(probe.image_size),
                "classes": list(probe.classes), "mean": list(probe.mean),
                "std": list(probe.std), "fingerprint": probe.fingerprint(), "key": key,
                "info": probe.info}
        atomic.write_json(d / "meta.json", meta)

    def load_probe(self, name: str = "probe", mmap: bool = True) -> ProbeSet:
        d = self.path(name)
        if not self.has_probe(name):
            raise WorkspaceError(f"workspace {self.root} has no {name} set yet; run "
                                 "`conceptevo stimuli` or `conceptevo build` first")
        meta = self.probe_meta(name)
        with self.reading(d / "images.npy") as p:
            images = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        paths, labels = [], []
        with self.reading(d / "index.csv") as p, open(p, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                paths.append(row["path"])
                labels.append(int(row["label"]))
        with self.reading(d / "meta.json"):
            if len(labels) != len(images) or len(labels) != meta["n_images"]:
                raise ValueError(f"{len(images)} images, {len(labels)} rows in index.csv and "
                                 f"n_images {meta['n_images']} disagree")
            probe = ProbeSet(images, np.asarray(labels, dtype=np.int64), paths,
                             meta["classes"], tuple(meta["mean"]), tuple(meta["std"]),
                             meta.get("info", {}))
        probe.info["fingerprint"] = meta.get("fingerprint")
        return probe

    def probe_meta(self, name: str = "probe") -> dict:
        meta = self.read_json(self.path(name, "meta.json"), {})
        if not isinstance(meta, dict):
            raise corrupt(self.path(name, "meta.json"), "not a JSON object")
        return meta

    # --------------------------------------------------------------- stimuli
    def stimuli_path(self, run: str, epoch: int) -> Path:
        return self.path("stimuli", run, epoch_name(epoch) + ".npz")

    def save_stimuli(self, run: str, epoch: int, result: StimuliResult) -> None:
        atomic.write_npz(self.stimuli_path(run, epoch), **stimuli_arrays(result))

    def stimuli_meta(self, run: str, epoch: int) -> dict | None:
        """The ``meta`` of a stored stimulus result (its cache key among others), or None."""
        p = self.stimuli_path(run, epoch)
        if not p.is_file():
            return None
        try:
            with self.reading(p) as checked, np.load(checked, allow_pickle=False) as z:
                return json.loads(str(z["meta"]))
        except (CorruptArtifactError, *READ_ERRORS):
            return None  # unreadable: treated as missing and recomputed

    def load_stimuli(self, run: str, epoch: int, activations: bool = False) -> StimuliResult:
        """A stored stimulus result; with ``activations``, also every recorded activation
        (an error when the pass did not record them)."""
        p = self.stimuli_path(run, epoch)
        if not p.exists() and not p.is_symlink():
            known = self.stimuli_epochs(run)
            raise WorkspaceError(
                f"no stimuli for run {run!r} epoch {epoch} in {self.root}"
                + (f"; epochs with stimuli: {known}" if known else
                   f"; runs with stimuli: {self.stimuli_runs()}"))
        with self.reading(p) as checked, np.load(checked, allow_pickle=False) as z:
            arrays = {name: z[name] for name in StimuliResult.ARRAYS}
            for name in ("predicted", "projected"):
                if name in z.files:
                    arrays[name] = z[name]
            if activations:
                if "activations" not in z.files:
                    raise WorkspaceError(
                        f"{p} holds no activations (computed with [space] projection = "
                        "\"stimuli\", or with [stimuli] store_activations = false); set "
                        "store_activations = true and run `conceptevo build` again to "
                        "record them")
                arrays["activations"] = z["activations"]
                arrays["activation_scale"] = z["activation_scale"]
            layers = layers_from_array(z["layers"])
            meta = json.loads(str(z["meta"]))
        return StimuliResult(layers=layers, meta=meta, **arrays)

    def stimuli_runs(self) -> list[str]:
        d = self.path("stimuli")
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def stimuli_epochs(self, run: str) -> list[int]:
        d = self.path("stimuli", run)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name)))

    # --------------------------------------------------------------- metrics
    def metrics_path(self, run: str) -> Path:
        return self.path("runs", run, "metrics.csv")

    def save_metrics(self, run: str, rows: list[dict]) -> None:
        """Per-epoch training metrics of a run (one row per epoch, any numeric columns)."""
        rows = sorted(rows, key=lambda r: r["epoch"])
        columns = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: int(v) if isinstance(v, bool) else v
                        for k, v in ((k, r.get(k, "")) for k in columns)})
        atomic.write_text(self.metrics_path(run), buf.getvalue())

    def load_metrics(self, run: str) -> list[dict]:
        p = self.metrics_path(run)
        if not p.is_file():
            return []
        with self.reading(p) as checked, open(checked, newline="", encoding="utf-8") as f:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
            if any(not isinstance(r.get("epoch"), int) for r in rows):
                raise ValueError("a row has no whole epoch number")
            return rows

    def metric_runs(self) -> list[str]:
        d = self.path("runs")
        return sorted(p.name for p in d.iterdir() if (p / "metrics.csv").is_file()) \
            if d.is_dir() else []


    # ----------------------------------------------------------------- space
    def space_path(self, *parts: str) -> Path:
        return self.path("space", *parts)

    def save_arrays(self, path: Path, meta: dict, **arrays) -> None:
        """An ``.npz`` of arrays plus a JSON ``meta`` (its cache key among others)."""
        atomic.write_npz(path, meta=np.array(json.dumps(meta, default=str)), **arrays)

    def load_arrays(self, path: Path) -> tuple[dict, dict]:
        """(meta, arrays) of an ``.npz`` written by :meth:`save_arrays`."""
        if not path.exists() and not path.is_symlink():
            raise WorkspaceError(f"{path} does not exist; run `conceptevo build` first")
        with self.reading(path) as checked, np.load(checked, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "meta"}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return meta, arrays

    def arrays_key(self, path: Path) -> str | None:
        """The stored key of an ``.npz`` artifact, or None when missing or unreadable."""
        if not path.is_file():
            return None
        try:
            with self.reading(path) as checked, np.load(checked, allow_pickle=False) as z:
                return json.loads(str(z["meta"])).get("key")
        except (CorruptArtifactError, *READ_ERRORS, AttributeError):
            return None

    def projection_path(self, run: str, epoch: int) -> Path:
        return self.space_path("projection", run, epoch_name(epoch) + ".npz")

    def projection_epochs(self, run: str) -> list[int]:
        d = self.space_path("projection", run)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name)))

    def has_space(self) -> bool:
        return self.space_path("images.npz").is_file() and self.space_path("base.npz").is_file()


def _number(text: str):
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value
