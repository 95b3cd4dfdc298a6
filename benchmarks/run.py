"""The whole benchmark suite in one command, written to one JSON file.

    .venv/bin/python benchmarks/run.py            # full: about 20 minutes on 2 CPU cores
    .venv/bin/python benchmarks/run.py --quick    # a few minutes: checks that it all works
    .venv/bin/python benchmarks/run.py --smoke    # seconds (the test suite runs it)
    .venv/bin/python benchmarks/run.py --only stimuli --update   # re-measure one section

Writes ``benchmarks/results/run.json`` (``--out`` to change; rewritten after each section, so
an interrupted run keeps what it measured). Run the full suite on a quiet machine: every
figure is a time. Sections (``--only`` / ``--skip`` take their names):

* ``end_to_end``: the demo study (``conceptevo demo``'s stages: data, training, stimuli,
  space, importance, diagnosis, evaluation, report), each stage in its own process: its time
  and its peak resident memory (and the memory it added to the process after the imports);
  ``--quick`` runs a tiny demo of one epoch, importance for 2 classes and no evaluation;
* ``stimuli``, ``monitor``, ``importance``, ``space``, ``concept_world``: the figures of
  bench_stimuli.py, bench_monitor.py, bench_importance.py, bench_space.py and
  bench_concept_world.py (their functions, at the sizes of the mode), the reference's
  algorithms included (stimulus passes, per-image importance loop, per-pair neuron
  embedding, image-embedding gradient descent; see each file);
* ``stimuli_vit``: bench_stimuli.py for vision transformers: the stimulus pass of
  ConceptEvo's small_vit and of torchvision's vit_b_16 (64x64 inputs, fewer images) against a
  bare forward pass (target <= 1.3), and where the pass spends its time (profile_tokens);
* ``memory``: bench_memory.py, the peak resident memory of a recorded stimulus pass
  (activations kept) over two probe sizes, each in a fresh process, and their ratio;
* ``diagnosis``: calibrate_diagnosis.py's confusion table, for the end-to-end study's seed;
* ``scaling``: how time grows with the number of probe images (stimulus pass), of neurons
  (the pass's bookkeeping, and the unified space) and of checkpoints (the stimuli stage),
  three sizes each, with a least-squares line and its R^2;
* ``distributed``: bench_distributed.py, one process vs torchrun with 2 (gloo).

Every ratio ends up in ``ratios`` at the top of the file, with its target where the project
states one; ``throughput`` gathers the stimulus pass's images per second; ``readme`` holds
the rows of the README's Performance table, formatted from these results
(benchmarks/check_readme.py checks the README against them, ``--write`` rewrites the table).
``--update`` keeps the other sections of an existing output file and replaces only those
measured now (``meta.sections`` records when and in which mode each section was measured,
and the load average around it). Each section runs in
a fresh process (spawned), so its memory peak, its threads and its one-off compilations
(umap-learn's JIT) are its own (``--smoke`` runs them in one process); progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("end_to_end", "stimuli", "stimuli_vit", "memory", "monitor", "importance", "space",
            "concept_world", "diagnosis", "scaling", "distributed")

# Sizes per mode. Full: what fits in about 20 minutes on 2 cores; quick: a few minutes;
# smoke: seconds, the smallest sizes that still run every code path cheaply.
MODES = {
    "full": {
        "end_to_end": {"demo": "full"},
        "stimuli": {"models": ["small_vgg", "resnet18", "vgg16"], "images": 256,
                    "batch_size": 128, "repeats": 3},
        "stimuli_vit": {"models": {"small_vit": 256, "vit_b_16": 64}, "batch_size": 64,
                        "repeats": 3},
        "memory": {"sizes": [512, 8192], "model": "resnet18", "image_size": 64,
                   "batch_size": 128},
        "monitor": {"models": ["small_vgg", "resnet18"], "images": 900, "repeats": 3},
        "importance": {"models": ["small_vgg", "resnet18", "vgg16"], "images": 50,
                       "batch_size": 50, "reference_images": 2, "reference_batch": 50},
        "space": {"neurons": 4224, "images": 45_000, "checkpoints": 10,
                  "reference_epochs": 20, "seeds": 2, "contention_epochs": 5,
                  "contention_repeats": 3, "gd_iterations_timed": 3, "gd_max_iter": 30_000},
        "concept_world": {"n": 2048, "n_write": 1024, "repeats": 3},
        "scaling": {"images": [512, 1024, 2048], "neurons": [1000, 2000, 4000],
                    "checkpoints": [2, 4, 8], "checkpoint_images": 240, "space_images": 20_000,
                    "repeats": 2},
        "distributed": {"per_class": 40, "checkpoints": 4, "classes": 3,
                        "importance_images": 20},
    },
    "quick": {
        "end_to_end": {"demo": "tiny", "importance_classes": 2, "skip_stages": ["evaluation"]},
        "stimuli": {"models": ["small_vgg"], "images": 128, "batch_size": 64, "repeats": 2},
        "stimuli_vit": {"models": {"small_vit": 128, "vit_b_16": 32}, "batch_size": 32,
                        "repeats": 2},
        "memory": {"sizes": [512, 2048], "model": "resnet18", "image_size": 64,
                   "batch_size": 128},
        "monitor": {"models": ["small_vgg"], "images": 128, "repeats": 2},
        "importance": {"models": ["small_vgg"], "images": 8, "batch_size": 8,
                       "reference_images": 2, "reference_batch": 50},
        "space": {"neurons": 400, "images": 4000, "checkpoints": 3, "reference_epochs": 20,
                  "seeds": 1, "contention_epochs": 2, "contention_repeats": 1,
                  "gd_iterations_timed": 2, "gd_max_iter": 30_000},
        "concept_world": {"n": 256, "n_write": 128, "repeats": 2},
        "scaling": {"images": [128, 256, 512], "neurons": [250, 500, 1000],
                    "checkpoints": [1, 2, 4], "checkpoint_images": 120, "space_images": 3000,
                    "repeats": 1},
        "distributed": {"per_class": 8, "checkpoints": 2, "classes": 1,
                        "importance_images": 4},
    },
    "smoke": {
        "stimuli": {"models": ["small_vgg"], "images": 64, "batch_size": 32, "repeats": 1,
                    "layouts": [True]},
        "stimuli_vit": {"models": {"small_vit": 32}, "batch_size": 32, "repeats": 1},
        "memory": {"sizes": [64, 256], "model": "resnet18", "image_size": 32,
                   "batch_size": 64},
        "monitor": {"models": ["small_vgg"], "images": 32, "repeats": 1},
        "concept_world": {"n": 32, "n_write": 16, "repeats": 1},
        "scaling": {"images": [32, 64, 96], "neurons": [100, 200, 400],
                    "checkpoints": [1, 2, 3], "checkpoint_images": 48, "space_images": 1000,
                    "repeats": 1, "skip": ["space"]},
    },
}

# --quick's demo: the tests' tiny demo with one epoch (the overfit regime trains 30 passes over
# its 120 images per epoch whatever the size, so epochs are what costs)
DEMO_TINY = {"n_train": 240, "n_val": 96, "epochs": 1, "probe_per_class": 6,
             "heldout_per_class": 3, "importance_images": 6}


def log(text: str) -> None:
    print(f"[run] {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares line y = slope * x + intercept, and its R^2."""
    import numpy as np

    x_, y_ = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(x_, y_, 1)
    residual = y_ - (slope * x_ + intercept)
    total = float(((y_ - y_.mean()) ** 2).sum())
    r2 = 1 - float((residual ** 2).sum()) / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": round(r2, 4)}


