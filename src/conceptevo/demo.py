"""``conceptevo demo``: the whole method on the concept world, with no download.

It generates the concept world, trains a small classifier in the paper's three regimes
(healthy, learning rate too high, overfitting), and runs every stage of a study on them. The
classifier is a small VGG (``--arch cnn``, the default) or a small vision transformer
(``--arch vit``, :data:`ARCHES`). Everything lives in one directory, which is both the demo's
workspace and the home of its data, its checkpoints and its ``study.toml`` (a config you can
copy for your own study); each architecture has its own (``demo-workspace``,
``demo-workspace-vit``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .workspace import Workspace
from .workspace.artifacts import load_fidelity

log = logging.getLogger("conceptevo")


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: ``full`` (the default, a few minutes) or ``quick`` (< 90 s)."""

    n_train: int
    n_val: int
    epochs: int
    probe_per_class: int
    heldout_per_class: int
    importance_images: int
    evaluation_images: int = 25
    evaluation_queries: int = 200           # alignment study queries per layer
    importance_classes: int | None = None   # None: every class
    overfit_repeat: int | None = None       # None: the overfit regime's own (30)
    evaluation_every: int = 2               # label every n-th epoch (and the last)


FULL = DemoSize(n_train=4000, n_val=1000, epochs=8, probe_per_class=150, heldout_per_class=50,
                importance_images=100)
QUICK = DemoSize(n_train=1200, n_val=360, epochs=3, probe_per_class=40, heldout_per_class=20,
                 importance_images=20, evaluation_images=10, evaluation_queries=60,
                 importance_classes=4, overfit_repeat=15)
#: the ViT demo: the CNN's data and probe sizes, the ViT recipe's epochs (labelled every 5th:
#: as many checkpoints as the CNN's); quick: twice the CNN's quick epochs
FULL_VIT = DemoSize(n_train=4000, n_val=1000, epochs=20, probe_per_class=150,
                    heldout_per_class=50, importance_images=100, evaluation_every=5)
QUICK_VIT = DemoSize(n_train=1200, n_val=360, epochs=6, probe_per_class=40, heldout_per_class=20,
                     importance_images=20, evaluation_images=10, evaluation_queries=60,
                     importance_classes=4, overfit_repeat=15, evaluation_every=3)
RUNS = (("healthy", "healthy", ""), ("lr-too-high", "lr-too-high", ""),
        ("overfit", "overfit", "dropout = 0.0, "))


@dataclass(frozen=True)
class DemoArch:
    """One architecture of the demo: the model (``arch``, a registry name), the training
    recipe of its regimes (:data:`conceptevo.train.RECIPES`), its sizes, its workspace, and
    the healthy run's target validation accuracy (printed, not enforced)."""

    name: str
    arch: str
    title: str
    recipe: str
    full: DemoSize
    quick: DemoSize
    workspace: str
    healthy_target: float


ARCHES = {
    "cnn": DemoArch("cnn", "conceptevo:small_vgg", "a small VGG", "cnn", FULL, QUICK,
                    "demo-workspace", 0.85),
    "vit": DemoArch("vit", "conceptevo:small_vit", "a small vision transformer", "vit",
                    FULL_VIT, QUICK_VIT, "demo-workspace-vit", 0.75),
}


def demo_arch(name: str) -> DemoArch:
    """The :class:`DemoArch` called ``name`` ("cnn" or "vit")."""
    from .errors import ConfigError

    if name not in ARCHES:
        raise ConfigError(f"the demo has no architecture {name!r}; choose one of "
                          f"{', '.join(ARCHES)}")
    return ARCHES[name]


def importance_pairs(epochs: int) -> list[tuple[int, int]]:
    """An early epoch pair and a late one (the demo ranks evolutions for both)."""
    return [(1, 2), (epochs - 1, epochs)] if epochs >= 3 else [(0, 1)]


def evaluation_epochs(epochs: int, every: int = 2) -> list[int]:
    """Every ``every``-th epoch and the last: the checkpoints whose neurons the demo labels."""
    return sorted(set(range(0, epochs + 1, every)) | {epochs})


def _more(regime: str, size: DemoSize) -> str:
    if regime == "overfit" and size.overfit_repeat is not None:
        return f", repeat = {size.overfit_repeat}"
    return ""


