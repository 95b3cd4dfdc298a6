"""A user's own study, right the first time: class order, input size, checkpoint patterns,
training logs, and the defaults around them."""

from __future__ import annotations

import csv
import itertools
import json
import os

import numpy as np
import pytest
import torch
from conftest import (
    ColourClassifier,
    LeNet,
    TinyVGG,
    randomise,
    write_colour_folder,
    write_image_folder,
    write_study,
)

from conceptevo.cli import main
from conceptevo.data.classes import check_class_order, confusion_matrix, read_class_list
from conceptevo.data.metrics import normalise_name, read_metrics
from conceptevo.errors import ConfigError
from conceptevo.models.adapter import select_logits
from conceptevo.models.input_size import check_input_size
from conceptevo.workspace import Workspace, atomic

SPACE = """
[space]
dim = 4
epochs = 3
umap_neighbors = 5
"""


@pytest.fixture
def cli(capsys, caplog):
    """Run the command line: (exit code, stdout, stderr with the log records)."""
    import logging

    def run(*argv) -> tuple[int, str, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="conceptevo"):
            code = main([*map(str, argv)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err + caplog.text

    return run


# --------------------------------------------------------------------------- class order
def brute_force_best(conf: np.ndarray) -> int:
    """The most images any one-to-one relabelling of the outputs gets right."""
    n_classes, n_outputs = conf.shape
    return max(sum(conf[c, perm[c]] for c in range(n_classes))
               for perm in itertools.permutations(range(n_outputs), n_classes))


@pytest.mark.parametrize("seed", range(6))
def test_best_relabelling_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_classes, n_outputs = 4, 4 + seed % 2
    labels = rng.integers(0, n_classes, 60)
    predicted = np.where(rng.random(60) < 0.7, (labels + seed) % n_outputs,
                         rng.integers(0, n_outputs, 60))
    predicted[:3] = -1  # no prediction (non-finite logits): left out
    classes = [f"c{i}" for i in range(n_classes)]
    check = check_class_order(labels, predicted, classes)
    conf = confusion_matrix(labels, predicted, n_classes, n_outputs)
    assert conf.sum() == 57 and check.n_images == 57
    assert check.accuracy == pytest.approx(np.mean((predicted == labels)[3:]))
    assert check.best_accuracy == pytest.approx(brute_force_best(conf) / 57)
    # the order names each output by the class the relabelling gives it
    relabelled = sum(conf[classes.index(name), out] for out, name in enumerate(check.best_order)
                     if name is not None)
    assert relabelled == brute_force_best(conf)


def test_a_shifted_order_is_suspect_and_a_right_or_random_one_is_not():
    labels = np.repeat(np.arange(5), 10)
    classes = list("abcde")
    shifted = check_class_order(labels, (labels + 1) % 5, classes)
    assert shifted.accuracy == 0 and shifted.best_accuracy == 1 and shifted.order_suspect
    assert shifted.best_order == ["e", "a", "b", "c", "d"]
    right = check_class_order(labels, labels, classes)
    assert right.accuracy == 1 and not right.order_suspect and not right.near_chance
    rng = np.random.default_rng(0)
    noise = check_class_order(labels, rng.integers(0, 5, 50), classes)
    assert not noise.order_suspect and noise.near_chance


def colour_study(tmp_path, extra_probe: str = "", extra: str = "") -> tuple:
    """Folders one/two/three (red/green/blue images: sorted, they are one, three, two) and two
    checkpoints of ColourClassifier, whose outputs are red, green, blue."""
    root = write_colour_folder(tmp_path / "digits")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for epoch, gain in enumerate((1.0, 2.0)):
        torch.save(ColourClassifier(gain).state_dict(), ckpt / f"epoch_{epoch}.pt")
    cfg = write_study(tmp_path, root, (ckpt / "epoch_{epoch}.pt").as_posix(),
                      arch="conftest:build_colour_classifier", extra=extra)
    text = cfg.read_text().replace("std = [0.25, 0.25, 0.25]",
                                   "std = [0.25, 0.25, 0.25]\n" + extra_probe)
    cfg.write_text(text.replace("k_responsive = 5", "k_responsive = 2") + SPACE)
    return cfg, root


def true_accuracy(root, classes: list[str]) -> float:
    """ColourClassifier's accuracy on the folders, read in the model's output order,
    computed here by a plain forward pass."""
    from PIL import Image

    model = ColourClassifier(2.0).eval()
    hits = total = 0
    for k, name in enumerate(classes):
        for path in sorted((root / name).glob("*.png")):
            x = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)
            x = ((x - 0.5) / 0.25).permute(2, 0, 1)[None]
            hits += int(model(x).argmax(1).item() == k)
            total += 1
    return hits / total


def importance_accuracy(cli, cfg, class_name: str) -> tuple[float, str]:
    code, out, err = cli("importance", "--config", cfg, "--run", "a", "--class",
                             class_name, "--from", "0", "--to", "1")
    assert code == 0, err
    ws = Workspace(cfg.parent / "ws")
    from conceptevo.stages.importance import load_importance, stored_importance

    (run, c, t, t2), = [s for s in stored_importance(ws)
                        if ws.load_probe().classes[s[1]] == class_name]
    _, rev = load_importance(ws, run, c, t, t2)
    return rev.summary("train")["accuracy"], err


def test_class_folders_out_of_logit_order_are_caught_and_fixed_by_classes(tmp_path, cli):
    cfg, root = colour_study(tmp_path / "sorted")
    code, out, err = cli("build", "--config", cfg)
    assert code == 0, err
    assert "probably differs from the model's output order" in err
    assert 'classes = ["one", "two", "three"]' in err  # the order the predictions suggest
    assert "probe accuracy: run 'a' epoch 1: 33.3%" in out
    acc, err = importance_accuracy(cli, cfg, "two")
    assert acc == 0.0  # logit of "two" read from sorted folders is the blue one
    assert "probably differs" in err

    fixed, root = colour_study(tmp_path / "given", 'classes = ["one", "two", "three"]')
    code, out, err = cli("build", "--config", fixed)
    assert code == 0, err
    assert "probably differs" not in err
    assert Workspace(fixed.parent / "ws").load_probe().classes == ["one", "two", "three"]
    assert "probe accuracy: run 'a' epoch 1: 100.0%" in out
    acc, err = importance_accuracy(cli, fixed, "two")
    assert acc == true_accuracy(root, ["one", "two", "three"]) == 1.0
    assert "probably differs" not in err
    diagnosis = atomic.read_json(fixed.parent / "ws" / "diagnosis.json")
    assert [r["probe_acc"] for r in diagnosis["runs"]["a"]["metrics"]] == [1.0, 1.0]


def test_diagnose_reads_the_studys_tags_and_names_the_shortcut(tmp_path, cli):
    """User data without masks: a tags.csv says which probe images carry a red sticker; the
    model calls every stickered green or blue image "one" (red), so `conceptevo diagnose`
    flags class one relying on the sticker, from the tags named in the study."""
    from PIL import Image

    cfg, root = colour_study(tmp_path, 'classes = ["one", "two", "three"]')
    stickered = []
    for name in ("two", "three"):
        for path in sorted((root / name).glob("*.png"))[:3]:
            pixels = np.asarray(Image.open(path)).copy()
            pixels[..., 0] = 255                      # red over the whole image: called "one"
            Image.fromarray(pixels).save(path)
            stickered.append(path.relative_to(root).as_posix())
    rows = ["path,concept"] + [f"{p.relative_to(root).as_posix()},photo"
                               for p in sorted(root.rglob("*.png"))]
    rows += [f"./{p},red sticker" for p in stickered]    # (a leading ./ is accepted)
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    cfg.write_text(cfg.read_text() + '\n[evaluation]\ntags = "tags.csv"\n')
    code, out, err = cli("build", "--config", cfg)
    assert code == 0, err
    code, out, err = cli("diagnose", tmp_path / "ws")
    assert code == 0, err
    assert "class one relies on 'red sticker'" in out
    report = atomic.read_json(tmp_path / "ws" / "diagnosis.json")
    flags = [f for f in report["runs"]["a"]["flags"] if f["rule"] == "shortcut"]
    assert [(f["epoch"], f["evidence"]["class_name"], f["evidence"]["concept"])
            for f in flags] == [(0, "one", "red sticker")]
    assert flags[0]["evidence"]["rate_in"] == 1.0 and flags[0]["evidence"]["rate_out"] == 0.0
    # the tag every image has is no shortcut, and a bad row is an error naming the line
    assert all(f["evidence"]["concept"] != "photo" for f in flags)
    (tmp_path / "tags.csv").write_text("path,concept\nnowhere/x.png,photo\n")
    code, out, err = cli("diagnose", tmp_path / "ws")
    assert code != 0 and "tags.csv" in err and "line 2" in err


def test_a_classes_txt_in_the_probe_root_sets_the_order(tmp_path, cli):
    cfg, root = colour_study(tmp_path)
    (root / "classes.txt").write_text("# output order\none\ntwo\n\nthree\n")
    code, out, err = cli("build", "--config", cfg)
    assert code == 0, err
    probe = Workspace(tmp_path / "ws").load_probe()
    assert probe.classes == ["one", "two", "three"]
    assert probe.info["class_order"].endswith("classes.txt")
    assert "probably differs" not in err


def test_class_lists_are_checked(tmp_path, cli):
    (tmp_path / "c.txt").write_text("a\nb\na\n")
    with pytest.raises(ConfigError, match="class 'a' is listed twice"):
        read_class_list(tmp_path / "c.txt")
    cfg, _ = colour_study(tmp_path, 'classes = ["one", "two"]')
    code, _, err = cli("build", "--config", cfg)
    assert code == 2 and "class folder(s) three" in err and err.count("\n") == 1


def test_more_classes_than_logits_is_a_clear_error(tmp_path, cli):
    root = write_colour_folder(tmp_path / "img", classes=("a", "b", "c", "d"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for epoch in range(2):
        torch.save(ColourClassifier().state_dict(), ckpt / f"epoch_{epoch}.pt")
    cfg = write_study(tmp_path, root, (ckpt / "epoch_{epoch}.pt").as_posix(),
                      arch="conftest:build_colour_classifier")
    code, _, err = cli("importance", "--config", cfg, "--run", "a", "--class", "d")
    assert code == 2 and "has 3 outputs" in err and "class(es) d have no logit" in err


# --------------------------------------------------------------------------- input size
def test_the_size_a_fixed_head_needs_is_found():
    check = check_input_size(LeNet().eval(), 224)
    assert not check.fits and check.suggestion == 28
    assert "expects 256 input features and gets 44944" in check.reason
    assert check_input_size(LeNet(), 28).fits
    assert check_input_size(TinyVGG(), 224).fits  # global pooling: any size


def test_layers_infers_the_input_size_or_names_the_one_that_fits(tmp_path, cli):
    code, out, err = cli("layers", "--arch", "conftest:build_lenet")
    assert code == 0, err
    assert "input size: 28" in out and "features.3" in out and "(input 28x28)" in out
    code, out, err = cli("layers", "--arch", "conftest:build_lenet",
                             "--input-size", "64")
    assert code == 2 and err.count("\n") == 1
    assert "does not take 64x64 images" in err and "--input-size 28" in err


def model_study(tmp_path, images, model_class, arch: str, epochs: int = 2):
    """Checkpoints of ``model_class`` (random weights per epoch) and a study of them."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for epoch in range(epochs):
        torch.save(randomise(model_class(), epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    return write_study(tmp_path, images, (ckpt / "epoch_{epoch}.pt").as_posix(), arch=arch)


def lenet_study(tmp_path, image_size: str = "") -> object:
    images = write_image_folder(tmp_path / "images", size=40)
    cfg = model_study(tmp_path, images, LeNet, "conftest:build_lenet")
    cfg.write_text(cfg.read_text().replace("image_size = 16\n", image_size) + SPACE)
    return cfg


def test_build_without_image_size_uses_the_size_the_model_takes(tmp_path, cli):
    cfg = lenet_study(tmp_path)
    code, out, err = cli("build", "--config", cfg)
    assert code == 0, err
    assert "using 28" in err
    ws = Workspace(tmp_path / "ws")
    assert ws.load_probe().image_size == (28, 28)
    assert ws.load_study()["probe"]["image_size"] == 28


def test_an_image_size_the_model_cannot_take_is_one_line_naming_the_fit(tmp_path, cli):
    cfg = lenet_study(tmp_path, "image_size = 64\n")
    code, out, err = cli("build", "--config", cfg)
    assert code == 2 and err.count("\n") == 1
    assert "does not take 64x64 images" in err and "[probe] image_size = 28" in err
    assert not (tmp_path / "ws" / "probe").exists()  # nothing decoded at the wrong size


# ------------------------------------------------------------------ checkpoint patterns
def test_epoch_patterns_with_globs_find_lightning_checkpoints(tmp_path, cli):
    images = write_image_folder(tmp_path / "images")
    ckpt = tmp_path / "lightning"
    ckpt.mkdir()
    for epoch, step in ((0, 7), (1, 107), (2, 207)):
        torch.save({"state_dict": {f"model.{k}": v for k, v in
                                   randomise(TinyVGG(), epoch).state_dict().items()}},
                   ckpt / f"epoch={epoch}-step={step}.ckpt")
    torch.save({"state_dict": {}}, ckpt / "last.ckpt")
    cfg = write_study(tmp_path, images, (ckpt / "epoch={epoch}-step=*.ckpt").as_posix())
    code, out, err = cli("stimuli", "--config", cfg)
    assert code == 0, err
    assert Workspace(tmp_path / "ws").stimuli_epochs("a") == [0, 1, 2]


def test_every_runs_checkpoints_are_checked_before_any_pass(tmp_path, cli, vgg_checkpoints,
                                                            image_folder):
    cfg = write_study(tmp_path, image_folder, (vgg_checkpoints / "epoch_{epoch}.pt").as_posix())
    cfg.write_text(cfg.read_text()
                   + '\n[[runs]]\nname = "b"\ncheckpoints = "nowhere/e_{epoch}.pt"\n')
    code, _, err = cli("build", "--config", cfg)
    assert code == 2 and "run 'b'" in err and "matches no file" in err
    assert not (tmp_path / "ws" / "stimuli").exists()  # run a's passes never ran


# -------------------------------------------------------------------------- training logs
def test_metric_names_are_normalised():
    assert normalise_name("val/accuracy") == "val_acc"
    assert normalise_name("Validation Loss") == "val_loss"
    assert normalise_name("loss") == "train_loss" and normalise_name("accuracy") == "train_acc"
    assert normalise_name("lr-SGD") == "lr" and normalise_name("learning_rate") == "lr"
    assert normalise_name("train_acc_epoch") == "train_acc_epoch"  # folded by _per_epoch


def test_a_lightning_csv_log_is_read_per_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = [  # CSVLogger: one row per logging call, blanks elsewhere, values in percent
        {"epoch": 0, "step": 9, "train_loss_step": 2.0},
        {"epoch": 0, "step": 19, "train_loss_step": 1.5},
        {"epoch": 0, "step": 19, "train_loss_epoch": 1.7, "train_acc_epoch": 40.0},
        {"epoch": 0, "step": 19, "val_loss": 1.6, "val_acc": 45.0},
        {"epoch": 1, "step": 29, "train_loss_step": 1.0},
        {"epoch": 1, "step": 39, "train_loss_epoch": 1.1, "train_acc_epoch": 70.0,
         "lr-SGD": 0.1},
        {"epoch": 1, "step": 39, "val_loss": 1.2, "val_acc": 65.0},
    ]
    columns = ["epoch", "step", "train_loss_step", "train_loss_epoch", "train_acc_epoch",
               "val_loss", "val_acc", "lr-SGD"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    got, info = read_metrics(tmp_path)  # the log directory works too
    assert got == [{"epoch": 0, "train_loss": 1.7, "train_acc": 0.4, "val_loss": 1.6,
                    "val_acc": 0.45},
                   {"epoch": 1, "train_loss": 1.1, "train_acc": 0.7, "val_loss": 1.2,
                    "val_acc": 0.65, "lr": 0.1}]
    assert info["format"] == "csv"


def test_a_tensorboard_log_is_read_by_step_or_by_its_epoch_scalar(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    by_step = tmp_path / "tb1"
    with SummaryWriter(by_step) as w:
        for epoch in range(3):
            w.add_scalar("train/loss", 2.0 - epoch / 2, epoch)
            w.add_scalar("val/accuracy", 0.3 + epoch / 10, epoch)
    rows, info = read_metrics(by_step)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["train_loss"] for r in rows] == [2.0, 1.5, 1.0]
    assert [r["val_acc"] for r in rows] == pytest.approx([0.3, 0.4, 0.5])

    lightning = tmp_path / "tb2"
    with SummaryWriter(lightning) as w:  # 10 steps per epoch, an `epoch` scalar alongside
        for step in range(30):
            w.add_scalar("epoch", step // 10, step)
            w.add_scalar("train_loss_step", 3.0 - step / 10, step)
            if step % 10 == 9:
                w.add_scalar("val_loss", 9.0 - step // 10, step)
    rows, info = read_metrics(lightning)
    assert info["epochs_from"] == "epoch scalar"
    assert [(r["epoch"], r["val_loss"]) for r in rows] == [(0, 9.0), (1, 8.0), (2, 7.0)]
    assert rows[2]["train_loss_step"] == pytest.approx(3.0 - 2.9)


def test_bad_logs_are_one_line_errors(tmp_path):
    (tmp_path / "a.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(ConfigError, match=r"a\.csv has no `epoch` column \(columns: step, loss\)"):
        read_metrics(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("epoch,note\n0,fine\n")
    with pytest.raises(ConfigError, match="no numeric metric"):
        read_metrics(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_bytes(b"epoch,loss\n0,\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_metrics(tmp_path / "c.csv")


def test_build_reads_a_runs_metrics_and_diagnoses_it(tmp_path, cli, vgg_checkpoints,
                                                     image_folder):
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_acc,val_acc,train_loss\n0,0.1,0.1,2.3\n1,0.5,0.4,1.2\n"
                   "2,0.9,0.6,0.4\n")
    cfg = write_study(tmp_path, image_folder, (vgg_checkpoints / "epoch_{epoch}.pt").as_posix())
    cfg.write_text(cfg.read_text() + f'metrics = "{log.as_posix()}"\n' + SPACE)
    code, out, err = cli("build", "--config", cfg)
    assert code == 0, err
    ws = Workspace(tmp_path / "ws")
    assert [r["val_acc"] for r in ws.load_metrics("a")] == [0.1, 0.4, 0.6]
    diagnosis = atomic.read_json(ws.path("diagnosis.json"))
    rows = diagnosis["runs"]["a"]["metrics"]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[2]["train_acc"] == 0.9
    assert rows[1]["turnover"] is not None and "diagnosis: run 'a'" in out
    # unchanged log: not read again; a changed one is
    stamp = ws.metrics_path("a").stat().st_mtime_ns
    assert cli("build", "--config", cfg)[0] == 0
    assert ws.metrics_path("a").stat().st_mtime_ns == stamp
    log.write_text("epoch,val_acc\n0,0.2\n")
    assert cli("build", "--config", cfg)[0] == 0
    assert ws.load_metrics("a") == [{"epoch": 0, "val_acc": 0.2}]


def test_a_missing_log_names_the_run_and_the_path(tmp_path, cli, vgg_checkpoints,
                                                  image_folder):
    cfg = write_study(tmp_path, image_folder, (vgg_checkpoints / "epoch_{epoch}.pt").as_posix())
    cfg.write_text(cfg.read_text() + 'metrics = "logs/missing.csv"\n')
    code, _, err = cli("stimuli", "--config", cfg)
    assert code == 2 and "run 'a': metrics" in err and "missing.csv" in err


# ------------------------------------------------------------------------- model outputs
def test_logits_are_found_in_tuples_dicts_and_by_key():
    logits = torch.randn(2, 5)
    assert select_logits(logits) is logits
    assert select_logits((logits, torch.randn(2, 3))) is logits
    assert select_logits({"logits": logits, "hidden": torch.randn(2, 8)}) is logits
    assert select_logits({"out": logits}, "out") is logits
    assert select_logits((torch.randn(2, 8), logits), 1) is logits
    with pytest.raises(ConfigError, match="without a \"logits\" entry; set \\[model\\] output"):
        select_logits({"out": logits})
    with pytest.raises(ConfigError, match="output = 'nope'"):
        select_logits({"out": logits}, "nope")


def test_a_model_returning_a_dict_builds_and_ranks_importance(tmp_path, cli, image_folder):
    from conftest import DictOutputVGG

    cfg = model_study(tmp_path, image_folder, DictOutputVGG, "conftest:build_dict_vgg")
    cfg.write_text(cfg.read_text() + SPACE)
    assert cli("build", "--config", cfg)[0] == 0
    code, _, err = cli("importance", "--config", cfg, "--run", "a", "--class", "cat")
    assert code == 0, err


def test_a_factory_that_raises_is_one_error_line(tmp_path, cli):
    (tmp_path / "badfactory.py").write_text("def build():\n    raise RuntimeError('no GPU')\n")
    (tmp_path / "broken.py").write_text("def build(:\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        code, _, err = cli("layers", "--arch", "badfactory:build")
        assert code == 2 and "factory badfactory:build raised RuntimeError: no GPU" in err
        code, _, err = cli("layers", "--arch", "broken:build")
        assert code == 2 and "SyntaxError" in err and "broken.py" in err
    finally:
        sys.path.remove(str(tmp_path))


# ----------------------------------------------------------------------- smaller defaults
def test_a_reversion_ratio_without_a_random_drop_is_na():
    from conceptevo.stages.importance import verification_table

    rows = [{"from": 1, "to": 2, "train": {"accuracy": 0.5, "top_bin_drop": 0.0,
                                           "other_bins_drop": 0.0, "random_drop": 0.0,
                                           "random_drop_std": 0.0}},
            {"from": 2, "to": 3, "train": {"accuracy": 0.5, "top_bin_drop": 0.1,
                                           "other_bins_drop": 0.0, "random_drop": -0.02,
                                           "random_drop_std": 0.01}}]
    text, figures = verification_table(rows)
    assert "inf" not in text and text.count("n/a") == 2
    assert figures["1->2"]["ratio"] is None and figures["2->3"]["ratio"] is None


def test_a_random_drop_left_by_rounding_is_no_drop():
    """Random reverts whose drops cancel out leave a mean of about 1e-19 (the ViT demo's
    19->20 pair): no ratio of 3e14, in the table and in the evaluation's faithfulness."""
    from conceptevo.stages.importance import reversion_ratio, verification_table

    rows = [{"from": 19, "to": 20, "train": {"accuracy": 0.8, "top_bin_drop": 0.001,
                                             "other_bins_drop": 0.0,
                                             "random_drop": 3e-19, "random_drop_std": 0.001}}]
    text, figures = verification_table(rows)
    assert figures["19->20"]["ratio"] is None and "n/a" in text and "e+" not in text
    assert reversion_ratio(0.02, 0.004) == pytest.approx(5.0)
    assert reversion_ratio(0.02, 3e-19) is None and reversion_ratio(0.02, -0.01) is None


def test_distinct_stimuli_reaches_one_when_every_image_is_a_stimulus():
    from conceptevo.evolution.diagnosis import snapshot_metrics
    from conceptevo.stimuli import StimuliResult

    layers = [__import__("conceptevo").LayerInfo("conv", "Conv2d", 50, 0, (1, 1))]
    n, k, images = 50, 4, 30  # 200 stimulus slots, 30 images
    stimuli = np.arange(n * k).reshape(n, k) % images
    result = StimuliResult(layers, stimuli, np.ones((n, k), np.float32),
                           np.zeros((n, k, 2), np.int16), np.zeros((images, 2), np.int64),
                           np.zeros((images, 2), np.float32), np.ones(n, np.float32),
                           np.ones(n, np.float32), np.ones(n, np.float32),
                           np.zeros(n, np.int64))
    assert snapshot_metrics(result)["distinct_stimuli"] == 1.0  # was 30 / 200 = 0.15
    half = StimuliResult(**{**result.__dict__, "stimuli": stimuli % 15})
    assert snapshot_metrics(half)["distinct_stimuli"] == 0.5


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask_and_rewrites_keep_their_mode(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic.write_text(tmp_path / "new.txt", "a")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~mask
        os.chmod(tmp_path / "new.txt", 0o640)
        atomic.write_json(tmp_path / "new.txt", {"b": 1})
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_runs_keep_the_study_order_in_the_diagnosis_and_the_metrics(tmp_path, cli,
                                                                    vgg_checkpoints,
                                                                    image_folder):
    cfg = write_study(tmp_path, image_folder, (vgg_checkpoints / "epoch_{epoch}.pt").as_posix())
    text = cfg.read_text().replace('name = "a"', 'name = "zeta"')
    cfg.write_text(text + f'\n[[runs]]\nname = "alpha"\ncheckpoints = '
                          f'"{(vgg_checkpoints / "epoch_{epoch}.pt").as_posix()}"\n' + SPACE)
    assert cli("build", "--config", cfg)[0] == 0
    ws = Workspace(tmp_path / "ws")
    for run in ("zeta", "alpha"):
        ws.save_metrics(run, [{"epoch": 0, "val_acc": 0.5}])
    diagnosis = json.loads(ws.path("diagnosis.json").read_text())
    assert list(diagnosis["runs"]) == ["zeta", "alpha"]
    from conceptevo.serve.data import StudyData

    assert list(StudyData(ws.root).metrics()["runs"]) == ["zeta", "alpha"]
    code, out, _ = cli("diagnose", ws.root)
    assert out.index("run zeta") < out.index("run alpha")


def test_the_run_map_figure_has_whole_epoch_ticks(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from conceptevo import viz

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig),
                                                                 real(fig, *a, **k))[1])
    rng = np.random.default_rng(0)
    viz.plot_run_map(rng.random((20, 2)), [0, 1, 2], [rng.random((20, 2))] * 3,
                     tmp_path / "map.png", "run a")
    (fig,) = saved
    colorbar = fig.axes[-1]
    ticks = [t for t in colorbar.get_yticks() if 0 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_the_readme_gives_the_cli_defaults():
    from pathlib import Path

    from conceptevo.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    parser = build_parser()
    report = parser._subparsers._group_actions[0].choices["report"]
    default = next(a.default for a in report._actions if a.dest == "patch_epochs")
    assert f"[--patch-epochs {default}]" in readme
