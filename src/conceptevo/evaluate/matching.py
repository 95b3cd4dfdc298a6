"""Neuron matching by activation correlation: the baselines of "Convergent Learning" (Li et
al., 2016) and the agreement of the unified space with them.

Two neurons of different models (or epochs) are compared by the Pearson correlation of their
activations over the probe images. *Plain* correlation takes, for a query neuron, the most
correlated neurons anywhere; *matched* correlation first pairs the neurons of one layer of a
model one-to-one with those of the same layer of another model, maximising the summed
correlation (the Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`), and a
query's neighbours are its partners in the other models.

The unified space needs neither the same architecture nor the same layer, but where both apply
its nearest neighbours should agree with the one-to-one matching far more often than chance:
:func:`layer_agreement` measures that, layer by layer, without any annotation.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import binomtest

#: the score a matched partner gets on top of its correlation: partners rank before any other
#: neuron, then by correlation (correlations are within [-1, 1])
MATCH_BONUS = 2.0


def standardise(activations: np.ndarray) -> np.ndarray:
    """float32 [n, m]: each row centred and scaled to unit norm, so that the dot product of
    two rows is their Pearson correlation. Rows with a non-finite value or no variance are NaN
    (such a neuron correlates with nothing)."""
    a = np.asarray(activations, dtype=np.float64)
    finite = np.isfinite(a).all(1)
    centred = np.where(finite[:, None], a, 0.0)
    centred = centred - centred.mean(1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    # a constant row leaves only rounding after centring
    size = np.abs(np.where(finite[:, None], a, 0.0)).max(1, initial=0.0)
    ok = finite & (norm > 1e-9 * np.sqrt(a.shape[1]) * size) & (norm > 0)
    out = (centred / np.where(ok, norm, 1.0)[:, None]).astype(np.float32)
    out[~ok] = np.nan
    return out


def match_layers(unit: np.ndarray, checkpoint: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """One-to-one matching of the neurons of every layer between every two checkpoints.

    ``unit``: standardised activations (:func:`standardise`) [n, m] of the neurons of all
    checkpoints; ``checkpoint``, ``depth``: int [n] each neuron's checkpoint and layer.
    Returns int [n, n_checkpoints]: ``partner[i, c]`` is the neuron of checkpoint ``c`` (same
    depth) matched to neuron ``i``, -1 where there is none (``c`` is ``i``'s own checkpoint,
    the layers differ in size and ``i`` was left over, or ``i`` correlates with nothing).
    Checkpoint ids are ``0 .. max(checkpoint)``.
    """
    n_ckpt = int(checkpoint.max()) + 1 if len(checkpoint) else 0
    partner = np.full((len(checkpoint), n_ckpt), -1, dtype=np.int64)
    usable = np.isfinite(unit).all(1)
    for d in np.unique(depth):
        at = np.flatnonzero((depth == d) & usable)
        gram = unit[at].astype(np.float64) @ unit[at].astype(np.float64).T
        owner = checkpoint[at]
        groups = {c: np.flatnonzero(owner == c) for c in np.unique(owner)}
        keys = sorted(groups)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                rows, cols = linear_sum_assignment(gram[np.ix_(groups[a], groups[b])],
                                                   maximize=True)
                ra, rb = at[groups[a][rows]], at[groups[b][cols]]
                partner[ra, b] = rb
                partner[rb, a] = ra
    return partner


def correlation_rows(unit: np.ndarray, queries: np.ndarray, block: int = 256) -> np.ndarray:
    """float32 [len(queries), n]: the correlation of each query neuron with every neuron (NaN
    for neurons that correlate with nothing), in blocks of queries (one matrix product each)."""
    clean = np.nan_to_num(unit, nan=0.0)
    bad = ~np.isfinite(unit).all(1)
    out = np.empty((len(queries), len(unit)), dtype=np.float32)
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        out[start:start + block] = clean[q] @ clean.T
    out[:, bad] = np.nan
    out[bad[queries]] = np.nan
    return out


def precomputed_similarity(rows: np.ndarray, queries: np.ndarray):
    """similarity(q) for the alignment study from rows computed in advance for ``queries``
    (NaN entries: no similarity, as -inf)."""
    where = {int(q): i for i, q in enumerate(queries)}

    def sim(q: int) -> np.ndarray:
        out = rows[where[q]].astype(np.float64)
        out[~np.isfinite(out)] = -np.inf
        return out

    return sim


def matched_rows(corr_rows: np.ndarray, queries: np.ndarray, partner: np.ndarray
                 ) -> np.ndarray:
    """The matched-correlation scores: each query's correlation with every neuron, plus
    :data:`MATCH_BONUS` for its one-to-one partners (:func:`match_layers`), so that a query's
    nearest neighbours are its partners in the other checkpoints, best correlated first."""
    out = corr_rows.copy()
    mates = partner[queries]
    r, c = np.nonzero(mates >= 0)
    out[r, mates[r, c]] += MATCH_BONUS
    return out


def layer_agreement(space: np.ndarray, partner: np.ndarray, checkpoint: np.ndarray,
                    depth: np.ndarray, pairs: list[tuple[int, int]], alpha: float = 0.01
                    ) -> dict:
    """How often a neuron's nearest neighbour in the space, among the neurons of the same layer
    of another checkpoint, is its one-to-one correlation match there.

    ``space``: float [n, d] the neurons' positions; ``pairs``: (a, b) checkpoint pairs to
    compare, both directions counted. Per depth: the agreement, the chance rate (the mean of
    1 / the number of candidates), the one-sided binomial p-value of the agreement against
    chance and whether it is above chance at level ``alpha``."""
    unit = np.asarray(space, dtype=np.float64)
    norm = np.linalg.norm(unit, axis=1, keepdims=True)
    ok = np.isfinite(unit).all(1) & (norm[:, 0] > 0)
    unit = np.where(ok[:, None], unit / np.where(norm > 0, norm, 1), 0.0)
    out = {}
    for d in np.unique(depth):
        hits = trials = 0
        chance = 0.0
        for a, b in pairs:
            for src, dst in ((a, b), (b, a)):
                q = np.flatnonzero((checkpoint == src) & (depth == d) & ok)
                cand = np.flatnonzero((checkpoint == dst) & (depth == d) & ok)
                q = q[np.isin(partner[q, dst], cand)]
                if q.size == 0 or cand.size < 2:
                    continue
                nearest = cand[np.argmax(unit[q] @ unit[cand].T, axis=1)]
                hits += int((nearest == partner[q, dst]).sum())
                trials += int(q.size)
                chance += q.size / cand.size
        if trials == 0:
            continue
        p_chance = chance / trials
        p = binomtest(hits, trials, p_chance, alternative="greater").pvalue
        out[int(d)] = {"agreement": hits / trials, "chance": p_chance, "n": trials,
                       "p_value": float(p), "above_chance": bool(p < alpha)}
    return out
