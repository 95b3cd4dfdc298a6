"""The issue zoo: eight training regimes x seeds, ConceptEvo's diagnosis against baselines.

    python benchmarks/diagnosis_zoo.py [--seeds 0 1 2] [--out /tmp/conceptevo-zoo]
                                       [--regimes healthy shortcut ...] [--json PATH]

For each seed it trains ``conceptevo:small_vgg`` on the concept world in every regime of
:data:`ZOO` with the project's trainer (one checkpoint per epoch, epoch 0 = initialisation),
probes every checkpoint (the stimulus pass, activations recorded) and runs, on the same runs:

* ConceptEvo's diagnosis (``conceptevo diagnose``: the concept rules, the shortcut rule from
  the importance of every class's neurons and the concepts they detect);
* the metric-only baseline (chance level, train/val gap, early-stopping patience and
  validation-loss rise on the recorded accuracy and loss);
* WeightWatcher's alpha per layer of every checkpoint;
* linear CKA between consecutive checkpoints on the probe set.

Each baseline's threshold is chosen on the first seed (the most issue runs flagged with no
healthy run flagged) and reported on the others; ConceptEvo's thresholds are the defaults of
:class:`conceptevo.evolution.diagnosis.DiagnosisThresholds`, calibrated on seed 0. Writes
``benchmarks/results/diagnosis_zoo.json`` (per regime, seed and method: the epoch of the first
flag, or none; lead times; timings). Every stage already done in ``--out`` is skipped, so an
interrupted run resumes.

The same study can be run with the CLI: the ``study.toml`` this writes in ``--out/seed<N>`` is
an ordinary config (``conceptevo train / stimuli / diagnose --config ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

#: regime -> (run kwargs of small_vgg, data: "plain" or "shortcut")
ZOO: dict[str, tuple[str, str]] = {
    "healthy": ("", "plain"),
    "lr-too-high": ("", "plain"),
    "lr-high": ("", "plain"),
    "lr-too-low": ("", "plain"),
    "overfit": ("dropout = 0.0, ", "plain"),
    "shortcut": ("", "shortcut"),
    "label-noise": ("", "plain"),
    "frozen-layer": ("", "plain"),
}
#: the class whose training and validation images all have the planted background
SHORTCUT_CLASS = 3
SHORTCUT_BACKGROUND = "bg_noise"
N_TRAIN, N_VAL, EPOCHS, PROBE_PER_CLASS = 4000, 1000, 8, 150
#: the test-sized zoo (``--smoke``: every stage on tiny data, for the test suite)
SMOKE = {"n_train": 120, "n_val": 48, "epochs": 2, "probe_per_class": 4}

log = logging.getLogger("conceptevo.zoo")


def prepare_data(out: Path, n_train: int = N_TRAIN, n_val: int = N_VAL) -> list[str]:
    """The ordinary concept world (train, val: the probe set is drawn from train) and the
    shortcut world (the same scenes, the planted background on every image of one class)."""
    from conceptevo.data.concept_world import ConceptWorld

    plain = ConceptWorld(seed=0)
    cue = ConceptWorld(seed=0, shortcut_class=SHORTCUT_CLASS,
                       shortcut_background=SHORTCUT_BACKGROUND)
    for world, name in ((plain, ""), (cue, "shortcut-")):
        for split, n in (("train", n_train), ("val", n_val)):
            world.write_image_folder(out / "data" / f"{name}{split}", n, split=split)
    return list(plain.class_names)


def study_toml(seed: int, n_classes: int, regimes: list[str], epochs: int = EPOCHS,
               probe_per_class: int = PROBE_PER_CLASS) -> str:
    """The zoo's study for one training seed (its data one directory up)."""
    runs = []
    for regime in regimes:
        kwargs, data = ZOO[regime]
        roots = ('train_root = "../data/shortcut-train"\nval_root = "../data/shortcut-val"\n'
                 if data == "shortcut" else "")
        runs.append(f"""
[[runs]]
name = "{regime}"
checkpoints = "runs/{regime}/checkpoints/epoch_{{epoch}}.pt"
kwargs = {{ {kwargs}num_classes = {n_classes} }}
{roots}train = {{ regime = "{regime}", epochs = {epochs}, seed = {seed} }}
""")
    return f"""# The issue zoo (benchmarks/diagnosis_zoo.py), training seed {seed}.
workspace = "."
device = "auto"
seed = {seed}

[probe]
root = "../data/train"
per_class = {probe_per_class}
image_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[model]
arch = "conceptevo:small_vgg"
kwargs = {{ num_classes = {n_classes} }}

[stimuli]
k_stimuli = 20
k_responsive = 20
batch_size = 256

[importance]
images = 50

[training]
train_root = "../data/train"
val_root = "../data/val"
{"".join(runs)}"""


