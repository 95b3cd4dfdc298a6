"""The shortcut rule: a class is predicted from a concept that is not one of its own.

A shortcut is a cue that predicted a class in the training data but is not what the class is
(a background, a watermark, a mark): validation data drawn like the training data cannot show
it. A probe set whose images carry concept annotations (the concept world's pixel masks, or a
user's image-level tags, :mod:`conceptevo.evaluate.tags`), and where the cue is independent of
the class, as it is in the world the model will meet, does: among the probe images of *other*
classes, those showing the concept are called class c far more often than those without it.

For class c and a concept j the class does not own (:func:`conceptevo.evaluate.tags.
class_concepts`: not enriched in the class's own images), over the probe images whose label is
not c::

    rate_in  = P(predicted c | shows j),   rate_out = P(predicted c | does not show j)

The rule fires when ``rate_in - rate_out >= shortcut_gap`` while ``rate_out <=
shortcut_rest`` (the model seldom calls other images c otherwise: a collapsed model that
calls most images c is not relying on a concept). Its evidence names the class, the concept,
both rates and the neurons of the snapshot that detect the concept (their stimuli show it:
:func:`conceptevo.evaluate.tags.neuron_concepts`), whose patches show what the model keys on.

Measured on the issue zoo (benchmarks/diagnosis_zoo.py, seed 0): the largest ``rate_in -
rate_out`` of a healthy run is 0.13; the shortcut run's class 3 on its planted background
reaches 0.59 by epoch 2. An importance-based variant (the share of the class's most important
neurons, by gradient x evolution, that detect a foreign concept) was tried first and does not
work there: the planted background's detectors are not among the top-ranked neurons (the
ranking counts the images with a positive sensitivity, and the cue is in a third of the class's
probe images), while shape detectors of other classes carry 35-60% of the top neurons'
sensitivity in healthy runs too.
"""

from __future__ import annotations

import numpy as np


def prediction_rates(predicted: np.ndarray, labels: np.ndarray, presence: np.ndarray,
                     n_classes: int, known: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(rate_in, rate_out), float64 [n_classes, n_concepts]: for class c and concept j, over
    the known probe images whose label is not c (and whose prediction was made), the share
    predicted c among those showing j, and among those not showing it (nan where there is
    none: a concept every image shows, or none does, has nothing to be compared with, and
    the rule cannot hold on it). ``predicted`` int [n_images] (-1: no prediction),
    ``labels`` int [n_images], ``presence`` bool [n_images, n_concepts]."""
    use = predicted >= 0
    if known is not None:
        use &= known
    p = presence[use].astype(np.float64)                              # [n, C]
    pred, lab = predicted[use], labels[use]
    classes = np.arange(n_classes)
    other = (lab[:, None] != classes[None, :]).astype(np.float64)      # [n, K]
    hit = other * (pred[:, None] == classes[None, :])                  # [n, K]
    den_in, den_out = other.T @ p, other.T @ (1 - p)                   # [K, C]
    num_in, num_out = hit.T @ p, hit.T @ (1 - p)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_in = np.where(den_in > 0, num_in / den_in, np.nan)
        rate_out = np.where(den_out > 0, num_out / den_out, np.nan)
    return rate_in, rate_out


def shortcut_candidates(predicted: np.ndarray | None, labels: np.ndarray, concepts,
                        own: np.ndarray, stimuli: np.ndarray | None = None, *,
                        gap: float = 0.35, rest: float = 0.05, purity: float = 0.6,
                        class_names: list[str] | None = None,
                        max_neurons: int = 8) -> list[dict]:
    """The (class, concept) pairs of one snapshot where the rule holds (``gap``: the
    least rate_in - rate_out, ``rest``: the most rate_out), strongest first, each with its
    rates and (given the snapshot's ``stimuli``) up to ``max_neurons`` neurons that detect the
    concept (``purity``: :func:`conceptevo.evaluate.tags.neuron_concepts`), purest first.
    ``concepts``: ImageConcepts of the probe; ``own``: bool [n_classes, n_concepts]
    (:func:`conceptevo.evaluate.tags.class_concepts`)."""
    from ..evaluate.tags import neuron_concepts

    if predicted is None or len(predicted) != len(labels):
        return []
    rate_in, rate_out = prediction_rates(np.asarray(predicted), np.asarray(labels),
                                         concepts.presence, own.shape[0], concepts.known)
    with np.errstate(invalid="ignore"):  # (nan: an empty group, never a shortcut)
        hold = ~own & (rate_in - rate_out >= gap) & (rate_out <= rest)
    if not hold.any():
        return []
    detects, purities = (neuron_concepts(stimuli, concepts, purity)
                         if stimuli is not None else (None, None))
    out = []
    for c, j in zip(*np.nonzero(hold)):  # the few pairs that hold
        neurons: list[int] = []
        if detects is not None:
            ids = np.flatnonzero(detects == j)
            neurons = [int(n) for n in ids[np.argsort(-purities[ids], kind="stable")][:max_neurons]]
        out.append({"class": int(c), "concept": concepts.concepts[j],
                    **({"class_name": class_names[c]} if class_names else {}),
                    "rate_in": float(rate_in[c, j]), "rate_out": float(rate_out[c, j]),
                    "neurons": neurons})
    return sorted(out, key=lambda d: d["rate_out"] - d["rate_in"])
