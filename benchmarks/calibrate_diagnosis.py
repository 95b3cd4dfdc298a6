"""Calibration of the diagnosis rules: the three regimes of the demo with several seeds.

    python benchmarks/calibrate_diagnosis.py [--seeds 0 1 2] [--out /tmp/conceptevo-calibration]

For each seed, trains the demo's small VGG on the concept world in the three regimes
(healthy, lr-too-high, overfit; the training seed changes the initialisation, the order of
the images and the augmentation), builds the unified space (base: that seed's healthy run) and
runs the diagnosis. Prints the confusion table (regime x flags, with the epoch of each flag)
and writes ``benchmarks/results/diagnosis.json``. Expected: healthy gets no flag, lr-too-high
the collapse flag by epoch 3, overfit the overfitting flag.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from conceptevo import pipeline
from conceptevo.config import load_config
from conceptevo.demo import FULL, prepare_data, study_toml
from conceptevo.stages.context import Context
from conceptevo.stages.diagnosis import run_diagnosis
from conceptevo.stages.probe import ensure_probe_sets
from conceptevo.stages.space import ensure_space
from conceptevo.stages.stimuli import ensure_stimuli
from conceptevo.stages.train import ensure_training
from conceptevo.workspace import Workspace

RULES = ("collapse", "overfitting", "divergence")


def run_seed(root: Path, seed: int, data_from: Path | None, size=FULL) -> dict:
    """Train, probe, build the space and diagnose the three regimes with training ``seed``
    (``size``: the demo's size preset, FULL by default) in ``root``; stages already done
    there are skipped."""
    root.mkdir(parents=True, exist_ok=True)
    Workspace(root, create=True)
    if data_from is not None and not (root / "data").exists():
        shutil.copytree(data_from / "data", root / "data")
    classes = prepare_data(root, size)
    (root / "study.toml").write_text(study_toml(size, len(classes), seed=seed))
    cfg = load_config(root / "study.toml")
    ws = pipeline.open_workspace(cfg)
    ensure_training(Context.create(cfg, ws))
    probe, _ = ensure_probe_sets(Context.create(cfg, ws))
    ensure_stimuli(Context.create(cfg, ws), probe)
    ensure_space(Context.create(cfg, ws), probe)
    return run_diagnosis(ws)


def confusion(reports: dict[int, dict]) -> dict[str, dict[str, list]]:
    """Regime x rule: the seeds (and epochs) where each rule fired, from the diagnosis report
    of each seed; "none" lists the seeds with no flag."""
    table: dict[str, dict[str, list]] = {}
    for seed, report in reports.items():
        for run, data in report["runs"].items():
            row = table.setdefault(run, {rule: [] for rule in (*RULES, "none")})
            fired = {f["rule"]: f["epoch"] for f in data["flags"]}
            for rule in RULES:
                if rule in fired:
                    row[rule].append({"seed": seed, "epoch": fired[rule]})
            if not fired:
                row["none"].append({"seed": seed})
    return table


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/conceptevo-calibration")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "diagnosis.json"))
    args = ap.parse_args()
    out = Path(args.out)
    reports = {}
    first = None
    for seed in args.seeds:
        reports[seed] = run_seed(out / f"seed{seed}", seed, first)
        first = first or out / f"seed{seed}"
    table = confusion(reports)
    print(f"diagnosis over seeds {args.seeds} (count of runs, epochs of the flags)")
    print(f"{'regime':<12}" + "".join(f"{c:>22}" for c in (*RULES, "no flag")))
    for run, row in table.items():
        cells = []
        for rule in (*RULES, "none"):
            hits = row[rule]
            epochs = ",".join(str(h["epoch"]) for h in hits if "epoch" in h)
            where = f" (epoch {epochs})" if epochs else ""
            cells.append(f"{len(hits)}/{len(args.seeds)}{where}")
        print(f"{run:<12}" + "".join(f"{c:>22}" for c in cells))
    result = {"seeds": args.seeds, "table": table}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
