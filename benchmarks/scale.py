"""ConceptEvo at scale: time, peak memory and bytes per stage, and the extrapolation.

    python benchmarks/scale.py [--quick] [--native-images resnet50=96,vit_b_16=24]
                               [--sweep-images 1000,4000,12000] [--sweep-size 32]
                               [--json benchmarks/results/scale.json]

Writes studies in a temporary directory (the concept world as an image folder, torchvision
models with random weights saved as checkpoints) and runs ``conceptevo`` commands, each in its
own Python process (``--child``), so that each peak resident set is that stage's own. A child
samples ``/proc/self/status`` every 10 ms (``RssAnon``: the process's own memory;
``RssFile``: file pages it maps, e.g. the memory-mapped probe set) and reads ``ru_maxrss`` at
its end; its clock starts after the imports.

1. **Native size (224 px)**, per model, 2 checkpoints, the base an external small model
   (``conceptevo:small_vgg``: a base of the model's own 26,560 / 36,864 neurons cannot be
   fitted on a few hundred probe images, docs/scaling.md):

   * bounded mode (``[stimuli] store_activations = false``): ``conceptevo stimuli`` (the
     base's pass and fit, then 2 passes projected at their end), ``conceptevo build`` (the 2-D
     map and the projections' coordinates);
   * stored mode (the default): ``conceptevo stimuli`` (2 passes), ``conceptevo build``;
   * the start-up (``conceptevo stimuli`` with nothing to do), and the bare forward pass of
     the same model over the same images (``torch.no_grad``, same batch size, threads and
     channels-last layout), and the model's FLOPs per image
     (``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add).

2. **Probe-set sweep (reduced size)**: resnet50 at ``--sweep-size`` px on ``--sweep-images``
   probe images, bounded mode, one checkpoint, the base an external small model
   (``conceptevo:small_vgg``) so that the process is the per-checkpoint pass and not the
   base's O(n_base x N) fit; with ``--default-base-sizes K`` also the run's own checkpoint as
   the base at the K smallest sizes, in two processes (the base's pass and fit while only
   the base checkpoint exists, then the other checkpoint's projected pass).

3. **Unit costs**: ``project_streamed`` over a float32 scratch file (seconds per neuron x
   image), then the extrapolation to ``--target-images`` x ``--target-checkpoints`` at 224 px:
   storage (bounded vs stored, by the formulas of docs/scaling.md checked against the measured
   files), CPU time here, and one / several GPUs under torchrun from the FLOPs and an assumed
   sustained throughput (``--gpu-tflops``; an assumption, to be checked with
   benchmarks/gpu_check.py). Every assumption is written into the JSON next to its numbers.

``ru_maxrss`` is reported but a child starts with its parent's value (Linux keeps it across
fork and exec): read the sampled peaks. ``--from-json FILE`` recomputes the extrapolation
(and the sweep's growth figures) of an existing results file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

N_CLASSES = 12  # the concept world's classes
K_S = K_R = 20  # [stimuli] k_stimuli, k_responsive (defaults)
DIM = 30  # [space] dim (default)
MB = 2 ** 20
EXTERNAL = {"base_arch": "conceptevo:small_vgg", "base_kwargs": {"num_classes": N_CLASSES},
            "base_checkpoint": "base.pt"}


def _log(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ children
class _Sampler:
    """Peaks of this process's RssAnon / RssFile / VmRSS (kB in /proc/self/status)."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    kb = int(value.split()[0])
                    self.peak[key] = max(self.peak.get(key, 0), kb)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read()
            time.sleep(self.interval)

    def __enter__(self) -> _Sampler:
        self._read()
        self.start = dict(self.peak)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def report(self) -> dict:
        import resource

        return {"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                      1),
                "peak_vm_rss_mb": round(self.peak.get("VmRSS", 0) / 1024, 1),
                "peak_rss_anon_mb": round(self.peak.get("RssAnon", 0) / 1024, 1),
                "peak_rss_file_mb": round(self.peak.get("RssFile", 0) / 1024, 1),
                "rss_after_imports_mb": round(self.start.get("VmRSS", 0) / 1024, 1),
                "anon_after_imports_mb": round(self.start.get("RssAnon", 0) / 1024, 1)}


