"""benchmarks/run.py: its smallest path runs every section it has and writes valid JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_benchmark_suite_smoke_run_writes_one_json(tmp_path):
    out = tmp_path / "run.json"
    env = dict(os.environ, CONCEPTEVO_PROGRESS="0")
    done = subprocess.run([sys.executable, str(RUN), "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["mode"] == "smoke" and doc["meta"]["failed_sections"] == []
    assert set(doc["results"]) == {"stimuli", "monitor", "concept_world", "scaling"}
    ratios = doc["ratios"]
    assert ratios["stimulus_pass_vs_forward/small_vgg/channels_last"]["value"] > 0
    assert ratios["monitor_snapshot_vs_forward/small_vgg"]["target"] == "<= 1.3"
    for name in ("probe_images", "neurons_bookkeeping", "checkpoints"):
        scaling = doc["results"]["scaling"][name]
        assert len(scaling["sizes"]) == len(scaling["seconds"]) == 3
        assert -1 <= ratios[f"scaling_r2/{name}"]["value"] <= 1
    assert doc["throughput"]["stimulus_pass/small_vgg/channels_last"] > 0
    assert all(v > 0 for v in doc["peak_rss_mb"].values())
    assert "[run]" in done.stderr  # progress on stderr
