"""Bounded storage against the stored activations on one study: the same checkpoints built
twice, with ``[stimuli] store_activations = true`` (the workspace given) and ``false``.

    python benchmarks/bounded_storage.py DEMO_DIR [--json benchmarks/results/bounded_storage.json]

``DEMO_DIR`` is a study built and evaluated with the activations stored, e.g. the directory of
``conceptevo demo`` (its ``study.toml``, workspace ``"."``). The script writes
``DEMO_DIR/study_bounded.toml``: the same study without its ``train`` lines (the checkpoints
exist), with ``store_activations = false`` and the workspace ``DEMO_DIR/bounded``; runs
``conceptevo build`` and ``conceptevo evaluate`` on it, each in its own process; and compares

* the projections v~ of every checkpoint: largest absolute difference and smallest cosine
  between the two builds' vectors of a neuron (alive neurons), and the share of each neuron's
  10 nearest neighbours (cosine, among the same checkpoint's neurons) that both builds find;
* the base space's fidelity (the same base pass: equal);
* the alignment AUC of the unified space, concept-level and class-level, of the stored seed
  (the bounded build evaluates that seed only);
* the stored bytes per checkpoint (stimuli + projection files) and the build's wall time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _log(text: str) -> None:
    print(f"[bounded_storage] {text}", file=sys.stderr, flush=True)


def bounded_config(demo: Path) -> Path:
    text = (demo / "study.toml").read_text()
    text = re.sub(r"(?m)^train = .*\n?", "", text)
    text = re.sub(r'(?m)^workspace = ".*"', 'workspace = "bounded"', text, count=1)
    text = text.replace("[stimuli]", "[stimuli]\nstore_activations = false", 1)
    path = demo / "study_bounded.toml"
    path.write_text(text)
    return path


def _run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "conceptevo", *args], cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"conceptevo {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def neighbours_kept(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest rows (cosine) of ``a`` that ``b`` also finds."""
    def nearest(v):
        u = _unit(v)
        sims = u @ u.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]
    na, nb = nearest(a), nearest(b)
    hits = (na[:, :, None] == nb[:, None, :]).any(2).sum(1)
    return float((hits / k).mean())


def compare_projections(exact_ws: Path, bounded_ws: Path) -> dict:
    rows = []
    for path in sorted((exact_ws / "space" / "projection").rglob("epoch_*.npz")):
        rel = path.relative_to(exact_ws)
        with np.load(path) as f, np.load(bounded_ws / rel) as g:
            a, b = f["embedding"].astype(np.float64), g["embedding"].astype(np.float64)
            ok = ~f["dead"] & np.isfinite(a).all(1) & np.isfinite(b).all(1)
        cos = (_unit(a[ok]) * _unit(b[ok])).sum(1)
        rows.append({"checkpoint": str(rel.parent.name) + "/" + rel.stem,
                     "max_abs_difference": float(np.abs(a[ok] - b[ok]).max()),
                     "min_cosine": float(cos.min()),
                     "neighbours10_kept": neighbours_kept(a[ok], b[ok])})
    return {"checkpoints": rows,
            "max_abs_difference": max(r["max_abs_difference"] for r in rows),
            "min_cosine": min(r["min_cosine"] for r in rows),
            "neighbours10_kept_min": min(r["neighbours10_kept"] for r in rows)}


def _aucs(ws: Path) -> dict:
    doc = json.loads((ws / "evaluation" / "evaluation.json").read_text())
    out = {}
    for study in ("alignment", "classes"):
        methods = (doc.get(study) or {}).get("methods", {})
        if "unified" in methods:
            out[study] = methods["unified"]["per_seed"][0]["auc"]
    return out


def _bytes_per_checkpoint(ws: Path, base: str) -> dict:
    sizes = {}
    for path in sorted((ws / "stimuli").rglob("epoch_*.npz")):
        rel = path.relative_to(ws / "stimuli")
        proj = ws / "space" / "projection" / rel
        sizes[f"{rel.parent.name}/{rel.stem}"] = path.stat().st_size + proj.stat().st_size
    others = [v for k, v in sizes.items() if k != base]
    return {"base": sizes[base], "other_mean": float(np.mean(others)),
            "other_max": int(max(others)), "total": int(sum(sizes.values()))}


def base_checkpoint(ws: Path) -> str:
    """"run/epoch_NNNN" of the one stimuli file of a bounded build that kept its
    activations (the base checkpoint's)."""
    for path in sorted((ws / "stimuli").rglob("epoch_*.npz")):
        with np.load(path) as f:
            if "activations" in f.files:
                return f"{path.parent.name}/{path.stem}"
    raise RuntimeError(f"no stimuli file of {ws} holds activations")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo", type=Path, help="a built and evaluated study directory "
                    "(conceptevo demo's)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    demo = args.demo.resolve()
    config = bounded_config(demo)
    bounded_ws = demo / "bounded"
    _log(f"build with store_activations = false into {bounded_ws}")
    build_s = _run(["build", "--config", str(config)], demo)
    _log("evaluate it")
    eval_s = _run(["evaluate", str(config)], demo)
    base = base_checkpoint(bounded_ws)
    fidelity = [json.loads((ws / "space" / "fidelity.json").read_text())["fidelity"]
                for ws in (demo, bounded_ws)]
    out = {"study": str(demo), "build_seconds_bounded": build_s, "evaluate_seconds": eval_s,
           "projections": compare_projections(demo, bounded_ws),
           "fidelity": {"stored": fidelity[0], "bounded": fidelity[1]},
           "auc": {"stored": _aucs(demo), "bounded": _aucs(bounded_ws)},
           "bytes_per_checkpoint": {"stored": _bytes_per_checkpoint(demo, base),
                                    "bounded": _bytes_per_checkpoint(bounded_ws, base)}}
    out["auc_difference"] = {k: out["auc"]["bounded"][k] - out["auc"]["stored"][k]
                             for k in out["auc"]["stored"] if k in out["auc"]["bounded"]}
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