# ----------------------------------------------------------------------------- sections
def section_stimuli(p: dict) -> dict:
    import bench_stimuli

    rows = []
    for model in p["models"]:
        for layout in p.get("layouts", [True, False]):
            log(f"stimuli: {model}, {'channels-last' if layout else 'contiguous'}, "
                f"{p['images']} images x {p['repeats']} repeats")
            rows.append(bench_stimuli.measure(model, p["images"], p["batch_size"],
                                              p["repeats"], layout,
                                              with_reference=p.get("reference", True)))
    return {"rows": rows}


def section_stimuli_vit(p: dict) -> dict:
    """The stimulus pass of each transformer of ``p["models"]`` (name: probe images) against
    a bare forward pass (contiguous, as the pipeline runs a model without convolutions), and
    its profile (bench_stimuli.profile_tokens)."""
    import bench_stimuli

    rows, profiles = [], []
    for model, images in p["models"].items():
        log(f"stimuli (transformers): {model}, {images} images x {p['repeats']} repeats")
        rows.append(bench_stimuli.measure(model, images, p["batch_size"], p["repeats"], False,
                                          with_reference=False))
        log(f"stimuli (transformers): profile of {model}")
        profiles.append(bench_stimuli.profile_tokens(model, images, p["batch_size"],
                                                     p["repeats"]))
    return {"rows": rows, "profiles": profiles}