def study_toml(size: DemoSize, n_classes: int, seed: int = 0, arch: str = "cnn") -> str:
    """The demo's study configuration, written next to its data (``seed``: the training seed
    of the three runs; ``arch``: a key of :data:`ARCHES`)."""
    spec = demo_arch(arch)
    recipe = "" if spec.recipe == "cnn" else f'recipe = "{spec.recipe}", '
    def train(regime: str) -> str:
        return (f'{{ {recipe}regime = "{regime}", epochs = {size.epochs}, seed = {seed}'
                f"{_more(regime, size)} }}")

    runs = "\n".join(f"""
[[runs]]
name = "{name}"
checkpoints = "runs/{name}/checkpoints/epoch_{{epoch}}.pt"
kwargs = {{ {extra}num_classes = {n_classes} }}
train = {train(regime)}"""
                     for name, regime, extra in RUNS)
    return f"""# The ConceptEvo demo study, written by `conceptevo demo`. Copy it for your study.
# Paths are relative to this file. Reference: the README's configuration section.
workspace = "."
device = "auto"
seed = {seed}

[probe]                      # the images every checkpoint is probed on
root = "data/train"
per_class = {size.probe_per_class}
image_size = 64
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]

[heldout]                    # images the models never trained on
root = "data/val"
per_class = {size.heldout_per_class}

[model]
arch = "{spec.arch}"
kwargs = {{ num_classes = {n_classes} }}

[stimuli]
k_stimuli = 20
k_responsive = 20
batch_size = 256

[importance]
images = {size.importance_images}        # class images per class (the paper uses 250)
bins = 4
random_draws = 5

[evaluation]                 # `conceptevo evaluate`: concept labels and the alignment study
images_per_class = {size.evaluation_images}
queries_per_layer = {size.evaluation_queries}
epochs = {evaluation_epochs(size.epochs, size.evaluation_every)}
mask_size = 32               # IoU on 32x32 masks (the images are 64x64): 4x faster

[training]                   # only for `conceptevo train`
train_root = "data/train"
val_root = "data/val"
{runs}
"""


def prepare_data(root: Path, size: DemoSize, seed: int = 0) -> list[str]:
    """Write the concept world's train/val ImageFolder trees and the sample figure."""
    from .data.concept_world import ConceptWorld, plot_samples
    from .progress import progress_bar

    world = ConceptWorld(seed=seed)
    for split, n in (("train", size.n_train), ("val", size.n_val)):
        with progress_bar(n, f"concept world {split}", "img") as bar:
            world.write_image_folder(root / "data" / split, n, split=split, progress=bar.update)
    figure = root / "figures" / "concept_world.png"
    if not figure.is_file():
        figure.parent.mkdir(parents=True, exist_ok=True)
        plot_samples(world.generate(4 * len(world.class_names), split="val"), figure)
    return list(world.class_names)


def training_summary(ws: Workspace, runs: list[str], healthy_target: float = 0.85
                     ) -> tuple[str, dict]:
    """A table of train/val accuracy per run and epoch, and the regime checks (the healthy
    run's validation accuracy against ``healthy_target``)."""
    metrics = {run: ws.load_metrics(run) for run in runs}
    epochs = sorted({row["epoch"] for rows in metrics.values() for row in rows})
    lines = ["accuracy (train / val) by epoch", "epoch  " + "".join(f"{r:>18}" for r in runs)]
    for e in epochs:
        cells = []
        for run in runs:
            row = next((m for m in metrics[run] if m["epoch"] == e), None)
            cells.append(f"{row['train_acc']:>8.1%} /{row['val_acc']:>7.1%}" if row else
                         f"{'-':>18}")
        lines.append(f"{e:>5}  " + "".join(f"{c:>18}" for c in cells))
    last = {run: rows[-1] for run, rows in metrics.items() if rows}
    checks = {}
    if {"healthy", "lr-too-high", "overfit"} <= set(last):
        h, hi, o = last["healthy"], last["lr-too-high"], last["overfit"]
        checks = {
            "healthy_val_acc": h["val_acc"],
            "overfit_gap_points": 100 * (o["train_acc"] - o["val_acc"]),
            "lr_too_high_val_acc": hi["val_acc"],
        }
        lines += [
            "",
            (f"healthy      final val accuracy {h['val_acc']:.1%}  "
             f"(target >= {healthy_target:.0%})"),
            (f"overfit      train - val gap    {checks['overfit_gap_points']:.1f} points "
             "(target >= 20)"),
            f"lr-too-high  final val accuracy {hi['val_acc']:.1%}  (healthy: {h['val_acc']:.1%})",
        ]
    return "\n".join(lines), checks


