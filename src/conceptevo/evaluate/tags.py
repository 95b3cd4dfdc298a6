"""Image-level concept presence: which concepts each probe image shows, from a tag file or
from the pixel masks of an annotation file, and what the diagnosis derives from it.

* :func:`read_tags`: a CSV ``path,concept`` (one row per image and concept present) for users
  without pixel masks (format in docs/concepts.md, "Image-level tags");
* :func:`presence_from_masks`: the same from an annotation file (the concept world's
  ``annotations.npz``): a concept is present where it covers enough pixels;
* :func:`neuron_concepts`: the concept a neuron detects, the one most over-represented among
  its stimuli (purity ``(s - b) / (1 - b)``);
* :func:`class_concepts`: the concepts that belong to a class (enriched in its images);
* :func:`describe`: a readable phrase for a concept name.

Images without any tag row (or without annotation) are *unknown*: they count in no share and
no base rate (:attr:`ImageConcepts.known`).
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from ..data.concept_world import BACKGROUNDS
from ..data.probe import IMAGE_SUFFIXES, ProbeSet
from ..errors import ConfigError, ProbeSetError
from .annotations import AnnotationFile, read_annotations, resize_bits

__all__ = ["ImageConcepts", "base_rates", "class_concepts", "describe", "neuron_concepts",
           "presence_from_masks", "read_tags"]

#: columns a tag file must have (others are ignored)
TAG_COLUMNS = ("path", "concept")
#: rows shown in an error message about unknown paths
_SHOWN = 5
#: elements of the gathered bool block [chunk, k, n_concepts] in :func:`neuron_concepts`
_GATHER_ELEMENTS = 1 << 24


@dataclass
class ImageConcepts:
    """Which concepts each probe image shows.

    Attributes
    ----------
    concepts : the n_concepts concept names (sorted by name for a tag file, in bit order for
        an annotation file).
    presence : bool [n_images, n_concepts]; ``presence[i, j]``: probe image i shows concept j.
    source : the file it came from.
    known : bool [n_images], the images the file describes (tagged or annotated), or None when
        it describes every probe image. Unknown images have no presence (all False) and are
        left out of every share and base rate.
    """

    concepts: list[str]
    presence: np.ndarray
    source: str
    known: np.ndarray | None = None

    def __post_init__(self):
        self.presence = np.asarray(self.presence, dtype=bool)
        if self.presence.ndim != 2 or self.presence.shape[1] != len(self.concepts):
            raise ValueError(f"presence must be bool [n_images, {len(self.concepts)}], not "
                             f"{self.presence.shape}")
        if self.known is not None:
            self.known = np.asarray(self.known, dtype=bool)
            if self.known.shape != (self.presence.shape[0],):
                raise ValueError(f"known must be bool [{self.presence.shape[0]}], not "
                                 f"{self.known.shape}")

    @property
    def n_images(self) -> int:
        return int(self.presence.shape[0])

    @property
    def n_known(self) -> int:
        """How many probe images the file describes."""
        return self.n_images if self.known is None else int(self.known.sum())


# ------------------------------------------------------------------------------ tags
def read_tags(path: str | Path, probe: ProbeSet, root: str | Path | None = None
              ) -> ImageConcepts:
    """Read a tag file: a UTF-8 CSV (optional BOM) whose header names the columns ``path``
    and ``concept`` (any order, other columns ignored), one row per image and concept
    present; duplicate rows are fine.

    ``path`` is relative to the probe root (``root``, by default the directory the probe set
    was sampled from, ``probe.info["source"]``), with forward slashes; OS separators, a
    leading ``./`` and absolute paths under the root are accepted. A row naming an existing
    image under the root that the probe set did not sample is ignored; a row naming no image
    under the root is an error, as are a missing column, an empty path or concept, and a file
    naming no image of the probe set. Every error is a :class:`ConfigError` naming the file
    and the line.

    Returns ImageConcepts with concepts sorted by name, presence bool [len(probe), n_concepts]
    and ``known``: the probe images with at least one row.
    """
    path = Path(path)
    root = _probe_root(probe, root, path)
    rows = _tag_rows(path)
    index = {_normalise(p): i for i, p in enumerate(probe.paths)}
    ids, names, unmatched = [], [], {}
    for line, raw_path, concept in rows:
        rel = _relative(raw_path, root)
        i = index.get(rel) if rel is not None else None
        if i is None:
            unmatched.setdefault(rel, []).append((line, raw_path))
        else:
            ids.append(i)
            names.append(concept)
    bad = sorted(hit for rel, hits in unmatched.items() if not _is_image(root, rel)
                 for hit in hits)
    if bad:
        shown = ", ".join(f"line {line}: {raw!r}" for line, raw in bad[:_SHOWN])
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        where = "" if root.is_dir() else " (which does not exist)"
        raise ConfigError(
            f"tags file {path}: {len(bad)} row(s) name no image under the probe root "
            f"{root}{where} ({shown}{more}); paths must be relative to the probe root, as in "
            f"probe/index.csv (e.g. {probe.paths[0]!r}): fix or remove those rows")
    if not ids:
        raise ConfigError(
            f"tags file {path}: none of its {len(rows)} row(s) names an image of the probe "
            f"set ({len(probe)} images sampled from {root}); tag the probe images (listed in "
            "probe/index.csv of the workspace)")
    concepts, column = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    presence = np.zeros((len(probe), len(concepts)), dtype=bool)
    rows_ids = np.asarray(ids, dtype=np.int64)
    presence[rows_ids, column.reshape(-1)] = True
    known = np.zeros(len(probe), dtype=bool)
    known[rows_ids] = True
    return ImageConcepts([str(c) for c in concepts], presence, str(path), known)


def _probe_root(probe: ProbeSet, root: str | Path | None, path: Path) -> Path:
    if root is None:
        source = probe.info.get("source")
        if not source or not probe.paths or probe.paths[0].startswith("#"):
            raise ConfigError(f"tags file {path}: the probe set was not sampled from an "
                              "ImageFolder directory, so its images have no paths to tag; "
                              "use an ImageFolder probe set ([probe] root)")
        root = source
    return Path(root)


def _tag_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, concept) of every non-blank data row of a tag file."""
    if not path.is_file():
        raise ConfigError(f"tags file {path} does not exist; set [evaluation] tags to a CSV "
                          "with columns path,concept (docs/concepts.md, Image-level tags)")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read tags file {path} ({error})") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(f"tags file {path}, line {line}: not UTF-8 text; save the file as "
                          "UTF-8 (CSV)") from error
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, str, str]] = []
    columns: dict[str, int] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue                                     # a blank line
            if columns is None:
                names = [f.strip().lower() for f in fields]
                missing = [c for c in TAG_COLUMNS if c not in names]
                if missing:
                    raise ConfigError(
                        f"tags file {path}, line {line}: the header lacks column(s) "
                        f"{', '.join(missing)} (found {', '.join(map(repr, fields))}); the "
                        "first line must name the columns, e.g. path,concept")
                columns = {c: names.index(c) for c in TAG_COLUMNS}
                continue
            values = {c: fields[j].strip() if j < len(fields) else ""
                      for c, j in columns.items()}
            for c in TAG_COLUMNS:
                if not values[c]:
                    raise ConfigError(
                        f"tags file {path}, line {line}: empty {c}; each row names one image "
                        "(path relative to the probe root) and one concept it shows: fill it "
                        "in or remove the row")
            rows.append((line, values["path"], values["concept"]))
    except csv.Error as error:
        raise ConfigError(f"tags file {path}, line {reader.line_num}: not valid CSV "
                          f"({error})") from error
    if columns is None:
        raise ConfigError(f"tags file {path} is empty; its first line must name the columns "
                          "path,concept, then one row per image and concept present")
    if not rows:
        raise ConfigError(f"tags file {path} has a header but no rows; add one row per image "
                          "and concept present (path,concept)")
    return rows


