"""Live monitoring: one object in a plain PyTorch training loop.

::

    monitor = conceptevo.Monitor("runs/study", probe="data/train", run="resnet-lr0.1",
                                 image_size=64, on_flag=print)
    monitor.on_epoch_end(model, 0)                      # the initialisation
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        monitor.on_epoch_end(model, epoch, metrics={"train_acc": ..., "val_acc": ...})

Each snapshot probes the model on the probe set (one forward pass, gradients off, the model's
train/eval mode restored, every random number generator left as it was, so the training run
is unchanged), stores its stimuli, its metrics and (optionally) its checkpoint in the
workspace, and updates the diagnosis. When a rule fires (concept collapse, overfitting,
divergence) the monitor calls ``on_flag(flag)`` or raises a :class:`TrainingIssueWarning`.
``conceptevo serve`` shows the run while it trains, refreshing by itself.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.probe import ProbeSet, load_image_folder
from .errors import ConfigError, CorruptArtifactError
from .evolution.diagnosis import DiagnosisThresholds, Flag, apply_rules, snapshot_metrics, spread
from .models.adapter import LayerSelection, ModelAdapter
from .space.image_embedding import project
from .stimuli import StimuliResult, compute_stimuli
from .workspace import Workspace, atomic
from .workspace.artifacts import diagnosis_path, load_base_space, load_diagnosis, save_diagnosis


class TrainingIssueWarning(UserWarning):
    """A diagnosis rule fired during training (the message says which, when and why)."""


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave every random number generator the training may use exactly as it was."""
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class Monitor:
    """Snapshots a model during training into a ConceptEvo workspace, and diagnoses it.

    Parameters
    ----------
    workspace : directory of the study (created when missing).
    probe : the probe set: a :class:`ProbeSet`, an ImageFolder directory (sampled with
        ``per_class`` / ``image_size`` / ``mean`` / ``std``), or None to use the workspace's.
    run : the run's name in the workspace.
    layers, reduction : what to probe (see :class:`ModelAdapter`; default every Conv2d, max).
    every : snapshot every N epochs (``on_epoch_end``); ``every_steps`` the same for
        ``on_step`` (the snapshot is then stored under its step number).
    save_checkpoints : also save ``runs/<run>/checkpoints/epoch_NNNN.pt`` (a state_dict).
    on_flag : called with each new :class:`Flag`; without it a
        :class:`TrainingIssueWarning` is raised.
    thresholds : the diagnosis rules' thresholds.
    record_activations : keep every activation of each snapshot in the workspace (2 bytes per
        neuron and probe image), which the activation-weighted projection into a unified
        space needs (the default projection, see docs/space.md); False saves the disk space
        when the space projects by stimuli or when no space will be built.
    classes : the class folder names of ``probe`` (a directory) in the model's output order
        (default: ``classes.txt`` in it, else the sorted folder names; see docs).
    output, layouts, tokens : where the logits are in the model's output, the layout of
        layers that cannot be detected, how token layers are read (see :class:`ModelAdapter`).
    verbose : print one line per snapshot with its cost.
    concepts : which concepts each probe image shows, for the live shortcut rule (see
        :mod:`conceptevo.evolution.shortcut`): a tag CSV (``path,concept``, docs/concepts.md),
        an annotation file of pixel masks (``.npz``), or an
        :class:`~conceptevo.evaluate.tags.ImageConcepts`. Each snapshot then checks whether
        probe images showing a concept a class does not own are predicted as that class far
        more often than the others (from the snapshot's predictions: no extra pass). None
        (the default): no shortcut rule.

    A Monitor started again on the same workspace and run (a resumed training) continues the
    run's diagnosis history: the epochs snapshotted before are kept, and the next snapshot's
    turnover is measured against the stored snapshot before it.
    """

    def __init__(self, workspace: str | Path, probe: ProbeSet | str | Path | None = None, *,
                 run: str = "live", layers: LayerSelection = None, reduction: str = "max",
                 every: int = 1, every_steps: int | None = None, k_stimuli: int = 20,
                 k_responsive: int = 20, batch_size: int = 128, per_class: int | None = None,
                 image_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), save_checkpoints: bool = True,
                 on_flag: Callable[[Flag], None] | None = None,
                 thresholds: DiagnosisThresholds | None = None,
                 record_activations: bool = True, classes: Sequence[str] | None = None,
                 output: str | int | None = None, layouts: dict | None = None,
                 tokens: str = "patches", verbose: bool = True,
                 concepts=None):
        if every < 1 or (every_steps is not None and every_steps < 1):
            raise ConfigError("every and every_steps must be >= 1")
        if any(c in run for c in "/\\:*?\"<>|") or run.startswith("."):
            raise ConfigError(f"run name {run!r} must be usable as a folder name")
        self.ws = Workspace(workspace, create=True)
        atomic.clean_temporaries(self.ws.path("runs", run))  # a killed earlier process's
        atomic.clean_temporaries(self.ws.path("stimuli", run))
        self.probe = self._probe(probe, per_class, image_size, mean, std, classes)
        self.run, self.layers, self.reduction, self.output = run, layers, reduction, output
        self.layouts, self.tokens = layouts, tokens
        self.every, self.every_steps = every, every_steps
        self.k_stimuli, self.k_responsive, self.batch_size = k_stimuli, k_responsive, batch_size
        self.save_checkpoints, self.on_flag, self.verbose = save_checkpoints, on_flag, verbose
        self.record_activations = record_activations
        self.thresholds = thresholds or DiagnosisThresholds()
        self.metrics = self.ws.load_metrics(run)
        self.timings: list[dict] = []
        self._adapter: ModelAdapter | None = None
        # (epoch, stimuli, embedding) of the last snapshot, to measure the next one against
        self._previous: tuple[int, StimuliResult, np.ndarray | None] | None = None
        self._space = self._load_space()
        self.rows: list[dict] = self._stored_rows()
        self.concepts = self._concepts(concepts)
        self._own = None
        if self.concepts is not None:
            from .evaluate.tags import class_concepts

            self._own = class_concepts(self.probe.labels, self.concepts,
                                       len(self.probe.classes))
        self.flags: list[Flag] = apply_rules(self.rows, self.thresholds)

    # ---------------------------------------------------------------- set-up
    def _probe(self, probe, per_class, image_size, mean, std, classes) -> ProbeSet:
        if isinstance(probe, ProbeSet):
            if not self.ws.has_probe():
                self.ws.save_probe(probe)
            return self.ws.load_probe()
        if probe is not None:
            if not self.ws.has_probe():
                from .data.classes import CLASS_FILE, read_class_list

                order = list(classes) if classes is not None else None
                if order is None and (Path(probe) / CLASS_FILE).is_file():
                    order = read_class_list(Path(probe) / CLASS_FILE)
                self.ws.save_probe(load_image_folder(probe, image_size, per_class=per_class,
                                                     mean=mean, std=std, classes=order))
            return self.ws.load_probe()
        if not self.ws.has_probe():
            raise ConfigError(f"workspace {self.ws.root} has no probe set: pass probe= (a "
                              "ProbeSet or an ImageFolder directory)")
        return self.ws.load_probe()

    def _load_space(self) -> tuple[np.ndarray, float] | None:
        """(the paper's image embedding, the spread of the base) when the workspace has a
        unified space whose probe set is ours; else None (stimulus-only diagnosis). The
        diagnosis places neurons by their stimuli (see ``run_diagnosis``)."""
        if not self.ws.has_space():
            return None
        space = load_base_space(self.ws)
        if len(space.stimulus_embedding) != len(self.probe):
            return None
        if space.needs_activations and not self.record_activations:
            raise ConfigError(f"the unified space of {self.ws.root} places neurons by their "
                              "activations, which a snapshot must then record: keep "
                              "Monitor(record_activations=True)")
        return space.stimulus_embedding.astype(np.float64), spread(space.neuron_embedding)

    def _stored_rows(self) -> list[dict]:
        """The run's diagnosis rows already in the workspace (a restarted Monitor), for the
        epochs whose snapshot is stored."""
        try:
            stored = (load_diagnosis(self.ws) or {}).get("runs", {}).get(self.run, {})
        except (CorruptArtifactError, AttributeError):
            return []  # a damaged diagnosis: it is rewritten from this snapshot on
        have = set(self.ws.stimuli_epochs(self.run))
        rows = [r for r in stored.get("metrics", []) if isinstance(r, dict)
                and isinstance(r.get("epoch"), int) and r["epoch"] in have]
        return sorted(rows, key=lambda r: r["epoch"])

    def _concepts(self, concepts):
        """The probe images' concepts (None: no shortcut rule)."""
        from .evaluate.tags import ImageConcepts, presence_from_masks, read_tags

        if concepts is None or isinstance(concepts, ImageConcepts):
            return concepts
        path = Path(concepts)
        if path.suffix == ".npz":
            return presence_from_masks(path, self.probe)
        return read_tags(path, self.probe)

    def _before(self, epoch: int) -> tuple[StimuliResult | None, np.ndarray | None]:
        """The stored snapshot just before ``epoch`` (stimuli, embedding), or (None, None)."""
        if self._previous is not None and self._previous[0] < epoch and not any(
                self._previous[0] < e < epoch for e in self.ws.stimuli_epochs(self.run)):
            return self._previous[1], self._previous[2]
        earlier = [e for e in self.ws.stimuli_epochs(self.run) if e < epoch]
        if not earlier:
            return None, None
        result = self.ws.load_stimuli(self.run, earlier[-1])
        emb = project(result.stimuli, self._space[0]) if self._space is not None else None
        return result, emb

    # ------------------------------------------------------------------ hooks
    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict | None = None) -> None:
        """Record ``metrics`` for ``epoch`` and, every ``every`` epochs, snapshot the model."""
        self._record(epoch, metrics)
        if epoch % self.every == 0:
            self.snapshot(model, epoch)

    def on_step(self, model: nn.Module, step: int, metrics: dict | None = None) -> None:
        """The same, every ``every_steps`` optimisation steps (stored under the step number)."""
        if self.every_steps is None:
            raise ConfigError("on_step needs Monitor(every_steps=N)")
        if step % self.every_steps == 0:
            self._record(step, metrics)
            self.snapshot(model, step)

    def _record(self, epoch: int, metrics: dict | None) -> None:
        if not metrics:
            return
        row = {"epoch": int(epoch)}
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().float().item()
            if isinstance(value, (int, float, np.floating, np.integer)):
                row[str(key)] = float(value)
        self.metrics = [m for m in self.metrics if m["epoch"] != epoch] + [row]
        self.ws.save_metrics(self.run, self.metrics)

    # --------------------------------------------------------------- snapshot
    def snapshot(self, model: nn.Module, epoch: int) -> StimuliResult:
        """Probe ``model`` now and store everything under ``epoch``."""
        t0 = time.perf_counter()
        device = next(model.parameters()).device
        if self._adapter is None or self._adapter.model is not model:
            self._check_input_size(model)
            self._adapter = ModelAdapter(model, self.layers, self.reduction, self.output,
                                         self.layouts, self.tokens)
        with preserved_rng():
            t = time.perf_counter()
            acc = compute_stimuli(self._adapter, self.probe.batches(self.batch_size, device),
                                  len(self.probe), k_stimuli=self.k_stimuli,
                                  k_responsive=self.k_responsive, device=device,
                                  on_nonfinite="record",
                                  record_activations=self.record_activations,
                                  spill_dir=self.ws.root,
                                  context=f"run {self.run!r} epoch {epoch}")
            result = acc.result({"run": self.run, "epoch": int(epoch), "source": "monitor",
                                 "key": f"monitor-{time.time_ns()}"})
            t_pass = time.perf_counter() - t
        self.ws.save_stimuli(self.run, epoch, result)
        if self.save_checkpoints:
            path = self.ws.path("runs", self.run, "checkpoints", f"epoch_{epoch:04d}.pt")
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            with atomic.atomic_path(path) as tmp:
                torch.save({"state_dict": state, "epoch": int(epoch)}, tmp)
        self._diagnose(result, epoch)
        total = time.perf_counter() - t0
        self.timings.append({"epoch": int(epoch), "stimulus_pass_s": t_pass, "total_s": total})
        if self.verbose:
            print(f"conceptevo: snapshot of {self.run!r} epoch {epoch}: {total:.2f} s "
                  f"({t_pass:.2f} s probing {len(self.probe)} images)", flush=True)
        return result

    def _check_input_size(self, model: nn.Module) -> None:
        from .models.input_size import check_input_size

        size = self.probe.image_size[0]
        check = check_input_size(model, size)
        if not check.fits:
            fit = f"Monitor(image_size={check.suggestion}) fits" if check.suggestion else \
                "use the size it is trained on"
            raise ConfigError(f"the model does not take the probe's {size}x{size} images: "
                              f"{check.reason}; {fit} (in a new workspace, or after deleting "
                              f"{self.ws.path('probe')})")

    def _diagnose(self, result: StimuliResult, epoch: int) -> None:
        embedding = None
        if self._space is not None:
            embedding = project(result.stimuli, self._space[0])
        prev_result, prev_emb = self._before(epoch)
        row = {"epoch": int(epoch),
               **snapshot_metrics(result, prev_result, embedding, prev_emb,
                                  self._space[1] if self._space else None, self.thresholds,
                                  self.probe.labels, self.concepts, self._own,
                                  list(self.probe.classes))}
        recorded = next((m for m in self.metrics if m["epoch"] == epoch), {})
        row.update({k: v for k, v in recorded.items() if k != "epoch"})
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + [row]
        self.rows.sort(key=lambda r: r["epoch"])
        self._previous = (int(epoch), result, embedding)
        flags = apply_rules(self.rows, self.thresholds)
        known = {(f.rule, f.epoch, f.message) for f in self.flags}
        new = [f for f in flags if (f.rule, f.epoch, f.message) not in known]
        self.flags = flags
        self._write_diagnosis()
        for flag in new:
            if self.on_flag is not None:
                self.on_flag(flag)
            else:
                warnings.warn(f"conceptevo: run {self.run!r}, epoch {flag.epoch}: "
                              f"{flag.message}", TrainingIssueWarning, stacklevel=4)

    def _write_diagnosis(self) -> None:
        from dataclasses import asdict

        from .workspace.lock import file_lock

        with file_lock(diagnosis_path(self.ws)):  # other runs' rows: another process's
            try:
                report = load_diagnosis(self.ws, {})
            except CorruptArtifactError:
                report = {}
            if not isinstance(report, dict):
                report = {}
            report["thresholds"] = asdict(self.thresholds)
            report.setdefault("runs", {})[self.run] = {
                "metrics": self.rows, "flags": [f.to_dict() for f in self.flags]}
            save_diagnosis(self.ws, report)