def child_cli(argv: list[str]) -> dict:
    """``conceptevo ARGV`` in this process, timed after the imports."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    from conceptevo import cli, pipeline  # noqa: F401

    with _Sampler() as s:
        t = time.perf_counter()
        rc = cli.main(argv)
        wall = time.perf_counter() - t
    if rc:
        raise SystemExit(f"conceptevo {' '.join(argv)} exited with {rc}")
    return {"wall_s": round(wall, 2), **s.report()}


def child_probe(config: str) -> dict:
    """Decode the probe set of a study into its workspace (kept out of the timed stages)."""
    from conceptevo.config import load_config
    from conceptevo.pipeline import open_workspace
    from conceptevo.stages import probe
    from conceptevo.stages.context import Context

    cfg = load_config(config)
    t = time.perf_counter()
    probe_set, _ = probe.ensure_probe_sets(Context.create(cfg, open_workspace(cfg)))
    return {"images": len(probe_set), "wall_s": round(time.perf_counter() - t, 2)}


def child_bare(spec: dict) -> dict:
    """The bare forward pass of the model over the workspace's probe set, its FLOPs per image
    and its default neurons (ConceptEvo's layer selection)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from conceptevo.models.adapter import ModelAdapter
    from conceptevo.models.registry import build_model
    from conceptevo.workspace.store import Workspace

    probe = Workspace(spec["workspace"]).load_probe("probe")
    model = build_model(spec["arch"], spec["kwargs"]).eval()
    model.load_state_dict(torch.load(spec["checkpoint"], map_location="cpu", weights_only=True))
    model = model.to(memory_format=torch.channels_last)
    one = probe.tensor([0]).contiguous(memory_format=torch.channels_last)
    adapter = ModelAdapter(model)
    adapter.describe(one)
    layers = adapter.layers_
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            model(one)
        for x, _ in probe.batches(spec["batch_size"]):  # warm-up: one batch
            model(x.contiguous(memory_format=torch.channels_last))
            break
        with _Sampler() as s:
            t = time.perf_counter()
            for x, _ in probe.batches(spec["batch_size"]):
                model(x.contiguous(memory_format=torch.channels_last))
            wall = time.perf_counter() - t
    return {"images": len(probe), "wall_s": round(wall, 3),
            "s_per_image": wall / len(probe), "flops_per_image": int(fc.get_total_flops()),
            "neurons": int(adapter.n_neurons), "layers": len(layers),
            "layer_names": [getattr(info, "name", str(info)) for info in layers][:3] + ["..."],
            "threads": torch.get_num_threads(), **s.report()}


def child_project(spec: dict) -> dict:
    """``project_streamed`` over a float32 scratch file of n x N activations, read back in
    blocks of about 16 MB as a projected pass reads its spill: seconds per neuron x image."""
    import torch

    from conceptevo.space.image_embedding import project_streamed

    n, n_images, d = spec["neurons"], spec["images"], spec["dim"]
    rng = np.random.default_rng(0)
    rows = max(1, (16 * MB) // (4 * n))
    with tempfile.TemporaryFile(dir=spec.get("dir")) as f:
        t = time.perf_counter()
        for s in range(0, n_images, rows):
            f.write(rng.standard_normal((min(rows, n_images - s), n), dtype=np.float32).data)
        f.flush()
        write_s = time.perf_counter() - t
        data = np.memmap(f, dtype=np.float32, mode="r", shape=(n_images, n))

        def blocks():
            for s in range(0, n_images, rows):
                e = min(s + rows, n_images)
                yield np.arange(s, e, dtype=np.int64), torch.from_numpy(np.array(data[s:e]))

        e = rng.standard_normal((n_images, d)).astype(np.float32)
        t = time.perf_counter()
        out = project_streamed(blocks, n, e)
        wall = time.perf_counter() - t
    assert out.shape == (n, d)
    cells = n * n_images
    return {"neurons": n, "images": n_images, "dim": d, "wall_s": round(wall, 3),
            "s_per_neuron_image": wall / cells, "spill_write_s_per_neuron_image": write_s / cells,
            "threads": torch.get_num_threads()}


def run_child(kind: str, payload, root: Path) -> dict:
    out = root / f"child_{time.monotonic_ns()}.json"
    arg = payload if isinstance(payload, str) else json.dumps(payload)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, arg, "--out", str(out)]
    env = dict(os.environ, CONCEPTEVO_PROGRESS="0")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "OMP_NUM_THREADS"):
        env.pop(name, None)
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {arg[:200]} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def cli(argv: list[str], root: Path) -> dict:
    return run_child("cli", json.dumps(argv), root)


