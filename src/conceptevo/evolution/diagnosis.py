"""Diagnosis of training issues from how concepts evolve: metrics per snapshot, and rules.

Per snapshot (epoch) of a run, from its stimuli and, when a base space exists, from its
projection into the unified space:

* ``turnover``: 1 - mean Jaccard similarity of each neuron's stimulus set with the previous
  snapshot's (how much of what neurons respond to changed);
* ``speed``: mean distance each neuron moved in the unified space since the previous snapshot,
  relative to the spread of the base neurons (concept evolution speed);
* ``dead``: fraction of neurons with no positive activation on the probe set;
* ``degenerate``: fraction of neurons, alive, whose stimuli are (almost) those of another
  alive neuron of the same layer (Jaccard >= 0.8): many detectors collapsed onto one;
* ``distinct_stimuli``: distinct images among all stimuli, as a fraction of the most there can
  be, min(images, neurons x k): how many different things the model's neurons detect (no base
  space needed; 1 when every probe image, or every stimulus slot, is a different image);
* ``diversity``: spread of the model's neurons in the unified space (root mean squared distance
  to their centroid) relative to the base model's;
* ``nonfinite``: NaN/inf activations seen in the snapshot;
* ``probe_acc``: top-1 accuracy of the checkpoint on the probe set (when its stimulus pass
  recorded the predictions);
* ``layers``: per layer (by name) its ``turnover`` and ``dead`` fraction;
* the recorded metrics (train/val accuracy and loss).

Rules (thresholds in :class:`DiagnosisThresholds`, calibrated on the concept world):

* **divergence**: a NaN/inf loss or activation;
* **collapse** (learning rate too high): the share of dead or degenerate neurons has risen and
  the model's concept diversity (distinct stimuli, or spread in the unified space) has fallen,
  relative to the first snapshot;
* **overfitting**: concept evolution has stalled (low turnover for consecutive snapshots)
  while training accuracy is high and validation accuracy lags behind it;
* **slow-learning** (learning rate too low): the concepts settle (turnover falls) while the
  model is still far from fitting the probe set (low probe accuracy), and they have not
  collapsed;
* **label-noise**: the model predicts the probe images' labels far better than it fits its own
  training labels (probe accuracy well above training accuracy): many training labels
  disagree with what the images show. It needs a probe set whose labels are trusted;
* **frozen-layer**: a layer's stimuli do not change at all while the other layers' do (its
  weights are not training); **dead-layer**: almost every neuron of a layer is dead;
* **shortcut** (:mod:`conceptevo.evolution.shortcut`): probe images of other classes that
  show a concept the class does not own are predicted as the class far more often than
  those that do not (needs the probe images' concepts: masks or tags).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from ..params import DiagnosisThresholds  # noqa: F401 (part of this module's API)
from ..stimuli import StimuliResult


@dataclass
class Flag:
    """A rule that fired: at which epoch, and the evidence."""

    epoch: int
    rule: str
    message: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def jaccard_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard similarity of the sets in each row of two int arrays [n, k] (vectorised)."""
    a, b = np.sort(a, axis=1), np.sort(b, axis=1)
    k = a.shape[1]
    # |A & B| via searchsorted of each row of B into the matching row of A
    offset = (np.arange(a.shape[0]) * (max(a.max(initial=0), b.max(initial=0)) + 1))[:, None]
    flat_a, flat_b = (a + offset).ravel(), (b + offset).ravel()
    pos = np.searchsorted(flat_a, flat_b)
    hit = (pos < flat_a.size) & (flat_a[np.minimum(pos, flat_a.size - 1)] == flat_b)
    inter = hit.reshape(b.shape).sum(1)
    return inter / (2 * k - inter)


def degenerate_fraction(result: StimuliResult, threshold: float = 0.8) -> float:
    """Fraction of neurons that are alive and share (Jaccard >= threshold) their stimuli with
    another alive neuron of their layer. Dead neurons are counted by ``dead`` alone: their
    "stimuli" are the ranking of non-positive (or, for a diverged model, non-finite)
    activations, which says nothing about a concept, so ``dead + degenerate`` never counts a
    neuron twice."""
    k = result.stimuli.shape[1]
    alive = ~result.dead
    flags = np.zeros(result.n_neurons, dtype=bool)
    for info in result.layers:  # a handful of layers; the work inside is one sparse product
        sl = slice(info.offset, info.offset + info.channels)
        rows = np.flatnonzero(alive[sl])
        if rows.size < 2:
            continue
        stim = result.stimuli[sl][rows]
        c = stim.shape[0]
        inc = sp.csr_matrix((np.ones(stim.size), (np.repeat(np.arange(c), k), stim.ravel())),
                            shape=(c, result.n_images))
        inter = (inc @ inc.T).toarray()
        np.fill_diagonal(inter, 0)
        jac = inter / (2 * k - inter)
        flags[sl.start + rows] = (jac >= threshold).any(1)
    return float(flags.mean())