def build_seed(out: Path, seed: int, classes: list[str], regimes: list[str],
               epochs: int = EPOCHS, probe_per_class: int = PROBE_PER_CLASS,
               space: bool = True) -> dict:
    """Train and probe every regime of one seed and build its space (``space``; stages done
    before are skipped); returns the seconds each stage took."""
    from conceptevo import pipeline
    from conceptevo.config import load_config
    from conceptevo.stages.context import Context
    from conceptevo.stages.probe import ensure_probe_sets
    from conceptevo.stages.space import ensure_space
    from conceptevo.stages.stimuli import ensure_stimuli
    from conceptevo.stages.train import ensure_training
    from conceptevo.workspace import Workspace

    root = out / f"seed{seed}"
    Workspace(root, create=True)  # (before the study file is written into it)
    (root / "study.toml").write_text(study_toml(seed, len(classes), regimes, epochs,
                                                probe_per_class))
    cfg = load_config(root / "study.toml")
    ws = pipeline.open_workspace(cfg)
    timings = {}
    t = time.perf_counter()
    ensure_training(Context.create(cfg, ws))
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    probe, _ = ensure_probe_sets(Context.create(cfg, ws))
    ensure_stimuli(Context.create(cfg, ws), probe)
    timings["stimuli_s"] = time.perf_counter() - t
    if space:  # (the diagnosis's spread in the space, as in the demo)
        t = time.perf_counter()
        ensure_space(Context.create(cfg, ws), probe)
        timings["space_s"] = time.perf_counter() - t
    # the seconds of the stages that ran (a stage found done takes none): kept across resumes
    stored = root / "zoo_build.json"
    done = json.loads(stored.read_text()) if stored.is_file() else {}
    done.update({k: v for k, v in timings.items() if v > 1 or k not in done})
    stored.write_text(json.dumps(done))
    return done


#: the rules of ConceptEvo that name each regime's issue (healthy: none may fire)
EXPECTED: dict[str, set[str]] = {
    "healthy": set(),
    "lr-too-high": {"collapse", "divergence"},
    "lr-high": {"collapse"},
    "lr-too-low": {"slow-learning"},
    "overfit": {"overfitting"},
    "shortcut": {"shortcut"},
    "label-noise": {"label-noise"},
    "frozen-layer": {"frozen-layer"},
}
#: the tuned baselines: thresholds from seed 0 alone (``metric-only``, ``cka``,
#: ``weightwatcher``), and the same scores with thresholds that also keep clear of every
#: seed's healthy run (``... clear``: an advantage ConceptEvo's defaults did not get)
TUNED = ("metric-only", "cka", "weightwatcher")
CLEAR = tuple(f"{m} clear" for m in TUNED)
METHODS = ("conceptevo", "metric-rules", *TUNED, *CLEAR)
#: the prefix of each baseline's scores in :func:`baseline_series`
PREFIX = {"metric-only": "metric", "cka": "cka", "weightwatcher": "weightwatcher"}
PREFIX.update({f"{m} clear": PREFIX[m] for m in TUNED})


def seed_scores(out: Path, seed: int, regimes: list[str]) -> dict:
    """Everything measured on one seed's runs: ConceptEvo's flags and the baselines' score
    series per run (cached in ``seed<N>/zoo_scores.json``: delete it to recompute)."""
    from conceptevo.config import load_config
    from conceptevo.evolution.baselines import (
        cka_rows,
        metric_rules,
        metric_score_table,
        weightwatcher_alpha,
    )
    from conceptevo.models.checkpoints import find_checkpoints, load_checkpoint
    from conceptevo.runs import build_model
    from conceptevo.stages.diagnosis import run_diagnosis
    from conceptevo.workspace import Workspace

    root = out / f"seed{seed}"
    cache = root / "zoo_scores.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg = load_config(root / "study.toml")
    ws = Workspace(root)
    t = time.perf_counter()
    diagnosis = run_diagnosis(ws, runs=regimes)
    timing = {"diagnosis_s": time.perf_counter() - t, "cka_s": 0.0, "weightwatcher_s": 0.0}
    runs = {}
    n_classes = len(ws.load_probe().classes)
    for regime in regimes:
        rows = ws.load_metrics(regime)
        epochs = ws.stimuli_epochs(regime)
        t = time.perf_counter()
        cka = cka_rows([(e, ws.load_stimuli(regime, e, activations=True)) for e in epochs])
        timing["cka_s"] += time.perf_counter() - t
        t = time.perf_counter()
        ww = []
        arch, kwargs = cfg.arch_of(cfg.run(regime))
        for ck in find_checkpoints(cfg.resolve(cfg.run(regime).checkpoints), regime):
            model = build_model(cfg, arch, kwargs)
            load_checkpoint(model, ck.path, False, arch)
            alpha = weightwatcher_alpha(model)
            ww.append({"epoch": ck.epoch, "mean_alpha": alpha["mean_alpha"],
                       "frac_outside": alpha["frac_outside"]})
        timing["weightwatcher_s"] += time.perf_counter() - t
        runs[regime] = {
            "flags": diagnosis["runs"][regime]["flags"],
            "metrics": metric_score_table(rows),
            "metric_rules": [f.to_dict() for f in metric_rules(rows, n_classes=n_classes)],
            "cka": [{"epoch": r["epoch"], "cka_min": r["cka_min"], "cka_mean": r["cka_mean"]}
                    for r in cka],
            "weightwatcher": ww,
            "final": {k: rows[-1].get(k) for k in ("train_acc", "val_acc")},
            "probe_acc": [r.get("probe_acc") for r in diagnosis["runs"][regime]["metrics"]],
        }
    data = {"runs": runs, "timings": timing, "n_classes": n_classes}
    cache.write_text(json.dumps(data, default=_json_default))
    return data


