"""Training logs of runs ConceptEvo did not train: accuracy, loss and learning rate per epoch.

``[[runs]] metrics`` names one of:

* a CSV file with an ``epoch`` column and any numeric columns (one row per epoch, or several:
  each column's last value of an epoch is kept, so a log written per step works too);
* Lightning's ``CSVLogger`` output: its ``metrics.csv``, or the log directory holding it
  (``lightning_logs/version_0``);
* TensorBoard event files (``events.out.tfevents.*``), or a directory holding them (read with
  the ``tensorboard`` package, an optional dependency). A scalar's step is its epoch, unless the
  log has an ``epoch`` scalar too (Lightning's ``TensorBoardLogger``): then each value belongs
  to the epoch logged at its step.

Column names are normalised so that the dashboard and the diagnosis find them: lower case,
``/`` ``-`` ``.`` and spaces become ``_``; ``accuracy`` becomes ``acc``; ``valid_`` and
``validation_`` become ``val_``, ``training_`` becomes ``train_``; a bare ``loss`` / ``acc``
is the training one (Keras' convention); ``learning_rate`` and Lightning's ``lr-SGD`` /
``lr-Adam`` become ``lr``. Of ``X_epoch`` and ``X_step`` (Lightning's two versions of a
metric logged with ``on_epoch=True``), ``X_epoch`` is kept, as ``X``. Accuracies logged in
percent (a value above 1) are divided by 100.
"""

from __future__ import annotations

import bisect
import csv
import math
import re
from pathlib import Path

from ..errors import ConfigError

STANDARD = ("train_acc", "val_acc", "train_loss", "val_loss", "lr")
_SKIP = {"step", "epoch", "hp_metric", "global_step", "time", "timestamp", "wall_time"}


def normalise_name(name: str) -> str:
    """The canonical name of a logged metric (see the module docstring)."""
    n = re.sub(r"[/\-. ]+", "_", name.strip().lower()).strip("_")
    n = n.replace("accuracy", "acc")
    n = re.sub(r"^(valid|validation)_", "val_", n)
    n = re.sub(r"^training_", "train_", n)
    n = re.sub(r"_(valid|validation)$", "_val", n)
    if n in ("loss", "acc"):
        n = f"train_{n}"
    # "acc_train" / "loss_val" orders
    m = re.fullmatch(r"(acc|loss)_(train|val)", n)
    if m:
        n = f"{m.group(2)}_{m.group(1)}"
    if n in ("learning_rate",) or re.fullmatch(r"lr(_[a-z0-9_]+)?", n):
        n = "lr"
    return n


def _number(text) -> float | None:
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _per_epoch(events: list[tuple[int, str, float]], where: str) -> tuple[list[dict], dict]:
    """Rows {epoch, metric: value} from (epoch, raw name, value) events in log order: the last
    value of each metric in each epoch wins."""
    raw_names = list(dict.fromkeys(name for _, name, _ in events))
    names = {raw: normalise_name(raw) for raw in raw_names}
    canonical = set(names.values())
    # Lightning logs X_step and X_epoch for a metric logged on both: keep the epoch one
    rename: dict[str, str | None] = {}
    for raw, n in names.items():
        if n in _SKIP or (n.endswith("_step") and n[:-5] + "_epoch" in canonical):
            rename[raw] = None
        elif n.endswith("_epoch") and len(n) > 6:
            rename[raw] = n[:-6]
        else:
            rename[raw] = n
    by_epoch: dict[int, dict[str, float]] = {}
    for epoch, raw, value in events:
        name = rename.get(raw)
        if name is None or value is None:
            continue
        by_epoch.setdefault(int(epoch), {})[name] = value
    if not by_epoch:
        raise ConfigError(f"{where} holds no numeric metric per epoch (columns: "
                          f"{', '.join(raw_names[:12]) or 'none'})")
    columns = sorted({k for row in by_epoch.values() for k in row})
    for name in columns:  # accuracies in percent
        if name.endswith("_acc") or name == "acc":
            values = [row[name] for row in by_epoch.values() if name in row]
            if values and max(v for v in values if math.isfinite(v)) > 1.0:
                for row in by_epoch.values():
                    if name in row:
                        row[name] /= 100.0
    rows = [{"epoch": e, **by_epoch[e]} for e in sorted(by_epoch)]
    return rows, {"columns": columns, "n_epochs": len(rows),
                  "renamed": {raw: rename[raw] for raw in raw_names
                              if rename.get(raw) not in (None, raw)}}


