"""Peak memory of a recorded stimulus pass (activations kept) against the number of images.

    python benchmarks/bench_memory.py [--images 512,8192] [--model resnet18] [--size 64]

Each pass runs in a fresh Python process (``--child``) so that its peak resident set
(``ru_maxrss``) is its own: torchvision's resnet18 (random init) on random ``size x size``
images generated batch by batch (no probe set held in memory), ``compute_stimuli(...,
record_activations=True).result()`` as the pipeline runs it with ``[space] projection =
"activations"`` (the default). Reports, per size, the peak RSS, the RSS before the pass (after
the imports, the model and a one-batch warm-up) and the peak added by the pass; then the ratio
of the peaks of the largest and the smallest size (acceptance: <= 1.2 for 512 vs 8,192) and
the marginal memory per neuron and image, ``(peak_b - peak_a) / (n_neurons x (b - a))`` bytes:
2 for the float16 result, which the pass cannot avoid returning. The temporary file the pass
spills its float32 activations to lives in the page cache and on disk, not in the process's
resident set; its size is reported too (``4 x n_neurons x n_images`` bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def child(model_name: str, images: int, size: int, batch_size: int, threads: int) -> dict:
    import torch
    import torchvision

    from conceptevo.models.adapter import ModelAdapter
    from conceptevo.stimuli import compute_stimuli

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=10).eval()
    adapter = ModelAdapter(model)

    def batches(n: int):
        g = torch.Generator().manual_seed(1)
        for s in range(0, n, batch_size):
            b = min(batch_size, n - s)
            yield torch.randn(b, 3, size, size, generator=g), torch.arange(s, s + b)

    # warm-up: the model's forward memory and the allocator's pools are in the baseline
    compute_stimuli(adapter, batches(batch_size), batch_size, k_stimuli=20, k_responsive=20,
                    record_activations=True).result()
    before = _current_rss_mb()
    peak_before = _peak_rss_mb()
    t = time.perf_counter()
    result = compute_stimuli(adapter, batches(images), images, k_stimuli=20, k_responsive=20,
                             record_activations=True).result()
    seconds = time.perf_counter() - t
    n = adapter.n_neurons
    assert result.activations.shape == (n, images)
    return {"images": images, "neurons": n, "image_size": size, "batch_size": batch_size,
            "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
            "rss_before_pass_mb": round(before, 1), "peak_before_pass_mb": round(peak_before, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "pass_added_mb": round(_peak_rss_mb() - before, 1),
            "result_activations_mb": round(result.activations.nbytes / 2**20, 1),
            "spill_file_mb": round(4 * n * images / 2**20, 1)}


def run_child(model_name: str, images: int, size: int, batch_size: int, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", model_name,
           "--images", str(images), "--size", str(size), "--batch-size", str(batch_size),
           "--threads", str(threads)]
    env = dict(os.environ, CONCEPTEVO_PROGRESS="0")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(sizes: list[int], model_name: str = "resnet18", size: int = 64,
            batch_size: int = 128, threads: int = 0) -> dict:
    rows = [run_child(model_name, n, size, batch_size, threads) for n in sizes]
    lo, hi = rows[0], rows[-1]
    n = lo["neurons"]
    marginal = (hi["peak_rss_mb"] - lo["peak_rss_mb"]) * 2**20 / (n * (hi["images"] - lo["images"]))
    added = (hi["pass_added_mb"] - lo["pass_added_mb"]) * 2**20 / (
        n * (hi["images"] - lo["images"]))
    return {"what": f"peak RSS of a recorded stimulus pass (compute_stimuli(record_activations="
                    f"True).result()), torchvision {model_name} random init, {size}x{size} "
                    f"images, batch {batch_size}, each size in a fresh process",
            "model": model_name, "neurons": n, "image_size": size, "rows": rows,
            "peak_ratio": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3),
            "peak_ratio_target": "<= 1.2",
            "sizes": [r["images"] for r in rows],
            "marginal_bytes_per_neuron_image": round(marginal, 2),
            "marginal_added_bytes_per_neuron_image": round(added, 2)}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="512,8192", help="comma-separated sizes")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        out = child(args.model, int(args.images), args.size, args.batch_size, args.threads)
        print(json.dumps(out))
        return out
    doc = measure([int(s) for s in args.images.split(",")], args.model, args.size,
                  args.batch_size, args.threads)
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
