"""The demo end to end, in a tiny size: every stage runs and the workspace is complete; the
ViT demo likewise, and what tells the two architectures apart."""

from __future__ import annotations

import contextlib
import io
import tomllib

import pytest

from conceptevo import cli, demo
from conceptevo.config import load_config
from conceptevo.demo import FULL, FULL_VIT, QUICK_VIT, DemoSize, run_demo, study_toml
from conceptevo.errors import ConfigError
from conceptevo.workspace import Workspace

#: the tests' ViT demo: small enough to build in well under a minute (the overfit regime's
#: 30 passes per epoch are cut to 5: they are most of the training)
TINY_VIT = DemoSize(n_train=240, n_val=96, epochs=3, probe_per_class=6, heldout_per_class=3,
                    importance_images=6, evaluation_images=4, evaluation_queries=20,
                    importance_classes=2, overfit_repeat=5)
_BUILT: dict = {}


def build_tiny_vit_demo(tmp_path_factory):
    """The tiny ViT demo workspace, built once per test session (the browser tests use it
    too): (root, run_demo's result with what it printed under ``"printed"``, size)."""
    if "vit" not in _BUILT:
        root = tmp_path_factory.mktemp("tiny-vit-demo") / "demo"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            out = run_demo(root, size=TINY_VIT, arch="vit")
        _BUILT["vit"] = (root, dict(out, printed=printed.getvalue()), TINY_VIT)
    return _BUILT["vit"]


@pytest.fixture(scope="session")
def tiny_vit_demo(tmp_path_factory):
    return build_tiny_vit_demo(tmp_path_factory)


def test_tiny_demo_runs_every_stage(tiny_demo, capsys):
    root, out, size = tiny_demo
    ws = Workspace(root)
    cfg = load_config(root / "study.toml")
    assert [r.name for r in cfg.runs] == ["healthy", "lr-too-high", "overfit"]
    for run in ("healthy", "lr-too-high", "overfit"):
        assert [m["epoch"] for m in ws.load_metrics(run)] == [0, 1, 2, 3]
        assert ws.stimuli_epochs(run) == ws.projection_epochs(run) == [0, 1, 2, 3]
    assert (root / "figures" / "concept_world.png").stat().st_size > 10_000
    assert set(out["checks"]) == {"healthy_val_acc", "overfit_gap_points",
                                  "lr_too_high_val_acc", "reversion", "flags", "alignment"}
    assert set(out["checks"]["alignment"]) == {"unified", "stimuli", "no-indirect", "correlation",
                                               "correlation-probe", "matched", "separate",
                                               "random"}
    assert set(out["checks"]["flags"]) == {"healthy", "lr-too-high", "overfit"}
    assert (root / "diagnosis.json").is_file()
    assert set(out["checks"]["reversion"]) == {"1->2", "2->3"}
    assert sorted(d.name for d in (root / "importance" / "healthy").iterdir()) == \
        ["c000", "c001", "c002"]  # the first size.importance_classes classes
    assert (root / "report.html").stat().st_size > 10_000
    # a second run finds everything done and rewrites nothing
    files = sorted(root.glob("runs/*/checkpoints/*.pt")) + sorted(root.glob("stimuli/*/*.npz")) \
        + sorted(root.glob("space/**/*.npz")) + sorted(root.glob("importance/**/*.npz")) \
        + sorted(root.glob("evaluation/labels/**/*.npz")) + [root / "evaluation/evaluation.json"]
    stamps = [f.stat().st_mtime_ns for f in files]
    run_demo(root, size=size)
    printed = capsys.readouterr().out
    assert "accuracy (train / val) by epoch" in printed and "reversion check" in printed
    assert "alignment study" in printed and "Unified space (ours)" in printed
    assert "conceptevo" in printed and "serve" in printed
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_tiny_vit_demo_runs_every_stage_on_token_layers(tiny_vit_demo):
    root, out, size = tiny_vit_demo
    ws = Workspace(root)
    cfg = load_config(root / "study.toml")
    assert cfg.model.arch == out["arch"] == "conceptevo:small_vit"
    assert [(r.name, r.train.recipe, r.train.regime) for r in cfg.runs] == [
        ("healthy", "vit", "healthy"), ("lr-too-high", "vit", "lr-too-high"),
        ("overfit", "vit", "overfit")]
    for run in ("healthy", "lr-too-high", "overfit"):
        assert [m["epoch"] for m in ws.load_metrics(run)] == [0, 1, 2, 3]
        assert ws.stimuli_epochs(run) == ws.projection_epochs(run) == [0, 1, 2, 3]
    stimuli = ws.load_stimuli("healthy", 3)
    assert [(li.name, li.layout, li.prefix, tuple(li.map_size)) for li in stimuli.layers] == [
        (f"blocks.{i}.mlp.act", "tokens", 1, (8, 8)) for i in range(4)]
    assert stimuli.n_neurons == 512
    assert set(out["checks"]) == {"healthy_val_acc", "overfit_gap_points",
                                  "lr_too_high_val_acc", "reversion", "flags", "alignment"}
    assert set(out["checks"]["reversion"]) == {"1->2", "2->3"}
    unified = out["checks"]["alignment"]["unified"]
    assert 0 <= unified["ci95"][0] <= unified["auc"] <= unified["ci95"][1] <= 1
    assert (root / "importance" / "healthy" / "c001").is_dir()
    assert (root / "report.html").stat().st_size > 10_000
    # the export says what each neuron is: a hidden unit of a token layer
    from conceptevo import export

    table, embeddings, _, _ = export.neurons(ws)
    assert len(table["run"]) == 3 * 4 * 512 == len(embeddings)
    assert set(table["layout"]) == {"tokens"}
    assert sorted(set(table["layer"])) == [f"blocks.{i}.mlp.act" for i in range(4)]
    assert max(table["channel"]) == 127
    printed = out["printed"]
    assert "a small vision transformer (conceptevo:small_vit): 3 runs of 3 epochs" in printed
    assert "(target >= 75%)" in printed