def layer_metrics(result: StimuliResult, previous: StimuliResult | None = None) -> dict:
    """Per layer name: its ``turnover`` (None without a comparable previous snapshot) and
    ``dead`` fraction."""
    same = previous is not None and previous.stimuli.shape == result.stimuli.shape
    similarity = jaccard_rows(result.stimuli, previous.stimuli) if same else None
    out = {}
    for info in result.layers:
        sl = slice(info.offset, info.offset + info.channels)
        out[info.name] = {
            "turnover": float(1 - similarity[sl].mean()) if similarity is not None else None,
            "dead": float(result.dead[sl].mean())}
    return out


def snapshot_metrics(result: StimuliResult, previous: StimuliResult | None = None,
                     embedding: np.ndarray | None = None,
                     previous_embedding: np.ndarray | None = None,
                     base_spread: float | None = None,
                     thresholds: DiagnosisThresholds | None = None,
                     labels: np.ndarray | None = None, concepts=None,
                     own: np.ndarray | None = None,
                     class_names: list[str] | None = None) -> dict:
    """The metrics of one snapshot (see the module docstring); ``None`` where not computable.
    ``labels``: int64 [n_images] class ids of the probe images, for ``probe_acc``;
    ``concepts`` (:class:`conceptevo.evaluate.tags.ImageConcepts`) and ``own`` (bool
    [n_classes, n_concepts], each class's own concepts), for ``shortcuts``: the candidates of
    :func:`conceptevo.evolution.shortcut.shortcut_candidates`."""
    th = thresholds or DiagnosisThresholds()
    n, k = result.stimuli.shape
    out = {
        "dead": float(result.dead.mean()),
        "degenerate": degenerate_fraction(result, th.degenerate_jaccard),
        "distinct_stimuli": float(np.unique(result.stimuli).size
                                  / min(result.n_images, n * k)),
        "nonfinite": int(result.n_nonfinite.sum()),
        "turnover": None, "speed": None, "diversity": None, "probe_acc": None,
        "layers": layer_metrics(result, previous),
    }
    if concepts is not None and own is not None and labels is not None:
        from .shortcut import shortcut_candidates

        out["shortcuts"] = shortcut_candidates(
            result.predicted, labels, concepts, own, result.stimuli, gap=th.shortcut_gap,
            rest=th.shortcut_rest, purity=th.concept_purity, class_names=class_names)
    if labels is not None and result.predicted is not None and \
            len(result.predicted) == len(labels):
        made = result.predicted >= 0
        out["probe_acc"] = float(np.mean(result.predicted == labels)) if made.any() else None
    if previous is not None and previous.stimuli.shape == result.stimuli.shape:
        out["turnover"] = float(1 - jaccard_rows(result.stimuli, previous.stimuli).mean())
    if embedding is not None and base_spread:
        centred = embedding - embedding.mean(0)
        out["diversity"] = float(np.sqrt((centred ** 2).sum(1).mean()) / base_spread)
        if previous_embedding is not None and previous_embedding.shape == embedding.shape:
            step = np.linalg.norm(embedding - previous_embedding, axis=1).mean()
            out["speed"] = float(step / base_spread)
    return out


def spread(embedding: np.ndarray) -> float:
    """Root mean squared distance to the centroid (the base model's is the unit of diversity
    and speed)."""
    emb = embedding[np.isfinite(embedding).all(1)]
    return float(np.sqrt(((emb - emb.mean(0)) ** 2).sum(1).mean()))


def _finite(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value))


