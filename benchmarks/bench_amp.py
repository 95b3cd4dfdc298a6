"""Mixed precision (``[stimuli] amp = true``) against float32 for the stimulus pass.

    python benchmarks/bench_amp.py [--images 512] [--batch-size 64] [--repeats 3]
                                   [--json benchmarks/results/amp.json]

For ConceptEvo's small_vgg and torchvision's resnet18 (random weights, seeded; 64x64 images
of the concept world), on CUDA when present (float16) else on the CPU (bfloat16), the same
batches through :func:`conceptevo.stimuli.compute_stimuli` with ``amp`` off and on:

* time: the best of ``--repeats`` passes each, alternating; ``ratio`` = amp / float32 (< 1:
  mixed precision is faster);
* what changes: the mean share of each neuron's top-k stimuli found by both passes, the
  largest relative difference of a neuron's maximum activation (relative to the layer's
  largest), and the share of images whose top-1 prediction differs.

Whether bfloat16 is faster on a CPU depends on its vector units (docs/scaling.md gives this
machine's figures); on a GPU, benchmarks/gpu_check.py also compares a CUDA build with
``amp = true`` against the CPU's float32 build.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from conceptevo.data.concept_world import ConceptWorld
from conceptevo.models.adapter import ModelAdapter
from conceptevo.models.registry import build_model
from conceptevo.stimuli import amp_dtype, compute_stimuli

MODELS = {"small_vgg": ("conceptevo:small_vgg", {"num_classes": 12}),
          "resnet18": ("torchvision:resnet18", {"num_classes": 12})}


def _batches(x: torch.Tensor, batch_size: int, device: torch.device):
    for s in range(0, len(x), batch_size):
        yield x[s:s + batch_size].to(device), torch.arange(s, min(s + batch_size, len(x)))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row's ids in ``a`` also in the same row of ``b``."""
    return float((a[:, :, None] == b[:, None, :]).any(2).mean())


def measure(name: str, x: torch.Tensor, batch_size: int, repeats: int,
            device: torch.device) -> dict:
    arch, kwargs = MODELS[name]
    torch.manual_seed(0)
    model = build_model(arch, kwargs).to(device).eval()
    adapter = ModelAdapter(model)
    times = {False: [], True: []}
    results = {}
    for _ in range(repeats):
        for amp in (False, True):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            acc = compute_stimuli(adapter, _batches(x, batch_size, device), len(x),
                                  device=device, amp=amp)
            results[amp] = acc.result()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[amp].append(time.perf_counter() - start)
    full, mixed = results[False], results[True]
    rel = np.zeros(full.n_neurons)
    for li in full.layers:
        sl = slice(li.offset, li.offset + li.channels)
        span = max(float(np.abs(full.act_max[sl]).max()), 1e-12)
        rel[sl] = np.abs(full.act_max[sl] - mixed.act_max[sl]) / span
    return {"model": arch, "neurons": full.n_neurons, "images": len(x),
            "float32_seconds": min(times[False]), "amp_seconds": min(times[True]),
            "ratio": min(times[True]) / min(times[False]),
            "stimuli_overlap": overlap(full.stimuli, mixed.stimuli),
            "act_max_relative_difference": float(rel.max()),
            "predictions_changed": float((full.predicted != mixed.predicted).mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="small_vgg,resnet18")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = ConceptWorld(image_size=64, seed=0)
    images = world.generate(args.images, split="train").images  # uint8 [n, H, W, 3]
    x = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    out = {"device": str(device), "amp_dtype": str(amp_dtype(device)),
           "threads": torch.get_num_threads(), "models": []}
    for name in args.models.split(","):
        print(f"[bench_amp] {name} on {device}", file=sys.stderr, flush=True)
        out["models"].append(measure(name, x, args.batch_size, args.repeats, device))
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
