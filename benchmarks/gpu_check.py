"""CUDA against CPU on one small study, and torchrun with NCCL over the visible GPUs.

    python benchmarks/gpu_check.py [--per-class 40] [--checkpoints 3] [--classes 2]
                                   [--json benchmarks/results/gpu_check.json]

Writes a small study in a temporary directory (the one of ``bench_distributed.py``: the
concept world at 64x64, ConceptEvo's small_vgg, ``--checkpoints`` checkpoints with random
weights), then runs, each as its own command and into its own workspace:

1. ``conceptevo build`` and ``conceptevo importance`` with ``device = "cpu"``;
2. on a machine with CUDA, the same with ``device = "cuda"``, and every artifact compared
   with the CPU's (below);
3. with two or more GPUs, the same under ``torchrun --nproc_per_node=<GPUs>`` (the NCCL
   backend), compared with the one-GPU run.

Compared (each with a threshold; the check fails when one is not met):

* stimuli: the mean share of each neuron's top-k stimuli that both devices found (at least
  0.95: float rounding, and TF32 convolutions on recent GPUs, can reorder near-ties) and the
  largest relative difference of ``act_max`` (at most 1e-2);
* the unified space: fidelity top-10 and mean cosine of the base model projected onto
  itself (within 0.05: the neuron embedding's random stream differs between devices, so the
  vectors themselves are not comparable, their quality is);
* importance: the Spearman correlation of the neuron scores of every class and epoch pair
  (at least 0.9) and the share of the model's top quarter of neurons by score that both
  devices put there (at least 0.8).

On CUDA two more builds are compared with the CPU's and reported (``cuda_amp``: ``[stimuli]
amp = true``, float16 autocast; ``cuda_bounded``: ``store_activations = false``), with
whether they met the thresholds, which the check does not require of them (mixed precision
reorders near-ties by design; docs/scaling.md).

Without CUDA, step 1 runs and steps 2-3 are skipped with a line that says so; ``--against
cpu`` runs step 2 on the CPU instead (what CI does, tests/test_gpu_check.py, to exercise the
comparison: every figure is then exact).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distributed import _command, write_study  # noqa: E402  (a sibling script)

THRESHOLDS = {"stimuli_overlap": 0.95, "act_max_relative_difference": 1e-2,
              "fidelity_difference": 0.05, "importance_spearman": 0.9,
              "importance_top_bin_overlap": 0.8}


def _log(text: str) -> None:
    print(f"[gpu_check] {text}", file=sys.stderr, flush=True)


def _run(args: list[str], cwd: Path, processes: int = 1) -> None:
    """``conceptevo ARGS`` in a fresh process (under torchrun with ``processes`` > 1)."""
    cmd, env = _command(args, processes, threads=None)
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def _config(base: Path, name: str, device: str, stimuli: str = "") -> Path:
    """A copy of the study config writing workspace ``ws_<name>`` on ``device``
    (``stimuli``: lines added to its ``[stimuli]`` table)."""
    text = base.read_text().replace('workspace = "ws"', f'workspace = "ws_{name}"')
    text = text.replace("[stimuli]", "[stimuli]\n" + stimuli) if stimuli else text
    path = base.with_name(f"study_{name}.toml")
    path.write_text(text.replace('device = "cpu"', f'device = "{device}"'))
    return path


def build(root: Path, study: Path, name: str, device: str, classes: int,
          processes: int = 1, stimuli: str = "") -> Path:
    """``conceptevo build`` and ``importance`` (the first ``classes`` classes, last epoch
    pair) on ``device``; returns the workspace."""
    config = _config(study, name, device, stimuli)
    _log(f"{name}: build and importance on {device}"
         + (f", {processes} processes" if processes > 1 else ""))
    _run(["build", "--config", str(config)], root, processes)
    imp = ["importance", "--config", str(config), "--run", "a"]
    for c in range(classes):
        imp += ["--class", str(c)]
    _run(imp, root, processes)
    return root / f"ws_{name}"


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def stimuli_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over neurons of the share of a's top-k stimuli (int [n, k]) that b has too."""
    n = len(a)
    offset = np.arange(n)[:, None] * (max(a.max(initial=0), b.max(initial=0)) + 1)
    return float(np.isin(a + offset, b + offset).mean()) if n else 1.0