def section_memory(p: dict) -> dict:
    import bench_memory

    log(f"memory: recorded stimulus pass of {p['model']} over {p['sizes']} images "
        f"({p['image_size']}x{p['image_size']}), each in a fresh process")
    return bench_memory.measure(p["sizes"], p["model"], p["image_size"], p["batch_size"])


def section_monitor(p: dict) -> dict:
    import bench_monitor

    rows = []
    for model in p["models"]:
        log(f"monitor: {model}, {p['images']} images x {p['repeats']} repeats")
        rows.append(bench_monitor.measure(model, p["images"], p["repeats"]))
    return {"rows": rows}


def section_importance(p: dict) -> dict:
    import bench_importance

    rows = []
    for model in p["models"]:
        log(f"importance: {model}, {p['images']} images, batched, our naive loop, the "
            f"reference's loop ({p['reference_images']} images timed)")
        rows.append(bench_importance.measure(model, p["images"], p["batch_size"],
                                             p["reference_images"], p["reference_batch"]))
    return {"rows": rows}


def section_space(p: dict) -> dict:
    import bench_space

    log(f"space: {p['neurons']} neurons, {p['images']} images, {p['checkpoints']} checkpoints "
        f"(reference loop: {p['reference_epochs']} of its 20 epochs)")
    return bench_space.measure(p["neurons"], p["images"], p["checkpoints"],
                               p["reference_epochs"], p["seeds"],
                               contention_epochs=p["contention_epochs"],
                               contention_repeats=p["contention_repeats"],
                               gd_iterations_timed=p["gd_iterations_timed"],
                               gd_max_iter=p["gd_max_iter"])


def section_concept_world(p: dict) -> dict:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import bench_concept_world

    log(f"concept world: generate {p['n']} images, write {p['n_write']}")
    return bench_concept_world.measure(p["n"], p["n_write"], 64, p["repeats"])


