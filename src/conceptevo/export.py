"""Read a workspace as tables and arrays, and export them as open files any tool can read.

``conceptevo export WORKSPACE --out DIR`` writes (documented in docs/workspace.md):

* ``images.csv``: image_id, path, label, class_name
* ``neurons.csv``: row, run, epoch, layer, layout, channel, x, y (the 2-D map)
* ``embeddings.npy``: float32 [rows, d], row-aligned with neurons.csv (the unified space)
* ``stimuli.npy``: int64 [rows, k_s] image ids; ``stimuli_act.npy``: float32 [rows, k_s]
* ``base_neurons.csv``: row, layer, channel, run, epoch (run/epoch empty for an external
  base) and ``base_embeddings.npy``: float32 [base rows, d], the base model's own v_n
* ``metrics.csv``: run, epoch, train_acc, val_acc, then any other recorded metric
* ``importance.csv``: run, class, from_epoch, to_epoch, layer, channel, score, rank
* ``reversion.csv``: run, class, from_epoch, to_epoch, layer, set, split, top1, top5 (``set``
  is the bin number, 0 = most important, ``random`` for each random draw, or ``none`` for the
  unreverted later checkpoint, whose ``layer`` is empty)

The same data, in the same order, comes back from :func:`images`, :func:`neurons`,
:func:`base_neurons` and :func:`metrics` (as :class:`Table` objects, convertible to pandas).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import WorkspaceError
from .workspace import Workspace, atomic
from .workspace.artifacts import (  # noqa: F401  (run_order: part of this module's API)
    load_base_neurons,
    load_importance,
    load_projection,
    run_order,
    stored_importance,
)


class Table:
    """Named columns of equal length (NumPy arrays), in a fixed order.

    ``table["run"]`` is a column, ``len(table)`` the number of rows, ``table.to_pandas()`` a
    DataFrame (pandas is optional), ``table.to_csv(path)`` / ``Table.read_csv(path)`` the CSV
    form.
    """

    def __init__(self, columns: dict[str, Iterable]):
        self._columns = {name: np.asarray(values) for name, values in columns.items()}
        lengths = {len(v) for v in self._columns.values()}
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in self._columns.items()}
            raise ValueError(f"columns differ in length: {sizes}")

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def __repr__(self) -> str:
        return f"Table({len(self)} rows: {', '.join(self.columns)})"

    def rows(self) -> Iterable[tuple]:
        return zip(*self._columns.values())

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self._columns)

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for row in self.rows():
            w.writerow([_cell(v) for v in row])
        return buf.getvalue()

    def to_csv(self, path: str | Path) -> None:
        atomic.write_text(path, self.to_csv_text())

    @classmethod
    def read_csv(cls, path: str | Path) -> Table:
        """Read a CSV written by :meth:`to_csv`; numeric columns become numbers (int when
        every value is integral, float otherwise; empty cells are NaN)."""
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        cols = {name: [r[i] for r in rows] for i, name in enumerate(header)}
        return cls({name: _parse_column(values) for name, values in cols.items()})


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else repr(float(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _parse_column(values: list[str]) -> np.ndarray:
    try:
        ints = [int(v) for v in values]
        return np.asarray(ints, dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.asarray([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except ValueError:
        return np.asarray(values, dtype=object)


# ------------------------------------------------------------------------------ reading
def images(ws: Workspace, name: str = "probe") -> Table:
    """image_id, path, label, class_name of the probe (or held-out) set."""
    probe = ws.load_probe(name)
    labels = probe.labels
    return Table({"image_id": np.arange(len(probe)), "path": np.asarray(probe.paths, object),
                  "label": labels,
                  "class_name": np.asarray([probe.classes[i] for i in labels], object)})


def _layer_columns(layers) -> tuple[np.ndarray, np.ndarray]:
    names = np.concatenate([[li.name] * li.channels for li in layers]).astype(object)
    channels = np.concatenate([np.arange(li.channels) for li in layers])
    return names, channels


def _layout_column(layers) -> np.ndarray:
    """Each neuron's layer layout (conv, nhwc, tokens, flat)."""
    return np.concatenate([[li.layout] * li.channels for li in layers]).astype(object)


def neurons(ws: Workspace) -> tuple[Table, np.ndarray, np.ndarray, np.ndarray]:
    """Every neuron of every run and epoch that has a projection.

    Returns (table with row, run, epoch, layer, layout, channel, x, y; embeddings float32
    [rows, d];
    stimuli int64 [rows, k_s]; stimuli_act float32 [rows, k_s]).
    """
    parts: dict[str, list] = {k: [] for k in ("run", "epoch", "layer", "layout", "channel",
                                              "x", "y")}
    emb, stim, act = [], [], []
    for run in run_order(ws):
        for epoch in ws.projection_epochs(run):
            proj = load_projection(ws, run, epoch)
            s = ws.load_stimuli(run, epoch)
            layer, channel = _layer_columns(s.layers)
            n = s.n_neurons
            parts["run"].append(np.full(n, run, dtype=object))
            parts["epoch"].append(np.full(n, epoch, dtype=np.int64))
            parts["layer"].append(layer)
            parts["layout"].append(_layout_column(s.layers))
            parts["channel"].append(channel)
            parts["x"].append(proj["coords"][:, 0].astype(np.float64))
            parts["y"].append(proj["coords"][:, 1].astype(np.float64))
            emb.append(proj["embedding"])
            stim.append(s.stimuli)
            act.append(s.stimuli_act)
    if not emb:
        raise WorkspaceError(f"workspace {ws.root} has no projected neurons yet; run "
                             "`conceptevo build --config study.toml` first")
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    table = Table({"row": np.arange(len(cols["run"])), **cols})
    return (table, np.concatenate(emb).astype(np.float32), np.concatenate(stim),
            np.concatenate(act).astype(np.float32))