def compare(ws_a: Path, ws_b: Path) -> dict:
    """Every figure of the module docstring, workspace ``ws_b`` against ``ws_a``."""
    out: dict = {"stimuli_overlap": 1.0, "act_max_relative_difference": 0.0}
    files = sorted(p.relative_to(ws_a) for p in (ws_a / "stimuli").rglob("*.npz"))
    if not files:
        raise RuntimeError(f"{ws_a} has no stimuli")
    for rel in files:
        a, b = _arrays(ws_a / rel), _arrays(ws_b / rel)
        out["stimuli_overlap"] = min(out["stimuli_overlap"],
                                     stimuli_overlap(a["stimuli"], b["stimuli"]))
        scale = max(float(np.abs(a["act_max"]).max()), 1e-12)
        out["act_max_relative_difference"] = max(
            out["act_max_relative_difference"],
            float(np.abs(a["act_max"] - b["act_max"]).max()) / scale)
    fa, fb = (json.loads((w / "space" / "fidelity.json").read_text()) for w in (ws_a, ws_b))
    out["fidelity"] = {"a": fa["fidelity"], "b": fb["fidelity"]}
    out["fidelity_difference"] = max(abs(fa["fidelity"][k] - fb["fidelity"][k])
                                     for k in ("top10", "mean_cosine"))
    spearman, top_bin = [], []
    for path in sorted((ws_a / "importance").rglob("*.npz")):
        a, b = _arrays(path), _arrays(ws_b / path.relative_to(ws_a))
        spearman.append(float(spearmanr(a["score"], b["score"]).statistic))
        top = max(1, len(a["score"]) // 4)  # the top quarter of the model's neurons
        top_bin.append(len(np.intersect1d(np.argsort(-a["score"], kind="stable")[:top],
                                          np.argsort(-b["score"], kind="stable")[:top])) / top)
    if not spearman:
        raise RuntimeError(f"{ws_a} has no importance")
    out["importance_spearman"] = min(spearman)
    out["importance_top_bin_overlap"] = min(top_bin)
    out["passed"] = (out["stimuli_overlap"] >= THRESHOLDS["stimuli_overlap"]
                     and out["act_max_relative_difference"]
                     <= THRESHOLDS["act_max_relative_difference"]
                     and out["fidelity_difference"] <= THRESHOLDS["fidelity_difference"]
                     and out["importance_spearman"] >= THRESHOLDS["importance_spearman"]
                     and out["importance_top_bin_overlap"]
                     >= THRESHOLDS["importance_top_bin_overlap"])
    return out


def check(per_class: int = 40, checkpoints: int = 3, classes: int = 2,
          against: str | None = None, workdir: str | None = None) -> dict:
    """The figures of every step that this machine can run (see the module docstring)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = against or ("cuda" if gpus else None)
    out: dict = {"thresholds": THRESHOLDS, "gpus": gpus,
                 "torch": torch.__version__, "cuda": torch.version.cuda}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        study = write_study(root, per_class, checkpoints, heldout_per_class=10,
                            importance_images=per_class)
        cpu = build(root, study, "cpu", "cpu", classes)
        out["cpu"] = "built"
        if device is None:
            out["cuda"] = "skipped: no CUDA device (torch.cuda.is_available() is False)"
            out["torchrun_nccl"] = "skipped: no CUDA device"
            _log(out["cuda"])
            return out
        other = build(root, study, "other", device, classes)
        out["against"] = device
        out["cuda" if device == "cuda" else "cpu_again"] = compare(cpu, other)
        if device == "cuda":  # mixed precision and bounded storage on the GPU, reported
            for name, lines in (("cuda_amp", "amp = true"),
                                ("cuda_bounded", "store_activations = false")):
                figures = compare(cpu, build(root, study, name, device, classes,
                                             stimuli=lines))
                figures["met_the_thresholds"] = figures.pop("passed")
                out[name] = figures
        if gpus >= 2 and device == "cuda":
            ddp = build(root, study, "ddp", "cuda", classes, processes=gpus)
            out["torchrun_nccl"] = compare(other, ddp)
        else:
            out["torchrun_nccl"] = (f"skipped: {gpus} GPU(s); torchrun with NCCL needs 2 or "
                                    "more")
            _log(out["torchrun_nccl"])
    return out


def passed(out: dict) -> bool:
    """Every comparison that ran met its thresholds."""
    return all(v["passed"] for v in out.values() if isinstance(v, dict) and "passed" in v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40, help="probe images per class")
    ap.add_argument("--checkpoints", type=int, default=3)
    ap.add_argument("--classes", type=int, default=2, help="classes of the importance run")
    ap.add_argument("--against", choices=["cpu", "cuda"],
                    help="the device compared with the CPU (default: cuda when present)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    out = check(args.per_class, args.checkpoints, args.classes, args.against)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    ok = passed(out)
    _log("every comparison met its thresholds" if ok else "a comparison FAILED its thresholds")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
