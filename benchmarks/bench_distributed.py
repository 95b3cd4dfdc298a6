"""One process vs torchrun: the stimulus pass and the importance of a small study.

    python benchmarks/bench_distributed.py [--per-class 100] [--checkpoints 4] [--processes 2]

Writes a study in a temporary directory: the concept world at 64x64 (``--per-class`` probe
images per class, 12 classes, plus a held-out set), ConceptEvo's small_vgg and
``--checkpoints`` checkpoints of it (random weights: the time of a pass does not depend on
training). Then times, each as its own command, process start-up included:

* ``conceptevo stimuli``: one process with torch's default threads (every core), one process
  with one thread, and ``torchrun --nproc_per_node=N`` (gloo, one thread per process, which
  is torchrun's default);
* ``conceptevo importance`` of ``--classes`` classes for the last epoch pair, the same three
  ways;
* the start-up cost: ``conceptevo stimuli`` with nothing left to do, both ways;

and checks that every way wrote the same arrays. Each time is the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _log(text: str) -> None:
    print(f"[distributed] {text}", file=sys.stderr, flush=True)


def write_study(root: Path, per_class: int, checkpoints: int, heldout_per_class: int,
                importance_images: int) -> Path:
    import torch

    from conceptevo.data.concept_world import ConceptWorld
    from conceptevo.models.registry import build_model

    world = ConceptWorld(image_size=64, seed=0)
    n_classes = len(world.class_names)
    # classes are balanced over each chunk of 256 images: write whole chunks, sample per class
    for split, n in (("train", per_class), ("val", heldout_per_class)):
        world.write_image_folder(root / "data" / split, -(-n * n_classes // 256) * 256,
                                 split=split)
    (root / "ckpt").mkdir(parents=True, exist_ok=True)
    for epoch in range(checkpoints):
        torch.manual_seed(epoch)
        model = build_model("conceptevo:small_vgg", {"num_classes": n_classes})
        torch.save(model.state_dict(), root / "ckpt" / f"epoch_{epoch}.pt")
    path = root / "study.toml"
    path.write_text(f"""
workspace = "ws"
device = "cpu"
[probe]
root = "data/train"
per_class = {per_class}
image_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[heldout]
root = "data/val"
per_class = {heldout_per_class}
[model]
arch = "conceptevo:small_vgg"
kwargs = {{ num_classes = {n_classes} }}
[stimuli]
batch_size = 128
[importance]
images = {importance_images}
batch_size = 16
[[runs]]
name = "a"
checkpoints = "ckpt/epoch_{{epoch}}.pt"
""")
    return path


def _command(args: list[str], processes: int, threads: int | None) -> tuple[list[str], dict]:
    env = dict(os.environ, CONCEPTEVO_PROGRESS="0")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = str(threads)
    launcher = ["-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}"] if processes > 1 else []
    # `--` keeps torchrun's parser off the command's options (--run: its --run-path)
    return [sys.executable, *launcher, "-m", "conceptevo", *(["--"] if launcher else []),
            *args], env


def _timed(args: list[str], processes: int, threads: int | None, cwd: Path) -> float:
    cmd, env = _command(args, processes, threads)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return elapsed


def _arrays(ws: Path, pattern: str) -> dict:
    out = {}
    for path in sorted(ws.glob(pattern)):
        with np.load(path, allow_pickle=False) as f:
            out[str(path.relative_to(ws))] = {k: f[k] for k in f.files if k != "meta"}
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in ((a[n], b[n]) for n in a))


def _largest_difference(a: dict, b: dict) -> float:
    """The largest difference of a float array between two workspaces, relative to the
    array's largest magnitude (0 when identical)."""
    worst = 0.0
    for name in a.keys() & b.keys():
        for key in a[name].keys() & b[name].keys():
            x, y = a[name][key], b[name][key]
            if x.dtype.kind == "f" and x.shape == y.shape and x.size:
                scale = float(np.nanmax(np.abs(x))) or 1.0
                worst = max(worst, float(np.nanmax(np.abs(x - y))) / scale)
    return worst


def measure(per_class: int = 100, checkpoints: int = 4, processes: int = 2,
            heldout_per_class: int = 30, importance_images: int = 30, classes: int = 4,
            repeats: int = 1, workdir: str | None = None) -> dict:
    """Times (s) of each way to run each stage, speed-ups and the identity check."""
    import shutil

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        _log(f"writing a study: {per_class} x 12 probe images, {checkpoints} checkpoints")
        config = write_study(root, per_class, checkpoints, heldout_per_class,
                             importance_images)
        stim = ["stimuli", "--config", str(config)]
        imp = ["importance", "--config", str(config), "--run", "a"]
        for c in range(classes):
            imp += ["--class", str(c)]
        _timed(stim, 1, None, root)  # the probe set, and warm file caches
        ways = {"1_process_all_threads": (1, None), "1_process_1_thread": (1, 1),
                f"{processes}_processes_1_thread": (processes, 1)}
        out: dict = {"probe_images": per_class * 12, "checkpoints": checkpoints,
                     "processes": processes, "cpu_count": os.cpu_count(),
                     "importance_classes": classes, "importance_images_per_class":
                     min(per_class, importance_images), "stimuli_s": {}, "importance_s": {},
                     "startup_s": {}}
        results: dict = {}
        for stage, args, pattern in (("stimuli", stim, "stimuli/**/*.npz"),
                                     ("importance", imp, "importance/**/*.npz")):
            for way, (procs, threads) in ways.items():
                best = float("inf")
                for _ in range(repeats):
                    shutil.rmtree(root / "ws" / stage, ignore_errors=True)
                    _log(f"{stage}: {way}")
                    best = min(best, _timed(args, procs, threads, root))
                out[f"{stage}_s"][way] = round(best, 2)
                results[(stage, way)] = _arrays(root / "ws", pattern)
        for way, (procs, threads) in ways.items():
            if way != "1_process_1_thread":
                _log(f"start-up: {way}")
                out["startup_s"][way] = round(_timed(stim, procs, threads, root), 2)
        reference = "1_process_1_thread"
        out["identical_to_one_process_one_thread"] = {
            f"{stage}/{way}": _same(results[(stage, reference)], results[(stage, way)])
            for stage in ("stimuli", "importance") for way in ways if way != reference}
        out["largest_relative_difference_to_one_process_one_thread"] = {
            f"{stage}/{way}": _largest_difference(results[(stage, reference)],
                                                  results[(stage, way)])
            for stage in ("stimuli", "importance") for way in ways if way != reference}
        many = f"{processes}_processes_1_thread"
        for stage in ("stimuli", "importance"):
            times = out[f"{stage}_s"]
            out[f"{stage}_speedup_vs_1_process_all_threads"] = round(
                times["1_process_all_threads"] / times[many], 2)
            out[f"{stage}_speedup_vs_1_process_1_thread"] = round(
                times["1_process_1_thread"] / times[many], 2)
        return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--classes", type=int, default=4, help="classes of the importance run")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    out = measure(args.per_class, args.checkpoints, args.processes, classes=args.classes,
                  repeats=args.repeats)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