# ------------------------------------------------------------------------------- studies
def write_world(folder: Path, size: int, per_class: int) -> Path:
    from conceptevo.data.concept_world import ConceptWorld

    # classes are balanced over each chunk of 256 images: whole chunks, one more for slack
    n = (-(-per_class * N_CLASSES // 256) + 1) * 256
    ConceptWorld(image_size=size, seed=0).write_image_folder(folder, n, split="train")
    return folder


def write_checkpoint(path: Path, arch: str, kwargs: dict, seed: int) -> None:
    import torch

    from conceptevo.models.registry import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_model(arch, kwargs).state_dict(), path)


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def write_study(path: Path, workspace: str, probe_root: Path, per_class: int, size: int,
                arch: str, kwargs: dict, batch_size: int, store: bool, ckpt_dir: str,
                space: dict) -> Path:
    space_lines = "".join(f"{k} = {_toml_value(v)}\n" for k, v in space.items())
    path.write_text(f"""workspace = "{workspace}"
device = "cpu"
[probe]
root = "{probe_root}"
per_class = {per_class}
image_size = {size}
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[model]
arch = "{arch}"
kwargs = {_toml_value(kwargs)}
[stimuli]
batch_size = {batch_size}
store_activations = {_toml_value(store)}
[space]
{space_lines}[[runs]]
name = "a"
checkpoints = "{ckpt_dir}/epoch_{{epoch}}.pt"
""")
    return path


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _bytes(ws: Path, sub: str) -> int:
    return sum(_files(ws / sub).values()) if (ws / sub).exists() else 0


def stored_bytes(n: int, n_images: int, projected: bool) -> int:
    """Stored bytes of one checkpoint by docs/scaling.md's formulas (stimuli file; plus the
    projection file of the stored mode's space stage)."""
    if projected:
        return 16 * n * K_S + 4 * n * DIM + 24 * n + 4 * n_images
    return 16 * n * K_S + 12 * n_images * K_R + 24 * n + 4 * n_images + 2 * n * n_images + 4 * n


def projection_bytes(n: int) -> int:
    return n * (4 * DIM + 9)


# ------------------------------------------------------------------------- measurements
def native(root: Path, name: str, per_class: int, batch_size: int, probe_root: Path) -> dict:
    """Stored vs bounded stages of one torchvision model at 224 px, 2 checkpoints, the base an
    external small model (see the module docstring: a base of the model's own 26,560 /
    36,864 neurons cannot be fitted here on a few hundred probe images)."""
    arch, kwargs = f"torchvision:{name}", {"num_classes": N_CLASSES}
    d = root / name
    d.mkdir()
    out: dict = {"model": arch, "kwargs": kwargs, "image_size": 224, "batch_size": batch_size,
                 "checkpoints": 2, "base": "external conceptevo:small_vgg"}
    for epoch in (0, 1):
        write_checkpoint(d / "ckpt" / f"epoch_{epoch}.pt", arch, kwargs, seed=epoch)
    write_checkpoint(d / "base.pt", "conceptevo:small_vgg", {"num_classes": N_CLASSES}, seed=5)
    common = dict(probe_root=probe_root, per_class=per_class, size=224, arch=arch,
                  kwargs=kwargs, batch_size=batch_size, ckpt_dir="ckpt", space=EXTERNAL)
    bounded = write_study(d / "bounded.toml", "ws_bounded", store=False, **common)
    stored = write_study(d / "stored.toml", "ws_stored", store=True, **common)
    for cfg in (bounded, stored):
        out.setdefault("probe_decode", []).append(run_child("probe", str(cfg), d))
    n_images = out["probe_decode"][0]["images"]
    out["probe_images"] = n_images
    for mode, cfg in (("bounded", bounded), ("stored", stored)):
        _log(f"{name} 224 px, {n_images} images: {mode}, conceptevo stimuli (base + 2 passes)")
        out[f"{mode}_stimuli"] = cli(["stimuli", "--config", str(cfg)], d)
        out[f"{mode}_stimuli_bytes"] = _bytes(d / f"ws_{mode}", "stimuli")
        _log(f"{name}: {mode}, conceptevo build (the space stages and the map)")
        out[f"{mode}_build"] = cli(["build", "--config", str(cfg)], d)
        out[f"{mode}_space_bytes"] = _bytes(d / f"ws_{mode}", "space")
    _log(f"{name}: start-up (conceptevo stimuli, nothing to do)")
    out["startup"] = cli(["stimuli", "--config", str(stored)], d)
    _log(f"{name}: bare forward")
    out["bare_forward"] = run_child("bare", {
        "workspace": str(d / "ws_stored"), "arch": arch, "kwargs": kwargs,
        "checkpoint": str(d / "ckpt" / "epoch_0.pt"), "batch_size": batch_size}, d)
    n = out["bare_forward"]["neurons"]
    out["neurons"] = n
    files = {"bounded": _files(d / "ws_bounded" / "stimuli"),
             "stored": _files(d / "ws_stored" / "stimuli")}
    out["stimuli_files"] = files
    out["bytes_per_checkpoint"] = {
        "stored_measured": files["stored"]["a/epoch_0000.npz"],
        "stored_formula": stored_bytes(n, n_images, projected=False),
        "bounded_measured": files["bounded"]["a/epoch_0000.npz"],
        "bounded_formula": stored_bytes(n, n_images, projected=True),
        "projection_file_formula": projection_bytes(n)}
    bare = out["bare_forward"]["s_per_image"]
    startup = out["startup"]["wall_s"]
    stored_pass = (out["stored_stimuli"]["wall_s"] - startup) / 2 / n_images
    projected_pass = (out["bounded_stimuli"]["wall_s"] - startup) / 2 / n_images
    out["unit"] = {
        "bare_forward_s_per_image": bare,
        "stored_pass_s_per_image": stored_pass,
        "projected_pass_s_per_image": projected_pass,
        "stored_pass_over_bare_forward": round(stored_pass / bare, 3),
        "projected_pass_over_bare_forward": round(projected_pass / bare, 3),
        "base_space_fit_s": 0.0,
        "note": "per-pass times are (command wall - start-up of a command with nothing to do) "
                "/ 2 passes / images, the small external base's pass (and for the bounded "
                "mode its fit) included; start-up = loading the study, probe set and models"}
    return out


def sweep(root: Path, sizes: list[int], size: int, batch_size: int,
          default_base_sizes: list[int]) -> dict:
    """Peak memory of a projected resnet50 pass against the probe-set size."""
    d = root / "sweep"
    d.mkdir()
    arch, kwargs = "torchvision:resnet50", {"num_classes": N_CLASSES}
    per_classes = [-(-n // N_CLASSES) for n in sizes]
    _log(f"sweep: writing the concept world at {size} px ({max(per_classes)} per class)")
    probe_root = write_world(d / "world", size, max(per_classes))
    write_checkpoint(d / "ckpt" / "epoch_0.pt", arch, kwargs, seed=0)
    write_checkpoint(d / "base.pt", "conceptevo:small_vgg", {"num_classes": N_CLASSES}, seed=5)
    rows = []
    external = EXTERNAL
    for n, pc in zip(sizes, per_classes):
        cfg = write_study(d / f"ext_{n}.toml", f"ws_ext_{n}", probe_root, pc, size, arch, kwargs,
                          batch_size, False, "ckpt", external)
        images = run_child("probe", str(cfg), d)["images"]
        _log(f"sweep: {images} images, external base + one projected resnet50 pass")
        row = {"images": images, **cli(["stimuli", "--config", str(cfg)], d)}
        ws = d / f"ws_ext_{n}"
        row["checkpoint_file_bytes"] = (ws / "stimuli" / "a" / "epoch_0000.npz").stat().st_size
        row["base_stimuli_bytes"] = _bytes(ws, "space")
        rows.append(row)
    out: dict = {"model": arch, "image_size": size, "batch_size": batch_size,
                 "base": "external conceptevo:small_vgg (its pass and fit are small)",
                 "external_base": rows}
    staged = []
    for n in default_base_sizes:
        pc = -(-n // N_CLASSES)
        ck = d / f"ckpt_{n}"
        write_checkpoint(ck / "epoch_1.pt", arch, kwargs, seed=1)
        cfg = write_study(d / f"own_{n}.toml", f"ws_own_{n}", probe_root, pc, size, arch, kwargs,
                          batch_size, False, ck.name,
                          {"base_epoch": 1, "image_method": "lsqr"})
        images = run_child("probe", str(cfg), d)["images"]
        _log(f"sweep: {images} images, own base: base pass + base space")
        base = cli(["stimuli", "--config", str(cfg)], d)
        write_checkpoint(ck / "epoch_0.pt", arch, kwargs, seed=0)
        _log(f"sweep: {images} images, own base: the other checkpoint's projected pass")
        other = cli(["stimuli", "--config", str(cfg)], d)
        staged.append({"images": images, "base_pass_and_space": base, "projected_pass": other})
    out["own_base_staged"] = staged
    out["growth"] = _growth(rows, staged)
    return out


def _slope(rows: list[dict], key: str, get=lambda r, k: r[k]) -> float:
    """Least-squares bytes per probe image of ``key`` (MB) over the rows."""
    x = np.array([r["images"] for r in rows], dtype=np.float64)
    y = np.array([get(r, key) for r in rows], dtype=np.float64) * MB
    return float(np.polyfit(x, y, 1)[0]) if len(rows) > 1 else float("nan")


def _growth(rows: list[dict], staged: list[dict]) -> dict:
    lo, hi = rows[0], rows[-1]
    out = {"images": [r["images"] for r in rows],
           "ru_maxrss_mb": [r["ru_maxrss_mb"] for r in rows],
           "ru_maxrss_note": "a child's ru_maxrss starts at its parent's peak (Linux keeps it "
                             "across fork and exec; the parent held torch and the models it "
                             "wrote): read the sampled RssAnon / RssFile peaks",
           "peak_rss_anon_mb": [r["peak_rss_anon_mb"] for r in rows],
           "peak_rss_file_mb": [r["peak_rss_file_mb"] for r in rows],
           "peak_rss_anon_plus_file_mb": [round(r["peak_rss_anon_mb"] + r["peak_rss_file_mb"],
                                                1) for r in rows],
           "anon_peak_ratio_largest_vs_smallest": round(
               hi["peak_rss_anon_mb"] / lo["peak_rss_anon_mb"], 3),
           "bytes_per_image_anon": round(_slope(rows, "peak_rss_anon_mb"), 1),
           "bytes_per_image_file": round(_slope(rows, "peak_rss_file_mb"), 1),
           "checkpoint_file_bytes_per_image": round(
               _slope(rows, "checkpoint_file_bytes", lambda r, k: r[k] / MB), 2)}
    if len(staged) > 1:
        get = lambda r, k: r["projected_pass"][k]  # noqa: E731
        out["own_base_projected_pass_bytes_per_image_anon"] = round(
            _slope(staged, "peak_rss_anon_mb", get), 1)
        get = lambda r, k: r["base_pass_and_space"][k]  # noqa: E731
        out["own_base_base_part_bytes_per_image_anon"] = round(
            _slope(staged, "peak_rss_anon_mb", get), 1)
    return out


# ------------------------------------------------------------------------- extrapolation
def extrapolate(models: dict, projection: dict, target_images: int, target_ckpts: int,
                gpu_tflops: float, gpus: list[int], spill_gbps: float) -> dict:
    proj = projection["s_per_neuron_image"]
    out = {"target": {"probe_images": target_images, "checkpoints": target_ckpts,
                      "image_size": 224},
           "assumptions": {
               "gpu_sustained_tflops": gpu_tflops,
               "gpu_sustained_tflops_why": (
                   "assumed sustained fp32/TF32 throughput of one data-centre GPU on these "
                   "forwards (no AMP); not measured: check with benchmarks/gpu_check.py"),
               "gpu_pass_overhead": "the measured CPU ratio (stimulus pass / bare forward) is "
                                    "applied to the GPU forward time as well",
               "projection_cost": "project_streamed measured here on the CPU, per neuron x "
                                  "image, applied as is on a GPU machine too (the spill is "
                                  "read back on the host: an upper bound)",
               "spill_io_gb_per_s": spill_gbps,
               "spill_io_why": "host-side write of the 4 n N byte scratch file on a GPU "
                               "machine, assumed; on the CPU it is inside the measured pass",
               "per_checkpoint_independent": "each checkpoint's pass is independent: time and "
                                             "bytes scale with the number of checkpoints",
               "base_space_fit": "the fit of a base of the model's own neurons is not measured "
                                 "(the runs use a small external base) and counted as 0 here; "
                                 "its memory is in memory_bytes",
               "torchrun": "checkpoints shared out whole, one per process; the base pass and "
                           "fit first (rank 0), then ceil((C - 1) / G) rounds; start-up and "
                           "rank 0's writes not counted",
               "build": "conceptevo build after the stimuli (the 2-D map of every checkpoint's "
                        "neurons and the figures) measured per neuron mapped at 2 checkpoints "
                        "and taken as linear in the neurons mapped; it runs on rank 0 on the "
                        "CPU whatever the number of GPUs",
               "storage": "docs/scaling.md formulas (k_s = k_r = 20, d = 30), checked against "
                          "the measured files at 224 px"},
           "models": {}}
    n_img, c = target_images, target_ckpts
    for name, m in models.items():
        n, u = m["neurons"], m["unit"]
        stored_ckpt = stored_bytes(n, n_img, False) + projection_bytes(n)
        bounded_ckpt = stored_bytes(n, n_img, True) + projection_bytes(n)
        cpu_pass = u["stored_pass_s_per_image"] * n_img
        cpu_proj = proj * n * n_img
        gpu_fwd = m["bare_forward"]["flops_per_image"] / (gpu_tflops * 1e12) * n_img
        gpu_pass = gpu_fwd * u["stored_pass_over_bare_forward"]
        gpu_spill = 4 * n * n_img / (spill_gbps * 1e9)
        gpu_projected = gpu_pass + gpu_spill + cpu_proj
        fit = max(u["base_space_fit_s"], 0.0)
        mapped = n * m["checkpoints"]
        build_unit = {mode: (m[f"{mode}_build"]["wall_s"] - m["startup"]["wall_s"]) / mapped
                      for mode in ("bounded", "stored")}
        build = build_unit["bounded"] * n * c
        row = {
            "neurons": n, "flops_per_image": m["bare_forward"]["flops_per_image"],
            "storage_bytes": {
                "stored_per_checkpoint": stored_ckpt,
                "bounded_per_checkpoint": bounded_ckpt,
                "stored_total": c * stored_ckpt,
                "bounded_total": stored_ckpt + (c - 1) * bounded_ckpt,
                "scratch_file_per_pass": 4 * n * n_img},
            "memory_bytes": {
                "base_activations_float16": 2 * n * n_img,
                "base_ridge_weights_float32": 4 * n * n_img,
                "image_embedding": 4 * DIM * n_img},
            "cpu_here_s": {
                "per_checkpoint_pass": round(cpu_pass, 1),
                "per_checkpoint_projection": round(cpu_proj, 1),
                "total_one_process": round(c * cpu_pass + (c - 1) * cpu_proj + fit, 1),
                "build_s_per_neuron_mapped": build_unit,
                "build_bounded": round(build, 1)},
            "gpu_s": {
                "forward_per_checkpoint": round(gpu_fwd, 1),
                "pass_per_checkpoint": round(gpu_pass, 1),
                "projected_pass_per_checkpoint": round(gpu_projected, 1)},
            "gpus": {}}
        for g in gpus:
            rounds = math.ceil((c - 1) / g)
            row["gpus"][str(g)] = round(gpu_pass + fit + rounds * gpu_projected, 1)
        row["gpus_plus_build_on_rank0"] = {g: round(t + build, 1)
                                           for g, t in row["gpus"].items()}
        out["models"][name] = row
    return out


# ---------------------------------------------------------------------------------- main
def measure(native_images: dict, sweep_images: list[int], sweep_size: int,
            default_base_sizes: int, args) -> dict:
    import torch

    t0 = time.perf_counter()
    load = os.getloadavg()
    doc: dict = {
        "what": "ConceptEvo at scale: per-stage wall time, peak memory and bytes, stored vs "
                "bounded storage; measured on CPU at reduced size and extrapolated",
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                    "load_average_at_start": [round(x, 2) for x in load],
                    "note": "shared with other jobs during the run: times are noisy; read the "
                            "ratios and unit costs"},
        "reductions": {}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        biggest = max(-(-n // N_CLASSES) for n in native_images.values())
        _log(f"writing the concept world at 224 px ({biggest} per class)")
        world = write_world(root / "world224", 224, biggest)
        models = {}
        for name, n in native_images.items():
            bs = args.batch_224[name]
            models[name] = native(root, name, -(-n // N_CLASSES), bs, world)
        doc["native"] = models
        _partial(args, doc)
        _log("projection unit cost")
        doc["projection_unit_cost"] = run_child("project", {
            "neurons": models.get("resnet50", next(iter(models.values())))["neurons"],
            "images": args.projection_images, "dim": DIM, "dir": str(root)}, root)
        if sweep_images:
            doc["sweep"] = sweep(root, sweep_images, sweep_size, args.sweep_batch,
                                 sweep_images[:default_base_sizes])
    doc["reductions"] = {
        "native_probe_images": {k: models[k]["probe_images"] for k in models},
        "native_note": "224 px as in ImageNet, but far fewer than 50,000 probe images: the 2 "
                       "cores do a few resnet50 images a second",
        "sweep_image_size": sweep_size,
        "sweep_note": f"the probe-set sweep runs at {sweep_size} px (resnet50's feature maps "
                      "shrink, its 26,560 neurons do not): memory per image and neuron is the "
                      "question, not the forward time",
        "checkpoints": "2 measured; a pass per checkpoint is independent, so 8 / 32 / 100 are "
                       "extrapolated per checkpoint"}
    doc["extrapolation"] = extrapolate(models, doc["projection_unit_cost"], args.target_images,
                                       args.target_checkpoints, args.gpu_tflops, [1, 2, 4, 8],
                                       args.spill_gbps)
    per_ckpt = {}
    for name, m in models.items():
        u = m["unit"]
        per_ckpt[name] = {str(k): round(k * u["stored_pass_s_per_image"] * m["probe_images"], 1)
                          for k in (2, 8, 32)}
    doc["checkpoints_extrapolated_stimuli_s_here"] = per_ckpt
    doc["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    return doc


def _partial(args, doc: dict) -> None:
    """Write what is measured so far (a late failure keeps it)."""
    if args.json and not args.quick:
        Path(args.json).write_text(json.dumps({**doc, "partial": True}, indent=2) + "\n")


def _pairs(text: str) -> dict:
    return {k: int(v) for k, v in (p.split("=") for p in text.split(",") if p)}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a 2-minute check")
    ap.add_argument("--native-images", default="resnet50=96,vit_b_16=24",
                    help="probe images at 224 px per model (rounded up to 12 classes)")
    ap.add_argument("--batch-224", default="resnet50=32,vit_b_16=12")
    ap.add_argument("--sweep-images", default="1000,4000,12000")
    ap.add_argument("--sweep-size", type=int, default=32)
    ap.add_argument("--sweep-batch", type=int, default=128)
    ap.add_argument("--default-base-sizes", type=int, default=0,
                    help="the own-base staged check at this many of the smallest sweep sizes")
    ap.add_argument("--projection-images", type=int, default=2000)
    ap.add_argument("--target-images", type=int, default=50_000)
    ap.add_argument("--target-checkpoints", type=int, default=100)
    ap.add_argument("--gpu-tflops", type=float, default=40.0,
                    help="assumed sustained throughput of one GPU (TFLOP/s)")
    ap.add_argument("--spill-gbps", type=float, default=1.0,
                    help="assumed scratch-file write bandwidth on a GPU machine (GB/s)")
    ap.add_argument("--workdir", help="where the temporary studies go (default TMPDIR)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "scale.json"))
    ap.add_argument("--from-json", help="recompute the extrapolation of an existing results "
                    "file (its measured sections kept) and write it back")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, payload = args.child
        fn = {"cli": lambda p: child_cli(json.loads(p)), "probe": child_probe,
              "bare": lambda p: child_bare(json.loads(p)),
              "project": lambda p: child_project(json.loads(p))}[kind]
        result = fn(payload)
        Path(args.out).write_text(json.dumps(result))
        return result
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        doc["extrapolation"] = extrapolate(doc["native"], doc["projection_unit_cost"],
                                           args.target_images, args.target_checkpoints,
                                           args.gpu_tflops, [1, 2, 4, 8], args.spill_gbps)
        if "sweep" in doc:
            sw = doc["sweep"]
            sw["growth"] = _growth(sw["external_base"], sw.get("own_base_staged", []))
        Path(args.from_json).write_text(json.dumps(doc, indent=2) + "\n")
        return doc
    if args.quick:
        args.native_images, args.sweep_images = "resnet50=24,vit_b_16=12", "240,480,960"
        args.projection_images = 300
    args.batch_224 = _pairs(args.batch_224)
    native_images = _pairs(args.native_images)
    sweep_images = [int(s) for s in args.sweep_images.split(",") if s]
    doc = measure(native_images, sweep_images, args.sweep_size, args.default_base_sizes, args)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json and not args.quick:
        Path(args.json).write_text(text + "\n")
    elif args.json and args.quick:
        _log("--quick: not writing the results file")
    _log(f"done in {doc['total_s']} s")
    return doc


if __name__ == "__main__":
    main()
