"""The demo's figures per architecture and training seed: a small VGG and a small ViT.

    python benchmarks/demo_architectures.py [--archs cnn vit] [--seeds 0 1 2]
        [--out /tmp/conceptevo-archs] [--results benchmarks/results/architectures.json]

For each architecture and seed, runs ``conceptevo demo --arch A`` with its three runs
trained with that seed (the concept world is the same for every seed; its data are generated
once and copied), in ``OUT/<arch>/seed<seed>``, and records what the demo prints: validation
accuracy of each regime, the overfit run's train - val gap, the reversion check of the
important evolutions (top bin vs random, ratio), the diagnosis flags, the alignment study
(AUC and 95% interval of every method, queries, labelled neurons, positive rates) and the
time of each stage. ``summary`` gives, per architecture, the mean and the range over the
seeds of each figure. ``--update`` keeps the architectures of an existing results file that
were not measured now. A workspace already complete is reused (its stage times are then
those of finding everything done: delete ``OUT`` for timings).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from conceptevo.demo import ARCHES, run_demo
from conceptevo.workspace import Workspace

HERE = Path(__file__).resolve().parent


def run_one(root: Path, arch: str, seed: int, data_from: Path | None) -> dict:
    """One demo: its figures (the demo's own checks plus the evaluation's counts)."""
    reused = (root / "report.html").is_file()
    Workspace(root, create=True)
    if data_from is not None and not (root / "data").exists():
        shutil.copytree(data_from / "data", root / "data")
    t = time.perf_counter()
    out = run_demo(root, arch=arch, seed=seed)
    wall = time.perf_counter() - t
    evaluation = json.loads((root / "evaluation" / "evaluation.json").read_text())
    methods = evaluation["alignment"]["methods"]
    checks = out["checks"]
    return {
        "seed": seed,
        "healthy_val_acc": checks["healthy_val_acc"],
        "lr_too_high_val_acc": checks["lr_too_high_val_acc"],
        "overfit_gap_points": checks["overfit_gap_points"],
        "reversion": checks["reversion"],
        "flags": checks["flags"],
        "alignment": {m: {"auc": r["auc"], "ci95": r["ci95"], "positive_rate": r["positive_rate"],
                          **({"undefined": r["undefined"]} if "undefined" in r else {})}
                      for m, r in methods.items()},
        "n_queries": methods["unified"]["n_queries"],
        "labelled_neurons": evaluation["labels"]["n_labelled"],
        "alive_neurons": evaluation["labels"]["n_pool"],
        "beats_all_baselines": evaluation["alignment"]["beats_all_baselines"],
        "fidelity": out["fidelity"],
        # a workspace found complete took no time to compute: no timing then
        "timings_s": None if reused else {k: round(v, 1) for k, v in out["timings"].items()},
        "total_s": None if reused else round(wall, 1),
    }


def spread(values: list) -> dict | None:
    """Mean, min and max of the defined values (None: none defined)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(min(values)), 4),
            "max": round(float(max(values)), 4), "n": len(values)}


def summarise(rows: list[dict]) -> dict:
    """Per figure, its spread over the seeds."""
    out = {key: spread([r[key] for r in rows])
           for key in ("healthy_val_acc", "lr_too_high_val_acc", "overfit_gap_points",
                       "n_queries", "labelled_neurons", "total_s")}
    out["alignment_auc"] = {m: spread([r["alignment"][m]["auc"] for r in rows])
                            for m in rows[0]["alignment"]}
    out["reversion_ratio"] = {pair: spread([r["reversion"].get(pair, {}).get("ratio")
                                            for r in rows])
                              for pair in rows[0]["reversion"]}
    out["beats_all_baselines"] = [r["beats_all_baselines"] for r in rows]
    out["unified_minus_correlation"] = spread([
        r["alignment"]["unified"]["auc"] - r["alignment"]["correlation"]["auc"]
        for r in rows if r["alignment"]["correlation"]["auc"] is not None])
    out["flags"] = {run: [r["flags"][run] for r in rows] for run in rows[0]["flags"]}
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHES), choices=list(ARCHES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/conceptevo-archs")
    ap.add_argument("--results", default=str(HERE / "results" / "architectures.json"))
    ap.add_argument("--update", action="store_true",
                    help="keep the architectures of an existing results file not measured now")
    args = ap.parse_args()
    results_path = Path(args.results)
    doc = {"architectures": {}}
    if args.update and results_path.is_file():
        doc = json.loads(results_path.read_text())
    out = Path(args.out)
    for arch in args.archs:
        rows, first = [], None
        for seed in args.seeds:
            root = out / arch / f"seed{seed}"
            rows.append(run_one(root, arch, seed, first))
            first = first or root
        doc["architectures"][arch] = {"model": ARCHES[arch].arch, "seeds": args.seeds,
                                      "command": "python benchmarks/demo_architectures.py "
                                                 f"--archs {arch} --seeds "
                                                 f"{' '.join(map(str, args.seeds))}",
                                      "date": datetime.now(UTC).isoformat(timespec="seconds"),
                                      "size": ARCHES[arch].full.__dict__, "runs": rows,
                                      "summary": summarise(rows)}
    doc["meta"] = {"machine": f"{platform.machine()}, {platform.processor() or '?'}",
                   "python": platform.python_version()}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(results_path)
    for arch, res in doc["architectures"].items():
        s = res["summary"]
        print(f"{arch} ({res['model']}), seeds {res['seeds']}:")
        for key in ("healthy_val_acc", "lr_too_high_val_acc", "overfit_gap_points"):
            print(f"  {key:<22} {s[key]}")
        for m, v in s["alignment_auc"].items():
            print(f"  AUC {m:<18} {v}")
        for pair, v in s["reversion_ratio"].items():
            print(f"  reversion ratio {pair:<6} {v}")
    print(f"wrote {results_path}")
    return doc


if __name__ == "__main__":
    main()
