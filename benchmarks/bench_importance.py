"""Batched sensitivity vs the reference's algorithm and vs our own per-image loop; agreement.

    python benchmarks/bench_importance.py [--images 32] [--batch-size 32] [--reference-images 4]

For ConceptEvo's small_vgg and torchvision's resnet18 and vgg16 on 64x64 images, with two
random checkpoints M^t and M^t', computes the sensitivity of every neuron of every Conv2d for
the same images three ways, each in its own process (so that its peak resident memory,
ru_maxrss, is its own):

* batched, as ConceptEvo does: one forward of M^t', one forward and one backward of M^t per
  batch, every layer at once;
* naive, our own per-image loop: per image (a batch of one), one forward of each model, one
  autograd call per layer (the graph retained), a Python loop over the layer's neurons on
  maps computed once;
* reference, the reference's algorithm as published (``find_important_evo.py``): a batch of
  ``--reference-batch`` images (its script's 50) through both models with autograd on and
  the feature maps kept as the layers return them (no copy); then per image of the batch and
  per layer, ``autograd.grad`` of that image's class logit with respect to the whole batch's
  feature map (``retain_graph=True``), and per neuron of the layer the change of the whole
  layer's map of that image recomputed (``to - from``), indexed at the neuron, multiplied by
  the neuron's gradient, summed and read with ``.item()``. Its time is the batch's forward
  passes plus ``--reference-images`` images of that per-image loop, scaled to the batch
  (every image of a batch does the same work).

Ratios are "the other / batched" at equal work: the same images, the same neurons, class 3.

Agreement: ConceptEvo and the naive loop take the Conv2d output before anything after it
runs (SPEC.md: the conv output, pre-ReLU); they agree to 1e-5 of the largest sensitivity in
float64 on 8 images (in float32 a few values differ more, because the batched and the
one-image forward passes round differently). The reference keeps the tensor the layer
returned, and in torchvision's VGG16 the next module is ``ReLU(inplace=True)``, which
overwrites that tensor: its "conv" gradients and changes are the post-ReLU ones. For VGG16
the reference therefore computes another quantity; the fraction of (image, neuron) pairs
whose sensitivity has the same sign in both (``sign_agreement_with_reference``) says how far
apart they are. In resnet18 and small_vgg a BatchNorm follows each conv, so the reference
computes the same pre-ReLU quantity there.
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


def reference_layers(model: nn.Module, every_layer: bool) -> list[tuple[nn.Module, str]]:
    """The layers whose maps the reference keeps: every Conv2d (equal work with ours), or
    (``every_layer``, torchvision VGG only) its whole layer list but the last: every module
    of ``features``, ``avgpool`` and the flattened input of ``classifier``, as its VGG16
    wrapper lists them. (module, "out" or "in": the map is the module's output or input)."""
    if not every_layer:
        return [(m, "out") for m in model.modules() if isinstance(m, nn.Conv2d)]
    return ([(m, "out") for m in model.features] + [(model.avgpool, "out"),
                                                      (model.classifier, "in")])


def reference(m_t: nn.Module, m_t2: nn.Module, x: torch.Tensor, c: int, batch_size: int = 50,
              images_timed: int | None = None, every_layer: bool = False
              ) -> tuple[np.ndarray, float, float]:
    """The reference's sensitivity loop on the first batch of ``x``: (sensitivities
    [images_timed, n_neurons], forward seconds for the batch, loop seconds per image)."""
    imgs = x[:batch_size]
    timed = len(imgs) if images_timed is None else min(images_timed, len(imgs))
    from_maps: list[torch.Tensor] = []
    to_maps: list[torch.Tensor] = []
    t = time.perf_counter()
    hs = []
    for maps, model in ((from_maps, m_t), (to_maps, m_t2)):
        for module, where in reference_layers(model, every_layer):
            if where == "out":
                hs.append(module.register_forward_hook(
                    lambda mod, i, o, maps=maps: maps.append(o)))
            else:
                hs.append(module.register_forward_pre_hook(
                    lambda mod, i, maps=maps: maps.append(i[0])))
    from_logits = m_t(imgs)  # autograd on for both, as in the reference
    m_t2(imgs)
    for h in hs:
        h.remove()
    t_forward = time.perf_counter() - t
    rows = []
    t = time.perf_counter()
    for img_idx in range(timed):
        row = []
        for layer_idx in range(len(from_maps)):
            grad = torch.autograd.grad(from_logits[img_idx, c], from_maps[layer_idx],
                                       retain_graph=True)
            grad = grad[0][img_idx]
            for neuron_idx in range(grad.shape[0]):
                neuron_grad = grad[neuron_idx]
                from_f_map = from_maps[layer_idx][img_idx]
                to_f_map = to_maps[layer_idx][img_idx]
                delta_f_map = to_f_map - from_f_map
                delta_f_map = delta_f_map[neuron_idx]
                sens = torch.mul(neuron_grad, delta_f_map)
                row.append(torch.sum(sens).item())
        rows.append(row)
    t_loop = (time.perf_counter() - t) / max(timed, 1)
    return np.asarray(rows), t_forward, t_loop


def batched(m_t, m_t2, x, c, batch_size) -> np.ndarray:
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    parts = [batch_sensitivity(a_t, a_t2, x[s:s + batch_size], c).double().numpy()
             for s in range(0, len(x), batch_size)]
    return np.concatenate(parts)


def worker(args: tuple) -> dict:
    """One computation in this (fresh) process; a computation under ``budget_s`` seconds is
    run again, up to 3 times, and the best time kept."""
    name, kind, n_images, batch_size, ref_batch, ref_images = args
    m_t, m_t2 = make(name, 0), make(name, 1)
    x = torch.randn(n_images, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict = {}
    times = []
    while len(times) < 3 and (not times or sum(times) < 5.0):
        t = time.perf_counter()
        if kind.startswith("reference"):
            # its first batch: min(ref_batch, n_images) images; per-image loop on ref_images
            s, t_forward, t_loop = reference(m_t, m_t2, x, 3, ref_batch, ref_images,
                                             every_layer=kind == "reference_every_layer")
            batch = min(ref_batch, n_images)
            # n_images in batches of `batch`: forwards scale with the images, loops per image
            times.append(t_forward * n_images / batch + t_loop * n_images)
            if times[-1] == min(times):
                out.update(forward_s_per_batch=t_forward, loop_s_per_image=t_loop,
                           batch=batch, images_timed=len(s), neurons=s.shape[1])
        else:
            s = naive(m_t, m_t2, x, 3) if kind == "naive" else \
                batched(m_t, m_t2, x, 3, batch_size)
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "runs": len(times), "peak_rss_mb": peak / 1024,
            "extra_rss_mb": (peak - base_rss) / 1024, "s": s, **out}


def agree_in_float64(name: str, n: int = 8) -> bool:
    m_t, m_t2 = make(name, 0).double(), make(name, 1).double()
    x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(2)).double()
    ours, ref = batched(m_t, m_t2, x, 3, n), naive(m_t, m_t2, x, 3)
    return bool(np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max())