def run_demo(directory: str | Path, quick: bool = False, size: DemoSize | None = None,
             arch: str = "cnn", seed: int = 0) -> dict:
    """Run the demo study of architecture ``arch`` (a key of :data:`ARCHES`) in
    ``directory``, its three runs trained with ``seed`` (the concept world is the same for
    every seed); returns the figures it printed.

    ``size`` overrides the full / quick presets of the architecture (the tests use a tiny
    one). A directory holding the demo of another architecture is an error (its runs would
    be trained again over the other's checkpoints).
    """
    from . import pipeline
    from .stages.context import Context
    from .stages.diagnosis import run_diagnosis
    from .stages.evaluation import ensure_evaluation, evaluation_text
    from .stages.figures import write_space_figures
    from .stages.importance import ensure_importance, verification_table
    from .stages.probe import ensure_probe_sets
    from .stages.space import ensure_space
    from .stages.train import ensure_training

    t0 = time.perf_counter()
    spec = demo_arch(arch)
    root = Path(directory).resolve()
    size = size or (spec.quick if quick else spec.full)
    check_demo_directory(root, spec)
    ws = Workspace(root, create=True)
    classes = prepare_data(root, size)
    (root / "study.toml").write_text(study_toml(size, len(classes), seed=seed, arch=arch),
                                     encoding="utf-8")
    cfg = load_config(root / "study.toml")
    timings = {"data": time.perf_counter() - t0}

    t = time.perf_counter()
    pipeline.open_workspace(cfg)
    ctx = Context.create(cfg, ws)
    ensure_training(ctx)
    timings["training"] = time.perf_counter() - t

    t = time.perf_counter()
    probe, _ = ensure_probe_sets(ctx)
    pipeline.ensure_all_stimuli(ctx, probe)
    timings["stimuli"] = time.perf_counter() - t

    t = time.perf_counter()
    ensure_space(ctx, probe)
    figures = write_space_figures(ws)
    timings["space"] = time.perf_counter() - t

    t = time.perf_counter()
    heldout = ws.load_probe("heldout")
    pairs = importance_pairs(size.epochs)
    ranked = list(range(len(probe.classes)))[:size.importance_classes]
    summaries = ensure_importance(ctx, probe, heldout, "healthy", ranked, pairs)
    timings["importance"] = time.perf_counter() - t

    diagnosis = run_diagnosis(ws)

    t = time.perf_counter()
    evaluation = ensure_evaluation(ctx)
    timings["evaluation"] = time.perf_counter() - t

    from .report import write_report

    t = time.perf_counter()
    report = write_report(root, root / "report.html")
    timings["report"] = time.perf_counter() - t

    runs = [r.name for r in cfg.runs]
    table, checks = training_summary(ws, runs, spec.healthy_target)
    print()
    print(f"{spec.title} ({spec.arch}): {len(runs)} runs of {size.epochs} epochs")
    print(table)
    print()
    n_ckpt = sum(len(ws.stimuli_epochs(r)) for r in runs)
    print(f"stimuli: {n_ckpt} checkpoints x {len(probe)} probe images "
          f"({ws.load_stimuli(runs[0], 0).n_neurons} neurons each)")
    space_report = space_summary(ws)
    print(space_report["text"])
    print()
    verification, figures_rev = verification_table(summaries, "train")
    which = "every class" if size.importance_classes is None else \
        f"the first {len(ranked)} classes"
    print(verification.replace("reversion check", "importance of the healthy run's concept "
                               f"evolutions, {which}; reversion check"))
    held_text, _ = verification_table(summaries, "heldout")
    print(held_text.splitlines()[0].replace("reversion check", "  same on held-out images"))
    for line in held_text.splitlines()[2:]:
        print(line)
    checks["reversion"] = figures_rev
    print()
    print("diagnosis (`conceptevo diagnose` for the metrics behind it):")
    for run, data in diagnosis["runs"].items():
        flags = "; ".join(f"epoch {f['epoch']}: {f['message']}" for f in data["flags"])
        print(f"  {run:<12} {flags or 'no flag'}")
    checks["flags"] = {run: [(f["rule"], f["epoch"]) for f in data["flags"]]
                       for run, data in diagnosis["runs"].items()}
    print()
    print("evaluation (`conceptevo evaluate`; annotations: the concept world's pixel masks):")
    print("  " + evaluation_text(evaluation).replace("\n", "\n  "))
    alignment = evaluation["alignment"]["methods"]
    checks["alignment"] = {m: {"auc": r["auc"], "ci95": r["ci95"]}
                           for m, r in alignment.items()}
    total = time.perf_counter() - t0
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
          + f", total {total:.0f}s")
    print()
    print(f"workspace: {root}")
    print("  report.html                 everything above in one page: open it in a browser")
    print("  study.toml                  the study's configuration")
    print("  figures/concept_world.png   sample images per class with their concept masks")
    print("  runs/<run>/metrics.csv      accuracy and loss per epoch")
    print("  stimuli/<run>/epoch_*.npz   stimuli and responsive neurons per checkpoint")
    print("  space/                      the unified space (docs/workspace.md)")
    print("  importance/healthy/          important evolutions and reversion, per class")
    print("  evaluation/                 evaluation.json, roc.png, auc_by_depth.png, labels/")
    print("  figures/space_<run>.png     each run's neurons on the 2-D map, coloured by epoch")
    for path in figures:
        print(f"    {path}")
    print()
    print(f"open {report} in a browser, or explore it live:")
    print(f"  {_command()} serve {root}    (then http://127.0.0.1:8765/)")
    return {"checks": checks, "timings": timings, "total_s": total,
            "fidelity": space_report["fidelity"], "arch": spec.arch}


