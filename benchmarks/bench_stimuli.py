"""Stimulus pass vs a bare forward pass over the same images, in the same process.

    python benchmarks/bench_stimuli.py [--images 1024] [--batch-size 128] [--repeats 3]

Prints, for torchvision's vgg16 and resnet18 and ConceptEvo's small_vgg on 64x64 images, the
time of ConceptEvo's stimulus pass (hooks on every Conv2d, per-channel max, running top-k
merges for stimuli and responsive neurons, summary statistics) divided by the time of a bare
``model(x)`` loop over the same batches, in both memory layouts (the pipeline uses
channels-last). Target: <= 1.25 on CPU. The two passes alternate ``--repeats`` times so that
both see the same machine state; the ratio is the median of the per-repeat ratios and the
times are the best of each.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torchvision

from conceptevo.models.adapter import ModelAdapter
from conceptevo.models.registry import build_model
from conceptevo.stimuli import compute_stimuli


def bare_forward(model, batches):
    with torch.no_grad():
        for x, _ in batches:
            model(x)


def build(name: str) -> torch.nn.Module:
    if name == "small_vgg":
        return build_model("conceptevo:small_vgg", {"num_classes": 12})
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def measure(name: str, images: int, batch_size: int, repeats: int, channels_last: bool,
            k: int = 20) -> dict:
    torch.manual_seed(0)
    model = build(name).eval()
    data = torch.randn(images, 3, 64, 64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    batches = [(data[s:s + batch_size], torch.arange(s, min(s + batch_size, images)))
               for s in range(0, images, batch_size)]
    adapter = ModelAdapter(model)
    adapter.describe(data[:1])
    bare_forward(model, batches[:1])  # warm-up
    compute_stimuli(adapter, batches[:1], batch_size, k_stimuli=k, k_responsive=k)
    t_bare, t_ours = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        bare_forward(model, batches)
        t_bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        compute_stimuli(adapter, batches, images, k_stimuli=k, k_responsive=k).result()
        t_ours.append(time.perf_counter() - t)
    bare, ours = min(t_bare), min(t_ours)
    ratio = float(np.median(np.array(t_ours) / np.array(t_bare)))
    return {"model": name, "layout": "channels_last" if channels_last else "contiguous",
            "neurons": adapter.n_neurons, "images": images,
            "batch_size": batch_size, "bare_forward_s": round(bare, 3),
            "stimulus_pass_s": round(ours, 3), "ratio": round(ratio, 3),
            "images_per_s": round(images / ours, 1)}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="vgg16,resnet18,small_vgg",
                    help="comma-separated: vgg16, resnet18, small_vgg")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    rows = [measure(m, args.images, args.batch_size, args.repeats, cl)
            for m in args.models.split(",") for cl in (True, False)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 64x64 images")
        print(f"{'model':<10} {'layout':<14} {'neurons':>7} {'bare (s)':>9} {'ours (s)':>9} "
              f"{'ratio':>6} {'img/s':>7}")
        for r in rows:
            print(f"{r['model']:<10} {r['layout']:<14} {r['neurons']:>7} "
                  f"{r['bare_forward_s']:>9.3f} "
                  f"{r['stimulus_pass_s']:>9.3f} {r['ratio']:>6.3f} {r['images_per_s']:>7.1f}")
    return rows


if __name__ == "__main__":
    main()