def read_csv_log(path: Path) -> tuple[list[dict], dict]:
    """A CSV training log with an ``epoch`` column (plain, or Lightning's CSVLogger)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            epoch_col = next((c for c in fields if c.strip().lower() == "epoch"), None)
            if epoch_col is None:
                raise ConfigError(f"metrics file {path} has no `epoch` column (columns: "
                                  f"{', '.join(fields[:12]) or 'none'}); add one")
            events = []
            for line, row in enumerate(reader, start=2):
                epoch = _number(row.get(epoch_col))
                if epoch is None:
                    continue
                if epoch != int(epoch) or epoch < 0:
                    raise ConfigError(f"metrics file {path}, line {line}: epoch {epoch} is not "
                                      "a whole number >= 0")
                for name in fields:
                    if name is None or name == epoch_col:
                        continue
                    value = _number(row.get(name))
                    if value is not None:
                        events.append((int(epoch), name, value))
    except UnicodeDecodeError as e:
        raise ConfigError(f"metrics file {path} is not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise ConfigError(f"metrics file {path} is not a valid CSV file: {e}") from None
    rows, info = _per_epoch(events, f"metrics file {path}")
    return rows, {**info, "format": "csv"}


def _event_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("events.out.tfevents.*") if p.is_file())
    return [path]


def read_tensorboard_log(path: Path) -> tuple[list[dict], dict]:
    """Scalars of TensorBoard event files (a file, or every one under a directory)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import (
            SCALARS,
            EventAccumulator,
        )
    except ImportError:
        raise ConfigError(f"reading the TensorBoard log {path} needs the tensorboard package: "
                          "pip install tensorboard (or conceptevo[tensorboard])") from None
    scalars: list[tuple[float, int, str, float]] = []  # (wall time, step, tag, value)
    for file in _event_files(path):
        acc = EventAccumulator(str(file), size_guidance={SCALARS: 0})
        try:
            acc.Reload()
        except Exception as e:  # a corrupt or foreign file: the reader's own error types
            raise ConfigError(f"cannot read TensorBoard event file {file}: {e}") from None
        for tag in acc.Tags().get("scalars", []):
            scalars += [(ev.wall_time, int(ev.step), tag, float(ev.value))
                        for ev in acc.Scalars(tag)]
    if not scalars:
        raise ConfigError(f"{path} holds no TensorBoard scalar (looked for "
                          "events.out.tfevents.* files)")
    scalars.sort(key=lambda item: (item[1], item[0]))
    epoch_tags = {tag for _, _, tag, _ in scalars if normalise_name(tag) == "epoch"}
    steps_to_epoch = sorted((step, value) for _, step, tag, value in scalars if tag in epoch_tags)
    events = []
    keys = [s for s, _ in steps_to_epoch]
    for _, step, tag, value in scalars:
        if tag in epoch_tags:
            continue
        if steps_to_epoch:
            i = bisect.bisect_right(keys, step) - 1
            if i < 0:
                continue
            epoch = int(round(steps_to_epoch[i][1]))
        else:
            epoch = step
        events.append((epoch, tag, value))
    rows, info = _per_epoch(events, f"TensorBoard log {path}")
    return rows, {**info, "format": "tensorboard",
                  "epochs_from": "epoch scalar" if steps_to_epoch else "step"}


def read_metrics(path: str | Path, run: str = "") -> tuple[list[dict], dict]:
    """Per-epoch rows ``{"epoch": e, name: value, ...}`` (sorted by epoch) from a training
    log, and what was read (format, columns, renamed columns). See the module docstring."""
    path = Path(path)
    label = f"run {run!r}: " if run else ""
    try:
        if path.is_dir():
            csvs = sorted(path.rglob("metrics.csv"))
            if csvs:
                if len(csvs) > 1:
                    raise ConfigError(
                        f"{label}{path} holds several metrics.csv files ({csvs[0]}, {csvs[1]}, "
                        "...); name the one of this run")
                return read_csv_log(csvs[0])
            if _event_files(path):
                return read_tensorboard_log(path)
            raise ConfigError(f"{label}{path} holds neither a metrics.csv nor TensorBoard "
                              "event files")
        if path.name.startswith("events.out.tfevents"):
            return read_tensorboard_log(path)
        return read_csv_log(path)
    except ConfigError as e:
        if label and not str(e).startswith(label):
            raise ConfigError(f"{label}{e}") from None
        raise