def baseline_series(run: dict) -> dict[str, tuple[list[tuple[int, float | None]], str]]:
    """Each baseline score of one run: (series [(epoch, value)], direction of a problem)."""
    from conceptevo.evolution.baselines import METRIC_SCORES

    m = run["metrics"]
    out = {f"metric:{key}": (list(zip(m["epoch"], m[key])), direction)
           for key, direction in METRIC_SCORES.items()}
    out["cka:cka_min"] = ([(r["epoch"], r["cka_min"]) for r in run["cka"]], "below")
    out["cka:cka_mean"] = ([(r["epoch"], r["cka_mean"]) for r in run["cka"]], "below")
    ww = run["weightwatcher"]
    out["weightwatcher:frac_outside"] = ([(r["epoch"], r["frac_outside"]) for r in ww], "above")
    out["weightwatcher:mean_alpha_high"] = ([(r["epoch"], r["mean_alpha"]) for r in ww],
                                            "above")
    out["weightwatcher:mean_alpha_low"] = ([(r["epoch"], r["mean_alpha"]) for r in ww],
                                           "below")
    return out


def report(out: Path, seeds: list[int], regimes: list[str], timings: dict) -> dict:
    """The zoo's table: per regime, seed and method the epoch of the first (right) flag.

    ``metric-rules``: the metric-only rules at their textbook defaults
    (:class:`conceptevo.evolution.baselines.MetricThresholds`: chance level + 10 points,
    train/val gap 15 points, early-stopping patience 2, validation loss 25% above its best).
    Baseline protocol (``metric-only``, ``cka``, ``weightwatcher``): every score of a
    baseline gets its threshold on the first seed
    (:func:`conceptevo.evolution.baselines.choose_threshold`: the most issue runs flagged, no
    healthy run flagged); a baseline flags a run at the first epoch any of its scores crosses
    its threshold. The ``... clear`` variants choose the thresholds the same way with the
    healthy runs of *every* seed kept unflagged (the held-out healthy runs seen, which a user
    tuning on one healthy run cannot do): no false alarm on healthy by construction, and
    their flags on the issue runs are the earliest a threshold on that score can give
    without one. ConceptEvo's rules keep their default thresholds (calibrated on seed 0) and
    count only when a rule that names the regime's issue fires (:data:`EXPECTED`); any flag
    on a healthy run is a false alarm."""
    from conceptevo.evolution.baselines import choose_threshold, first_crossing

    scores = {seed: seed_scores(out, seed, regimes) for seed in seeds}
    calibration = seeds[0]
    series = {seed: {r: baseline_series(scores[seed]["runs"][r]) for r in regimes}
              for seed in seeds}
    keys = list(next(iter(series[calibration].values())))
    thresholds, clear = {}, {}
    healthy_all = {f"healthy@{seed}": series[seed]["healthy"] for seed in seeds} \
        if "healthy" in regimes else {}
    for key in keys:
        runs = {r: series[calibration][r][key][0] for r in regimes}
        direction = series[calibration][regimes[0]][key][1]
        threshold, _ = choose_threshold(runs, ["healthy"], direction)
        thresholds[key] = {"threshold": threshold, "direction": direction}
        runs.pop("healthy", None)
        runs.update({name: by_key[key][0] for name, by_key in healthy_all.items()})
        threshold, _ = choose_threshold(runs, list(healthy_all), direction)
        clear[key] = {"threshold": threshold, "direction": direction}
    table: dict[str, dict[str, list]] = {r: {m: [] for m in METHODS} for r in regimes}
    for seed in seeds:
        for regime in regimes:
            run = scores[seed]["runs"][regime]
            flags = run["flags"]
            right = [f for f in flags if f["rule"] in EXPECTED[regime]]
            ours = {"seed": seed, "epoch": min((f["epoch"] for f in right), default=None),
                    "rules": sorted({f["rule"] for f in flags}),
                    "flags": [{k: f[k] for k in ("epoch", "rule", "message")} for f in flags]}
            if regime == "healthy":
                ours["epoch"] = min((f["epoch"] for f in flags), default=None)
            table[regime]["conceptevo"].append(ours)
            rules = run["metric_rules"]
            table[regime]["metric-rules"].append(
                {"seed": seed, "epoch": min((f["epoch"] for f in rules), default=None),
                 "by": {f["rule"]: f["epoch"] for f in rules}})
            for method in METHODS[2:]:
                hits = {}
                for key, spec in (clear if method in CLEAR else thresholds).items():
                    if key.split(":", 1)[0] != PREFIX[method] or spec["threshold"] is None:
                        continue
                    values = series[seed][regime][key][0]
                    e = first_crossing(values, spec["threshold"], spec["direction"])
                    if e is not None:
                        hits[key.split(":", 1)[1]] = e
                table[regime][method].append(
                    {"seed": seed, "epoch": min(hits.values(), default=None), "by": hits})
    summary = {}
    for regime in regimes:
        row = {}
        for method in METHODS:
            cells = table[regime][method]
            held = [c for c in cells if c["seed"] != calibration]
            row[method] = {"detected": sum(c["epoch"] is not None for c in cells),
                           "detected_heldout": sum(c["epoch"] is not None for c in held),
                           "epochs": [c["epoch"] for c in cells]}
        ours = row["conceptevo"]["epochs"]
        for method in METHODS[1:]:
            row[f"lead_over_{method}"] = [
                (m - o) if (m is not None and o is not None) else None
                for o, m in zip(ours, row[method]["epochs"])]
        summary[regime] = row
    import torch

    return {"seeds": seeds, "calibration_seed": calibration, "regimes": regimes,
            # (the same seed gives the same weights on the same thread count)
            "environment": {"torch": torch.__version__, "torch_threads": torch.get_num_threads()},
            "expected_rules": {r: sorted(EXPECTED[r]) for r in regimes},
            "baseline_thresholds": thresholds, "baseline_thresholds_clear": clear,
            "summary": summary, "table": table,
            "final_accuracy": {r: [scores[s]["runs"][r]["final"] for s in seeds]
                               for r in regimes},
            "timings": {"build": timings,
                        "analysis": {s: scores[s]["timings"] for s in seeds}}}


