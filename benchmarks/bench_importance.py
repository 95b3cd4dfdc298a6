"""Batched sensitivity vs the reference's per-image, per-layer computation, and peak memory.

    python benchmarks/bench_importance.py [--images 32] [--batch-size 32]

For ConceptEvo's small_vgg and torchvision's resnet18 on 64x64 images, with two random
checkpoints M^t and M^t', computes the sensitivity of every neuron of every Conv2d for the
same images twice:

* naive, as the reference does: per image, one autograd call per layer (the graph
  retained), then a Python loop over the layer's neurons;
* batched, as ConceptEvo does: one forward of M^t', one forward and one backward of M^t per
  batch, every layer at once.

Each computation runs in its own process so that its peak resident memory (ru_maxrss) can be
reported. Target: >= 20x. The two results are also compared in float64 on 8 images (they must
agree to 1e-5 of the largest sensitivity): in float32 a few values differ more, because the
batched and the one-image forward passes round differently and max pooling can then route the
gradient of a near-tie to another pixel. That is the model's arithmetic, not the method's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np
import torch
import torchvision
from torch import nn

from conceptevo.evolution.importance import batch_sensitivity
from conceptevo.models.adapter import ModelAdapter
from conceptevo.models.registry import build_model


def make(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "small_vgg":
        return build_model("conceptevo:small_vgg", {"num_classes": 12}).eval()
    return torchvision.models.get_model(name, weights=None, num_classes=12).eval()


def naive(m_t: nn.Module, m_t2: nn.Module, x: torch.Tensor, c: int) -> np.ndarray:
    convs_t = [m for m in m_t.modules() if isinstance(m, nn.Conv2d)]
    convs_t2 = [m for m in m_t2.modules() if isinstance(m, nn.Conv2d)]
    rows = []
    for b in range(len(x)):
        xb = x[b:b + 1]
        after, before = [], []
        hs = [m.register_forward_hook(lambda mod, i, o, after=after:
                                      after.append(o.detach().clone())) for m in convs_t2]
        with torch.no_grad():
            m_t2(xb)
        for h in hs:
            h.remove()
        hs = [m.register_forward_hook(lambda mod, i, o, before=before:
                                      (before.append(o), o.clone())[1]) for m in convs_t]
        logit = m_t(xb)[0, c]
        for h in hs:
            h.remove()
        row = []
        for layer in range(len(convs_t)):
            (g,) = torch.autograd.grad(logit, before[layer], retain_graph=True)
            d = after[layer] - before[layer].detach()
            for n in range(g.shape[1]):
                row.append(float((g[0, n] * d[0, n]).sum()))
        rows.append(row)
    return np.asarray(rows)


def batched(m_t, m_t2, x, c, batch_size) -> np.ndarray:
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    parts = [batch_sensitivity(a_t, a_t2, x[s:s + batch_size], c).double().numpy()
             for s in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def worker(args: tuple) -> dict:
    name, kind, n_images, batch_size = args
    torch.set_num_threads(max(1, torch.get_num_threads()))
    m_t, m_t2 = make(name, 0), make(name, 1)
    x = torch.randn(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    s = naive(m_t, m_t2, x, 3) if kind == "naive" else batched(m_t, m_t2, x, 3, batch_size)
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": elapsed, "peak_rss_mb": peak / 1024,
            "extra_rss_mb": (peak - base_rss) / 1024, "s": s}


def agree_in_float64(name: str, n: int = 8) -> bool:
    m_t, m_t2 = make(name, 0).double(), make(name, 1).double()
    x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(2)).double()
    ours, ref = batched(m_t, m_t2, x, 3, n), naive(m_t, m_t2, x, 3)
    return bool(np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max())


def measure(name: str, images: int = 64, batch_size: int = 64) -> dict:
    """Naive vs batched sensitivity of one model, each in its own process."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        ours = pool.apply(worker, ((name, "batched", images, batch_size),))
    with ctx.Pool(1) as pool:
        ref = pool.apply(worker, ((name, "naive", images, batch_size),))
    agree = agree_in_float64(name)
    return {"model": name, "images": images, "neurons": ours["s"].shape[1],
            "batched_s": round(ours["seconds"], 3), "naive_s": round(ref["seconds"], 2),
            "speedup": round(ref["seconds"] / ours["seconds"], 1),
            "batched_extra_rss_mb": round(ours["extra_rss_mb"], 1),
            "naive_extra_rss_mb": round(ref["extra_rss_mb"], 1),
            "batched_peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "naive_peak_rss_mb": round(ref["peak_rss_mb"], 1),
            "results_agree": bool(agree)}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--models", default="resnet18,small_vgg,vgg16")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    rows = [measure(name, args.images, args.batch_size) for name in args.models.split(",")]
    print(f"{'model':<10} {'neurons':>7} {'naive (s)':>10} {'batched (s)':>12} "
          f"{'speed-up':>9} {'peak MB (naive / batched)':>27} agree")
    for r in rows:
        print(f"{r['model']:<10} {r['neurons']:>7} {r['naive_s']:>10.2f} "
              f"{r['batched_s']:>12.3f} {r['speedup']:>8.1f}x "
              f"{r['naive_peak_rss_mb']:>12.0f} / {r['batched_peak_rss_mb']:<12.0f} "
              f"{r['results_agree']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