def section_distributed(p: dict) -> dict:
    import bench_distributed

    log(f"distributed: {p['per_class']} x 12 probe images, {p['checkpoints']} checkpoints, "
        "1 process vs torchrun with 2")
    return bench_distributed.measure(p["per_class"], p["checkpoints"], 2,
                                     heldout_per_class=max(2, p["per_class"] // 3),
                                     importance_images=p["importance_images"],
                                     classes=p["classes"])


def _timed_best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def section_scaling(p: dict) -> dict:
    import numpy as np
    import torch

    from conceptevo.models.adapter import LayerInfo, ModelAdapter
    from conceptevo.models.registry import build_model
    from conceptevo.stimuli import StimulusAccumulator, compute_stimuli

    out: dict = {}
    reps = p["repeats"]
    # --- probe images: the stimulus pass of small_vgg (channels-last, as the pipeline)
    torch.manual_seed(0)
    model = build_model("conceptevo:small_vgg", {"num_classes": 12}).eval()
    model = model.to(memory_format=torch.channels_last)
    adapter = ModelAdapter(model)
    data = torch.randn(max(p["images"]), 3, 64, 64).contiguous(
        memory_format=torch.channels_last)
    adapter.describe(data[:1])

    def pass_over(n: int):
        batches = [(data[s:min(s + 128, n)], torch.arange(s, min(s + 128, n)))
                   for s in range(0, n, 128)]
        compute_stimuli(adapter, batches, n, k_stimuli=20, k_responsive=20).result()

    pass_over(min(p["images"]))  # warm-up
    times = []
    for n in p["images"]:
        log(f"scaling: stimulus pass over {n} probe images")
        times.append(_timed_best(lambda n=n: pass_over(n), reps))
    fit = linear_fit(p["images"], times)
    out["probe_images"] = {"what": "stimulus pass of small_vgg (64x64, 432 neurons, k=20)",
                           "sizes": p["images"], "seconds": [round(t, 4) for t in times],
                           "fit": fit, "images_per_s": [round(n / t, 1) for n, t in
                                                        zip(p["images"], times)],
                           "images_per_s_from_slope": round(1 / fit["slope"], 1)
                           if fit["slope"] > 0 else None}

    # --- neurons: the pass's bookkeeping (top-k merges, statistics) on given activations
    n_img, bs = 1024 if max(p["images"]) >= 512 else 256, 128
    g = torch.Generator().manual_seed(0)
    times = []
    for n in p["neurons"]:
        log(f"scaling: stimulus bookkeeping of {n} neurons over {n_img} images")
        layers = [LayerInfo("layer", "Conv2d", n, 0, (8, 8))]
        acts = torch.randn(n_img, n, generator=g)
        where = torch.randint(0, 64, (n_img, n), generator=g)

        def bookkeeping(n=n, layers=layers, acts=acts, where=where):
            acc = StimulusAccumulator(layers, n_img, 20, 20)
            for s in range(0, n_img, bs):
                acc.update(acts[s:s + bs], where[s:s + bs], torch.arange(s, s + bs))
            acc.result()

        if not times:
            bookkeeping()  # warm-up
        times.append(_timed_best(bookkeeping, reps))
    out["neurons_bookkeeping"] = {
        "what": f"StimulusAccumulator.update + result, {n_img} images, k=20",
        "sizes": p["neurons"], "seconds": [round(t, 4) for t in times],
        "fit": linear_fit(p["neurons"], times)}

    if "space" not in p.get("skip", []):
        import bench_space

        from conceptevo.space.coactivation import CoActivation
        from conceptevo.space.image_embedding import project, solve_image_embedding, stimulus_matrix
        from conceptevo.space.neuron_embedding import NeuronEmbedding

        times = []
        for n in p["neurons"]:
            log(f"scaling: unified space of {n} neurons ({p['space_images']} probe images)")
            stimuli, _, _ = bench_space.synthetic_base(n, p["space_images"], 20, 20)

            def space(stimuli=stimuli, n=n):
                co = CoActivation.from_stimuli(stimuli)
                v = NeuronEmbedding(dim=30, epochs=20, lr=0.01, negatives=3, seed=0).fit(
                    co).embedding_.astype(np.float64)
                a, vocab = stimulus_matrix(stimuli, np.arange(n), p["space_images"])
                e = np.zeros((p["space_images"], 30))
                e[vocab] = solve_image_embedding(a, v)
                project(stimuli, e)

            if not times:
                space()  # warm-up (the first fit initialises torch's thread pools)
            times.append(_timed_best(space, reps))
        out["neurons_space"] = {
            "what": "neuron embedding (20 epochs) + image embedding + one projection",
            "sizes": p["neurons"], "seconds": [round(t, 4) for t in times],
            "fit": linear_fit(p["neurons"], times)}

    # --- checkpoints: the pipeline's stimuli stage (load, pass, save) on a study
    out["checkpoints"] = _checkpoint_scaling(p["checkpoints"], p["checkpoint_images"], reps)
    return out


def _checkpoint_scaling(sizes: list[int], n_images: int, repeats: int) -> dict:
    import shutil

    import torch

    from conceptevo import pipeline
    from conceptevo.config import load_config
    from conceptevo.data.concept_world import ConceptWorld
    from conceptevo.models.registry import build_model
    from conceptevo.stages.context import Context
    from conceptevo.stages.probe import ensure_probe_sets
    from conceptevo.stages.stimuli import ensure_stimuli

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # one chunk of the concept world (256 images: every class), n_images // 12 per class
        ConceptWorld(image_size=64, seed=0).write_image_folder(root / "data", 256)
        (root / "ckpt").mkdir()
        for epoch in range(max(sizes)):
            torch.manual_seed(epoch)
            torch.save(build_model("conceptevo:small_vgg", {"num_classes": 12}).state_dict(),
                       root / "ckpt" / f"epoch_{epoch}.pt")
        times = []
        for n in sizes:
            ckpt = root / f"ckpt_{n}"
            ckpt.mkdir()
            for epoch in range(n):
                os.link(root / "ckpt" / f"epoch_{epoch}.pt", ckpt / f"epoch_{epoch}.pt")
            (root / f"study_{n}.toml").write_text(f"""
workspace = "ws_{n}"
device = "cpu"
[probe]
root = "data"
per_class = {n_images // 12}
image_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[model]
arch = "conceptevo:small_vgg"
kwargs = {{ num_classes = 12 }}
[[runs]]
name = "a"
checkpoints = "ckpt_{n}/epoch_{{epoch}}.pt"
""")
            cfg = load_config(root / f"study_{n}.toml")
            ws = pipeline.open_workspace(cfg)
            probe, _ = ensure_probe_sets(Context.create(cfg, ws))
            log(f"scaling: stimuli stage of {n} checkpoint(s), {len(probe)} probe images")

            def stage(cfg=cfg, ws=ws, probe=probe):
                shutil.rmtree(ws.root / "stimuli", ignore_errors=True)
                ensure_stimuli(Context.create(cfg, ws), probe)

            if not times:
                stage()  # warm-up
            times.append(_timed_best(stage, repeats))
        return {"what": f"pipeline stimuli stage of small_vgg, {n_images} probe images (64x64)",
                "sizes": sizes, "seconds": [round(t, 4) for t in times],
                "fit": linear_fit(sizes, times)}


def _demo_size(name: str):
    from conceptevo.demo import FULL, QUICK, DemoSize

    return {"full": FULL, "quick": QUICK}.get(name) or DemoSize(**DEMO_TINY)


def e2e_stage(stage: str, root: str, size_name: str, importance_classes: int | None = None
              ) -> dict:
    """One stage of the demo study, as ``conceptevo demo`` runs it (in its own process)."""
    from conceptevo import pipeline
    from conceptevo.config import load_config
    from conceptevo.demo import importance_pairs, prepare_data, study_toml
    from conceptevo.stages.context import Context
    from conceptevo.stages.figures import write_space_figures
    from conceptevo.stages.probe import ensure_probe_sets
    from conceptevo.stages.stimuli import ensure_stimuli
    from conceptevo.stages.train import ensure_training
    from conceptevo.workspace import Workspace

    size = _demo_size(size_name)
    root_p = Path(root)
    base_rss = _rss_mb()
    t = time.perf_counter()
    info: dict = {}
    if stage == "data":
        Workspace(root_p, create=True)
        classes = prepare_data(root_p, size)
        (root_p / "study.toml").write_text(study_toml(size, len(classes)), encoding="utf-8")
        info["images"] = size.n_train + size.n_val
    else:
        cfg = load_config(root_p / "study.toml")
        ws = Workspace(root_p)
        if stage == "training":
            ensure_training(Context.create(cfg, pipeline.open_workspace(cfg)))
            info["runs"], info["epochs"] = len(cfg.runs), size.epochs
        elif stage == "stimuli":
            probe, _ = ensure_probe_sets(Context.create(cfg, ws))
            report = ensure_stimuli(Context.create(cfg, ws), probe)
            info["checkpoints"] = len(report.computed) + len(report.skipped)
            info["probe_images"] = len(probe)
        elif stage == "space":
            from conceptevo.stages.space import ensure_space

            probe = ws.load_probe()
            ensure_space(Context.create(cfg, ws), probe)
            write_space_figures(ws)
        elif stage == "importance":
            from conceptevo.stages.importance import ensure_importance

            probe = ws.load_probe()
            heldout = ws.load_probe("heldout")
            pairs = importance_pairs(size.epochs)
            classes = list(range(len(probe.classes)))[:importance_classes]
            ensure_importance(Context.create(cfg, ws), probe, heldout, "healthy", classes, pairs)
            info["classes"], info["pairs"] = len(classes), len(pairs)
        elif stage == "diagnosis":
            from conceptevo.stages.diagnosis import run_diagnosis

            info["report"] = run_diagnosis(ws)
        elif stage == "evaluation":
            from conceptevo.stages.evaluation import run_evaluation

            alignment = run_evaluation(cfg, ws)["alignment"]
            info["alignment"] = {m: {"auc": round(r["auc"], 3),
                                     "ci95": [round(x, 3) for x in r["ci95"]],
                                     "n_queries": r["n_queries"]}
                                 for m, r in alignment["methods"].items()}
            info["beats_all_baselines"] = alignment["beats_all_baselines"]
        elif stage == "report":
            from conceptevo.report import write_report

            path = write_report(root_p, root_p / "report.html")
            info["report_mb"] = round(path.stat().st_size / 1e6, 2)
    seconds = time.perf_counter() - t
    peak = _rss_mb()
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1),
            "rss_after_imports_mb": round(base_rss, 1),
            "added_rss_mb": round(peak - base_rss, 1), **info}


