"""The evaluation over training seeds: the full demo trained with seeds 0, 1, 2, each evaluated
(`conceptevo evaluate`, the space rebuilt with 3 seeds of its own), in one results file.

    python benchmarks/calibrate_diagnosis.py --seeds 0 1 2 --out /tmp/evalseeds \
        --json /tmp/evalseeds/diagnosis.json        # trains and builds the three studies
    python benchmarks/evaluation_seeds.py --studies /tmp/evalseeds   # evaluates them

(``--build`` runs the first step too.) Writes ``benchmarks/results/evaluation_seeds.json``:
for each training seed and each method of the concept and class-level studies, the AUC and
95% interval of every space seed; the annotation-free checks; and, over all 3 x 3 (training
seed, space seed) pairs, each method's mean, min and max and the number of pairs ours wins
with disjoint intervals. The README's headline table is formatted from it
(``readme_rows``; tests/test_bench_run.py checks the README against it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def evaluate(root: Path) -> dict:
    import torch

    from conceptevo.config import load_config
    from conceptevo.stages.evaluation import run_evaluation

    cfg = load_config(root / "study.toml")
    t = time.perf_counter()
    report = run_evaluation(cfg)
    seconds = time.perf_counter() - t

    def study(a: dict | None) -> dict | None:
        if not a:
            return None
        return {"order": a["order"], "seeds": a["seeds"], "wins": a["wins"],
                "beats_all_baselines": a["beats_all_baselines"],
                "n_queries": a["methods"]["unified"]["n_queries"],
                "methods": {m: {"title": r["title"],
                                "per_seed": [{"seed": s["seed"], "auc": s["auc"],
                                              "ci95": s["ci95"], "by_depth": s["by_depth"]}
                                             for s in r["per_seed"]]}
                            for m, r in a["methods"].items()},
                "depth_names": a["depth_names"]}

    checks = report["checks"]
    return {"workspace": str(root), "seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "concepts": study(report["alignment"]), "classes": study(report["classes"]),
            "class_check_passed": (report["classes"] or {}).get("passed"),
            "checks": {"permuted_recovery": checks["permuted_copy"].get("recovery"),
                       "rescaled_max_shift": checks["rescaled_copy"].get("max_shift"),
                       "agreement": {k: round(v["agreement"], 4) for k, v in
                                     checks["agreement"].get("per_layer", {}).items()},
                       "agreement_chance": {k: round(v["chance"], 4) for k, v in
                                            checks["agreement"].get("per_layer", {}).items()},
                       "agreement_passed": checks["agreement"].get("passed")},
            "fidelity": report["faithfulness"]["fidelity"]["spread"]}


def pooled(rows: dict, which: str) -> dict:
    """Per method, over every (training seed, space seed): mean, min, max of the AUC, the
    pairs where ours wins with disjoint intervals, and the per-depth AUC range."""
    import numpy as np

    first = next(iter(rows.values()))[which]
    out = {}
    for m in first["order"]:
        aucs, lows, highs, wins, n = [], [], [], 0, 0
        depth: dict[str, list] = {}
        for r in rows.values():
            per = r[which]["methods"][m]["per_seed"]
            ours = r[which]["methods"]["unified"]["per_seed"]
            for s, o in zip(per, ours):
                n += 1
                if s["auc"] is None:
                    wins += 1
                    continue
                aucs.append(s["auc"])
                lows.append(s["ci95"][0])
                highs.append(s["ci95"][1])
                wins += int(o["ci95"][0] > s["ci95"][1])
                for d, v in s["by_depth"].items():
                    if v is not None:
                        depth.setdefault(d, []).append(v)
        out[m] = {"title": first["methods"][m]["title"],
                  "mean": float(np.mean(aucs)) if aucs else None,
                  "min": min(aucs) if aucs else None, "max": max(aucs) if aucs else None,
                  "ci_low_min": min(lows) if lows else None,
                  "ci_high_max": max(highs) if highs else None,
                  "ours_wins": wins if m != "unified" else None, "n": n,
                  "by_depth_mean": {d: float(np.mean(v)) for d, v in sorted(depth.items())}}
    return out


def readme_rows(result: dict) -> list[str]:
    """The README's table: one row per method of the concept study."""
    rows = []
    for m, r in result["pooled"]["concepts"].items():
        if r["mean"] is None:
            rows.append(f"| {r['title']} | n/a | | |")
            continue
        won = "" if m == "unified" else f"{r['ours_wins']}/{r['n']}"
        rows.append(f"| {r['title']} | {r['mean']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {won} |")
    return rows


def depth_rows(result: dict, methods=("unified", "matched", "correlation-probe", "stimuli")
               ) -> list[str]:
    """The README's per-layer table: each method's AUC by depth, mean over every (training
    seed, space seed) pair, the best of the row in bold."""
    pooled_ = result["pooled"]["concepts"]
    names = next(iter(result["per_training_seed"].values()))["concepts"]["depth_names"]
    rows = []
    for d in sorted(pooled_["unified"]["by_depth_mean"], key=int):
        values = [pooled_[m]["by_depth_mean"].get(d) for m in methods]
        best = max(v for v in values if v is not None)
        cells = ["-" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}")
                 for v in values]
        rows.append(f"| {names[d]} | " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", default="/tmp/evalseeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--build", action="store_true", help="train and build the studies first")
    ap.add_argument("--out", default=str(HERE / "results" / "evaluation_seeds.json"))
    args = ap.parse_args(argv)
    root = Path(args.studies)
    if args.build:
        subprocess.run([sys.executable, str(HERE / "calibrate_diagnosis.py"), "--seeds",
                        *map(str, args.seeds), "--out", str(root), "--json",
                        str(root / "diagnosis.json")], check=True)
    rows = {}
    for seed in args.seeds:
        rows[str(seed)] = evaluate(root / f"seed{seed}")
        print(f"training seed {seed}: {rows[str(seed)]['seconds']} s", file=sys.stderr)
    result = {"command": "python benchmarks/evaluation_seeds.py --build",
              "training_seeds": args.seeds, "per_training_seed": rows,
              "pooled": {"concepts": pooled(rows, "concepts"),
                         "classes": pooled(rows, "classes")}}
    result["readme"] = readme_rows(result)
    result["readme_depth"] = depth_rows(result)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(result["readme"]))
    return result


if __name__ == "__main__":
    main()
