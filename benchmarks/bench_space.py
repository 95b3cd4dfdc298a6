"""Time of each stage of the unified space for a VGG16-sized base, against the reference.

    python benchmarks/bench_space.py [--neurons 4224] [--images 45000] [--checkpoints 50]

Synthetic stimuli with concept structure stand in for a real base model: neurons belong to
concept groups and draw their 20 stimuli from their group's pool of images, which gives
about 40k vocabulary images for 4,224 neurons, as for VGG16 on a 10% ImageNet probe set.

Measured, in one process:

* neuron embedding (20 epochs, reference settings): ConceptEvo's vectorised mini-batches vs
  the reference's per-pair SGD loop, run in full, compared at their final loss on the same
  evaluation pairs;
* image embedding: ConceptEvo's exact sparse least squares vs the reference's full-batch
  gradient descent (lr 0.1, up to 10,000 iterations, stop at RMSE 0.01). The reference's
  time per iteration is measured on its Python loops and multiplied by the number of
  iterations it needs; its RMSE trajectory comes from the same update computed with sparse
  matrices;
* indirect embedding of the other probe images, projection of ``--checkpoints`` checkpoints
  and the 2-D map (UMAP fit on the base, transform of every projected neuron). umap-learn's
  one-off JIT compilation is reported separately;
* the activation-weighted projection (ConceptEvo's default, docs/space.md) on synthetic
  activations of the same size (each neuron responds more to its stimuli): its image
  embedding (weights of the base over every probe image, Gram matrix, Cholesky) and the
  projection of one checkpoint (timed on ``--weighted-checkpoints`` of them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from conceptevo.space.coactivation import CoActivation
from conceptevo.space.image_embedding import (
    ActivationWeights,
    embed_other_images,
    project,
    rmse,
    solve_image_embedding,
    stimulus_matrix,
)
from conceptevo.space.map2d import ConceptMap
from conceptevo.space.neuron_embedding import NeuronEmbedding, pair_loss


def synthetic_base(n_neurons: int, n_images: int, k: int, k_i: int, seed: int = 0):
    """Stimuli [n_neurons, k] and responsive neurons [n_images, k_i] with group structure."""
    rng = np.random.default_rng(seed)
    groups = max(1, n_neurons // 20)
    pool = n_images // groups
    group_of = rng.integers(0, groups, n_neurons)
    # each neuron: most stimuli from its group's pool, a few anywhere
    own = rng.random((n_neurons, k)) < 0.85
    local = group_of[:, None] * pool + rng.integers(0, pool, (n_neurons, k))
    anywhere = rng.integers(0, n_images, (n_neurons, k))
    stimuli = np.where(own, local, anywhere)
    for n in range(n_neurons):  # distinct stimuli per neuron, as a top-k gives
        row = np.unique(stimuli[n])
        while row.size < k:
            row = np.unique(np.concatenate([row, rng.integers(0, n_images, k - row.size)]))
        stimuli[n] = rng.permutation(row)[:k]
    members = [np.flatnonzero(group_of == g) for g in range(groups)]
    image_group = np.minimum(np.arange(n_images) // pool, groups - 1)
    responsive = np.stack([rng.choice(members[g], k_i, replace=members[g].size < k_i)
                           if members[g].size else rng.integers(0, n_neurons, k_i)
                           for g in image_group])
    return stimuli, responsive, group_of


def synthetic_activations(stimuli: np.ndarray, n_images: int, seed: int = 0) -> np.ndarray:
    """float32 [n_neurons, n_images]: noise, plus a response to each neuron's stimuli."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((stimuli.shape[0], n_images), dtype=np.float32)
    np.put_along_axis(acts, stimuli, 3.0 + rng.random(stimuli.shape, dtype=np.float32), axis=1)
    return acts


def reference_neuron_embedding(co: CoActivation, init: np.ndarray, epochs: int, lr: float,
                               negatives: int, seed: int) -> np.ndarray:
    """The reference's per-pair SGD loop (Python, NumPy vectors)."""
    rng = np.random.default_rng(seed)
    emb = np.array(init, dtype=np.float64)
    by_image: dict[int, list] = {}
    for n, x in zip(co.neurons.tolist(), co.images.tolist()):
        by_image.setdefault(x, []).append(n)
    images = list(by_image)
    for _ in range(epochs):
        rng.shuffle(images)
        for x in images:
            neurons = by_image[x]
            rng.shuffle(neurons)
            for u, v in zip(neurons[:-1], neurons[1:]):
                vu, vv = emb[u].copy(), emb[v].copy()
                coeff = 1 - 1 / (1 + np.exp(-vu @ vv))
                g_u, g_v = -coeff * vv, -coeff * vu
                for r in rng.integers(0, co.n_neurons, negatives):
                    g_u += emb[r] / (1 + np.exp(-(emb[r] @ vu)))
                    g_v += emb[r] / (1 + np.exp(-(emb[r] @ vv)))
                emb[u] -= lr * g_u
                emb[v] -= lr * g_v
    return emb


