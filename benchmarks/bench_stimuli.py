"""Stimulus pass vs a bare forward pass, and vs the reference's passes, in the same process.

    python benchmarks/bench_stimuli.py [--images 1024] [--batch-size 128] [--repeats 3]

For torchvision's vgg16 and resnet18 and ConceptEvo's small_vgg on 64x64 images, in both
memory layouts (the pipeline uses channels-last), times over the same batches:

* ``bare``: a plain ``model(x)`` loop without gradients;
* ``ours``: ConceptEvo's stimulus pass (hooks on every default layer, per-channel max and
  arg-max, running top-k merges for stimuli and responsive neurons, summary statistics, top-1
  predictions: one pass gives all of it);
* ``reference``: the reference's stimulus pass as published (``stimulus.py``): the model in
  eval mode with autograd on (its parameters require gradients and it runs no
  ``torch.no_grad``), its layers run in order except the last one (the classifier head is
  skipped: a pre-hook stops the forward there), and after every Conv2d the per-channel
  maximum (``max`` over H, then over W), ``torch.topk`` over the batch (k = min(B, 20)),
  ``.cpu().numpy()``, and a Python loop over the k ranks and the layer's neurons inserting
  (value, image id) into one sorted-list top-k keeper per neuron;
* ``reference_responsive``: the reference's separate pass for the responsive neurons
  (``responsive_neurons.py``): the same forward, then per Conv2d ``torch.topk`` over the
  layer's neurons for each image and a Python loop inserting (value, "layer-neuron") into one
  top-k keeper per image (20 over all layers).

Ratios: ``ratio`` = ours / bare (target <= 1.25 on CPU); ``vs_reference`` = reference / ours
(> 1: we are faster) against its stimulus pass alone, which computes less than ours (no
responsive neurons, locations, statistics or predictions, no classifier); and
``vs_reference_both_passes`` = (reference + reference_responsive) / ours, the two passes
that give what our one pass gives. The passes alternate ``--repeats`` times so that all see
the same machine state; ratios are the medians of the per-repeat ratios, times the best of
each. ``--reference-batch`` runs the reference at another batch size (its script uses 512).

Vision transformers (``--models small_vit,vit_b_16``): ConceptEvo's small_vit (64x64, patch 8,
4 blocks, 512 MLP hidden units) and torchvision's vit_b_16 built for 64x64 inputs (patch 16:
a 4x4 grid and a class token; 12 blocks, 36,864 MLP hidden units). Their default layers are
the MLP hidden activation of every block, [B, T, C] tokens, each unit reduced over the patch
tokens. The reference probes Conv2d layers only, so they have no reference pass.
``profile_tokens`` splits a transformer's stimulus pass into its parts (the forward with
hooks that do nothing, the hooks' token reduction, the bookkeeping) for the same batches.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torchvision
from torch import nn

from conceptevo.models.adapter import ModelAdapter
from conceptevo.models.registry import build_model
from conceptevo.stimuli import compute_stimuli


def bare_forward(model, batches):
    with torch.no_grad():
        for x, _ in batches:
            model(x)


class TopKKeeper:
    """The reference's top-k keeper: values sorted in descending order in a Python list; a
    new value enters if the list is not full or it beats the last, before the first smaller
    one (so equal values keep their arrival order)."""

    def __init__(self, k: int):
        self.k, self.keys, self.vals = k, [], []

    def will_insert(self, val) -> bool:
        return len(self.vals) < self.k or self.vals[-1] < val

    def insert(self, val, key=None) -> None:
        if not self.will_insert(val):
            return
        for i, e in enumerate(self.vals):
            if e < val:
                self.keys = (self.keys[:i] + [key] + self.keys[i:])[:self.k]
                self.vals = (self.vals[:i] + [val] + self.vals[i:])[:self.k]
                return
        self.keys = (self.keys + [key])[:self.k]
        self.vals = (self.vals + [val])[:self.k]


class _StopForward(Exception):
    pass


def reference_pass(model: nn.Module, batches, n_images: int, k: int = 20,
                   responsive: bool = False) -> list:
    """The reference's stimulus pass (``responsive=False``) or its responsive-neuron pass
    (``True``) over ``batches``; returns its keepers (see the module docstring)."""
    convs = [(f"conv{i}", m) for i, m in enumerate(m for m in model.modules()
                                                   if isinstance(m, nn.Conv2d))]
    batch_size = len(batches[0][0])
    state = {"batch_idx": 0}
    if responsive:
        keepers = [TopKKeeper(k) for _ in range(n_images)]
    else:
        keepers = {name: [TopKKeeper(k) for _ in range(m.out_channels)] for name, m in convs}

    def max_act(f_map):
        return torch.max(torch.max(f_map, dim=2).values, dim=2).values

    def update_stimulus(name, f_map):
        acts = max_act(f_map)
        top_k = min(acts.shape[0], k)
        vals, idx = torch.topk(acts, k=top_k, dim=0)
        vals, idx = vals.cpu().data.numpy(), idx.cpu().data.numpy()
        base = state["batch_idx"] * batch_size
        layer = keepers[name]
        for r in range(top_k):
            for neuron in range(acts.shape[1]):
                layer[neuron].insert(vals[r, neuron], key=base + idx[r, neuron])

    def update_responsive(name, f_map):
        acts = max_act(f_map)
        top_k = min(acts.shape[1], k)
        vals, idx = torch.topk(acts, k=top_k, dim=1)
        vals, idx = vals.cpu().data.numpy(), idx.cpu().data.numpy()
        base = state["batch_idx"] * batch_size
        for i in range(idx.shape[0]):
            for r in range(top_k):
                keepers[base + i].insert(vals[i, r], key=f"{name}-{idx[i, r]}")

    update = update_responsive if responsive else update_stimulus
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: update(name, out))
             for name, m in convs]
    last = list(model.children())[-1]  # the reference's last layer is not run

    def stop(mod, inp):
        raise _StopForward

    hooks.append(last.register_forward_pre_hook(stop))
    params = [p for p in model.parameters()]
    grads = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)  # as the reference sets them
    model.eval()
    try:
        for batch_idx, (x, _) in enumerate(batches):
            state["batch_idx"] = batch_idx
            try:
                model(x)  # autograd on, as in the reference
            except _StopForward:
                pass
    finally:
        for h in hooks:
            h.remove()
        for p, g in zip(params, grads):
            p.requires_grad_(g)
    return keepers


def _neuron_id(key: str, adapter: ModelAdapter) -> int:
    """Our neuron id of the reference's "conv<i>-<channel>" key."""
    layer, channel = key.split("-")
    return adapter.layers_[int(layer[4:])].offset + int(channel)


