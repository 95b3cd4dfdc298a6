"""A corpus of bad input, end to end: every case ends with exit status 2 and one ``error:``
line that names the key, file or value at fault, never a traceback or a hang, and leaves a
workspace already built by an earlier, good study exactly as it was.

The cases are those of a user audit (issue "Security and reliability"): undecodable study
files, impossible devices, workspace paths that are files, failing model factories,
out-of-range or non-finite settings, names the file system refuses, images that cannot be
resized, checkpoints with impossible epochs; and, separately, inputs that must be handled
without an error (FIFOs and link loops in class folders, float TIFFs, tuple outputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyVGG, randomise, write_image_folder, write_study
from PIL import Image

from conceptevo.cli import main
from conceptevo.config import StudyConfig, load_config
from conceptevo.errors import ConfigError

SPACE = "\n[space]\ndim = 4\nepochs = 3\numap_neighbors = 5\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny study, built once: its images, checkpoints, config text and workspace."""
    root = tmp_path_factory.mktemp("corpus")
    images = write_image_folder(root / "images")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    for epoch in range(3):
        torch.save(randomise(TinyVGG(), epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    cfg = write_study(root, images, (ckpt / "epoch_{epoch}.pt").as_posix())
    cfg.write_text(cfg.read_text() + SPACE)
    assert main(["-q", "build", "--config", str(cfg)]) == 0
    (root / "models").mkdir()
    (root / "models" / "corpus_raises.py").write_text(
        "def build():\n    raise RuntimeError('CUDA out of memory in the factory')\n")
    (root / "models" / "corpus_broken.py").write_text("def build(:\n    pass\n")
    return {"root": root, "images": images, "ckpt": ckpt, "text": cfg.read_text(),
            "ws": root / "ws"}


def digest(directory: Path) -> dict[str, str]:
    """Every file of a workspace with its content hash (the lock's own files aside)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and not p.name.startswith(".conceptevo.lock"):
            out[str(p.relative_to(directory))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------- the corpus itself
def _replace(old: str, new: str):
    def make(base, tmp):
        assert old in base["text"], old
        return base["text"].replace(old, new, 1)
    return make


def _append(section: str, lines: str):
    """Add ``lines`` to ``[section]`` (appended as a new table when the study has none)."""
    def make(base, tmp):
        text = base["text"]
        if f"[{section}]\n" in text:
            return text.replace(f"[{section}]\n", f"[{section}]\n{lines}\n", 1)
        return text + f"\n[{section}]\n{lines}\n"
    return make


def _top(line: str):
    return _replace('device = "cpu"\n', f'device = "cpu"\n{line}\n')


def _bytes(data: bytes):
    def make(base, tmp):
        return data
    return make


def _workspace_is_a_file(base, tmp):
    (tmp / "afile").write_text("not a directory")
    return base["text"].replace(f'workspace = "{base["ws"].as_posix()}"',
                                f'workspace = "{(tmp / "afile").as_posix()}"')


def _negative_epoch(base, tmp):
    ckpt = tmp / "ckpt"
    shutil.copytree(base["ckpt"], ckpt)
    shutil.copy(ckpt / "epoch_0.pt", ckpt / "epoch_-1.pt")
    return base["text"].replace(base["ckpt"].as_posix() + "/epoch_{epoch}.pt", ckpt.as_posix())


def _strip_image(base, tmp):
    images = tmp / "images"
    shutil.copytree(base["images"], images)
    Image.new("L", (20_000_000, 1), 128).save(images / "cat" / "strip.png")
    return base["text"].replace(base["images"].as_posix(), images.as_posix())


def _train_lr_inf(base, tmp):
    """A run trained by ConceptEvo with an infinite learning rate."""
    images = base["images"].as_posix()
    return (base["text"].replace('name = "a"',
                                 'name = "a"\ntrain = { regime = "healthy", lr = inf }', 1)
            + f'\n[training]\ntrain_root = "{images}"\nval_root = "{images}"\n')


CORPUS = {
    # the study file itself
    "latin-1 byte": (_bytes(b'workspace = "ws"\n# caf\xe9\n'), ["not UTF-8", "0xe9"]),
    "binary file": (_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01" * 20), ["not UTF-8"]),
    # devices
    "device banana": (_replace('device = "cpu"', 'device = "banana"'), ["banana", "not a device"]),
    "device meta": (_replace('device = "cpu"', 'device = "meta"'), ["meta"]),
    "device mps": (_replace('device = "cpu"', 'device = "mps"'), ["mps", "not available"]),
    "device cuda:7": (_replace('device = "cpu"', 'device = "cuda:7"'), ["cuda:7"]),
    # where things are
    "workspace is a file": (_workspace_is_a_file, ["afile", "not a directory"]),
    # models
    "num_classes -1": (_append("model", "kwargs = { num_classes = -1 }"),
                       ["conftest:build_tiny_vgg", "num_classes"]),
    "factory raises": (_replace('arch = "conftest:build_tiny_vgg"',
                                'arch = "corpus_raises:build"'),
                       ["corpus_raises:build raised RuntimeError", "out of memory"]),
    "factory syntax error": (_replace('arch = "conftest:build_tiny_vgg"',
                                      'arch = "corpus_broken:build"'),
                             ["SyntaxError", "corpus_broken.py"]),
    # seeds
    "seed -1": (_top("seed = -1"), ["seed = -1", "between 0 and"]),
    "seed 2**32": (_top("seed = 4294967296"), ["seed", "between 0 and"]),
    "probe seed huge": (_append("probe", "seed = 99999999999"), ["probe.seed"]),
    # probe
    "image_size 100000": (_replace("image_size = 16", "image_size = 100000"),
                          ["probe.image_size = 100000", "between 8 and 2048"]),
    "std inf": (_replace("std = [0.25, 0.25, 0.25]", "std = [inf, 1.0, 1.0]"),
                ["probe.std[0]", "not a finite number"]),
    "std 0": (_replace("std = [0.25, 0.25, 0.25]", "std = [0.0, 1.0, 1.0]"), ["probe.std[0]"]),
    "mean nan": (_replace("mean = [0.5, 0.5, 0.5]", "mean = [nan, 0.5, 0.5]"),
                 ["probe.mean[0]", "not a finite"]),
    "per_class 2**63-1": (_append("probe", "per_class = 9223372036854775807"),
                          ["probe.per_class"]),
    "fraction nan": (_append("probe", "fraction = nan"), ["probe.fraction"]),
    "fraction 0": (_append("probe", "fraction = 0.0"), ["probe.fraction = 0"]),
    "a 1 x 20,000,000 image": (_strip_image, ["strip.png", "20000000 x 1"]),
    # rankings
    "k_stimuli > probe images": (_replace("k_stimuli = 4", "k_stimuli = 1000"),
                                 ["k_stimuli = 1000", "exceeds the 18 probe images"]),
    "k_responsive > neurons": (_replace("k_responsive = 5", "k_responsive = 500"),
                               ["k_responsive = 500", "exceeds the 30 probed neurons"]),
    "k_stimuli 0": (_replace("k_stimuli = 4", "k_stimuli = 0"), ["stimuli.k_stimuli = 0"]),
    "batch_size huge": (_replace("batch_size = 5", "batch_size = 1000000000"),
                        ["stimuli.batch_size"]),
    # the space
    "lr nan": (_append("space", "lr = nan"), ["space.lr", "not a finite"]),
    "lr inf": (_append("space", "lr = inf"), ["space.lr", "not a finite"]),
    "lr 1e308": (_append("space", "lr = 1e308"), ["space.lr = 1e+308"]),
    "lr 0": (_append("space", "lr = 0.0"), ["space.lr = 0"]),
    "umap_min_dist -1": (_append("space", "umap_min_dist = -1.0"), ["space.umap_min_dist"]),
    "umap_min_dist nan": (_append("space", "umap_min_dist = nan"), ["space.umap_min_dist"]),
    "umap_min_dist inf": (_append("space", "umap_min_dist = inf"), ["space.umap_min_dist"]),
    "dim huge": (_replace("dim = 4", "dim = 1000000000"), ["space.dim"]),
    "negatives huge": (_append("space", "negatives = 1000000000"), ["space.negatives"]),
    "space epochs huge": (_replace("epochs = 3", "epochs = 1000000000"), ["space.epochs"]),
    "temperature inf": (_append("space", "temperature = inf"), ["space.temperature"]),
    "ridge inf": (_append("space", "ridge = inf"), ["space.ridge"]),
    "ridge negative": (_append("space", "ridge = -1.0"), ["space.ridge"]),
    "umap metric": (_append("space", 'umap_metric = "nonsense"'), ["umap_metric"]),
    "base_epoch missing": (_append("space", "base_epoch = 7"), ["base_epoch 7"]),
    # importance and evaluation
    "bins huge": (_append("importance", "bins = 1000000000"), ["importance.bins"]),
    "random_draws huge": (_append("importance", "random_draws = 1000000000"),
                          ["importance.random_draws"]),
    "images 0": (_append("importance", "images = 0"), ["importance.images = 0"]),
    "quantile 2": (_append("evaluation", "quantile = 2.0"), ["evaluation.quantile"]),
    "bootstrap huge": (_append("evaluation", "bootstrap = 10000000000"),
                       ["evaluation.bootstrap"]),
    # diagnosis thresholds
    "diagnosis nan": (_append("diagnosis", "overfit_gap = nan"), ["diagnosis.overfit_gap"]),
    "diagnosis negative": (_append("diagnosis", "stall_turnover = -0.5"),
                           ["diagnosis.stall_turnover = -0.5"]),
    "diagnosis snapshots 0": (_append("diagnosis", "stall_snapshots = 0"),
                              ["diagnosis.stall_snapshots = 0"]),
    # names
    "run name 300 chars": (_replace('name = "a"', 'name = "' + "r" * 300 + '"'),
                           ["run name", "bytes long; at most 100"]),
    "run name NUL": (_replace('name = "a"', 'name = "a\\u0000b"'), ["control character"]),
    "run name slash": (_replace('name = "a"', 'name = "a/b"'), ["usable as a folder name"]),
    "run name dot": (_replace('name = "a"', 'name = ".."'), ["usable as a folder name"]),
    "checkpoint path NUL": (_replace('checkpoints = "', 'checkpoints = "\\u0000'),
                            ["control character"]),
    # checkpoints
    "negative epoch": (_negative_epoch, ["epoch_-1.pt", "negative epoch"]),
    # training tables
    "train lr inf": (_train_lr_inf, ["runs[0].train.lr", "not a finite"]),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_input_is_one_error_line_and_changes_nothing(case, base, tmp_path, capsys):
    make, words = CORPUS[case]
    before = digest(base["ws"])
    text = make(base, tmp_path)
    config = tmp_path / "study.toml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(base["root"] / "models"))
    try:
        code = main(["-q", "build", "--config", str(config)])
    finally:
        sys.path.remove(str(base["root"] / "models"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert digest(base["ws"]) == before, "a failed command changed the workspace"


def test_the_corpus_covers_every_numeric_setting():
    """Every int or float setting of the schema declares its range (schema.bounded), so that
    none is accepted unchecked; and every one of them refuses NaN, infinity and 10**12."""
    from conceptevo.config import _from_dict

    def numeric(tp) -> bool:
        args = typing.get_args(tp) or (tp,)
        return any(a in (int, float) or typing.get_origin(a) is list and
                   typing.get_args(a)[0] in (int, float) for a in args)

    def sections(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            tp = hints[f.name]
            inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
            if inner:
                yield from sections(inner[0], f"{prefix}{f.name}.")
            elif numeric(tp):
                yield cls, f, f"{prefix}{f.name}", tp

    checked = 0
    for cls, f, name, tp in sections(StudyConfig):
        assert "range" in f.metadata, f"{name} has no declared range"
        is_list = any(typing.get_origin(a) is list for a in (typing.get_args(tp) or (tp,)))
        for bad in (math.nan, math.inf, -math.inf, 10 ** 12, -(10 ** 12)):
            value = [bad] * 3 if is_list else bad
            if not is_list and float not in (typing.get_args(tp) or (tp,)) and \
                    isinstance(bad, float):
                continue  # an int setting refuses floats by type already
            with pytest.raises(ConfigError):
                _from_dict(cls, {f.name: value}, name)
            checked += 1
    assert checked > 100


# ------------------------------------------------------------ handled without an error
def test_a_fifo_and_a_link_loop_in_a_class_folder_neither_hang_nor_duplicate(tmp_path, capsys):
    images = write_image_folder(tmp_path / "images")
    os.mkfifo(images / "cat" / "pipe.png")                     # reading it would block
    os.symlink("..", images / "dog" / "loop")                  # dog/loop/dog/loop/...
    os.symlink(images / "eel", images / "cat" / "eels")        # eel's images again, as cat
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for epoch in range(2):
        torch.save(randomise(TinyVGG(), epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    cfg = write_study(tmp_path, images, (ckpt / "epoch_{epoch}.pt").as_posix())
    assert main(["-q", "stimuli", "--config", str(cfg)]) == 0
    from conceptevo.workspace import Workspace

    probe = Workspace(tmp_path / "ws").load_probe()
    assert len(probe) == 18  # 6 images per class, none twice, no FIFO
    assert not any("pipe" in p or "loop" in p or "eels" in p for p in probe.paths)


def test_float_tiffs_are_not_black(tmp_path):
    from conceptevo.data.probe import load_image_folder

    (tmp_path / "a").mkdir()
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    Image.fromarray(ramp, mode="F").save(tmp_path / "a" / "ramp.tif")
    probe = load_image_folder(tmp_path, 16)
    assert probe.images[0, :, -1].min() >= 250 and probe.images[0, :, 0].max() <= 5


def test_a_class_named_like_markup_keeps_the_report_whole(tmp_path):
    from conceptevo.report import script_safe_json

    name = "<!--<script>"
    text = script_safe_json({"classes": [name, "</script><b>"]})
    assert "<" not in text and ">" not in text
    import json

    assert json.loads(text)["classes"][0] == name


def test_an_unchecked_config_round_trips(tmp_path, base):
    """The base study itself loads (the corpus' mutations are what fails)."""
    path = tmp_path / "study.toml"
    path.write_text(base["text"])
    assert load_config(path).stimuli.k_stimuli == 4


def test_a_diverged_run_recorded_with_nan_builds_and_importance_names_it(tmp_path, capsys):
    """A run whose last checkpoint is all NaN, with on_nonfinite = "record": the build
    succeeds (the NaN neurons are dead, off the map), the diagnosis flags it, and importance
    on that epoch is one error line saying the logits are NaN."""
    images = write_image_folder(tmp_path / "images")
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        for epoch in range(3):
            state = randomise(TinyVGG(), epoch).state_dict()
            if run == "b" and epoch == 2:
                state = {k: v.fill_(math.nan) if v.is_floating_point() else v
                         for k, v in state.items()}
            torch.save(state, tmp_path / run / f"epoch_{epoch}.pt")
    cfg = write_study(tmp_path, images, (tmp_path / "a" / "epoch_{epoch}.pt").as_posix())
    text = cfg.read_text().replace("batch_size = 5", 'batch_size = 5\non_nonfinite = "record"')
    cfg.write_text(text + f'\n[[runs]]\nname = "b"\ncheckpoints = '
                          f'"{(tmp_path / "b" / "epoch_{epoch}.pt").as_posix()}"\n' + SPACE)
    assert main(["-q", "build", "--config", str(cfg)]) == 0, capsys.readouterr().err
    from conceptevo.workspace import Workspace, atomic

    ws = Workspace(tmp_path / "ws")
    _, proj = ws.load_arrays(ws.projection_path("b", 2))
    assert np.isnan(proj["coords"]).all() and proj["dead"].all()
    flags = atomic.read_json(ws.path("diagnosis.json"))["runs"]["b"]["flags"]
    assert [f["rule"] for f in flags][:1] == ["divergence"]
    assert all("200%" not in f["message"] for f in flags)  # dead + degenerate <= 100%
    capsys.readouterr()
    code = main(["-q", "importance", "--config", str(cfg), "--run", "b", "--class", "cat"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "NaN/inf logits" in err and "1 -> 2" in err


def test_a_nan_head_counts_no_hit_in_the_reversion_check():
    from conceptevo.evolution.importance import class_hits

    logits = torch.tensor([[math.nan, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, math.inf, 1.0]])
    top1, top5 = class_hits(logits, 0)
    assert top1.tolist() == [False, False, False] and top5.tolist() == [False, True, False]
    top1, _ = class_hits(logits, 1)
    assert top1.tolist() == [False, True, False]
