"""The demo end to end, in a tiny size: every stage runs and the workspace is complete."""

from __future__ import annotations

from conceptevo.config import load_config
from conceptevo.demo import DemoSize, run_demo
from conceptevo.workspace import Workspace

TINY = DemoSize(n_train=240, n_val=96, epochs=1, probe_per_class=6, heldout_per_class=3,
                importance_images=6)


def test_tiny_demo_runs_every_stage(tmp_path, capsys):
    out = run_demo(tmp_path / "demo", size=TINY)
    printed = capsys.readouterr().out
    assert "accuracy (train / val) by epoch" in printed and "workspace:" in printed
    ws = Workspace(tmp_path / "demo")
    cfg = load_config(tmp_path / "demo" / "study.toml")
    assert [r.name for r in cfg.runs] == ["healthy", "lr-too-high", "overfit"]
    for run in ("healthy", "lr-too-high", "overfit"):
        assert [m["epoch"] for m in ws.load_metrics(run)] == [0, 1]
        assert ws.stimuli_epochs(run) == [0, 1]
    assert (tmp_path / "demo" / "figures" / "concept_world.png").stat().st_size > 10_000
    assert set(out["checks"]) == {"healthy_val_acc", "overfit_gap_points",
                                  "lr_too_high_val_acc", "reversion"}
    assert set(out["checks"]["reversion"]) == {"0->1"}
    assert (tmp_path / "demo" / "importance" / "healthy" / "c011").is_dir()
    assert "reversion check" in printed
    # a second run finds everything done and rewrites nothing
    files = sorted((tmp_path / "demo").glob("runs/*/checkpoints/*.pt")) + \
        sorted((tmp_path / "demo").glob("stimuli/*/*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    run_demo(tmp_path / "demo", size=TINY)
    assert [f.stat().st_mtime_ns for f in files] == stamps