#: the transformers measured (no reference pass: the reference probes Conv2d layers only)
TRANSFORMERS = ("small_vit", "vit_b_16")


def build(name: str) -> torch.nn.Module:
    if name in ("small_vgg", "small_vit"):
        return build_model(f"conceptevo:{name}", {"num_classes": 12})
    if name.startswith("vit_"):  # torchvision's ViTs, their position embedding for 64x64
        return torchvision.models.get_model(name, weights=None, num_classes=10, image_size=64)
    return torchvision.models.get_model(name, weights=None, num_classes=10)


def measure(name: str, images: int, batch_size: int, repeats: int, channels_last: bool,
            k: int = 20, with_reference: bool = True, reference_batch: int | None = None
            ) -> dict:
    torch.manual_seed(0)
    with_reference = with_reference and name not in TRANSFORMERS
    model = build(name).eval()
    data = torch.randn(images, 3, 64, 64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    batches = [(data[s:s + batch_size], torch.arange(s, min(s + batch_size, images)))
               for s in range(0, images, batch_size)]
    adapter = ModelAdapter(model)
    adapter.describe(data[:1])
    rb = reference_batch or batch_size
    ref_batches = batches if rb == batch_size else [
        (data[s:s + rb], torch.arange(s, min(s + rb, images))) for s in range(0, images, rb)]
    bare_forward(model, batches[:1])  # warm-up
    compute_stimuli(adapter, batches[:1], batch_size, k_stimuli=k, k_responsive=k)
    if with_reference:
        reference_pass(model, ref_batches[:1], len(ref_batches[0][0]), k)
    t_bare, t_ours, t_ref, t_resp = [], [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        bare_forward(model, batches)
        t_bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = compute_stimuli(adapter, batches, images, k_stimuli=k, k_responsive=k).result()
        t_ours.append(time.perf_counter() - t)
        if with_reference:
            t = time.perf_counter()
            ref_stimuli = reference_pass(model, ref_batches, images, k)
            t_ref.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref_responsive = reference_pass(model, ref_batches, images, k, responsive=True)
            t_resp.append(time.perf_counter() - t)
    bare, ours = min(t_bare), min(t_ours)
    ratio = float(np.median(np.array(t_ours) / np.array(t_bare)))
    row = {"model": name, "layout": "channels_last" if channels_last else "contiguous",
           "neurons": adapter.n_neurons, "images": images, "repeats": repeats,
           "batch_size": batch_size, "bare_forward_s": round(bare, 3),
           "stimulus_pass_s": round(ours, 3), "ratio": round(ratio, 3),
           "ratio_per_repeat": [round(float(x), 3) for x in np.array(t_ours) / np.array(t_bare)],
           "images_per_s": round(images / ours, 1)}
    if with_reference:
        ours_a = np.array(t_ours)
        vs_ref = np.array(t_ref) / ours_a
        vs_both = (np.array(t_ref) + np.array(t_resp)) / ours_a
        row.update({
            "reference_batch_size": rb,
            "reference_stimulus_pass_s": round(min(t_ref), 3),
            "reference_responsive_pass_s": round(min(t_resp), 3),
            "vs_reference": round(float(np.median(vs_ref)), 3),
            "vs_reference_per_repeat": [round(float(x), 3) for x in vs_ref],
            "vs_reference_both_passes": round(float(np.median(vs_both)), 3),
            "vs_reference_both_passes_per_repeat": [round(float(x), 3) for x in vs_both],
            "reference_vs_bare": round(float(np.median(np.array(t_ref)
                                                       / np.array(t_bare))), 3),
            # the same answer: each neuron's stimulus set, each image's responsive set
            "same_stimuli_as_reference": round(float(np.mean([
                set(map(int, keeper.keys)) == set(map(int, ours_row))
                for keeper, ours_row in zip((kp for layer in ref_stimuli.values()
                                             for kp in layer), result.stimuli)])), 4),
            "same_responsive_as_reference": round(float(np.mean([
                {_neuron_id(key, adapter) for key in
                 keeper.keys} == set(map(int, ours_row))
                for keeper, ours_row in zip(ref_responsive, result.responsive)])), 4)})
    return row


def profile_tokens(name: str, images: int, batch_size: int, repeats: int, k: int = 20
                   ) -> dict:
    """Where a transformer's stimulus pass spends its time, on the same batches (contiguous):

    * ``bare``: ``model(x)``;
    * ``hooks``: the forward with a hook on every probed layer that does nothing;
    * ``reduce``: the hooks computing the activations and locations as the pass does
      (``ModelAdapter.activations``: ``reduce_layer`` over the patch tokens);
    * ``ours``: the whole stimulus pass (``compute_stimuli``).

    Times are the best of ``repeats`` interleaved rounds; ``*_share`` are the differences
    between consecutive steps as fractions of ``ours``."""
    torch.manual_seed(0)
    model = build(name).eval()
    data = torch.randn(images, 3, 64, 64)
    batches = [(data[s:s + batch_size], torch.arange(s, min(s + batch_size, images)))
               for s in range(0, images, batch_size)]
    adapter = ModelAdapter(model)
    adapter.describe(data[:1])

    def hooks_only():
        with torch.no_grad(), adapter.hooks(lambda i, out: None, once=False):
            for x, _ in batches:
                model(x)

    def reduce_only():
        with torch.no_grad():
            for x, _ in batches:
                adapter.activations(x)

    def ours():
        compute_stimuli(adapter, batches, images, k_stimuli=k, k_responsive=k).result()

    steps = {"bare": lambda: bare_forward(model, batches), "hooks": hooks_only,
             "reduce": reduce_only, "ours": ours}
    for fn in steps.values():  # warm-up
        fn()
    best = {key: float("inf") for key in steps}
    for _ in range(repeats):
        for key, fn in steps.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    ours_s = best["ours"]
    return {"model": name, "images": images, "batch_size": batch_size, "repeats": repeats,
            "neurons": adapter.n_neurons,
            "layers": [f"{li.name} {li.layout}+{li.prefix} {li.map_size[0]}x{li.map_size[1]}"
                       for li in adapter.layers_][:2] + (["..."] if len(adapter.layers_) > 2
                                                         else []),
            **{f"{key}_s": round(v, 4) for key, v in best.items()},
            "hooks_share": round((best["hooks"] - best["bare"]) / ours_s, 3),
            "reduce_share": round((best["reduce"] - best["hooks"]) / ours_s, 3),
            "bookkeeping_share": round((ours_s - best["reduce"]) / ours_s, 3),
            "ratio_ours_vs_bare": round(ours_s / best["bare"], 3)}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="vgg16,resnet18,small_vgg",
                    help="comma-separated: vgg16, resnet18, small_vgg, small_vit, vit_b_16")
    ap.add_argument("--no-reference", action="store_true",
                    help="time only the bare forward and ours")
    ap.add_argument("--reference-batch", type=int, default=None,
                    help="batch size of the reference's passes (default: --batch-size)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    rows = [measure(m, args.images, args.batch_size, args.repeats, cl,
                    with_reference=not args.no_reference, reference_batch=args.reference_batch)
            for m in args.models.split(",") for cl in (True, False)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 64x64 images")
        print(f"{'model':<10} {'layout':<14} {'neurons':>7} {'bare (s)':>9} {'ours (s)':>9} "
              f"{'ratio':>6} {'img/s':>7} {'ref (s)':>8} {'vs ref':>7} {'vs both':>8}")
        for r in rows:
            ref = (f" {r['reference_stimulus_pass_s']:>8.3f} {r['vs_reference']:>7.3f} "
                   f"{r['vs_reference_both_passes']:>8.3f}") if "vs_reference" in r else ""
            print(f"{r['model']:<10} {r['layout']:<14} {r['neurons']:>7} "
                  f"{r['bare_forward_s']:>9.3f} "
                  f"{r['stimulus_pass_s']:>9.3f} {r['ratio']:>6.3f} {r['images_per_s']:>7.1f}"
                  + ref)
    return rows


if __name__ == "__main__":
    main()
