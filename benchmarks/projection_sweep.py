"""How the activation-weighted projection's settings move the alignment study.

Usage::

    python benchmarks/projection_sweep.py WORKSPACE [--out results/projection_sweep.json]

WORKSPACE is an evaluated workspace built with ``[space] projection = "activations"`` (the
demo's, after ``conceptevo demo``). For each temperature T and ridge, the image embedding is
solved again from the stored base embedding and activations, every evaluated checkpoint is
projected, and the alignment study is scored on two disjoint-seeded query samples: "tune"
(seed + 1, the sample the defaults were chosen on) and "report" (the study's own seed, the
sample ``conceptevo evaluate`` reports). The paper's projection by stimuli and the activation
correlation baseline are scored on the same samples for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace")
    ap.add_argument("--temperatures", default="0.5,0.75,1,1.5")
    ap.add_argument("--ridges", default="1e-4,1e-3,1e-2")
    ap.add_argument("--queries-per-layer", type=int,
                    help="default: the workspace's [evaluation] queries_per_layer")
    ap.add_argument("--out", default=str(HERE / "results" / "projection_sweep.json"))
    args = ap.parse_args(argv)

    from conceptevo.evaluate.alignment import (
        NeuronIndex,
        alignment_study,
        correlation_similarity_fn,
        cosine_similarity_fn,
        sample_queries,
    )
    from conceptevo.evaluate.neurons import collect_neurons, load_checkpoints, space_vectors
    from conceptevo.space.image_embedding import ActivationWeights, fidelity
    from conceptevo.stages.evaluation import evaluated_checkpoints
    from conceptevo.stages.stimuli import base_descriptor
    from conceptevo.workspace import Workspace
    from conceptevo.workspace.artifacts import load_base_space, study_config

    ws = Workspace(args.workspace)
    cfg = study_config(ws)
    ec = cfg.evaluation
    checkpoints = evaluated_checkpoints(cfg, ws)
    space = load_base_space(ws)
    data = load_checkpoints(ws, checkpoints, activations=False, with_labels=True)
    neurons = collect_neurons(cfg, data, ws.load_probe().labels, space)
    index = NeuronIndex(neurons.checkpoint, neurons.depth, neurons.concept)
    stored = {m: v[neurons.rows] for m, v in
              space_vectors(cfg, data, space, stored=True, seed=cfg.seed).items()}
    del data
    desc = base_descriptor(cfg)
    if desc["kind"] != "run":
        sys.exit("the sweep needs a base checkpoint of the study")
    _, base = ws.load_arrays(ws.space_path("base.npz"))
    v, valid = base["neuron_embedding"].astype(np.float64), base["valid"]
    rows = np.flatnonzero(valid)
    base_acts = ws.load_stimuli(desc["run"], desc["epoch"], activations=True
                                ).activation_matrix()[rows]
    acts = [ws.load_stimuli(r, e, activations=True).activation_matrix() for r, e in checkpoints]
    per_layer = args.queries_per_layer or ec.queries_per_layer
    samples = {"tune": sample_queries(index, per_layer, cfg.seed + 1),
               "report": sample_queries(index, per_layer, cfg.seed)}

    def score(similarity) -> dict:
        out = {}
        for name, queries in samples.items():
            r = alignment_study(index, queries, similarity, ec.neighbours, cfg.seed)
            s = r.auc(ec.bootstrap, cfg.seed)
            out[name] = {"auc": round(s["auc"], 4), "ci95": [round(x, 4) for x in s["ci95"]]}
        return out

    t0 = time.perf_counter()
    doc = {"workspace": str(ws.root), "queries_per_layer": per_layer,
           "n_queries": {k: int(len(q)) for k, q in samples.items()},
           "reference": {
               "correlation": score(correlation_similarity_fn(neurons.fixed["correlation"])),
               "stimuli": score(cosine_similarity_fn(stored.get(
                   "stimuli", stored["unified"])))},
           "sweep": []}
    for t in [float(x) for x in args.temperatures.split(",")]:
        weights = [ActivationWeights(a, t) for a in acts]
        wb = ActivationWeights(base_acts, t)
        for ridge in [float(x) for x in args.ridges.split(",")]:
            e = wb.solve(v[rows], ridge)
            fid = fidelity(wb.project(e), v[rows])
            vectors = np.concatenate([w.project(e) for w in weights])[neurons.rows]
            row = {"temperature": t, "ridge": ridge, "fidelity_top1": round(fid["top1"], 4),
                   "fidelity_cosine": round(fid["mean_cosine"], 4),
                   **score(cosine_similarity_fn(vectors))}
            doc["sweep"].append(row)
            print(f"T {t:<5} ridge {ridge:<7g} fidelity top-1 {fid['top1']:.2f}  "
                  f"tune {row['tune']['auc']:.3f}  report {row['report']['auc']:.3f} "
                  f"{row['report']['ci95']}", flush=True)
    for name, r in doc["reference"].items():
        print(f"{name:<12} tune {r['tune']['auc']:.3f}  report {r['report']['auc']:.3f} "
              f"{r['report']['ci95']}")
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {out}")
    return doc


if __name__ == "__main__":
    main()