def _normalise(p: str) -> str:
    """A relative path with forward slashes, without ``./`` and repeated separators."""
    p = posixpath.normpath(p.strip().replace("\\", "/"))
    return "" if p == "." else p


def _relative(raw: str, root: Path) -> str | None:
    """``raw`` relative to ``root`` (normalised), or None when it leaves the root."""
    if PurePath(raw).is_absolute() or raw.startswith(("/", "\\")):
        try:
            raw = Path(raw).resolve().relative_to(root.resolve()).as_posix()
        except (ValueError, OSError):
            return None
    rel = _normalise(raw)
    if not rel or rel == ".." or rel.startswith("../") or rel.startswith("/"):
        return None
    return rel


def _is_image(root: Path, rel: str | None) -> bool:
    """Whether ``root/rel`` is an existing image file."""
    if rel is None or not rel.lower().endswith(IMAGE_SUFFIXES):
        return False
    try:
        return (root / rel).is_file()
    except OSError:
        return False


# ----------------------------------------------------------------------------- masks
def presence_from_masks(annotations: AnnotationFile | str | Path, probe: ProbeSet,
                        min_pixels: int | None = None, size: int | None = None,
                        chunk: int = 256) -> ImageConcepts:
    """Image-level presence from pixel masks (an annotation file, docs/concepts.md).

    Masks are brought into the model's geometry like the probe images (shorter side resized
    to ``size``, default the probe image size, centre crop; nearest neighbour), so that a
    concept cropped away is absent. Concept j is present in image i when at least
    ``min_pixels`` of the ``size`` x ``size`` pixels carry it (default: 1% of them, at least
    one). Matched by path to the probe images, like the evaluation's masks; ``chunk`` images
    are resized at a time.

    Returns ImageConcepts with the file's concepts in bit order, presence bool
    [len(probe), K] and ``known``: the annotated probe images.
    """
    ann = annotations if isinstance(annotations, AnnotationFile) else \
        read_annotations(annotations)
    size = int(size or probe.image_size[0])
    if min_pixels is None:
        min_pixels = max(1, math.ceil(0.01 * size * size))
    if min_pixels < 1:
        raise ConfigError(f"min_pixels must be at least 1, not {min_pixels}")
    row_of = {_normalise(p): r for r, p in enumerate(ann.paths)}
    rows = np.array([row_of.get(_normalise(p), -1) for p in probe.paths], dtype=np.int64)
    known = rows >= 0
    if not known.any():
        raise ProbeSetError(
            f"no probe image is annotated in {ann.source}; the annotation paths must be the "
            "probe images' paths relative to the probe root (see probe/index.csv and "
            "docs/concepts.md)")
    k = len(ann.concept_names)
    presence = np.zeros((len(probe), k), dtype=bool)
    ids = np.flatnonzero(known)
    shifts = np.arange(k, dtype=ann.bits.dtype)
    one = ann.bits.dtype.type(1)
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        bits = resize_bits(ann.bits[rows[part]], size).reshape(len(part), -1)  # [m, S*S]
        counts = np.stack([((bits >> s) & one).sum(1, dtype=np.int64) for s in shifts],
                          axis=1)                                             # [m, K]
        presence[part] = counts >= min_pixels
    return ImageConcepts(list(ann.concept_names), presence, str(ann.source),
                         None if known.all() else known)


