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
    from matplotlib.ticker import MaxNLocator

    bar = fig.colorbar(sm, ax=ax, label="epoch")
    bar.locator = MaxNLocator(integer=True)  # epochs are whole numbers
    bar.update_ticks()
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a reader never sees half a PNG)."""
    from .workspace.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


#: Colours of the alignment study's methods, ours first (see evaluate.neurons.METHODS).
METHOD_COLOURS = ("#c2410c", "#db2777", "#2563eb", "#059669", "#0891b2", "#65a30d",
                  "#7c3aed", "#6b7280")


def plot_roc(alignment: dict, path: str | Path) -> Path:
    """ROC curves of every method of an alignment study (``evaluation.json``'s
    ``alignment``), AUC and 95% interval in the legend."""
    methods, order = alignment["methods"], alignment["order"]
    fig = _figure(5.2, 4.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#d1d5db", lw=1, ls="--")
    for m, colour in zip(order, METHOD_COLOURS):
        r = methods[m]
        label = (f"{r['title']}: n/a" if r["auc"] is None else
                 f"{r['title']}: {r['auc']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]")
        ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], color=colour, lw=2.2 if m == order[0] else 1.4,
                label=label)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
           ylim=(0, 1.01), title="Alignment study: do neighbours share the concept?")
    ax.legend(loc="lower right", fontsize=6.5, title="AUC [95% CI]", title_fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def plot_auc_by_depth(alignment: dict, path: str | Path) -> Path:
    """AUC of every method per layer depth, with 95% interval whiskers."""
    methods, order = alignment["methods"], alignment["order"]
    depths = sorted({int(d) for m in order for d in methods[m]["by_depth"]})
    fig = _figure(max(5.2, 0.9 * len(depths) + 2), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(order)
    for j, (m, colour) in enumerate(zip(order, METHOD_COLOURS)):
        points = [(d, methods[m]["by_depth"].get(str(d))) for d in depths]
        points = [(d, v) for d, v in points if v and v["auc"] is not None
                  and v["ci95"][0] is not None]
        xs = [d + (j - (len(order) - 1) / 2) * width for d, _ in points]
        ys = [v["auc"] for _, v in points]
        err = [[v["auc"] - v["ci95"][0] for _, v in points],
               [v["ci95"][1] - v["auc"] for _, v in points]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", ms=4, color=colour, capsize=2,
                    label=methods[m]["title"])
    ax.axhline(0.5, color="#d1d5db", lw=1, ls="--")
    names = alignment.get("depth_names", {})
    ax.set_xticks(depths, [names.get(str(d), str(d)) for d in depths], rotation=30,
                  ha="right", fontsize=7)
    ax.set(ylabel="ROC AUC (95% CI)", ylim=(0, 1.02), title="AUC by layer depth")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def plot_checks(report: dict, path: str | Path) -> Path | None:
    """The annotation-free checks of an evaluation (``evaluation.json``): the permuted copy's
    recovery per layer, the agreement of the space with one-to-one correlation matching per
    layer against chance, and the class-level study's AUC per method over the seeds; None
    (nothing written) when none of them ran."""
    checks = report.get("checks") or {}
    perm = checks.get("permuted_copy") or {}
    agree = checks.get("agreement") or {}
    classes = report.get("classes")
    panels = [name for name, ok in (("perm", "per_layer" in perm),
                                    ("agree", "per_layer" in agree),
                                    ("classes", bool(classes))) if ok]
    if not panels:
        return None
    fig = _figure(4.2 * len(panels), 3.8)
    for i, name in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        if name == "perm":
            layers = [k for k, v in perm["per_layer"].items() if v is not None]
            ax.bar(range(len(layers)), [perm["per_layer"][k] for k in layers], color="#c2410c")
            ax.axhline(perm["threshold"], color="#111827", lw=1, ls="--",
                       label=f"pass: >= {perm['threshold']:.0%}")
            rescaled = checks.get("rescaled_copy") or {}
            extra = (f"\nrescaled copy: largest shift {rescaled['max_shift']:.1e}"
                     if "max_shift" in rescaled else "")
            ax.set(ylim=(0, 1.05), ylabel="original is the nearest neighbour",
                   title=f"(a) permuted copy: {'pass' if perm['passed'] else 'FAIL'}{extra}")
            _layer_ticks(ax, layers)
        elif name == "agree":
            layers = list(agree["per_layer"])
            xs = np.arange(len(layers))
            ax.bar(xs, [agree["per_layer"][k]["agreement"] for k in layers], color="#2563eb",
                   label="nearest neighbour = Hungarian match")
            ax.scatter(xs, [agree["per_layer"][k]["chance"] for k in layers], marker="_",
                       s=300, color="#111827", label="chance", zorder=3)
            ax.set(ylim=(0, 1.05), ylabel="share of neurons",
                   title=f"(c) agreement with matching: {'pass' if agree['passed'] else 'FAIL'}")
            _layer_ticks(ax, layers)
        else:
            order = classes["order"]
            rows = [classes["methods"][m] for m in order]
            xs = np.arange(len(order))
            for x, r, colour in zip(xs, rows, METHOD_COLOURS):
                if r["mean"] is None:
                    continue
                lo, hi = r["spread"]
                ax.errorbar([x], [r["mean"]], yerr=[[r["mean"] - lo], [hi - r["mean"]]],
                            fmt="o", color=colour, capsize=3)
            ax.axhline(0.5, color="#d1d5db", lw=1, ls="--")
            ax.set_xticks(xs, [r["title"] for r in rows], rotation=35, ha="right", fontsize=6)
            ax.set(ylim=(0, 1.02), ylabel="ROC AUC (mean, min-max over seeds)",
                   title=f"(d) class-level study: {'pass' if classes['passed'] else 'FAIL'}")
        ax.title.set_fontsize(8)
        if name != "classes":
            ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def _layer_ticks(ax, layers: list[str]) -> None:
    ax.set_xticks(range(len(layers)), layers, rotation=35, ha="right", fontsize=6)
