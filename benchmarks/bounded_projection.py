"""How well the activation-weighted projection survives keeping only each neuron's top-m
activations (issue 18's bounded-storage candidate), measured on a finished workspace.

    python benchmarks/bounded_projection.py WORKSPACE [--m 64 256 512] [--json FILE]

For every projected checkpoint of ``WORKSPACE`` (the demo's: ``conceptevo demo``), the exact
projection v~ = W E (every probe image weighted by the softmax of the neuron's activations,
:class:`conceptevo.space.image_embedding.ActivationWeights`) is compared with two top-m
approximations: the m heaviest images with their exact weights, the remaining weight mass put
on the mean image embedding ("rest as mean"), or the m weights renormalised ("renormalised").
Reported per checkpoint and m: the weight mass the top m hold, the mean cosine between exact
and approximate v~, and the share of each neuron's 10 nearest neighbours (cosine, within the
checkpoint) that the approximation keeps. Approximations only: the workspace is not written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest rows (cosine) of ``a`` that ``b`` has too."""
    sa, sb = _unit(a) @ _unit(a).T, _unit(b) @ _unit(b).T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    ta, tb = np.argsort(-sa, 1)[:, :k], np.argsort(-sb, 1)[:, :k]
    n = len(a)
    offset = np.arange(n)[:, None] * n
    return float(np.isin(ta + offset, tb + offset).mean())


def compare(weights: np.ndarray, e: np.ndarray, exact: np.ndarray, m: int) -> dict:
    """The figures of one checkpoint (weights float64 [n, n_images], rows summing to 1)."""
    idx = np.argpartition(-weights, m, axis=1)[:, :m]
    top = np.take_along_axis(weights, idx, 1)
    part = np.einsum("nm,nmd->nd", top, e[idx])
    mass = top.sum(1)
    approx = {"rest_as_mean": part + (1 - mass)[:, None] * e.mean(0),
              "renormalised": part / np.maximum(mass, 1e-12)[:, None]}
    out = {"top_mass": float(mass.mean())}
    for name, v in approx.items():
        out[f"cosine_{name}"] = float((_unit(exact) * _unit(v)).sum(1).mean())
        out[f"neighbours10_{name}"] = neighbour_agreement(exact, v)
    return out


def measure(workspace: str, ms: list[int]) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from conceptevo.space.image_embedding import ActivationWeights
    from conceptevo.workspace import Workspace
    from conceptevo.workspace.artifacts import load_base_space, load_projection, run_order

    ws = Workspace(workspace)
    space = load_base_space(ws)
    if not space.needs_activations:
        raise SystemExit(f"{workspace}: the space projects by stimuli; nothing to measure")
    e = space.image_embedding.astype(np.float64)
    out: dict = {"workspace": Path(workspace).resolve().name, "n_images": int(len(e)),
                 "temperature": space.temperature, "checkpoints": {}}
    for run in run_order(ws):
        for epoch in ws.projection_epochs(run):
            r = ws.load_stimuli(run, epoch, activations=True)
            exact = load_projection(ws, run, epoch)["embedding"].astype(np.float64)
            w = ActivationWeights(r.activations, space.temperature,
                                  scale=r.activation_scale).dense().astype(np.float64)
            ok = np.isfinite(exact).all(1) & np.isfinite(w).all(1)
            out["checkpoints"][f"{run}/{epoch}"] = {
                str(m): compare(w[ok], e, exact[ok], m) for m in ms if m < len(e)}
            print(f"{run} epoch {epoch}: " + ", ".join(
                f"m={m} mass {v['top_mass']:.2f} cos {v['cosine_rest_as_mean']:.3f}"
                for m, v in out["checkpoints"][f"{run}/{epoch}"].items()), file=sys.stderr)
    summary = {}
    for m in map(str, ms):
        rows = [c[m] for c in out["checkpoints"].values() if m in c]
        if rows:
            summary[m] = {k: {"mean": float(np.mean([r[k] for r in rows])),
                              "min": float(np.min([r[k] for r in rows])),
                              "max": float(np.max([r[k] for r in rows]))} for k in rows[0]}
    out["summary"] = summary
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace")
    ap.add_argument("--m", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    out = measure(args.workspace, args.m)
    text = json.dumps(out["summary"], indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
