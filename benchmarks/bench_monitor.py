"""The monitor's snapshot vs a bare forward pass over the probe set, in one process.

    python benchmarks/bench_monitor.py [--images 1800] [--repeats 5]

A snapshot is everything ``Monitor.on_epoch_end`` does for one epoch: the stimulus pass, saving
the stimuli and the checkpoint, and updating the diagnosis. It is compared with ``model(x)``
over the same probe images in the same batches (eval mode, no gradient). Target: <= 1.3x.
The models are ConceptEvo's small_vgg and torchvision's resnet18 on 64x64 images; the two
measurements alternate and the ratio is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
import torchvision

from conceptevo import Monitor
from conceptevo.data.probe import ProbeSet
from conceptevo.models.registry import build_model


def measure(name: str, n_images: int, repeats: int, batch_size: int = 128) -> dict:
    torch.manual_seed(0)
    model = build_model("conceptevo:small_vgg", {"num_classes": 12}) if name == "small_vgg" \
        else torchvision.models.get_model(name, weights=None, num_classes=12)
    rng = np.random.default_rng(0)
    probe = ProbeSet(rng.integers(0, 256, (n_images, 64, 64, 3), dtype=np.uint8),
                     np.arange(n_images) % 12, [f"#{i}" for i in range(n_images)],
                     [str(c) for c in range(12)], (0.5,) * 3, (0.25,) * 3)
    with tempfile.TemporaryDirectory() as tmp:
        monitor = Monitor(tmp, probe, run="bench", verbose=False, batch_size=batch_size)
        model.train()

        def bare():
            model.eval()
            with torch.no_grad():
                for x, _ in monitor.probe.batches(batch_size):
                    model(x)
            model.train()

        bare()
        monitor.on_epoch_end(model, 0)
        ratios, t_bare, t_snap = [], [], []
        for epoch in range(1, repeats + 1):
            t = time.perf_counter()
            bare()
            t_bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            monitor.on_epoch_end(model, epoch, {"train_loss": 1.0})
            t_snap.append(time.perf_counter() - t)
            ratios.append(t_snap[-1] / t_bare[-1])
    return {"model": name, "images": n_images, "bare_forward_s": round(min(t_bare), 3),
            "snapshot_s": round(min(t_snap), 3), "ratio": round(float(np.median(ratios)), 3)}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1800)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="small_vgg,resnet18")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    rows = [measure(m, args.images, args.repeats) for m in args.models.split(",")]
    print(f"{'model':<10} {'images':>6} {'bare (s)':>9} {'snapshot (s)':>13} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:<10} {r['images']:>6} {r['bare_forward_s']:>9.3f} "
              f"{r['snapshot_s']:>13.3f} {r['ratio']:>6.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