def base_neurons(ws: Workspace) -> tuple[Table, np.ndarray]:
    """The base model's neurons (row, layer, channel, run, epoch) and their own v_n
    (float32 [rows, d]; NaN rows are neurons outside the space: dead or never
    co-activated)."""
    desc, layers, embedding = load_base_neurons(ws)
    layer, channel = _layer_columns(layers)
    n = len(layer)
    run = np.full(n, desc.get("run", ""), dtype=object)
    epoch = np.full(n, desc.get("epoch", np.nan), dtype=np.float64)
    if desc.get("kind") == "run":
        epoch = epoch.astype(np.int64)
    table = Table({"row": np.arange(n), "layer": layer, "channel": channel, "run": run,
                   "epoch": epoch})
    return table, embedding


def metrics(ws: Workspace) -> Table:
    """run, epoch, train_acc, val_acc, then the other recorded metrics, for every run."""
    rows = [dict(m, run=run) for run in (run_order(ws) or ws.metric_runs())
            for m in ws.load_metrics(run)]
    if not rows:
        return Table({"run": [], "epoch": [], "train_acc": [], "val_acc": []})
    first = ["run", "epoch", "train_acc", "val_acc"]
    others = sorted({k for r in rows for k in r} - set(first))
    cols = {}
    for name in first + others:
        values = [r.get(name) for r in rows]
        if name == "run":
            cols[name] = np.asarray(values, dtype=object)
        else:
            try:
                cols[name] = np.asarray([np.nan if v is None else float(v) for v in values])
            except (TypeError, ValueError):
                cols[name] = np.asarray(values, dtype=object)
    cols["epoch"] = cols["epoch"].astype(np.int64)
    return Table(cols)


def importance(ws: Workspace) -> Table:
    """Every stored importance ranking: run, class, from_epoch, to_epoch, layer, channel,
    score, rank (``class`` is the class name)."""
    cols: dict[str, list] = {k: [] for k in ("run", "class", "from_epoch", "to_epoch",
                                             "layer", "channel", "score", "rank")}
    for run, c, t, t2 in stored_importance(ws):
        result, _ = load_importance(ws, run, c, t, t2)
        layer, channel = _layer_columns(result.layers)
        n = len(layer)
        cols["run"].append(np.full(n, run, dtype=object))
        cols["class"].append(np.full(n, result.meta.get("class_name", str(c)), dtype=object))
        cols["from_epoch"].append(np.full(n, t))
        cols["to_epoch"].append(np.full(n, t2))
        cols["layer"].append(layer)
        cols["channel"].append(channel)
        cols["score"].append(result.score)
        cols["rank"].append(result.rank)
    return Table({k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()})


def reversion(ws: Workspace) -> Table:
    """Every stored reversion check: run, class, from_epoch, to_epoch, layer, set, split,
    top1, top5 (one row per reverted set and split; ``layer`` is empty for ``set=none``)."""
    cols: dict[str, list] = {k: [] for k in ("run", "class", "from_epoch", "to_epoch",
                                             "layer", "set", "split", "top1", "top5")}
    for run, c, t, t2 in stored_importance(ws):
        result, rev = load_importance(ws, run, c, t, t2)
        names = np.array([li.name for li in result.layers] + [""], dtype=object)
        n = len(rev.layer)
        cols["run"].append(np.full(n, run, dtype=object))
        cols["class"].append(np.full(n, result.meta.get("class_name", str(c)), dtype=object))
        cols["from_epoch"].append(np.full(n, t))
        cols["to_epoch"].append(np.full(n, t2))
        cols["layer"].append(names[rev.layer])  # -1 (the unreverted model) -> ""
        cols["set"].append(rev.set.astype(object))
        cols["split"].append(rev.split.astype(object))
        cols["top1"].append(rev.top1)
        cols["top5"].append(rev.top5)
    return Table({k: np.concatenate(v) if v else np.array([]) for k, v in cols.items()})


# ------------------------------------------------------------------------------ export
def export(ws: Workspace, out: str | Path) -> tuple[list[Path], list[str]]:
    """Write the open files listed in the module docstring into ``out``.

    Returns (files written, notes on what was left out because the workspace does not have
    it yet, e.g. no unified space before `conceptevo build`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []

    def save_table(name: str, table: Table) -> None:
        table.to_csv(out / name)
        written.append(out / name)

    def save_array(name: str, array: np.ndarray) -> None:
        atomic.write_npy(out / name, array)
        written.append(out / name)

    save_table("images.csv", images(ws))
    if any(ws.projection_epochs(r) for r in ws.stimuli_runs()):
        table, emb, stim, act = neurons(ws)
        save_table("neurons.csv", table)
        save_array("embeddings.npy", emb)
        save_array("stimuli.npy", stim.astype(np.int64))
        save_array("stimuli_act.npy", act)
        btable, bemb = base_neurons(ws)
        save_table("base_neurons.csv", btable)
        save_array("base_embeddings.npy", bemb)
    else:
        skipped.append("neurons, embeddings, stimuli and base files: no unified space yet "
                       "(run `conceptevo build`)")
    save_table("metrics.csv", metrics(ws))
    imp = importance(ws)
    if len(imp):
        save_table("importance.csv", imp)
        save_table("reversion.csv", reversion(ws))
    else:
        skipped.append("importance.csv, reversion.csv: no importance computed yet (run "
                       "`conceptevo importance`)")
    return written, skipped
