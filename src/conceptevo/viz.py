"""Static figures (PNG, matplotlib's Agg canvas: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_run_map(base_coords: np.ndarray, epochs: list[int], coords: list[np.ndarray],
                 path: str | Path, title: str) -> Path:
    """The 2-D map with one run's neurons coloured by epoch over the base neurons in grey.

    Parameters
    ----------
    base_coords : float [n_base, 2] (NaN rows are skipped).
    epochs, coords : the run's epochs and, for each, float [n, 2] neuron coordinates.
    """
    from matplotlib import cm, colormaps
    from matplotlib.colors import Normalize

    fig = _figure(6.4, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ok = np.isfinite(base_coords).all(1)
    ax.scatter(base_coords[ok, 0], base_coords[ok, 1], s=14, c="#c8c8c8", lw=0,
               label="base model", zorder=1)
    norm = Normalize(min(epochs), max(max(epochs), min(epochs) + 1))
    cmap = colormaps["viridis"]
    for epoch, xy in zip(epochs, coords):
        ax.scatter(xy[:, 0], xy[:, 1], s=5, color=cmap(norm(epoch)), lw=0, alpha=0.8,
                   zorder=2)
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="epoch")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .workspace.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
