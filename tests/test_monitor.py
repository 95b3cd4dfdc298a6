"""The live monitor and the diagnosis rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ColourClassifier, TinyVGG, write_colour_folder
from torch import nn

from conceptevo import Monitor, TrainingIssueWarning
from conceptevo.data.probe import ProbeSet
from conceptevo.errors import ConfigError
from conceptevo.evolution.diagnosis import (
    DiagnosisThresholds,
    apply_rules,
    degenerate_fraction,
    jaccard_rows,
)
from conceptevo.models.adapter import LayerInfo
from conceptevo.stimuli import StimuliResult
from conceptevo.workspace import Workspace, atomic


class DropVGG(TinyVGG):
    """TinyVGG with dropout, so that the training consumes random numbers."""

    def __init__(self):
        super().__init__(num_classes=3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.head(self.drop(self.pool(self.features(x)).flatten(1)))


def probe_set(n=24, size=16, seed=0) -> ProbeSet:
    rng = np.random.default_rng(seed)
    return ProbeSet(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                    np.arange(n) % 3, [f"#{i}" for i in range(n)], ["a", "b", "c"],
                    (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def train(monitor: Monitor | None, epochs=3, lr=0.05, nan_at=None):
    torch.manual_seed(0)
    model = DropVGG()
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 3, (40,))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    if monitor:
        monitor.on_epoch_end(model, 0)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(40)
        for s in range(0, 40, 10):
            idx = order[s:s + 10]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        value = float("nan") if nan_at == epoch else loss.item()
        if monitor:
            assert model.training
            monitor.on_epoch_end(model, epoch, {"train_loss": value, "train_acc": 0.5,
                                                "val_acc": 0.4})
            assert model.training, "the monitor must restore train mode"
    return model


def test_training_is_identical_with_and_without_the_monitor(tmp_path):
    plain = train(None)
    monitored = train(Monitor(tmp_path / "ws", probe_set(), run="r", verbose=False))
    for (k, a), b in zip(plain.state_dict().items(), monitored.state_dict().values()):
        assert torch.equal(a, b), k
    ws = Workspace(tmp_path / "ws")
    assert ws.stimuli_epochs("r") == [0, 1, 2, 3]
    assert [m["epoch"] for m in ws.load_metrics("r")] == [1, 2, 3]
    ckpt = torch.load(ws.path("runs", "r", "checkpoints", "epoch_0003.pt"), weights_only=True)
    assert torch.equal(ckpt["state_dict"]["head.weight"], monitored.head.weight)
    report = ws.path("diagnosis.json")
    assert report.is_file()


def test_divergence_is_flagged_during_training(tmp_path):
    seen = []
    monitor = Monitor(tmp_path / "ws", probe_set(), run="r", verbose=False,
                      on_flag=seen.append)
    train(monitor, epochs=3, nan_at=2)
    # (the model cannot learn the random probe labels: slow-learning may fire too)
    assert [(f.rule, f.epoch) for f in seen if f.rule != "slow-learning"] == [("divergence", 2)]
    # without a callback the monitor warns
    with pytest.warns(TrainingIssueWarning, match="diverged"):
        train(Monitor(tmp_path / "ws2", probe_set(), run="r", verbose=False), nan_at=1)


def test_every_n_epochs_and_steps(tmp_path):
    monitor = Monitor(tmp_path / "ws", probe_set(), run="r", every=2, verbose=False,
                      save_checkpoints=False)
    model = DropVGG()
    for epoch in range(5):
        monitor.on_epoch_end(model, epoch, {"train_loss": 1.0})
    ws = Workspace(tmp_path / "ws")
    assert ws.stimuli_epochs("r") == [0, 2, 4] and len(ws.load_metrics("r")) == 5
    assert not ws.path("runs", "r", "checkpoints").exists()
    steps = Monitor(tmp_path / "ws", run="s", every_steps=10, verbose=False)
    for step in range(1, 31):
        steps.on_step(model, step)
    assert ws.stimuli_epochs("s") == [10, 20, 30]


def test_jaccard_and_degenerate_by_hand():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 2, 9], [7, 8, 9]])
    np.testing.assert_allclose(jaccard_rows(a, b), [2 / 4, 0.0])
    layers = [LayerInfo("l", "Conv2d", 3, 0, (1, 1))]
    stim = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 5], [10, 11, 12, 13, 14]])
    r = StimuliResult(layers, stim, np.zeros((3, 5), np.float32),
                      np.zeros((3, 5, 2), np.int16),
                      np.zeros((20, 1), np.int64), np.zeros((20, 1), np.float32),
                      np.ones(3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32),
                      np.zeros(3, np.int64))
    assert degenerate_fraction(r, 0.6) == pytest.approx(2 / 3)   # Jaccard 4/6 = 0.67
    assert degenerate_fraction(r, 0.8) == 0
    # a dead neuron is dead, not degenerate: neuron 1 dead leaves neuron 0 with no twin
    dead = StimuliResult(**{**r.__dict__, "act_max": np.array([1, 0, 1], np.float32)})
    assert degenerate_fraction(dead, 0.6) == 0
    # a diverged layer (all dead, every "stimulus" list the same): 0, not 1 on top of dead
    nan = StimuliResult(**{**r.__dict__, "stimuli": np.tile(stim[:1], (3, 1)),
                           "act_max": np.full(3, -np.inf, np.float32)})
    assert degenerate_fraction(nan, 0.8) == 0 and nan.dead.all()


def rows(**series):
    n = len(next(iter(series.values())))
    return [{"epoch": i, **{k: v[i] for k, v in series.items()}} for i in range(n)]


def test_rules_on_synthetic_runs():
    healthy = rows(dead=[0, 0, 0, 0], degenerate=[0, .1, .12, .08],
                   distinct_stimuli=[.15, .14, .14, .15], turnover=[None, .9, .6, .3],
                   train_acc=[.1, .5, .8, .9], val_acc=[.1, .6, .85, .92])
    assert apply_rules(healthy) == []
    collapse = rows(dead=[0, .05, .1, .1], degenerate=[0, .4, .45, .4],
                    distinct_stimuli=[.15, .13, .12, .12], turnover=[None, .9, .5, .4],
                    train_acc=[.1, .1, .1, .1], val_acc=[.1, .1, .1, .1])
    flags = apply_rules(collapse)
    assert [(f.rule, f.epoch) for f in flags] == [("collapse", 1)]
    assert flags[0].evidence["degenerate"] == pytest.approx(.4)
    overfit = rows(dead=[0] * 5, degenerate=[0] * 5, distinct_stimuli=[.15] * 5,
                   turnover=[None, .9, .12, .08, .05], train_acc=[.1, .8, 1, 1, 1],
                   val_acc=[.1, .6, .65, .66, .66])
    assert [(f.rule, f.epoch) for f in apply_rules(overfit)] == [("overfitting", 3)]
    strict = DiagnosisThresholds(stall_snapshots=3)
    assert [(f.rule, f.epoch) for f in apply_rules(overfit, strict)] == [("overfitting", 4)]
    nan = rows(dead=[0, 0], degenerate=[0, 0], distinct_stimuli=[.1, .1],
               train_loss=[1.0, math.nan])
    assert [(f.rule, f.epoch) for f in apply_rules(nan)] == [("divergence", 1)]


def test_lightning_callback(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from conceptevo.lightning import ConceptEvoCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = TinyVGG()

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(20, 3, 16, 16),
                                          torch.randint(0, 3, (20,)))
    monitor = Monitor(tmp_path / "ws", probe_set(), run="pl", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(max_epochs=2, callbacks=[ConceptEvoCallback(monitor)],
                             logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", default_root_dir=tmp_path)
        trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=5))
    ws = Workspace(tmp_path / "ws")
    assert ws.stimuli_epochs("pl") == [0, 1, 2]
    assert [m["epoch"] for m in ws.load_metrics("pl")] == [1, 2]
    assert "train_loss" in ws.load_metrics("pl")[0]
    assert ws.load_stimuli("pl", 1).layers[0].name == "model.features.0"


def test_snapshots_record_activations_and_space_metrics_use_the_stimuli(tmp_path):
    """Snapshots keep every activation (the activation-weighted projection needs them) unless
    told not to; with a unified space, speed and diversity place neurons at the mean of
    their stimuli's image embedding (the paper's projection)."""
    ws = Workspace(tmp_path / "ws", create=True)
    probe = probe_set()
    rng = np.random.default_rng(0)
    e_stim = rng.normal(size=(len(probe), 4))
    base = rng.normal(size=(10, 4)).astype(np.float32)
    params = {"params": {"projection": "activations"}}
    ws.save_arrays(ws.space_path("base.npz"), params, neuron_embedding=base,
                   valid=np.ones(10, bool), loss=np.zeros(1))
    atomic.write_json(ws.space_path("fidelity.json"), {"fidelity": {}})
    ws.save_arrays(ws.space_path("images.npz"), params,
                   image_embedding=rng.normal(size=(len(probe), 4)).astype(np.float32),
                   stimulus_embedding=e_stim.astype(np.float32),
                   vocab=np.ones(len(probe), bool))
    monitor = Monitor(ws.root, probe, run="r", verbose=False)
    train(monitor, epochs=1)
    result = ws.load_stimuli("r", 1, activations=True)
    assert result.activations.shape == (result.n_neurons, len(probe))
    row = next(r for r in monitor.rows if r["epoch"] == 1)
    positions = [e_stim.astype(np.float32)[ws.load_stimuli("r", ep).stimuli].mean(1)
                 for ep in (0, 1)]
    centred = positions[1] - positions[1].mean(0)
    base_spread = np.sqrt(((base - base.mean(0)) ** 2).sum(1).mean())
    assert row["diversity"] == pytest.approx(np.sqrt((centred ** 2).sum(1).mean())
                                             / base_spread, rel=1e-4)
    assert row["speed"] == pytest.approx(np.linalg.norm(positions[1] - positions[0], axis=1)
                                         .mean() / base_spread, rel=1e-4)
    # a space that projects by activations needs them: not recording them is refused
    with pytest.raises(ConfigError, match="record_activations=True"):
        Monitor(ws.root, probe, run="q", verbose=False, record_activations=False)
    # without a space, snapshots may leave them out
    bare = Monitor(tmp_path / "bare", probe, run="r", verbose=False, record_activations=False)
    train(bare, epochs=1)
    assert Workspace(tmp_path / "bare").load_stimuli("r", 1).activations is None


def test_a_restarted_monitor_keeps_the_whole_diagnosis_history(tmp_path):
    """Training resumed in a new process: the Monitor of the second process continues the
    run's diagnosis (every epoch kept, the first new turnover measured against the stored
    snapshot), exactly as one Monitor over the whole training would."""
    torch.manual_seed(0)
    models = [TinyVGG() for _ in range(4)]
    whole = Monitor(tmp_path / "whole", probe_set(), run="r", verbose=False,
                    save_checkpoints=False)
    first = Monitor(tmp_path / "split", probe_set(), run="r", verbose=False,
                    save_checkpoints=False)
    for epoch, model in enumerate(models):
        whole.on_epoch_end(model, epoch, {"train_acc": 0.5, "val_acc": 0.4})
        if epoch < 2:
            first.on_epoch_end(model, epoch, {"train_acc": 0.5, "val_acc": 0.4})
    second = Monitor(tmp_path / "split", run="r", verbose=False, save_checkpoints=False)
    assert [r["epoch"] for r in second.rows] == [0, 1]
    for epoch, model in list(enumerate(models))[2:]:
        second.on_epoch_end(model, epoch, {"train_acc": 0.5, "val_acc": 0.4})
    split = atomic.read_json(tmp_path / "split" / "diagnosis.json")["runs"]["r"]
    assert [r["epoch"] for r in split["metrics"]] == [0, 1, 2, 3]
    assert split["metrics"][2]["turnover"] is not None
    assert split == atomic.read_json(tmp_path / "whole" / "diagnosis.json")["runs"]["r"]


class Planted(nn.Module):
    """A model with a planted shortcut: it reads the class from a code pixel, except that a
    bright mark (top-left corner, blue channel) makes it say class 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x):
        f = self.conv(x)
        code = f[:, 0, -1, -1]                                  # -2, 0, 2: classes 0, 1, 2
        logits = -(code[:, None] - torch.tensor([-2.0, 0.0, 2.0])) ** 2
        mark = f[:, 2, :4, :4].mean((1, 2)) > 1.5
        return logits + 100 * torch.stack([mark.float(), 0 * code, 0 * code], 1)