def evaluation_loss(emb: np.ndarray, co: CoActivation) -> float:
    g = torch.Generator().manual_seed(12345)
    a, b = co.epoch_pairs(g)
    neg = torch.randint(0, co.n_neurons, (a.numel(), 3), generator=g)
    return float(pair_loss(torch.as_tensor(emb, dtype=torch.float32), a, b, neg).mean())


def reference_gd_iteration_loop(stimuli, v, e, lr=0.1):
    """One iteration of the reference image embedding, with its Python loops (timed only)."""
    n, k = stimuli.shape
    stimulated_by: dict[int, list] = {}
    for neuron in range(n):
        for x in stimuli[neuron]:
            stimulated_by.setdefault(int(x), []).append(neuron)
    for x, neurons in stimulated_by.items():
        grad = np.zeros(v.shape[1])
        for neuron in neurons:
            approx = e[stimuli[neuron]].mean(0)
            grad += (approx - v[neuron]) / k
        e[x] -= lr * grad / n
    return e


def reference_gd_trajectory(a, v, lr=0.1, max_iter=10_000, stop=0.01, seed=0, target=None):
    """The reference's gradient descent with sparse matrices: (iterations, final RMSE,
    iterations needed to reach ``target`` or None)."""
    rng = np.random.default_rng(seed)
    e = rng.random((a.shape[1], v.shape[1])) - 0.5
    at = a.T.tocsr()
    reached = None
    err = float("inf")
    for it in range(1, max_iter + 1):
        residual = a @ e - v
        err = float(np.sqrt((residual ** 2).sum(1).mean()))
        if target is not None and reached is None and err <= target:
            reached = it
        if err < stop:
            break
        e -= lr * (at @ residual) / a.shape[0]
    return it, err, reached


def _log(text: str) -> None:
    print(f"[space] {text}", file=sys.stderr, flush=True)