def apply_rules(rows: list[dict], thresholds: DiagnosisThresholds | None = None) -> list[Flag]:
    """Flags for one run from its per-snapshot rows (sorted by epoch; each row holds the
    snapshot metrics plus the recorded ones, e.g. ``train_acc``, ``val_acc``, ``train_loss``).
    Each rule fires once, at the first epoch where it holds."""
    th = thresholds or DiagnosisThresholds()
    flags: list[Flag] = []
    fired: set[str] = set()

    def fire(rule: str, row: dict, message: str, **evidence) -> None:
        # a rule about a layer (a class) fires once per layer (class)
        key = rule + "".join(f":{evidence[k]}" for k in ("layer", "class") if k in evidence)
        if key not in fired:
            fired.add(key)
            flags.append(Flag(int(row["epoch"]), rule, message, evidence))

    if not rows:
        return flags
    first = rows[0]
    first_bad = first["dead"] + first["degenerate"]
    stalled = noisy = 0
    for row in rows:
        # divergence
        losses = {k: row.get(k) for k in ("train_loss", "val_loss", "loss")}
        bad_loss = [k for k, v in losses.items() if v is not None and not _finite(v)]
        if bad_loss or row.get("nonfinite", 0) or row.get("finite") in (0, False):
            fire("divergence", row, "the training diverged: NaN/inf "
                 + ("loss" if bad_loss or row.get("finite") in (0, False) else "activations"),
                 nonfinite_activations=row.get("nonfinite", 0),
                 **{k: str(losses[k]) for k in bad_loss})
        # collapse
        bad = row["dead"] + row["degenerate"]
        drop = 1 - row["distinct_stimuli"] / first["distinct_stimuli"]
        if row.get("diversity") is not None and first.get("diversity"):
            drop = max(drop, 1 - row["diversity"] / first["diversity"])
        if row["epoch"] > first["epoch"] and bad >= th.collapse_dead_degenerate and \
                bad - first_bad >= th.collapse_rise and drop >= th.collapse_diversity_drop:
            fire("collapse", row,
                 f"concept collapse: {bad:.0%} of neurons are dead or share their stimuli "
                 f"(was {first_bad:.0%}) and concept diversity fell {drop:.0%}; the learning "
                 "rate is probably too high",
                 dead=row["dead"], degenerate=row["degenerate"], diversity_drop=drop)
        # overfitting: stalled evolution while training accuracy is high and validation lags
        turnover = row.get("turnover")
        stalled = stalled + 1 if turnover is not None and turnover < th.stall_turnover else 0
        train_acc, val_acc = row.get("train_acc"), row.get("val_acc")
        if stalled >= th.stall_snapshots and train_acc is not None and val_acc is not None \
                and train_acc >= th.overfit_train_acc and train_acc - val_acc >= th.overfit_gap:
            fire("overfitting", row,
                 f"overfitting: concepts stopped evolving (stimulus turnover {turnover:.0%} for "
                 f"{stalled} snapshots) while training accuracy is {train_acc:.0%} and "
                 f"validation {val_acc:.0%}",
                 turnover=turnover, train_acc=train_acc, val_acc=val_acc)
        # too slow: the concepts settle before the model fits the probe set
        probe_acc = row.get("probe_acc")
        if turnover is not None and probe_acc is not None and "collapse" not in fired and \
                turnover < th.slow_turnover and probe_acc < th.slow_probe_acc:
            fire("slow-learning", row,
                 f"learning too slowly: the concepts are settling (stimulus turnover "
                 f"{turnover:.0%}) while the model fits only {probe_acc:.0%} of the probe "
                 "images; the learning rate is probably too low",
                 turnover=turnover, probe_acc=probe_acc)
        # label noise: the labels the model is trained on disagree with what it learned
        # (training accuracy, a running mean over an epoch of a model that improves, lags the
        # probe's early on: the gap has to last)
        mislabelled = probe_acc is not None and train_acc is not None and row["epoch"] >= 1 \
            and probe_acc >= th.noise_probe_acc and probe_acc - train_acc >= th.noise_gap
        noisy = noisy + 1 if mislabelled else 0
        if noisy >= th.noise_snapshots:
            fire("label-noise", row,
                 f"noisy training labels: the model predicts {probe_acc:.0%} of the probe "
                 f"images' labels but fits only {train_acc:.0%} of its training labels, for "
                 f"{noisy} snapshots: about {probe_acc - train_acc:.0%} of the training labels "
                 "may be wrong (this needs a probe set whose labels are right)",
                 probe_acc=probe_acc, train_acc=train_acc)
        # a frozen or dead layer, named
        layers = row.get("layers") or {}
        moving = {n: v["turnover"] for n, v in layers.items() if v.get("turnover") is not None}
        for name, value in moving.items():
            others = [v for n, v in moving.items() if n != name]
            if others and value < th.frozen_turnover and \
                    float(np.mean(others)) >= th.frozen_others:
                fire("frozen-layer", row,
                     f"layer {name} is not training: its neurons' stimuli changed by "
                     f"{value:.1%} while the other layers' changed by {np.mean(others):.0%}; "
                     "check that its parameters require gradients and reach the optimizer",
                     layer=name, turnover=value, others=float(np.mean(others)))
        for name, value in layers.items():
            if value.get("dead", 0) >= th.dead_layer and not \
                    (first.get("layers") or {}).get(name, {}).get("dead", 0) >= th.dead_layer:
                fire("dead-layer", row,
                     f"layer {name} died: {value['dead']:.0%} of its neurons never activate on "
                     "the probe set", layer=name, dead=value["dead"])
        for cand in row.get("shortcuts") or []:
            from ..evaluate.tags import describe

            name = cand.get("class_name", str(cand["class"]))
            fire("shortcut", row,
                 f"class {name} relies on '{describe(cand['concept'])}': probe images of "
                 f"other classes showing it are called {name} {cand['rate_in']:.0%} of the "
                 f"time, those without it {cand['rate_out']:.0%}; it is not one of the "
                 "class's own concepts", **cand)
    return flags