# --------------------------------------------------------------------------- neurons
def _presence_known(presence: ImageConcepts | np.ndarray, known: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(presence, ImageConcepts):
        known = presence.known if known is None else known
        presence = presence.presence
    presence = np.asarray(presence, dtype=bool)
    if presence.ndim != 2:
        raise ValueError(f"presence must be bool [n_images, n_concepts], not {presence.shape}")
    known = np.ones(len(presence), bool) if known is None else np.asarray(known, bool)
    if known.shape != (len(presence),):
        raise ValueError(f"known must be bool [{len(presence)}], not {known.shape}")
    if not known.any():
        raise ProbeSetError("no probe image has known concepts (no tag or annotation)")
    return presence, known


def base_rates(presence: ImageConcepts | np.ndarray, known: np.ndarray | None = None
               ) -> np.ndarray:
    """float64 [n_concepts]: the share of the known probe images showing each concept."""
    p, known = _presence_known(presence, known)
    return p[known].mean(0, dtype=np.float64)


def neuron_concepts(stimuli: np.ndarray, presence: ImageConcepts | np.ndarray,
                    min_purity: float = 0.6, known: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The concept each neuron detects, from the concepts of its stimuli.

    Parameters
    ----------
    stimuli : int64 [n_neurons, k] probe image ids (a neuron's most exciting images); a
        negative id or int64 max is padding (no image).
    presence : bool [n_images, n_concepts], or ImageConcepts (its ``known`` is used).
    min_purity : below it a neuron has no concept.
    known : bool [n_images] images whose concepts are known (default: all, or the
        ImageConcepts'); unknown stimuli are left out of the share.

    For neuron n and concept j, s = share of n's known stimuli showing j, b = share of all
    known probe images showing j, purity = (s - b) / (1 - b) (0 where b == 1): 1 when every
    stimulus shows j, 0 at chance.

    Returns
    -------
    concept_index : int64 [n_neurons], the concept of largest purity when it is at least
        ``min_purity``, else -1 (also for a neuron without known stimuli).
    purity : float32 [n_neurons], that largest purity (0 without known stimuli).
    """
    p, known = _presence_known(presence, known)
    stimuli = np.asarray(stimuli)
    if stimuli.ndim != 2:
        raise ValueError(f"stimuli must be int64 [n_neurons, k], not {stimuli.shape}")
    stimuli = stimuli.astype(np.int64, copy=False)
    n_images, n_concepts = p.shape
    padding = (stimuli < 0) | (stimuli == np.iinfo(np.int64).max)
    if (stimuli[~padding] >= n_images).any():
        raise ProbeSetError(
            f"stimuli name probe image {int(stimuli[~padding].max())} but the concepts cover "
            f"{n_images} probe images; the tags or masks must describe the workspace's probe "
            "set")
    b = p[known].mean(0, dtype=np.float64)                                  # [C]
    denom = np.where(b < 1, 1 - b, 1.0)
    # an extra all-False, unknown row for padding: one gather, no masking per neuron
    p_ext = np.concatenate([p & known[:, None], np.zeros((1, n_concepts), bool)])
    valid_ext = np.append(known, False)
    ids = np.where(padding, n_images, stimuli)
    n = len(stimuli)
    concept = np.full(n, -1, dtype=np.int64)
    purity = np.zeros(n, dtype=np.float32)
    step = max(1, _GATHER_ELEMENTS // max(1, stimuli.shape[1] * n_concepts))
    for start in range(0, n, step):
        chunk = ids[start:start + step]                                     # [m, k]
        counts = p_ext[chunk].sum(1, dtype=np.int32)                        # [m, C]
        k_valid = valid_ext[chunk].sum(1)                                   # [m]
        share = counts / np.maximum(k_valid, 1)[:, None]
        pur = np.where(b < 1, (share - b) / denom, 0.0)                     # [m, C]
        best = pur.argmax(1)
        top = pur[np.arange(len(chunk)), best]
        ok = k_valid > 0
        purity[start:start + step] = np.where(ok, top, 0.0)
        concept[start:start + step] = np.where(ok & (top >= min_purity), best, -1)
    return concept, purity


# --------------------------------------------------------------------------- classes
def class_concepts(labels: np.ndarray, presence: ImageConcepts | np.ndarray, n_classes: int,
                   min_lift: float = 1.25, min_share: float = 0.7,
                   known: np.ndarray | None = None) -> np.ndarray:
    """bool [n_classes, n_concepts]: the concepts that belong to each class.

    Concept j belongs to class c when P(j | c) >= ``min_share`` and P(j | c) >= ``min_lift``
    * P(j), over the known probe images (``labels`` int64 [n_images]). The defaults recover
    exactly each concept-world class's parts' shapes, colours and textures and no background
    (tested): there every image of a class shows its parts (P(j | c) = 1) while a concept
    shared by half the classes has P(j) ~ 0.7, so its lift is at most ~1.4, and a background
    reaches P(j | c) ~ 0.6 in a class by chance.
    """
    p, known = _presence_known(presence, known)
    labels = np.asarray(labels).astype(np.int64, copy=False)
    if labels.shape != (len(p),):
        raise ValueError(f"labels must be int64 [{len(p)}], not {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ProbeSetError(f"labels must lie in [0, {n_classes}), found "
                            f"[{labels.min()}, {labels.max()}]")
    lab, pk = labels[known], p[known]
    order = np.argsort(lab, kind="stable")
    sizes = np.bincount(lab, minlength=n_classes)                           # [n_classes]
    starts = np.cumsum(sizes) - sizes
    counts = np.zeros((n_classes, p.shape[1]), dtype=np.int64)
    filled = sizes > 0
    counts[filled] = np.add.reduceat(pk[order], starts[filled], axis=0, dtype=np.int64)
    given = counts / np.maximum(sizes, 1)[:, None]                          # P(j | c)
    overall = pk.mean(0, dtype=np.float64)                                  # P(j)
    return filled[:, None] & (given >= min_share) & (given >= min_lift * overall)


# ---------------------------------------------------------------------------- names
def describe(concept: str) -> str:
    """A readable phrase for a concept name: the concept world's backgrounds read "flat
    background", "gradient background", "noise background"; other names are returned as
    they are (shapes, colours and textures read well already)."""
    if concept in BACKGROUNDS:
        return f"{concept.removeprefix('bg_').replace('_', ' ')} background"
    return concept


def study_concepts(tags: str | Path | None, annotations: str | Path | None,
                   probe_root: str | Path, probe: ProbeSet) -> ImageConcepts | None:
    """Which concepts each probe image shows, as a study names them: the tag file ``tags``
    when given, else the pixel masks of ``annotations`` (default: ``annotations.npz`` in
    ``probe_root``, which the concept world writes) when that file exists; else None."""
    from .annotations import ANNOTATION_FILE

    if tags:
        return read_tags(tags, probe, probe_root)
    path = Path(annotations) if annotations else Path(probe_root) / ANNOTATION_FILE
    return presence_from_masks(path, probe) if path.is_file() else None

