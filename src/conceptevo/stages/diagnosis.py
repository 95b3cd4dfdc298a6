"""The diagnosis stage: per-epoch metrics of every run's neurons (turnover, speed in the
space, dead and degenerate neurons, diversity, ...) and the flags of the training-issue
rules, in ``diagnosis.json``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import section_from_dict
from ..data.probe import ProbeSet
from ..evaluate.tags import class_concepts, study_concepts
from ..evolution.diagnosis import DiagnosisThresholds, apply_rules, snapshot_metrics, spread
from ..space.image_embedding import project
from ..workspace import Workspace
from ..workspace.artifacts import diagnosis_path, load_base_space, run_order, save_diagnosis
from ..workspace.lock import file_lock
from .context import Context


def ensure_diagnosis(ctx: Context, runs: list[str] | None = None) -> dict:
    """:func:`run_diagnosis` with the study's ``[diagnosis]`` thresholds."""
    return run_diagnosis(ctx.ws, ctx.cfg.diagnosis, runs)


def run_diagnosis(ws: Workspace, thresholds=None, runs: list[str] | None = None) -> dict:
    """Diagnosis metrics and flags of every run with stimuli (``diagnosis.json``).

    Space metrics (speed, diversity) are computed when the workspace has a unified space of
    the same probe set; the others need only the stimuli, so a live run is diagnosed from its
    first snapshots on. The space metrics place neurons by the paper's projection (the mean
    of the stimuli's image embedding, ``BaseSpace.stimulus_embedding``) whatever projection
    the space shows, so that their thresholds keep one calibration. ``probe_acc`` is the
    checkpoint's top-1 accuracy on the probe set (recorded by its stimulus pass). Runs are in
    the study's order.

    The shortcut rule runs when the probe images' concepts are known (``[evaluation] tags``,
    or pixel masks: the concept world's).
    """
    th = thresholds or section_from_dict(DiagnosisThresholds,
                                         ws.load_study().get("diagnosis", {}),
                                         f"{ws.path('study.json')} [diagnosis]")
    base_spread, e_stim = None, None
    if ws.has_space():
        space = load_base_space(ws)
        base_spread = spread(space.neuron_embedding)
        e_stim = space.stimulus_embedding.astype(np.float64)
    out = {"thresholds": asdict(th), "runs": {}}
    probe = ws.load_probe() if ws.has_probe() else None
    labels = probe.labels if probe is not None else None
    concepts, own = _probe_concepts(ws, probe)
    for run in run_order(ws):
        if runs is not None and run not in runs:
            continue
        recorded = {int(m["epoch"]): m for m in ws.load_metrics(run)}
        rows, previous, previous_emb = [], None, None
        for epoch in ws.stimuli_epochs(run):
            result = ws.load_stimuli(run, epoch)
            emb = None
            if base_spread and e_stim is not None and len(e_stim) == result.n_images:
                emb = project(result.stimuli, e_stim)
            row = {"epoch": epoch, **snapshot_metrics(
                result, previous, emb, previous_emb, base_spread, th, labels, concepts, own,
                list(probe.classes) if probe is not None else None)}
            for key, value in recorded.get(epoch, {}).items():
                if key != "epoch" and isinstance(value, (int, float)):
                    row[key] = value
            rows.append(row)
            previous, previous_emb = result, emb
        out["runs"][run] = {"metrics": rows,
                            "flags": [f.to_dict() for f in apply_rules(rows, th)]}
    with file_lock(diagnosis_path(ws)):
        save_diagnosis(ws, out)
    return out


def _probe_concepts(ws: Workspace, probe: ProbeSet | None):
    """(ImageConcepts, own bool [n_classes, n_concepts]) of the workspace's probe set, from
    the study's ``[evaluation] tags`` or pixel masks (``study.json``, paths against its
    ``base_dir``); (None, None) when there are none, or no study to name them."""
    study = ws.load_study() if probe is not None else None
    if not isinstance(study, dict) or not isinstance(study.get("probe"), dict):
        return None, None
    base = Path(study.get("base_dir") or ".")
    ev = study.get("evaluation") or {}

    def resolve(value):
        return None if not value else (base / Path(value).expanduser())

    concepts = study_concepts(resolve(ev.get("tags")), resolve(ev.get("annotations")),
                              resolve(study["probe"].get("root")) or base, probe)
    if concepts is None:
        return None, None
    return concepts, class_concepts(probe.labels, concepts, len(probe.classes))


def diagnosis_text(report: dict) -> str:
    """The table `conceptevo diagnose` prints."""
    cols = [("epoch", "{:>5}"), ("train_acc", "{:>9.1%}"), ("val_acc", "{:>8.1%}"),
            ("turnover", "{:>9.2f}"), ("speed", "{:>6.2f}"), ("dead", "{:>6.1%}"),
            ("degenerate", "{:>11.1%}"), ("distinct_stimuli", "{:>9.3f}"),
            ("diversity", "{:>10.2f}")]
    heads = ["epoch", "train acc", "val acc", "turnover", "speed", "dead", "degenerate",
             "distinct", "diversity"]
    widths = [5, 9, 8, 9, 6, 6, 11, 9, 10]
    lines = []
    for run, data in report["runs"].items():
        lines.append(f"run {run}")
        lines.append("  " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths)))
        for row in data["metrics"]:
            cells = []
            for (key, fmt), w in zip(cols, widths):
                value = row.get(key)
                cells.append(fmt.format(value) if isinstance(value, (int, float))
                             and value == value else f"{'-':>{w}}")
            lines.append("  " + " ".join(cells))
        if data["flags"]:
            for flag in data["flags"]:
                lines.append(f"  FLAG epoch {flag['epoch']}: {flag['rule']}: {flag['message']}")
        else:
            lines.append("  no flag")
        lines.append("")
    return "\n".join(lines).rstrip()