def test_the_vit_demo_study_and_the_cnn_study_unchanged():
    vit = tomllib.loads(study_toml(FULL_VIT, 12, arch="vit"))
    assert vit["model"]["arch"] == "conceptevo:small_vit"
    assert [r["train"] for r in vit["runs"]] == [
        {"recipe": "vit", "regime": "healthy", "epochs": 20, "seed": 0},
        {"recipe": "vit", "regime": "lr-too-high", "epochs": 20, "seed": 0},
        {"recipe": "vit", "regime": "overfit", "epochs": 20, "seed": 0}]
    assert vit["runs"][2]["kwargs"] == {"dropout": 0.0, "num_classes": 12}
    assert vit["evaluation"]["epochs"] == [0, 5, 10, 15, 20]
    assert tomllib.loads(study_toml(QUICK_VIT, 12, arch="vit"))["evaluation"]["epochs"] == \
        [0, 3, 6]
    # the CNN's study, as before the ViT: no recipe key, every other epoch labelled
    cnn = study_toml(FULL, 12)
    assert cnn == study_toml(FULL, 12, arch="cnn") and "recipe" not in cnn
    parsed = tomllib.loads(cnn)
    assert parsed["model"]["arch"] == "conceptevo:small_vgg"
    assert parsed["evaluation"]["epochs"] == [0, 2, 4, 6, 8]
    assert parsed["runs"][0]["train"] == {"regime": "healthy", "epochs": 8, "seed": 0}
    with pytest.raises(ConfigError, match="no architecture 'rnn'"):
        study_toml(FULL, 12, arch="rnn")


def test_a_demo_workspace_of_the_other_architecture_is_refused(tmp_path):
    root = tmp_path / "demo-workspace"
    root.mkdir()
    (root / "study.toml").write_text(study_toml(FULL, 12))
    with pytest.raises(ConfigError, match=r"holds the demo study of conceptevo:small_vgg "
                                          r"\(--arch cnn\).*demo-workspace-vit"):
        run_demo(root, arch="vit")
    assert sorted(p.name for p in root.iterdir()) == ["study.toml"]  # nothing written


def test_demo_command_picks_the_architecture_and_its_workspace(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda root, quick, arch: calls.append(
        (str(root), quick, arch)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--arch", "vit", "--quick"]) == 0
    assert cli.main(["demo"]) == 0
    assert cli.main(["demo", "--arch", "vit", "--workspace", "mine"]) == 0
    assert calls == [("demo-workspace-vit", True, "vit"), ("demo-workspace", False, "cnn"),
                     ("mine", False, "vit")]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--arch", "resnet"])