def measure(neurons: int = 4224, images: int = 45_000, checkpoints: int = 50,
            reference_epochs: int = 20, seeds: int = 3, weighted_checkpoints: int = 2) -> dict:
    """Every figure of this benchmark (see the module docstring)."""
    args = argparse.Namespace(neurons=neurons, images=images, checkpoints=checkpoints,
                              reference_epochs=reference_epochs, seeds=seeds)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    k, k_i, d = 20, 20, 30
    _log(f"synthetic base: {neurons} neurons, {images} probe images")
    stimuli, responsive, group_of = synthetic_base(args.neurons, args.images, k, k_i)
    out: dict = {"neurons": args.neurons, "probe_images": args.images,
                 "checkpoints": args.checkpoints}

    # --- neuron embedding (same initialisation for both; averaged over seeds)
    co = CoActivation.from_stimuli(stimuli)
    t_ne, t_ref, l_ours, l_ref = [], [], [], []
    for seed in range(args.seeds):
        _log(f"neuron embedding, seed {seed}: ours, then the reference's per-pair loop "
             f"({args.reference_epochs} epochs)")
        init = np.random.default_rng(seed).random((args.neurons, d)) - 0.5
        t = time.perf_counter()
        model = NeuronEmbedding(dim=d, epochs=20, lr=0.01, negatives=3, seed=seed).fit(
            co, init=init)
        t_ne.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = reference_neuron_embedding(co, init, args.reference_epochs, 0.01, 3, seed=seed)
        t_ref.append((time.perf_counter() - t) * 20 / args.reference_epochs)
        l_ours.append(evaluation_loss(model.embedding_, co))
        l_ref.append(evaluation_loss(ref, co))
        if seed == 0:
            ours = model
    out["neuron_embedding"] = {
        "pairs_per_epoch": co.n_pairs, "seeds": args.seeds,
        "ours_s": round(float(np.mean(t_ne)), 2), "reference_s": round(float(np.mean(t_ref)), 1),
        "speedup": round(float(np.mean(t_ref) / np.mean(t_ne)), 1),
        "ours_loss": round(float(np.mean(l_ours)), 4),
        "reference_loss": round(float(np.mean(l_ref)), 4),
        "loss_spread_over_seeds": round(float(np.std(l_ref)), 4),
        "reference_epochs_run": args.reference_epochs,
        "us_per_pair_reference": round(float(np.mean(t_ref)) / (20 * co.n_pairs) * 1e6, 1)}
    t_ne = float(np.mean(t_ne))
    v = ours.embedding_.astype(np.float64)

    # --- image embedding
    _log("image embedding: exact least squares, then the reference's gradient descent")
    a, vocab = stimulus_matrix(stimuli, np.arange(args.neurons), args.images)
    t = time.perf_counter()
    e_vocab = solve_image_embedding(a, v)
    t_ie = time.perf_counter() - t
    err_ours = rmse(a, e_vocab, v)
    e_loop = np.random.default_rng(0).random((args.images, d)) - 0.5
    t = time.perf_counter()
    iters_timed = 2
    for _ in range(iters_timed):
        reference_gd_iteration_loop(stimuli, v, e_loop)
    t_iter = (time.perf_counter() - t) / iters_timed
    iters, err_ref, reached = reference_gd_trajectory(a, v, target=err_ours)
    needed = reached if reached is not None else iters
    out["image_embedding"] = {
        "vocabulary": int(vocab.size), "ours_s": round(t_ie, 3), "ours_rmse": err_ours,
        "reference_s_per_iteration": round(t_iter, 3), "reference_iterations": iters,
        "reference_rmse": err_ref,
        "reference_reaches_our_rmse": reached is not None,
        "reference_s": round(t_iter * needed, 1),
        "speedup": round(t_iter * needed / t_ie, 0)}

    # --- indirect, projection, map
    _log(f"indirect embedding, {args.checkpoints} projections, 2-D map (UMAP compiles first)")
    e = np.zeros((args.images, d))
    e[vocab] = e_vocab
    known = np.zeros(args.images, dtype=bool)
    known[vocab] = True
    t = time.perf_counter()
    others = np.flatnonzero(~known)
    e[others] = embed_other_images(others, responsive, e, known, v,
                                   np.ones(args.neurons, dtype=bool), "neuron-mean")
    t_ind = time.perf_counter() - t
    rng = np.random.default_rng(1)
    checkpoints = [np.sort(rng.integers(0, args.images, (args.neurons, k)), axis=1)
                   for _ in range(args.checkpoints)]
    t = time.perf_counter()
    projected = [project(s, e).astype(np.float32) for s in checkpoints]
    t_proj = time.perf_counter() - t
    t = time.perf_counter()
    ConceptMap().fit(v[:300]).transform(v[:300])  # umap-learn's JIT compilation, once
    warm = ConceptMap().fit(v[: min(5000, args.neurons)])  # compiles the large-data path
    warm.transform(v[:300])
    t_compile = time.perf_counter() - t
    t = time.perf_counter()
    cmap = ConceptMap().fit(v)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    cmap.transform(np.concatenate(projected))
    t_transform = time.perf_counter() - t
    total = t_ne + t_ie + t_ind + t_proj + t_fit + t_transform
    out["stages_s"] = {"neuron_embedding": round(t_ne, 2), "image_embedding": round(t_ie, 2),
                       "indirect_embedding": round(t_ind, 2),
                       f"projection_{args.checkpoints}": round(t_proj, 2),
                       "map_fit": round(t_fit, 2),
                       f"map_transform_{args.checkpoints}": round(t_transform, 2),
                       "umap_jit_compile_once": round(t_compile, 1)}
    out["whole_space_s"] = round(total, 1)
    out["whole_space_with_compile_s"] = round(total + t_compile, 1)

    # --- the activation-weighted projection
    _log(f"activation-weighted projection: image embedding, {weighted_checkpoints} "
         "checkpoint(s)")
    acts = synthetic_activations(stimuli, args.images)
    t = time.perf_counter()
    e_w = ActivationWeights(acts, 1.0).solve(v, 1e-4)
    t_solve = time.perf_counter() - t
    times = []
    for c in range(weighted_checkpoints):
        other = synthetic_activations(checkpoints[c], args.images, seed=c + 1)
        t = time.perf_counter()
        ActivationWeights(other, 1.0).project(e_w)
        times.append(time.perf_counter() - t)
    out["activation_weighted"] = {
        "image_embedding_s": round(t_solve, 2),
        "projection_per_checkpoint_s": round(float(np.mean(times)), 2),
        f"projection_{args.checkpoints}_s": round(float(np.mean(times)) * args.checkpoints, 1),
        "checkpoints_timed": weighted_checkpoints,
        "stored_mb_per_checkpoint": round(args.neurons * args.images * 2 / 1e6, 1)}
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", type=int, default=4224)
    ap.add_argument("--images", type=int, default=45_000)
    ap.add_argument("--checkpoints", type=int, default=50)
    ap.add_argument("--reference-epochs", type=int, default=20,
                    help="epochs of the per-pair reference loop (20 = the full reference)")
    ap.add_argument("--seeds", type=int, default=3,
                    help="neuron embedding: seeds averaged for the loss comparison")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    out = measure(args.neurons, args.images, args.checkpoints, args.reference_epochs,
                  args.seeds)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