E2E_STAGES = ("data", "training", "stimuli", "space", "importance", "diagnosis", "evaluation",
              "report")


def _in_child(fn, *args):
    """``fn(*args)`` in a fresh spawned process (not a daemon: it may start its own)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def section_end_to_end(p: dict, workdir: Path) -> dict:
    root = workdir / "demo"
    stages: dict = {}
    report = None
    failed = []
    for stage in E2E_STAGES:
        if stage in p.get("skip_stages", []):
            continue
        log(f"end to end ({p['demo']} demo): {stage}")
        t = time.perf_counter()
        try:
            res = _in_child(e2e_stage, stage, str(root), p["demo"], p.get("importance_classes"))
        except Exception as e:  # noqa: BLE001  (record it; the later stages may still run)
            import traceback

            log(f"end to end: {stage} FAILED: {e!r}")
            stages[stage] = {"error": "".join(traceback.format_exception(e))[-3000:]}
            failed.append(stage)
            continue
        res["with_process_start_s"] = round(time.perf_counter() - t, 2)
        if stage == "diagnosis":
            report = res.pop("report")
        stages[stage] = res
    done = [s for s in stages.values() if "seconds" in s]
    total = sum(s["seconds"] for s in done)
    st = stages.get("stimuli", {})
    return {"demo": p["demo"], "size": _demo_size(p["demo"]).__dict__,
            "importance_classes": p.get("importance_classes") or "all", "stages": stages,
            "total_s": round(total, 1),
            "total_with_process_starts_s": round(sum(s["with_process_start_s"]
                                                     for s in done), 1),
            "peak_rss_mb": max((s["peak_rss_mb"] for s in done), default=0),
            "stimuli_images_per_s": round(st["probe_images"] * st["checkpoints"]
                                          / max(st["seconds"], 1e-9), 1) if "seconds" in st
            else None,
            "skipped_stages": p.get("skip_stages", []), "failed_stages": failed,
            "_diagnosis": report}


def section_diagnosis(diagnosis_report: dict | None, demo: str) -> dict:
    import calibrate_diagnosis

    if diagnosis_report is None:
        return {"skipped": "needs the end_to_end section (its study is the calibration's)"}
    table = calibrate_diagnosis.confusion({0: diagnosis_report})
    expected = {"healthy": "none", "lr-too-high": "collapse", "overfit": "overfitting"}
    hits = {run: bool(table.get(run, {}).get(rule)) for run, rule in expected.items()}
    clean = {run: all(not table.get(run, {}).get(r) for r in calibrate_diagnosis.RULES
                      if r != expected[run]) for run in expected}
    return {"demo": demo, "seeds": [0], "table": table, "expected": expected,
            "expected_flag_raised": hits, "no_other_flag": clean,
            "note": "calibrate_diagnosis.py runs seeds 0 1 2 of the full demo; this is seed 0"
                    + ("" if demo == "full" else f" of the {demo} demo (fewer epochs: the "
                       "flags need not match)")}


def _child(name: str, params: dict) -> dict:
    fn = globals()[f"section_{name}"]
    if name != "concept_world":  # it sets its thread variables before numpy loads
        import numpy  # noqa: F401  (the baseline below includes the imports)
        import torch  # noqa: F401

        import conceptevo  # noqa: F401
    base = _rss_mb()
    t = time.perf_counter()
    out = fn(params)
    return {"result": out, "seconds": round(time.perf_counter() - t, 2),
            "peak_rss_mb": round(_rss_mb(), 1), "rss_after_imports_mb": round(base, 1)}


# -------------------------------------------------------------------------------- ratios
def collect_ratios(results: dict) -> tuple[dict, dict]:
    """Every ratio of the suite (with its target where the project states one), and the
    stimulus-pass throughput figures."""
    ratios: dict = {}
    throughput: dict = {}

    def add(key: str, value, target: str | None = None) -> None:
        ratios[key] = {"value": value, **({"target": target} if target else {})}

    for row in results.get("stimuli", {}).get("rows", []):
        add(f"stimulus_pass_vs_forward/{row['model']}/{row['layout']}", row["ratio"], "<= 1.25")
        throughput[f"stimulus_pass/{row['model']}/{row['layout']}"] = row["images_per_s"]
        if "vs_reference" in row:
            add(f"stimulus_pass_speedup_vs_reference/{row['model']}/{row['layout']}",
                row["vs_reference"], "> 1: ours faster (its stimulus pass alone)")
            add(f"stimulus_pass_speedup_vs_reference_both_passes/{row['model']}/"
                f"{row['layout']}", row["vs_reference_both_passes"],
                "> 1: ours faster (its stimulus and responsive-neuron passes)")
    for row in results.get("stimuli_vit", {}).get("rows", []):
        add(f"stimulus_pass_vs_forward/{row['model']}/{row['layout']}", row["ratio"], "<= 1.3")
        throughput[f"stimulus_pass/{row['model']}/{row['layout']}"] = row["images_per_s"]
    mem = results.get("memory")
    if mem and "peak_ratio" in mem:
        lo, hi = mem["sizes"][0], mem["sizes"][-1]
        add(f"recorded_stimulus_pass_peak_rss/{hi}_vs_{lo}_images", mem["peak_ratio"], "<= 1.2")
    for row in results.get("monitor", {}).get("rows", []):
        add(f"monitor_snapshot_vs_forward/{row['model']}", row["ratio"], "<= 1.3")
    for row in results.get("importance", {}).get("rows", []):
        add(f"importance_batched_speedup/{row['model']}", row["speedup"], ">= 20")
        add(f"importance_batched_vs_naive_peak_rss/{row['model']}",
            round(row["batched_peak_rss_mb"] / max(row["naive_peak_rss_mb"], 1e-9), 3))
        if "speedup_vs_reference" in row:
            add(f"importance_batched_speedup_vs_reference/{row['model']}",
                row["speedup_vs_reference"])
            add(f"importance_sign_agreement_with_reference/{row['model']}",
                row["sign_agreement_with_reference"])
    space = results.get("space")
    if space and "neuron_embedding" in space:
        ne, ie = space["neuron_embedding"], space["image_embedding"]
        add("space_neuron_embedding_speedup", ne["speedup"])
        add("space_neuron_embedding_loss_ours_vs_reference",
            round(ne["ours_loss"] / ne["reference_loss"], 4))
        if "speedup_to_reference_stop" in ie:
            add("space_image_embedding_speedup/to_reference_stop_rmse_0.01",
                ie["speedup_to_reference_stop"])
            add("space_image_embedding_speedup/at_our_rmse", ie["speedup_at_our_rmse"])
        for row in space.get("neuron_embedding_threads", {}).get("rows", []):
            busy = row["cpu_bound_processes_alongside"]
            add(f"space_neuron_embedding_process_threads_vs_1_thread/{busy}_busy",
                row["slowdown_process_threads_vs_one"])
            add(f"space_neuron_embedding_speedup_1_thread/{busy}_busy",
                row["speedup_one_thread_vs_reference"])
    cw = results.get("concept_world")
    if cw:
        throughput["concept_world_generate"] = cw["generate_images_per_s"]
        throughput["concept_world_write"] = cw["write_images_per_s"]
    sc = results.get("scaling", {})
    for name in ("probe_images", "neurons_bookkeeping", "neurons_space", "checkpoints"):
        if name in sc:
            add(f"scaling_r2/{name}", sc[name]["fit"]["r2"], ">= 0.95 (linear)")
    if "probe_images" in sc:
        throughput["stimulus_pass/scaling_slope"] = sc["probe_images"]["images_per_s_from_slope"]
    e2e = results.get("end_to_end")
    if e2e and "stimuli_images_per_s" in e2e:
        throughput["end_to_end_stimuli_stage"] = e2e["stimuli_images_per_s"]
    dist = results.get("distributed")
    if dist and "stimuli_s" in dist:
        for stage in ("stimuli", "importance"):
            add(f"distributed_speedup/{stage}/vs_1_process_all_threads",
                dist[f"{stage}_speedup_vs_1_process_all_threads"])
            add(f"distributed_speedup/{stage}/vs_1_process_1_thread",
                dist[f"{stage}_speedup_vs_1_process_1_thread"])
    diag = results.get("diagnosis")
    if diag and "expected_flag_raised" in diag:
        ok = [diag["expected_flag_raised"][r] and diag["no_other_flag"][r]
              for r in diag["expected"]]
        add("diagnosis_regimes_flagged_as_expected", f"{sum(ok)}/{len(ok)}", "3/3")
    return ratios, throughput


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; for tests)")
    ap.add_argument("--out", default=str(HERE / "results" / "run.json"))
    ap.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)})")
    ap.add_argument("--skip", help="comma-separated sections to leave out")
    ap.add_argument("--workdir", help="where the end-to-end study is written (default: a "
                                      "temporary directory, removed at the end)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the end-to-end study (in --workdir/demo): a demo workspace")
    ap.add_argument("--update", action="store_true",
                    help="keep the other sections of an existing --out file; replace only the "
                         "sections measured now")
    args = ap.parse_args(argv)
    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    sizes = MODES[mode_name]
    chosen = [s for s in SECTIONS if s in sizes or s == "diagnosis" and "end_to_end" in sizes]
    for flag, keep in ((args.only, True), (args.skip, False)):
        if flag:
            names = set(flag.split(","))
            unknown = names - set(SECTIONS)
            if unknown:
                ap.error(f"unknown section(s) {sorted(unknown)}; sections: {SECTIONS}")
            chosen = [s for s in chosen if (s in names) == keep]
    import numpy
    import torch

    out_path = Path(args.out)
    t0 = time.perf_counter()
    doc: dict = {
        "meta": {"mode": mode_name, "command": " ".join([Path(sys.executable).name,
                                                          *sys.argv]),
                 "started": datetime.now(UTC).isoformat(timespec="seconds"),
                 "python": platform.python_version(), "torch": torch.__version__,
                 "numpy": numpy.__version__, "machine": platform.machine(),
                 "processor": platform.processor(), "cpu_count": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(),
                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                 "sizes": {s: sizes.get(s) for s in chosen}},
        "ratios": {}, "throughput": {}, "results": {}, "peak_rss_mb": {}, "seconds": {}}
    doc["meta"]["sections"] = {}
    if args.update and out_path.exists():
        old = json.loads(out_path.read_text())
        for key in ("results", "peak_rss_mb", "seconds"):
            doc[key] = {k: v for k, v in old.get(key, {}).items() if k not in chosen}
        old_sections = old.get("meta", {}).get("sections", {})
        for name in doc["results"]:
            doc["meta"]["sections"][name] = old_sections.get(name) or {
                "mode": old["meta"].get("mode"), "started": old["meta"].get("started"),
                "load_average_at_start": old["meta"].get("load_average_at_start")}
        doc["meta"]["updated_from"] = {"started": old["meta"].get("started"),
                                       "mode": old["meta"].get("mode")}
        doc["meta"]["sizes"] = {**old["meta"].get("sizes", {}), **doc["meta"]["sizes"]}

    def write() -> None:
        doc["ratios"], doc["throughput"] = collect_ratios(doc["results"])
        try:
            import check_readme

            doc["readme"] = check_readme.rows(doc)
        except Exception as e:  # noqa: BLE001  (a section missing or failed: say which)
            doc["readme"] = {"error": repr(e)}
        doc["meta"]["total_s"] = round(time.perf_counter() - t0, 1)
        doc["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        os.replace(tmp, out_path)

    log(f"{mode_name} benchmark suite: {', '.join(chosen)} -> {out_path}")
    diagnosis_report = None
    failed: list[str] = []
    if args.keep and not args.workdir:
        ap.error("--keep needs --workdir")
    if args.keep and (Path(args.workdir) / "demo").exists():
        ap.error(f"{Path(args.workdir) / 'demo'} exists; the end-to-end study starts empty")
    keep = contextlib.nullcontext(args.workdir) if args.keep else \
        tempfile.TemporaryDirectory(dir=args.workdir)
    with keep as tmp:
        for name in chosen:
            t = time.perf_counter()
            section_meta = {"mode": mode_name,
                            "started": datetime.now(UTC).isoformat(timespec="seconds"),
                            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
            log(f"== {name}")
            try:
                if name == "end_to_end":
                    res = section_end_to_end(sizes[name], Path(tmp))
                    diagnosis_report = res.pop("_diagnosis")
                    doc["peak_rss_mb"][name] = res["peak_rss_mb"]
                    if res["failed_stages"]:
                        failed.append(name)
                elif name == "diagnosis":
                    res = section_diagnosis(diagnosis_report, sizes["end_to_end"]["demo"])
                elif mode_name == "smoke":  # in this process: one start-up, not four
                    child = _child(name, sizes[name])
                    res = child["result"]
                    doc["peak_rss_mb"][name] = child["peak_rss_mb"]
                else:
                    child = _in_child(_child, name, sizes[name])
                    res = child["result"]
                    doc["peak_rss_mb"][name] = child["peak_rss_mb"]
            except Exception as e:  # noqa: BLE001  (record it, measure the other sections)
                import traceback

                log(f"== {name} FAILED: {e!r}")
                res = {"error": "".join(traceback.format_exception(e))[-4000:]}
                failed.append(name)
            doc["results"][name] = res
            doc["seconds"][name] = round(time.perf_counter() - t, 1)
            doc["meta"]["sections"][name] = {
                **section_meta, "seconds": doc["seconds"][name],
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
            log(f"== {name}: {doc['seconds'][name]:.1f} s")
            write()
    doc["meta"]["failed_sections"] = failed
    write()
    log(f"done in {doc['meta']['total_s']:.0f} s: {out_path}"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    for key, r in doc["ratios"].items():
        target = f"  (target {r['target']})" if "target" in r else ""
        print(f"{key:<62} {r['value']}{target}")
    return doc


if __name__ == "__main__":
    sys.exit(1 if main()["meta"]["failed_sections"] else 0)
