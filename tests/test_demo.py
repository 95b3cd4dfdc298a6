"""The demo end to end, in a tiny size: every stage runs and the workspace is complete."""

from __future__ import annotations

from conceptevo.config import load_config
from conceptevo.demo import run_demo
from conceptevo.workspace import Workspace


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
                                               "separate", "random"}
    assert set(out["checks"]["flags"]) == {"healthy", "lr-too-high", "overfit"}
    assert (root / "diagnosis.json").is_file()
    assert set(out["checks"]["reversion"]) == {"1->2", "2->3"}
    assert (root / "importance" / "healthy" / "c011").is_dir()
    assert (root / "report.html").stat().st_size > 10_000
    # a second run finds everything done and rewrites nothing
    files = sorted(root.glob("runs/*/checkpoints/*.pt")) + sorted(root.glob("stimuli/*/*.npz")) \
        + sorted(root.glob("space/**/*.npz")) + sorted(root.glob("importance/**/*.npz")) \
        + sorted(root.glob("evaluation/labels/**/*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    run_demo(root, size=size)
    printed = capsys.readouterr().out
    assert "accuracy (train / val) by epoch" in printed and "reversion check" in printed
    assert "alignment study" in printed and "Unified space (ours)" in printed
    assert "conceptevo" in printed and "serve" in printed
    assert [f.stat().st_mtime_ns for f in files] == stamps
