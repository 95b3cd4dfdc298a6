"""Importance against simple rankers on the demo, over training seeds.

    python benchmarks/rankers.py --build      # trains and builds the 3 studies, ~5 min each
    python benchmarks/rankers.py              # reuses /tmp/evalseeds/seed{0,1,2}

For each training seed the full demo is trained and built as in
``benchmarks/calibrate_diagnosis.py`` (the studies ``benchmarks/evaluation_seeds.py``
evaluates), the importance of the healthy run is computed for every class and the demo's
epoch pairs, and each layer's bins of each ranking (ours, the magnitude variant, |dF|, the
weight-change norm, gradient x activation at the later epoch, activation magnitude, random)
are reverted to the earlier checkpoint
(:func:`conceptevo.stages.evaluation_rankers.compare_rankers`).
Writes ``benchmarks/results/rankers.json``: per training seed the ranker table, and pooled
over the seeds, per ranker and layer, the mean top-bin drop, its min-max over the seeds, the
monotone share and the share of cases where our top bin hurts more. The README's table is
formatted from it (``readme_rows``; tests/test_bench_run.py checks the README against it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build(root: Path, seed: int, data_from: Path | None) -> None:
    """Train, probe, build the space (calibrate_diagnosis.run_seed) and the importance of
    the healthy run for every class, as the full demo does."""
    from calibrate_diagnosis import run_seed

    from conceptevo import pipeline
    from conceptevo.config import load_config
    from conceptevo.demo import FULL, importance_pairs
    from conceptevo.stages.context import Context
    from conceptevo.stages.importance import ensure_importance

    run_seed(root, seed, data_from)
    cfg = load_config(root / "study.toml")
    ws = pipeline.open_workspace(cfg)
    probe, heldout = ws.load_probe(), ws.load_probe("heldout")
    ensure_importance(Context.create(cfg, ws), probe, heldout, "healthy",
                      list(range(len(probe.classes))), importance_pairs(FULL.epochs))


def compare(root: Path) -> dict:
    from conceptevo.config import load_config
    from conceptevo.stages.context import Context
    from conceptevo.stages.evaluation_rankers import compare_rankers
    from conceptevo.workspace import Workspace

    cfg = load_config(root / "study.toml")
    t = time.perf_counter()
    table = compare_rankers(Context.create(cfg, Workspace(root)), max_classes=100_000)
    if table is None:
        raise SystemExit(f"{root}: no stored importance; run with --build")
    table["seconds"] = round(time.perf_counter() - t, 1)
    return table


def pooled(tables: dict[str, dict]) -> dict:
    """Per ranker and layer, over the training seeds: mean, min, max of the mean top-bin drop,
    the mean monotone share and the mean share of cases where our top bin hurts more."""
    first = next(iter(tables.values()))
    out = {}
    for name in first["order"]:
        per_layer = {}
        for layer in first["layers"]:
            rows = [t["rankers"][name]["per_layer"][layer] for t in tables.values()
                    if layer in t["rankers"][name]["per_layer"]]
            if not rows:
                continue
            top = [r["top_bin_drop"] for r in rows]
            entry = {"top_bin_drop": float(np.mean(top)), "min": min(top), "max": max(top),
                     "bin_drops": np.mean([r["bin_drops"] for r in rows], 0).tolist()}
            if "monotone_share" in rows[0]:
                entry["monotone_share"] = float(np.mean([r["monotone_share"] for r in rows]))
                entry["ours_top_bin_higher"] = float(np.mean([r["ours_top_bin_higher"]
                                                              for r in rows]))
            per_layer[layer] = entry
        tops = [t["rankers"][name]["top_bin_drop"] for t in tables.values()]
        monos = [t["rankers"][name]["monotone_share"] for t in tables.values()]
        out[name] = {"title": first["rankers"][name]["title"], "per_layer": per_layer,
                     "top_bin_drop": float(np.mean(tops)), "min": min(tops), "max": max(tops),
                     "monotone_share": None if monos[0] is None else float(np.mean(monos))}
    return out


def readme_rows(result: dict) -> list[str]:
    """The README's table: one row per ranker, the mean top-bin drop per layer (points of
    top-1 accuracy) and its min-max over the training seeds, then the monotone share."""
    rows = []
    for r in result["pooled"].values():
        cells = []
        for layer in result["layers"]:
            e = r["per_layer"].get(layer)
            cells.append("-" if e is None else
                         f"{100 * e['top_bin_drop']:.1f} [{100 * e['min']:.1f}, "
                         f"{100 * e['max']:.1f}]")
        mono = "" if r["monotone_share"] is None else f"{r['monotone_share']:.0%}"
        rows.append(f"| {r['title']} | " + " | ".join(cells) + f" | {mono} |")
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", default="/tmp/evalseeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--build", action="store_true", help="train and build the studies first")
    ap.add_argument("--out", default=str(HERE / "results" / "rankers.json"))
    args = ap.parse_args(argv)
    root = Path(args.studies)
    tables, first = {}, None
    for seed in args.seeds:
        study = root / f"seed{seed}"
        if args.build:
            build(study, seed, first)
            first = first or study
        tables[str(seed)] = compare(study)
        print(f"training seed {seed}: {tables[str(seed)]['seconds']} s, "
              f"{tables[str(seed)]['n_cases']} cases", file=sys.stderr)
    one = next(iter(tables.values()))
    result = {"command": "python benchmarks/rankers.py --build", "training_seeds": args.seeds,
              "layers": one["layers"], "bins": one["bins"], "split": one["split"],
              "n_cases_per_seed": {s: t["n_cases"] for s, t in tables.items()},
              "per_training_seed": tables, "pooled": pooled(tables)}
    result["readme"] = readme_rows(result)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(result["readme"]))
    return result


if __name__ == "__main__":
    main()