def report_text(result: dict) -> str:
    """The table printed at the end: per regime the epoch each method flags it at, per
    seed ("-": not flagged)."""
    seeds = result["seeds"]
    head = f"{'regime':<13}" + "".join(f"{m:>20}" for m in METHODS) + f"{'final val acc':>16}"
    lines = [f"first flag epoch per seed {seeds} (calibration seed {result['calibration_seed']};"
             " healthy: a flag is a false alarm)", head]
    for regime in result["regimes"]:
        cells = []
        for method in METHODS:
            epochs = result["summary"][regime][method]["epochs"]
            cells.append("/".join("-" if e is None else str(e) for e in epochs))
        acc = "/".join(f"{a['val_acc']:.2f}" for a in result["final_accuracy"][regime])
        lines.append(f"{regime:<13}" + "".join(f"{c:>20}" for c in cells) + f"{acc:>16}")
    return "\n".join(lines)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--regimes", nargs="+", default=list(ZOO), choices=list(ZOO))
    ap.add_argument("--out", default="/tmp/conceptevo-zoo")
    ap.add_argument("--stage", choices=("build", "all"), default="all",
                    help="build: train and probe only")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results"
                                          / "diagnosis_zoo.json"))
    ap.add_argument("--smoke", action="store_true",
                    help="the test-sized zoo (tiny data, 2 epochs, no space): checks that "
                         "it runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    size = SMOKE if args.smoke else {"n_train": N_TRAIN, "n_val": N_VAL, "epochs": EPOCHS,
                                     "probe_per_class": PROBE_PER_CLASS}
    classes = prepare_data(out, size["n_train"], size["n_val"])
    timings = {}
    for seed in args.seeds:
        timings[seed] = build_seed(out, seed, classes, args.regimes, size["epochs"],
                                   size["probe_per_class"], space=not args.smoke)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.0f}" for k, v in timings[seed].items()),
              flush=True)
    if args.stage == "build":
        return {"timings": timings}
    result = report(out, args.seeds, args.regimes, timings)
    print(report_text(result))
    Path(args.json).write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
