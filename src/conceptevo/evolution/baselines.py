"""Baselines for the diagnosis of training issues: what the concept rules are compared with.

:mod:`conceptevo.evolution.diagnosis` flags training issues from how concepts evolve. To say
whether concepts add anything, the benchmark runs the same training regimes (healthy, learning
rate too high / high / too low, overfitting, shortcut, label noise, frozen layer; several
seeds) through simpler detectors that need no concepts, each producing per run a per-epoch
scalar score and/or :class:`~conceptevo.evolution.diagnosis.Flag` s:

* **Metric-only rules** (:func:`metric_rules`, scores in :func:`metric_score_table`): what a
  practitioner watches without any tool: the recorded train/validation accuracy and loss.
  ``chance-level`` (validation accuracy stuck near chance: nothing is learnt), ``train-val-gap``
  (the classic overfitting signal), ``plateau`` (the early-stopping criterion of Keras and
  Lightning) and ``loss-rise`` (validation loss going back up). Concepts have to beat this to
  be worth computing.
* **Linear CKA between consecutive checkpoints** (:func:`linear_cka`, :func:`layer_cka`,
  :func:`cka_rows`; Kornblith et al., "Similarity of Neural Network Representations
  Revisited", ICML 2019): a standard representation-similarity measure on the same probe
  activations the concepts are computed from. It says how much each layer's representation
  changed, without saying *what* changed: the closest concept-free counterpart of stimulus
  turnover and evolution speed (a frozen layer stays at 1; a too-high learning rate churns).
* **WeightWatcher alpha** (:func:`weightwatcher_alpha`; Martin & Mahoney, "heavy-tailed
  self-regularisation"): the power-law exponent of each layer's weight-matrix eigenvalue
  spectrum, data-free. Its documented well-trained range is [2, 6]; layers above it are
  under-trained, below it over-fitted. It needs only the weights, no probe set.

The benchmark protocol picks each baseline's threshold on one seed (:func:`choose_threshold`:
the threshold that flags the most faulty runs with no healthy run flagged) and reports the
first epoch the score crosses it (:func:`first_crossing`) on the other seeds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..schema import bounded
from ..stimuli import StimuliResult
from .diagnosis import Flag

#: WeightWatcher's documented range of alpha for a well-trained layer
WW_ALPHA_RANGE = (2.0, 6.0)
#: the score series a benchmark sweeps, and the direction in which each signals a problem
METRIC_SCORES = {"val_acc": "below", "gap": "above", "epochs_since_best_val_loss": "above",
                 "val_loss_rise": "above"}
DIRECTIONS = ("above", "below")


@dataclass
class MetricThresholds:
    """Thresholds of the metric-only rules (fractions unless stated)."""

    chance_after: int = bounded(1, 1, 10**6, why="epoch 0 is the initialisation, at chance")
    chance_margin: float = bounded(0.10, 0, 1)  # val_acc <= 1/n_classes + this: chance level
    gap: float = bounded(0.15, 0, 1)            # train_acc - val_acc >= this: overfitting
    patience: int = bounded(2, 1, 10**6)        # epochs without improvement (early stopping)
    min_delta: float = bounded(0.0, 0, math.inf)  # smallest decrease counted as improvement
    loss_rise: float = bounded(0.25, 0, math.inf, lo_open=True)  # val_loss / best - 1 >= this


# --------------------------------------------------------------------------- metric rules

def _number(row: dict, key: str) -> float | None:
    """``row[key]`` as a float, None when missing or not a number (NaN stays NaN)."""
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite_number(row: dict, key: str) -> float | None:
    value = _number(row, key)
    return value if value is not None and math.isfinite(value) else None


def _sorted(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["epoch"])


def _val_loss_track(rows: list[dict], min_delta: float = 0.0) -> list[tuple[int, float] | None]:
    """Per row: (wait, relative rise) of the validation loss, or None where it is missing.

    ``wait``: early-stopping counter (epochs since the last improvement by more than
    ``min_delta``); ``rise``: val_loss / best - 1 with the best (lowest) finite loss so far,
    the current epoch included (0 on a new best, inf for a NaN/inf loss)."""
    out: list[tuple[int, float] | None] = []
    best_es = math.inf   # the early-stopping reference (updated on improvement only)
    best = math.inf      # the lowest finite loss so far
    wait = 0
    for row in rows:
        loss = _number(row, "val_loss")
        if loss is None:
            out.append(None)
            continue
        if math.isfinite(loss) and loss + min_delta < best_es:  # NaN never improves
            best_es, wait = loss, 0
        else:
            wait += 1
        if not math.isfinite(loss):
            rise = math.inf
        else:
            best = min(best, loss)
            rise = (loss - best) / max(abs(best), 1e-12) if loss > best else 0.0
        out.append((wait, rise))
    return out


def metric_rules(rows: list[dict], thresholds: MetricThresholds | None = None,
                 n_classes: int | None = None) -> list[Flag]:
    """Flags of the metric-only baseline for one run; each rule fires once, at its first epoch.

    Parameters
    ----------
    rows : one dict per evaluated epoch (any order; sorted by ``epoch`` here) with the recorded
        ``train_acc``, ``val_acc`` (fractions), ``val_loss``; a row missing a key a rule needs
        (or holding None) is skipped by that rule.
    thresholds : :class:`MetricThresholds` (defaults when None).
    n_classes : number of classes, for chance accuracy 1 / n_classes; ``chance-level`` is not
        evaluated when None.

    Rules
    -----
    * ``chance-level``: at epoch >= ``chance_after`` (never epoch 0, the initialisation),
      ``val_acc <= 1 / n_classes + chance_margin``.
    * ``train-val-gap``: ``train_acc - val_acc >= gap``.
    * ``plateau``: early stopping as Keras' and Lightning's ``EarlyStopping(monitor="val_loss",
      mode="min", patience, min_delta)`` do it: the first finite loss is the best; an epoch whose
      loss is below the best by more than ``min_delta`` (``loss < best - min_delta``) is an
      improvement: it becomes the best and the wait counter restarts at 0; any other epoch
      (NaN included, as Keras counts it; Lightning's ``check_finite`` would stop at once) adds
      1 to the counter, and the rule fires at the epoch where the counter
      reaches ``patience`` (the epoch training would stop). The best is not updated by a
      lower loss that fails to beat it by ``min_delta``.
    * ``loss-rise``: ``val_loss >= (1 + loss_rise) * best`` with ``best`` the lowest finite
      validation loss so far; a NaN/inf loss counts as an infinite rise.
    """
    th = thresholds or MetricThresholds()
    rows = _sorted(rows)
    flags: list[Flag] = []
    fired: set[str] = set()

    def fire(rule: str, row: dict, message: str, **evidence) -> None:
        if rule not in fired:
            fired.add(rule)
            flags.append(Flag(int(row["epoch"]), rule, message, evidence))

    chance = None if n_classes is None else 1.0 / n_classes
    for row, track in zip(rows, _val_loss_track(rows, th.min_delta)):
        train_acc, val_acc = _finite_number(row, "train_acc"), _finite_number(row, "val_acc")
        if chance is not None and val_acc is not None and row["epoch"] >= th.chance_after \
                and val_acc <= chance + th.chance_margin:
            fire("chance-level", row,
                 f"validation accuracy {val_acc:.0%} is at chance level ({chance:.0%} for "
                 f"{n_classes} classes): the model is not learning",
                 val_acc=val_acc, chance=chance)
        if train_acc is not None and val_acc is not None and train_acc - val_acc >= th.gap:
            fire("train-val-gap", row,
                 f"training accuracy {train_acc:.0%} is {train_acc - val_acc:.0%} above "
                 f"validation accuracy {val_acc:.0%}: overfitting",
                 train_acc=train_acc, val_acc=val_acc, gap=train_acc - val_acc)
        if track is None:
            continue
        wait, rise = track
        if wait >= th.patience:
            fire("plateau", row,
                 f"validation loss has not improved for {wait} epochs (early stopping, "
                 f"patience {th.patience})", epochs_without_improvement=wait,
                 val_loss=_number(row, "val_loss"))
        if rise >= th.loss_rise:
            loss = _number(row, "val_loss")
            fire("loss-rise", row,
                 f"validation loss is {loss}: the training diverged" if math.isinf(rise) else
                 f"validation loss {loss:.4g} rose {rise:.0%} above its best",
                 val_loss=loss, rise=rise)
    return flags


def metric_score_table(rows: list[dict]) -> dict[str, list[float | None]]:
    """The per-epoch raw quantities behind :func:`metric_rules`, to sweep thresholds over.

    Returns columns of equal length, one entry per row sorted by epoch (None where the row
    lacks what the quantity needs): ``epoch``; ``val_acc``; ``gap`` = train_acc - val_acc;
    ``epochs_since_best_val_loss`` (the early-stopping wait counter with ``min_delta`` 0:
    ``plateau`` fires where it reaches ``patience``); ``val_loss_rise`` = val_loss / best - 1
    (inf for a NaN/inf loss). :data:`METRIC_SCORES` gives the direction of each.
    """
    rows = _sorted(rows)
    table: dict[str, list[float | None]] = {"epoch": [int(r["epoch"]) for r in rows],
                                            "val_acc": [], "gap": [],
                                            "epochs_since_best_val_loss": [], "val_loss_rise": []}
    for row, track in zip(rows, _val_loss_track(rows)):
        train_acc, val_acc = _finite_number(row, "train_acc"), _finite_number(row, "val_acc")
        table["val_acc"].append(val_acc)
        table["gap"].append(None if train_acc is None or val_acc is None
                            else train_acc - val_acc)
        table["epochs_since_best_val_loss"].append(None if track is None else float(track[0]))
        table["val_loss_rise"].append(None if track is None else track[1])
    return table


def score_series(rows: list[dict] | dict[str, list], key: str
                 ) -> list[tuple[int, float | None]]:
    """``[(epoch, score)]`` of one score, from row dicts (e.g. :func:`cka_rows`) or from a
    column table (:func:`metric_score_table`): the input of :func:`choose_threshold`."""
    if isinstance(rows, dict):
        return list(zip(rows["epoch"], rows[key]))
    return [(int(r["epoch"]), r.get(key)) for r in rows]


# --------------------------------------------------------------------------- linear CKA

def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same ``n`` inputs.

    Parameters
    ----------
    x : [n, p], y : [n, q] finite numbers; row i of both is input i.

    Returns
    -------
    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred float64 copies, in [0, 1];
    nan when a side is constant (every column constant over the inputs, e.g. a dead layer).

    Invariant to orthogonal transforms and isotropic scaling of either side (not to general
    invertible linear maps). Computed in feature space (cost n p q) or, when cheaper, with
    the n x n Gram matrices (n^2 (p + q)); both give the same value.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs [n, p] and [n, q] arrays; got {x.shape} and "
                         f"{y.shape}")
    if x.shape[0] == 0:
        return float("nan")
    sides = []
    for a in (x, y):
        centred = a - a.mean(0)
        constant = np.ptp(a, axis=0) == 0
        centred[:, constant] = 0.0  # exactly: rounding would leave tiny residuals
        if constant.all():
            return float("nan")
        sides.append(centred)
    x, y = sides
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if p * q + p * p + q * q <= n * (p + q):
        cross = np.sum((y.T @ x) ** 2)
        nx, ny = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    else:
        k, l_ = x @ x.T, y @ y.T
        cross = np.sum(k * l_)
        nx, ny = np.linalg.norm(k), np.linalg.norm(l_)
    return float(cross / (nx * ny))


def _where(result: StimuliResult, epoch: int | None = None) -> str:
    run = result.meta.get("run")
    epoch = result.meta.get("epoch") if epoch is None else epoch
    return (f"run {run!r}" if run is not None else "a run") + \
        (f" at epoch {epoch}" if epoch is not None else "")


def _require_activations(result: StimuliResult, epoch: int | None = None) -> None:
    if result.activations is None or result.activation_scale is None:
        raise ValueError(
            f"linear CKA needs every activation, but the stimulus pass of {_where(result, epoch)}"
            " did not record them: run it with space.projection = 'activations' (the default)"
            " or Monitor(record_activations=True)")


def _layer_matrix(result: StimuliResult, sl: slice) -> np.ndarray:
    """float64 [n_images, channels]: raw activations of one layer, non-finite ones as 0."""
    act = result.activations[sl].astype(np.float64)
    act[~np.isfinite(act)] = 0.0
    act *= result.activation_scale[sl].astype(np.float64)[:, None]
    return act.T


def layer_cka(prev: StimuliResult, cur: StimuliResult) -> dict[str, float]:
    """Linear CKA of each layer between two checkpoints' activations on the same probe set.

    Parameters
    ----------
    prev, cur : stimulus passes that recorded their activations (float16 [n_neurons, n_images]
        relative to ``activation_scale``; non-finite activations, stored as -inf, count as 0).

    Returns
    -------
    ``{layer name: CKA}`` for every layer of ``cur`` that ``prev`` also has (``cur``'s order);
    nan for a layer constant on the probe set in either checkpoint.

    Raises ValueError, naming the run and epoch, when a pass did not record its activations
    or the two passes saw different numbers of probe images.
    """
    for result in (prev, cur):
        _require_activations(result)
    if prev.activations.shape[1] != cur.activations.shape[1]:
        raise ValueError(f"the stimulus passes of {_where(prev)} and {_where(cur)} saw "
                         f"{prev.activations.shape[1]} and {cur.activations.shape[1]} probe "
                         "images: CKA compares the same images")
    before = {info.name: slice(info.offset, info.offset + info.channels) for info in prev.layers}
    out: dict[str, float] = {}
    for info in cur.layers:
        if info.name in before:
            out[info.name] = linear_cka(_layer_matrix(prev, before[info.name]),
                                        _layer_matrix(cur, slice(info.offset,
                                                                 info.offset + info.channels)))
    return out


def cka_rows(results: list[tuple[int, StimuliResult]]) -> list[dict]:
    """Per-epoch CKA rows of one run: each checkpoint against the previous one.

    Parameters
    ----------
    results : ``[(epoch, stimulus pass)]`` of one run (any order; sorted by epoch here).

    Returns
    -------
    One row per epoch from the second on: ``{"epoch", "cka_min", "cka_mean", "per_layer"}``,
    ``per_layer`` being :func:`layer_cka`; ``cka_min`` / ``cka_mean`` over the layers with a
    finite CKA (None when there is none). Low values: representations changed a lot since
    the previous checkpoint; 1: nothing changed (e.g. a frozen layer).
    """
    results = sorted(results, key=lambda er: er[0])
    for epoch, result in results:
        _require_activations(result, epoch)
    rows = []
    for (_, prev), (epoch, cur) in zip(results, results[1:]):
        per_layer = layer_cka(prev, cur)
        finite = np.array([v for v in per_layer.values() if math.isfinite(v)])
        rows.append({"epoch": int(epoch),
                     "cka_min": float(finite.min()) if finite.size else None,
                     "cka_mean": float(finite.mean()) if finite.size else None,
                     "per_layer": per_layer})
    return rows


# --------------------------------------------------------------------------- WeightWatcher

def _import_weightwatcher():
    """Import ``weightwatcher`` without the side effects of its import: it prints to stdout,
    logs warnings, configures the root logger (``logging.basicConfig(level=INFO)``, so every
    library's INFO records would start printing) and, through its ``WW_powerlaw`` module,
    turns off every warning of the process (``warnings.simplefilter("ignore")``). The root
    logger and the warning filters are restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ww_logger = logging.getLogger("weightwatcher")
    ww_level = ww_logger.level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            ww_logger.setLevel(logging.ERROR)
            import weightwatcher
    except ImportError as e:
        raise ImportError(
            "the WeightWatcher baseline needs the weightwatcher package: "
            "pip install 'conceptevo[zoo]' (or pip install weightwatcher)") from e
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        ww_logger.setLevel(ww_level)
    return weightwatcher


def weightwatcher_alpha(model) -> dict:
    """WeightWatcher's power-law alpha of each layer of a model, as its users run it.

    ``weightwatcher.WeightWatcher(model=model).analyze()`` with its default settings (Conv2d
    kernels pooled into one spectrum per layer, power-law fit, layers with fewer than 8 (its
    ``min_evals``) eigenvalues skipped), its printing, logging and warnings silenced.

    Parameters
    ----------
    model : a ``torch.nn.Module`` (its weights are only read).

    Returns
    -------
    ``{"alpha": {layer: alpha}, "layer_id": {layer: id}, "mean_alpha", "frac_outside",
    "failed": [layer], "n_layers", "version"}``: layers keyed by WeightWatcher's ``longname``
    (the qualified module name, e.g. ``features.0``; its ``layer_id`` when that is empty or
    repeated). ``alpha`` is nan for a layer whose fit failed (listed in ``failed``); the mean
    and ``frac_outside``, the fraction of layers with alpha outside :data:`WW_ALPHA_RANGE`
    ([2, 6], WeightWatcher's documented well-trained range), are over the other layers (nan
    when there is none).
    """
    ww = _import_weightwatcher()
    ww_logger = logging.getLogger("weightwatcher")
    ww_level = ww_logger.level
    try:
        ww_logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            frame = ww.WeightWatcher(model=model).analyze()
    finally:
        ww_logger.setLevel(ww_level)
    alpha: dict[str, float] = {}
    ids: dict[str, int] = {}
    failed: list[str] = []
    names = [str(n) for n in frame["longname"]] if "longname" in frame else []
    for i, record in enumerate(frame.to_dict("records")):
        name = names[i] if names else ""
        if not name or names.count(name) > 1:
            name = str(record["layer_id"])
        value = float(record.get("alpha", float("nan")))
        if record.get("status") == "failed" or not math.isfinite(value) or value <= 0:
            value = float("nan")  # WeightWatcher marks a failed fit with alpha = -1
            failed.append(name)
        alpha[name] = value
        ids[name] = int(record["layer_id"])
    good = np.array([v for v in alpha.values() if math.isfinite(v)])
    lo, hi = WW_ALPHA_RANGE
    return {"alpha": alpha, "layer_id": ids,
            "mean_alpha": float(good.mean()) if good.size else float("nan"),
            "frac_outside": float(((good < lo) | (good > hi)).mean()) if good.size
            else float("nan"),
            "failed": failed, "n_layers": len(alpha),
            "version": getattr(ww, "__version__", None)}


# --------------------------------------------------------------------------- thresholds

def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")


def _usable(scores: Sequence[tuple[int, float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """(epochs int64 [m], scores float64 [m]) of the scored epochs >= 1 (None/NaN dropped)."""
    kept = [(int(e), float(s)) for e, s in scores
            if e >= 1 and s is not None and not math.isnan(float(s))]
    if not kept:
        return np.zeros(0, np.int64), np.zeros(0)
    epochs, values = zip(*sorted(kept))
    return np.array(epochs, np.int64), np.array(values, np.float64)


def first_crossing(scores: list[tuple[int, float | None]], threshold: float,
                   direction: str) -> int | None:
    """The first epoch >= 1 whose score is >= ``threshold`` (direction ``"above"``) or
    <= it (``"below"``); None when there is none. ``scores``: ``[(epoch, score)]`` in any
    order; None and NaN scores never cross, +-inf do."""
    _check_direction(direction)
    epochs, values = _usable(scores)
    hit = values >= threshold if direction == "above" else values <= threshold
    return int(epochs[hit][0]) if hit.any() else None


def choose_threshold(runs: dict[str, list[tuple[int, float | None]]], healthy: list[str],
                     direction: str) -> tuple[float | None, dict]:
    """The threshold of one score that flags the most faulty runs and no healthy one.

    Parameters
    ----------
    runs : ``{run: [(epoch, score)]}`` (e.g. the seed-0 run of every regime).
    healthy : the runs that must not be flagged.
    direction : ``"above"`` (a run is flagged when its score reaches the threshold or more)
        or ``"below"`` (the threshold or less); only epochs >= 1 count (:func:`first_crossing`).

    Returns
    -------
    ``(threshold, {run: first epoch it is flagged at, or None})``. Candidates are the observed
    score values' extremes (the smallest and the largest, +-inf included) and the midpoints
    between consecutive distinct values. Among the candidates that flag no healthy run, the
    chosen one flags the most other runs; among equally good ones, it is the farthest from
    the healthy runs' extreme, the most conservative margin (``"above"``: the largest,
    ``"below"``: the smallest), which may flag some runs later. When no candidate flags a
    faulty run without a false alarm, the threshold is None and nothing is flagged.
    """
    _check_direction(direction)
    names = list(runs)
    unknown = set(healthy) - set(names)
    if unknown:
        raise ValueError(f"healthy runs {sorted(unknown)} are not among the runs {names}")
    series = [_usable(runs[name])[1] for name in names]
    above = direction == "above"
    # a run is flagged at t when its most extreme score crosses t (nan: no score, never)
    extreme = np.array([(s.max() if above else s.min()) if s.size else np.nan
                        for s in series])  # [r]
    values = np.unique(np.concatenate(series)) if series else np.zeros(0)
    summary = dict.fromkeys(names)
    if not values.size:
        return None, summary
    with np.errstate(invalid="ignore"):
        mids = (values[:-1] + values[1:]) / 2
    candidates = np.concatenate([values[:1], mids[~np.isnan(mids)], values[-1:]])
    candidates = np.unique(candidates)  # sorted ascending
    flagged = (extreme[None, :] >= candidates[:, None]) if above else \
        (extreme[None, :] <= candidates[:, None])  # [c, r]
    is_healthy = np.array([name in healthy for name in names])
    ok = ~flagged[:, is_healthy].any(1)
    caught = np.where(ok, flagged[:, ~is_healthy].sum(1), -1)
    best = caught.max()
    if best <= 0:
        return None, summary
    tied = np.flatnonzero(caught == best)
    threshold = float(candidates[tied[-1] if above else tied[0]])
    summary = {name: first_crossing(runs[name], threshold, direction) for name in names}
    return threshold, summary