def sign_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of entries whose sign (-1, 0, +1) is the same in ``a`` and ``b``."""
    return float((np.sign(a) == np.sign(b)).mean())


def measure(name: str, images: int = 64, batch_size: int = 64, reference_images: int = 4,
            reference_batch: int = 50, repeats: int = 1) -> dict:
    """Batched vs our naive loop vs the reference's algorithm for one model, each in its own
    process, ``repeats`` rounds (batched, naive, reference in turn): medians, and each
    round's ratios."""
    ctx = mp.get_context("spawn")
    runs: dict[str, list[dict]] = {"batched": [], "naive": [], "reference": []}
    vgg = name.startswith("vgg")
    if vgg:  # the reference's own layer list (torchvision VGG): more work than ours
        runs["reference_every_layer"] = []
    for _ in range(repeats):
        for kind in runs:
            with ctx.Pool(1) as pool:
                runs[kind].append(pool.apply(worker, ((name, kind, images, batch_size,
                                                       reference_batch, reference_images),)))
    secs = {k: np.array([r["seconds"] for r in v]) for k, v in runs.items()}
    ours, naive_run, ref = runs["batched"][0], runs["naive"][0], runs["reference"][0]
    agree = agree_in_float64(name)
    n_ref = len(ref["s"])
    ref_sign = sign_agreement(ours["s"][:n_ref], ref["s"])
    return {"model": name, "images": images, "neurons": ours["s"].shape[1],
            "repeats": repeats,
            "batched_s": round(float(np.median(secs["batched"])), 3),
            "naive_s": round(float(np.median(secs["naive"])), 2),
            "reference_s": round(float(np.median(secs["reference"])), 1),
            "speedup": round(float(np.median(secs["naive"] / secs["batched"])), 1),
            "speedup_vs_reference": round(float(np.median(secs["reference"]
                                                          / secs["batched"])), 1),
            "speedup_per_repeat": [round(float(x), 1) for x in secs["naive"] / secs["batched"]],
            "speedup_vs_reference_per_repeat": [round(float(x), 1) for x in
                                                secs["reference"] / secs["batched"]],
            "reference_vs_naive": round(float(np.median(secs["reference"] / secs["naive"])), 1),
            "reference_batch": ref["batch"], "reference_images_timed": ref["images_timed"],
            "reference_forward_s_per_batch": round(ref["forward_s_per_batch"], 3),
            "reference_loop_s_per_image": round(ref["loop_s_per_image"], 3),
            "batched_extra_rss_mb": round(ours["extra_rss_mb"], 1),
            "naive_extra_rss_mb": round(naive_run["extra_rss_mb"], 1),
            "reference_extra_rss_mb": round(ref["extra_rss_mb"], 1),
            "runs_in_process": {k: v[0]["runs"] for k, v in runs.items()},
            **({"reference_every_layer_s": round(float(np.median(
                    secs["reference_every_layer"])), 1),
                "reference_every_layer_neurons": runs["reference_every_layer"][0]["neurons"],
                "speedup_vs_reference_every_layer": round(float(np.median(
                    secs["reference_every_layer"] / secs["batched"])), 1)} if vgg else {}),
            "batched_peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "naive_peak_rss_mb": round(naive_run["peak_rss_mb"], 1),
            "reference_peak_rss_mb": round(ref["peak_rss_mb"], 1),
            "results_agree": bool(agree),
            "results_agree_with": "our naive loop (float64, 1e-5 of the largest sensitivity)",
            "sign_agreement_with_naive_float32": round(
                sign_agreement(ours["s"], naive_run["s"]), 4),
            "sign_agreement_with_reference": round(ref_sign, 4),
            "reference_zero_fraction": round(float((ref["s"] == 0).mean()), 4),
            "reference_max_abs_diff_rel": round(float(
                np.abs(ours["s"][:n_ref] - ref["s"]).max()
                / max(np.abs(ours["s"][:n_ref]).max(), 1e-30)), 6),
            "sign_agreement_images": n_ref}


def main() -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--models", default="resnet18,small_vgg,vgg16")
    ap.add_argument("--reference-images", type=int, default=4,
                    help="images of the reference's per-image loop timed (and compared)")
    ap.add_argument("--reference-batch", type=int, default=50,
                    help="the reference's batch size (its script: 50)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    rows = [measure(name, args.images, args.batch_size, args.reference_images,
                    args.reference_batch, args.repeats) for name in args.models.split(",")]
    print(f"{'model':<10} {'neurons':>7} {'batched':>8} {'naive':>8} {'ref.':>8} "
          f"{'vs naive':>9} {'vs ref.':>8} {'sign=ref':>9} agree(naive)")
    for r in rows:
        print(f"{r['model']:<10} {r['neurons']:>7} {r['batched_s']:>8.3f} {r['naive_s']:>8.2f} "
              f"{r['reference_s']:>8.1f} {r['speedup']:>8.1f}x "
              f"{r['speedup_vs_reference']:>7.1f}x {r['sign_agreement_with_reference']:>9.4f} "
              f"{r['results_agree']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