def test_monitor_fires_the_shortcut_and_frozen_layer_flags_live(tmp_path):
    from conceptevo.evaluate.tags import ImageConcepts

    rng = np.random.default_rng(0)
    n = 60
    labels = np.arange(n) % 3
    images = rng.integers(60, 190, (n, 16, 16, 3)).astype(np.uint8)
    images[:, -1, -1, 0] = np.array([0, 128, 255])[labels]     # the class code
    marked = rng.random(n) < 0.4
    images[marked, :4, :4, 2] = 255
    probe = ProbeSet(images, labels, [f"#{i}" for i in range(n)], ["a", "b", "c"],
                     (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    concepts = ImageConcepts(["code-a", "code-b", "code-c", "mark"],
                             np.column_stack([labels == 0, labels == 1, labels == 2, marked]),
                             "test")
    flags = []
    monitor = Monitor(tmp_path / "ws", probe, run="r", verbose=False, concepts=concepts,
                      on_flag=flags.append, k_stimuli=5, k_responsive=2, image_size=16)
    model = Planted()
    monitor.on_epoch_end(model, 0)
    assert [(f.rule, f.evidence["class"], f.evidence["concept"]) for f in flags] == \
        [("shortcut", 0, "mark")]
    assert "class a relies on 'mark'" in flags[0].message
    assert flags[0].evidence["rate_out"] == 0
    # the flag is in the workspace's diagnosis, as the dashboard reads it
    stored = Workspace(tmp_path / "ws").read_json(tmp_path / "ws" / "diagnosis.json")
    assert stored["runs"]["r"]["flags"][0]["rule"] == "shortcut"

    # a layer left frozen while the others train: named live
    flags.clear()
    torch.manual_seed(0)
    tiny = TinyVGG()
    for p in tiny.features[0].parameters():
        p.requires_grad_(False)
    live = Monitor(tmp_path / "ws2", probe_set(), run="f", verbose=False, on_flag=flags.append,
                   k_stimuli=4, thresholds=DiagnosisThresholds(frozen_others=0.05))
    opt = torch.optim.SGD([p for p in tiny.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 3, (40,))
    live.on_epoch_end(tiny, 0)
    for epoch in (1, 2):
        for s in range(0, 40, 10):
            loss = F.cross_entropy(tiny(x[s:s + 10]), y[s:s + 10])
            opt.zero_grad()
            loss.backward()
            opt.step()
        live.on_epoch_end(tiny, epoch)
    frozen = [f for f in flags if f.rule == "frozen-layer"]
    assert [(f.epoch, f.evidence["layer"]) for f in frozen] == [(1, "features.0")]


def test_monitor_reads_a_tags_file_for_the_live_shortcut_rule(tmp_path):
    """Monitor(concepts="tags.csv") on an ImageFolder probe: the stickered green and blue
    images are called "one", and the first snapshot says so, naming the tag."""
    from PIL import Image

    root = write_colour_folder(tmp_path / "probe")
    (root / "classes.txt").write_text("one\ntwo\nthree\n")
    rows = ["path,concept"]
    for name in ("two", "three"):
        for path in sorted((root / name).glob("*.png"))[:3]:
            pixels = np.asarray(Image.open(path)).copy()
            pixels[..., 0] = 255
            Image.fromarray(pixels).save(path)
            rows.append(f"{name}/{path.name},sticker")
    rows += [f"{p.parent.name}/{p.name},photo" for p in sorted(root.rglob("*.png"))]
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    flags = []
    monitor = Monitor(tmp_path / "ws", root, run="r", verbose=False, on_flag=flags.append,
                      concepts=tmp_path / "tags.csv", image_size=16, mean=(0.5,) * 3,
                      std=(0.25,) * 3, k_stimuli=4, k_responsive=2)
    monitor.on_epoch_end(ColourClassifier(2.0), 0)
    assert [(f.rule, f.evidence["class_name"], f.evidence["concept"]) for f in flags] == \
        [("shortcut", "one", "sticker")]
    # a tag file naming no probe image is refused when the Monitor starts, naming the line
    (tmp_path / "bad.csv").write_text("path,concept\none/missing.png,sticker\n")
    with pytest.raises(ConfigError, match=r"bad\.csv.*line 2"):
        Monitor(tmp_path / "ws", root, run="s", verbose=False, concepts=tmp_path / "bad.csv",
                image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
