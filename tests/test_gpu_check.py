"""benchmarks/gpu_check.py: its CPU-only path (what CI can run) and its comparison, which must
pass on identical workspaces and fail on a perturbed one; and the measurement of
benchmarks/bounded_projection.py on a case it must get exactly."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_the_comparison_passes_on_equal_workspaces_and_fails_on_a_perturbed_one(
        tiny_demo, tmp_path):
    root, _, _ = tiny_demo
    same = gpu_check.compare(root, root)
    assert same["passed"] and same["stimuli_overlap"] == 1.0
    assert same["importance_spearman"] == pytest.approx(1.0)
    copy = tmp_path / "copy"
    for part in ("stimuli", "space", "importance"):
        shutil.copytree(root / part, copy / part)
    path = sorted((copy / "stimuli").rglob("*.npz"))[0]
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["stimuli"] = np.roll(arrays["stimuli"], 1, axis=0)  # every neuron's stimuli moved
    np.savez(path, **arrays)
    moved = gpu_check.compare(root, copy)
    assert not moved["passed"] and moved["stimuli_overlap"] < 0.95


def test_gpu_check_runs_its_cpu_half_and_says_what_it_skipped(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/gpu_check.py itself")
    assert gpu_check.main(["--per-class", "8", "--checkpoints", "2", "--classes", "1",
                           "--json", str(tmp_path / "out.json")]) == 0
    out = (tmp_path / "out.json").read_text()
    assert '"cpu": "built"' in out and "skipped: no CUDA device" in out
    assert "every comparison met its thresholds" in capsys.readouterr().err


def test_the_top_m_measurement_is_exact_when_the_top_m_hold_every_weight():
    import bounded_projection

    rng = np.random.default_rng(0)
    e = rng.normal(size=(30, 4))
    w = np.zeros((12, 30))
    for n in range(12):  # 5 images per neuron carry all its weight
        w[n, rng.choice(30, 5, replace=False)] = rng.dirichlet(np.ones(5))
    exact = w @ e
    got = bounded_projection.compare(w, e, exact, m=5)
    assert got["top_mass"] == pytest.approx(1.0)
    assert got["cosine_rest_as_mean"] == pytest.approx(1.0)
    assert got["neighbours10_renormalised"] == pytest.approx(1.0)
    # with fewer images than carry weight, the approximation is measurably off
    assert bounded_projection.compare(w, e, exact, m=2)["cosine_renormalised"] < 0.999
