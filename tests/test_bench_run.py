"""benchmarks/run.py: its smallest path runs every section it has and writes valid JSON; the
README's Performance section quotes benchmarks/results/run.json; the neuron embedding's thread
setting (the fix behind its figures under CPU contention)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import check_readme  # noqa: E402


def test_benchmark_suite_smoke_run_writes_one_json(tmp_path):
    out = tmp_path / "run.json"
    env = dict(os.environ, CONCEPTEVO_PROGRESS="0")
    done = subprocess.run([sys.executable, str(RUN), "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["meta"]["mode"] == "smoke" and doc["meta"]["failed_sections"] == []
    assert set(doc["results"]) == {"stimuli", "stimuli_vit", "memory", "monitor",
                                   "concept_world", "scaling"}
    ratios = doc["ratios"]
    assert ratios["stimulus_pass_vs_forward/small_vgg/channels_last"]["value"] > 0
    assert ratios["stimulus_pass_speedup_vs_reference/small_vgg/channels_last"]["value"] > 0
    row = doc["results"]["stimuli"]["rows"][0]
    assert row["same_stimuli_as_reference"] == row["same_responsive_as_reference"] == 1.0
    assert ratios["monitor_snapshot_vs_forward/small_vgg"]["target"] == "<= 1.3"
    assert ratios["recorded_stimulus_pass_peak_rss/256_vs_64_images"]["target"] == "<= 1.2"
    for name in ("probe_images", "neurons_bookkeeping", "checkpoints"):
        scaling = doc["results"]["scaling"][name]
        assert len(scaling["sizes"]) == len(scaling["seconds"]) == 3
        assert -1 <= ratios[f"scaling_r2/{name}"]["value"] <= 1
    assert doc["throughput"]["stimulus_pass/small_vgg/channels_last"] > 0
    # the transformer's pass: no reference (it probes Conv2d only), a profile of its parts
    assert ratios["stimulus_pass_vs_forward/small_vit/contiguous"]["target"] == "<= 1.3"
    profile = doc["results"]["stimuli_vit"]["profiles"][0]
    assert profile["model"] == "small_vit" and profile["neurons"] == 512
    assert profile["ours_s"] > 0 and "vs_reference" not in doc["results"]["stimuli_vit"]["rows"][0]
    assert all(v > 0 for v in doc["peak_rss_mb"].values())
    assert doc["readme"] == check_readme.rows(doc) and len(doc["readme"]) >= 5
    assert set(doc["meta"]["sections"]) == set(doc["results"])
    assert "[run]" in done.stderr  # progress on stderr


def test_readme_performance_section_quotes_run_json():
    doc = json.loads(check_readme.RUN_JSON.read_text(encoding="utf-8"))
    readme = check_readme.README.read_text(encoding="utf-8")
    assert check_readme.check(readme, doc) == []


def test_readme_check_catches_a_drifted_number():
    doc = json.loads(check_readme.RUN_JSON.read_text(encoding="utf-8"))
    readme = check_readme.README.read_text(encoding="utf-8")
    start, end = check_readme.section(readme)
    body = check_readme.table(check_readme.rows(doc))
    last = body.splitlines()[-1]
    digits = [c for c in last if c.isdigit()]
    assert digits
    drifted = readme[:start] + readme[start:end].replace(
        last, last.replace(digits[-1], str((int(digits[-1]) + 1) % 10))) + readme[end:]
    assert check_readme.check(drifted, doc)
    # a figure quoted in prose that run.json does not hold
    stray = readme[:start] + readme[start:end].replace(
        check_readme.END, check_readme.END + "\n\nWe are 123,457x faster.") + readme[end:]
    assert any("123457" in p for p in check_readme.check(stray, doc))


def test_neuron_embedding_runs_on_one_thread_and_restores_the_setting():
    from conceptevo.space.coactivation import CoActivation
    from conceptevo.space.neuron_embedding import NeuronEmbedding

    rng = np.random.default_rng(0)
    co = CoActivation.from_stimuli(rng.integers(0, 300, (120, 8)))
    before = torch.get_num_threads()
    seen = []
    real_step = NeuronEmbedding._step

    def step(self, *args):
        seen.append(torch.get_num_threads())
        return real_step(self, *args)

    NeuronEmbedding._step = step
    try:
        runs = []
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            runs.append(NeuronEmbedding(dim=8, epochs=2, seed=3).fit(co).embedding_)
            assert torch.get_num_threads() == threads  # restored
        assert set(seen) == {1}  # every update of the default fit ran on one thread
        mine = NeuronEmbedding(dim=8, epochs=2, seed=3, num_threads=None)
        torch.set_num_threads(2)
        seen.clear()
        mine.fit(co)
        assert set(seen) == {2}  # None keeps the process's setting
    finally:
        NeuronEmbedding._step = real_step
        torch.set_num_threads(before)
    # same seed -> same embedding, whatever the process's thread count
    assert all(np.array_equal(runs[0], r) for r in runs[1:])


def test_the_issue_zoo_runs_end_to_end_at_test_size(tmp_path):
    """benchmarks/diagnosis_zoo.py --smoke: every regime trained (2 epochs, tiny data),
    probed, diagnosed and compared with the baselines, one JSON written."""
    out = tmp_path / "zoo.json"
    env = dict(os.environ, CONCEPTEVO_PROGRESS="0")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diagnosis_zoo.py"),
                           "--smoke", "--seeds", "0", "--out", str(tmp_path / "zoo"),
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["regimes"] == ["healthy", "lr-too-high", "lr-high", "lr-too-low", "overfit",
                              "shortcut", "label-noise", "frozen-layer"]
    for row in doc["summary"].values():
        assert set(row) >= {"conceptevo", "metric-rules", "metric-only", "cka", "weightwatcher"}
    # thresholds kept clear of every healthy run never flag one
    for method in ("metric-only clear", "cka clear", "weightwatcher clear"):
        assert doc["summary"]["healthy"][method]["detected"] == 0
    # the frozen layer is frozen at any size: its flag names it from the first epoch
    frozen = doc["table"]["frozen-layer"]["conceptevo"][0]
    assert "frozen-layer" in frozen["rules"] and frozen["epoch"] == 1
    assert doc["timings"]["build"]["0"]["train_s"] > 0
    assert "first flag epoch per seed" in done.stdout


def test_the_readme_zoo_table_is_the_results_file():
    """Every cell of the README's issue-zoo table (first flag epoch per seed, final
    validation accuracy) is read from benchmarks/results/diagnosis_zoo.json."""
    doc = json.loads((ROOT / "benchmarks" / "results" / "diagnosis_zoo.json").read_text())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**The issue zoo"):]
    section = section[:section.index("\n\n", section.index("| regime |"))]
    methods = ("conceptevo", "metric-rules", "metric-only", "cka", "weightwatcher")
    seen = set()
    for line in section.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if cells[0] not in doc["regimes"]:
            continue
        regime = cells[0]
        seen.add(regime)
        for method, cell in zip(methods, cells[1:6]):
            epochs = doc["summary"][regime][method]["epochs"]
            want = "/".join("-" if e is None else str(e) for e in epochs)
            assert cell.split(" ")[0].strip("*") == want, (regime, method, cell, want)
        acc = "/".join(f"{a['val_acc']:.2f}" for a in doc["final_accuracy"][regime])
        assert cells[6] == acc, (regime, cells[6], acc)
    assert seen == set(doc["regimes"])


def test_the_readme_evaluation_tables_are_the_results_files():
    """The README's alignment tables (over 3 training seeds x 3 space seeds) and its ranker
    table are formatted from benchmarks/results/ by the benchmarks' own functions."""
    import evaluation_seeds
    import rankers

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    doc = json.loads((ROOT / "benchmarks" / "results" / "evaluation_seeds.json").read_text())
    assert evaluation_seeds.readme_rows(doc) == doc["readme"]
    for row in doc["readme"] + evaluation_seeds.depth_rows(doc):
        assert row in readme, row
    # the prose's counts: ours does not win against correlation on every pair
    assert doc["pooled"]["concepts"]["correlation"]["ours_wins"] < 9
    assert doc["pooled"]["concepts"]["matched"]["ours_wins"] == 0
    doc = json.loads((ROOT / "benchmarks" / "results" / "rankers.json").read_text())
    assert rankers.readme_rows(doc) == doc["readme"]
    for row in doc["readme"]:
        assert row in readme, row

    def ours_ahead(name):   # (training seed, layer) cells where our top bin hurts more
        return sum(t["rankers"]["ours"]["per_layer"][layer]["top_bin_drop"]
                   > t["rankers"][name]["per_layer"][layer]["top_bin_drop"]
                   for t in doc["per_training_seed"].values() for layer in doc["layers"])

    assert "hurts more on 14 of the 18 cells" in readme and ours_ahead("magnitude") == 18 - 14
    assert "on 17 or 18 of the 18" in readme
    assert min(ours_ahead(n) for n in ("change", "weight", "taylor", "activation")) == 17
    assert ours_ahead("random") == 18