def check_demo_directory(root: Path, spec: DemoArch) -> None:
    """Refuse a directory whose ``study.toml`` is the demo of another architecture."""
    import tomllib

    from .errors import ConfigError

    path = root / "study.toml"
    if not path.is_file():
        return
    try:
        found = tomllib.loads(path.read_text(encoding="utf-8")).get("model", {}).get("arch")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
        return  # not a demo's config: written again below
    if found is not None and found != spec.arch:
        other = next((a for a in ARCHES.values() if a.arch == found), None)
        raise ConfigError(f"{root} holds the demo study of {found}"
                          + (f" (--arch {other.name})" if other else "")
                          + f", not of {spec.arch}: give another --workspace (the "
                          f"{spec.name} demo's default is {spec.workspace})")


def _command() -> str:
    """How to call conceptevo from the user's shell (the venv's script when not on PATH)."""
    import shutil
    import sys

    if shutil.which("conceptevo"):
        return "conceptevo"
    script = Path(sys.executable).parent / "conceptevo"
    return str(script) if script.is_file() else f"{sys.executable} -m conceptevo"


def space_summary(ws: Workspace) -> dict:
    """The fidelity figures of the unified space, as printed by the demo."""

    report = load_fidelity(ws)
    fid, info = report["fidelity"], report["info"]
    comparison = report["indirect_comparison"]["methods"]
    weighted = report.get("projection", "stimuli") == "activations"
    how = ("by its activations over every probe image" if weighted else
           "at the mean of its stimuli (the paper's projection)")
    lines = [
        f"unified space: base run {report['base'].get('run')!r} epoch "
        f"{report['base'].get('epoch')}, {info['n_valid']} of {info['n_neurons']} neurons, "
        f"{info['n_vocab']} vocabulary images",
        f"  each neuron placed {how}",
        f"  image embedding RMSE {report['rmse']:.4f} (minimum-norm least squares)",
        f"  fidelity of the base projected onto itself: mean cosine {fid['mean_cosine']:.3f}, "
        f"retrieval top-1 {fid['top1']:.1%}, top-10 {fid['top10']:.1%}",
    ]
    if weighted and "stimuli_fidelity" in info:
        sf = info["stimuli_fidelity"]
        lines.append(f"  (the paper's projection by stimuli: mean cosine {sf['mean_cosine']:.3f}, "
                     f"top-1 {sf['top1']:.1%}, top-10 {sf['top10']:.1%})")
    lines.append("  paper's projection, embedding of non-vocabulary images (held-out neurons, "
                 "top-1 / top-10 / cosine): "
                 + ", ".join(f"{m} {r['top1']:.0%}/{r['top10']:.0%}/{r['mean_cosine']:.2f}"
                             for m, r in comparison.items()))
    return {"text": "\n".join(lines), "fidelity": fid}
