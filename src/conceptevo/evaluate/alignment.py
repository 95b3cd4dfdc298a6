"""The automated alignment study: are neighbours in the unified space the same concept?

The paper asked 260 people whether a neuron's nearest neighbours in the space (taken from other
models or epochs) share its concept more often than a random neuron. Here the concept labels
of a dataset with pixel-level masks decide: for each query neuron (sampled per layer, across
runs and epochs, among labelled neurons), its ``k`` nearest neurons of *other* checkpoints and
one random neuron of another checkpoint are candidates; a candidate is positive when it has
the query's label; its score is its similarity to the query. The ROC AUC of the scores says
how well similarity predicts a shared concept (0.5: no better than chance), with a bootstrap
confidence interval over queries.

Every method (the unified space and its baselines) is scored on the same queries, each with
its own neighbours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting half (NaN without positives or negatives)."""
    return float(weighted_auc(scores, positive, np.ones((1, len(scores))))[0])


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, p = np.asarray(scores)[order], np.asarray(positive, dtype=bool)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(p)[last], np.cumsum(~p)[last]
    tpr = np.r_[0, tp / max(p.sum(), 1)]
    fpr = np.r_[0, fp / max((~p).sum(), 1)]
    return fpr, tpr


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray
                 ) -> np.ndarray:
    """AUC of candidates with multiplicities: ``weights`` float [B, n] (one row per weighting,
    e.g. bootstrap counts) -> [B]. Each positive-negative pair counts ``w_pos * w_neg``; ties
    count half. One sort for all rows."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="mergesort")
    s, p, w = scores[order], positive[order], weights[:, order]
    w_neg = np.where(p, 0.0, w)
    w_pos = np.where(p, w, 0.0)
    # negatives strictly below each candidate's score, and tied with it, by groups of ties
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    neg_cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w_neg, 1)], 1)
    below = neg_cum[:, starts][:, group]
    tied = (neg_cum[:, np.r_[starts[1:], len(s)]] - neg_cum[:, starts])[:, group]
    total = w_pos.sum(1) * w_neg.sum(1)
    wins = (w_pos * (below + 0.5 * tied)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def query_pairs(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The AUC's pair counts by query: (ids, wins, n_pos, n_neg) with ``wins[a, b]`` the
    positive candidates of query ``ids[a]`` scoring above the negative ones of query
    ``ids[b]`` (ties half). With queries weighted by ``c`` (a bootstrap draw), the AUC is
    ``c @ wins @ c / ((c @ n_pos) * (c @ n_neg))``: one sort, then matrix products."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    ids, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(scores, kind="mergesort")
    s, p, q = scores[order], positive[order], inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    # negatives of each query among the first i sorted candidates, for each tie boundary
    neg = np.zeros((len(s), len(ids)))
    neg[np.flatnonzero(~p), q[~p]] = 1.0
    cum = np.vstack([np.zeros((1, len(ids))), np.cumsum(neg, 0)])
    pos = np.flatnonzero(p)
    g = group[pos]
    below = cum[starts[g]] + 0.5 * (cum[ends[g]] - cum[starts[g]])   # [n_pos, n_queries]
    wins = np.zeros((len(ids), len(ids)))
    by_query = np.argsort(q[pos], kind="stable")
    owners, first = np.unique(q[pos][by_query], return_index=True)
    if len(owners):
        wins[owners] = np.add.reduceat(below[by_query], first, axis=0)
    n_pos = np.bincount(inverse, weights=positive, minlength=len(ids))
    n_neg = np.bincount(inverse, weights=~positive, minlength=len(ids))
    return ids, wins, n_pos, n_neg


def bootstrap_auc(scores: np.ndarray, positive: np.ndarray, groups: np.ndarray,
                  n_boot: int = 1000, seed: int = 0, level: float = 0.95
                  ) -> tuple[float, float]:
    """Percentile confidence interval of the AUC, resampling queries (``groups``: the query
    of each candidate) with replacement: a query drawn m times counts its candidates m
    times."""
    rng = np.random.default_rng(seed)
    ids, wins, n_pos, n_neg = query_pairs(scores, positive, groups)
    draws = rng.integers(0, len(ids), (n_boot, len(ids)))
    flat = (draws + len(ids) * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_boot * len(ids)).reshape(n_boot, len(ids))
    counts = counts.astype(np.float64)
    total = (counts @ n_pos) * (counts @ n_neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(total > 0, ((counts @ wins) * counts).sum(1) / total, np.nan)
    values = values[np.isfinite(values)]
    if values.size == 0:  # no positive or no negative candidate: the AUC is undefined
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _defined(value: float) -> float | None:
    """``value``, or None where it is NaN (an undefined AUC: JSON has no NaN)."""
    return float(value) if np.isfinite(value) else None


@dataclass
class NeuronIndex:
    """Every neuron of the study (all runs and epochs), row-aligned.

    Attributes
    ----------
    checkpoint : int [n], an id of the neuron's (run, epoch).
    depth : int [n], its layer's index.
    label : int [n], its concept (-1: none).
    """

    checkpoint: np.ndarray
    depth: np.ndarray
    label: np.ndarray


@dataclass
class StudyResult:
    """Candidates of one method: score, positive, and the query (and its depth) of each."""

    scores: np.ndarray
    positive: np.ndarray
    query: np.ndarray
    depth: np.ndarray
    extra: dict = field(default_factory=dict)

    def auc(self, n_boot: int = 1000, seed: int = 0) -> dict:
        """AUC, bootstrap interval and counts, overall and by depth. Where no candidate (or
        every candidate) shares its query's concept the AUC is undefined: ``auc`` and the
        interval are None and ``undefined`` says why."""
        n_pos = int(self.positive.sum())
        out = {"auc": _defined(roc_auc(self.scores, self.positive)),
               "ci95": [_defined(v) for v in bootstrap_auc(self.scores, self.positive,
                                                           self.query, n_boot, seed)],
               "n_queries": int(np.unique(self.query).size),
               "n_candidates": int(len(self.scores)),
               "positive_rate": float(self.positive.mean()) if len(self.scores) else 0.0}
        if out["auc"] is None:
            out["undefined"] = ("no candidate shares its query's concept" if n_pos == 0 else
                                "every candidate shares its query's concept")
        out["by_depth"] = {}
        for d in np.unique(self.depth):
            sel = self.depth == d
            if len(np.unique(self.positive[sel])) == 2:
                out["by_depth"][int(d)] = {
                    "auc": roc_auc(self.scores[sel], self.positive[sel]),
                    "ci95": list(bootstrap_auc(self.scores[sel], self.positive[sel],
                                               self.query[sel], n_boot // 2, seed)),
                    "n_queries": int(np.unique(self.query[sel]).size)}
        return out


def sample_queries(index: NeuronIndex, per_layer: int, seed: int = 0) -> np.ndarray:
    """Up to ``per_layer`` labelled neurons of each layer, uniformly across checkpoints."""
    rng = np.random.default_rng(seed)
    out = []
    for d in np.unique(index.depth):
        pool = np.flatnonzero((index.depth == d) & (index.label >= 0))
        if pool.size:
            out.append(np.sort(rng.choice(pool, min(per_layer, pool.size), replace=False)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def alignment_study(index: NeuronIndex, queries: np.ndarray,
                    similarity: Callable[[int], np.ndarray], k: int = 5, seed: int = 0
                    ) -> StudyResult:
    """Score one method: ``similarity(q)`` is float [n] (the query's similarity to every
    neuron). Candidates: the ``k`` most similar neurons of other checkpoints and one random
    neuron of another checkpoint."""
    rng = np.random.default_rng(seed)
    scores, positive, query, depth, candidates = [], [], [], [], []
    for q in queries:
        sims = np.asarray(similarity(int(q)), dtype=np.float64)
        others = index.checkpoint != index.checkpoint[q]
        cand = np.flatnonzero(others & np.isfinite(sims))
        if cand.size == 0:
            continue
        top = cand[top_k(sims[cand], k)]
        rand = rng.choice(cand)
        for c in (*top, rand):
            scores.append(sims[c])
            positive.append(index.label[c] == index.label[q])
            query.append(q)
            depth.append(index.depth[q])
            candidates.append(c)
    return StudyResult(np.asarray(scores), np.asarray(positive, dtype=bool),
                       np.asarray(query), np.asarray(depth),
                       {"candidates": np.asarray(candidates, dtype=np.int64)})


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values``, largest first, ties in index order (what a
    stable sort of ``-values`` puts first), without sorting them all."""
    if len(values) > k:
        kth = np.partition(values, len(values) - k)[len(values) - k]
        sel = np.flatnonzero(values >= kth)
    else:
        sel = np.arange(len(values))
    return sel[np.argsort(-values[sel], kind="stable")][:k]


def cosine_similarity_fn(vectors: np.ndarray) -> Callable[[int], np.ndarray]:
    """similarity(q) = cosine of row q with every row (NaN rows get -inf)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    unit = v / np.where(norms > 0, norms, 1)[:, None]
    bad = ~np.isfinite(unit).all(1) | (norms == 0)
    unit[bad] = 0

    def sim(q: int) -> np.ndarray:
        out = unit @ unit[q]
        out[bad] = -np.inf
        return out

    return sim


def correlation_similarity_fn(activations: np.ndarray) -> Callable[[int], np.ndarray]:
    """similarity(q) = Pearson correlation of neuron activation vectors over the probe set
    (the convergent-learning matching), rows [n_neurons, n_images]."""
    a = np.asarray(activations, dtype=np.float64)
    centred = a - a.mean(1, keepdims=True)
    return cosine_similarity_fn(centred)
