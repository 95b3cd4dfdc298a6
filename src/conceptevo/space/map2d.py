"""The 2-D map: UMAP fitted on the base embedding, ``transform`` for every projected set, so that
every run and epoch shares one map (the contract of umap-learn's fit / transform).

The fitted UMAP object is never stored (a pickle in the workspace could run code when loaded):
the fit is deterministic for a given seed, so a new process refits it (seconds) when it needs
to place new points, and gets the same map.
"""

from __future__ import annotations

import warnings

import numpy as np


class ConceptMap:
    """UMAP of the base space.

    Parameters
    ----------
    n_neighbors, min_dist, metric : UMAP's parameters (defaults 15, 0.1, "cosine").
    seed : UMAP's ``random_state``; with it the fit and ``transform`` are deterministic.

    Attributes
    ----------
    embedding_ : float32 [n_base, 2], the map coordinates of the base neurons.
    """

    def __init__(self, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
                 seed: int = 0):
        self.n_neighbors, self.min_dist, self.metric, self.seed = (n_neighbors, min_dist,
                                                                   metric, seed)

    def fit(self, base: np.ndarray) -> ConceptMap:
        import umap

        base = np.asarray(base, dtype=np.float32)
        with warnings.catch_warnings():
            # umap says that random_state forces one thread: that is the determinism we want
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            self.umap_ = umap.UMAP(n_neighbors=min(self.n_neighbors, len(base) - 1),
                                   min_dist=self.min_dist, metric=self.metric,
                                   random_state=self.seed, n_components=2,
                                   transform_seed=self.seed).fit(base)
        self.embedding_ = self.umap_.embedding_.astype(np.float32)
        return self

    def transform(self, points: np.ndarray) -> np.ndarray:
        """float32 [n, 2] map coordinates of ``points`` [n, d] (projected neurons)."""
        points = np.asarray(points, dtype=np.float32)
        if len(points) == 0:
            return np.zeros((0, 2), dtype=np.float32)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            return self.umap_.transform(points).astype(np.float32)
