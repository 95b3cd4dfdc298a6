"""The evaluation stage (``conceptevo evaluate``): concept labels, the alignment study of the
unified space against its baselines, and the faithfulness figures, in one JSON and two plots.

Artifacts (see docs/workspace.md):

* ``evaluation/labels/<run>/epoch_NNNN.npz``: the concept labels of one checkpoint's neurons
  (IoU with every concept, label, threshold, activation vectors), cached by key;
* ``evaluation/evaluation.json``: every figure (schema in docs/workspace.md);
* ``evaluation/roc.png``, ``evaluation/auc_by_depth.png``.

Every method is scored on the same query neurons and draws its neighbours from the same pool:
the alive neurons (a positive activation on the probe set) of the labelled checkpoints whose
vector is defined in every method. Dead neurons detect nothing, so no method is asked about
them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ..common import stable_hash
from ..config import StudyConfig
from ..data.probe import ProbeSet
from ..errors import CheckpointError, ConfigError, WorkspaceError
from ..evaluate.alignment import (
    NeuronIndex,
    alignment_study,
    correlation_similarity_fn,
    cosine_similarity_fn,
    roc_curve,
    sample_queries,
)
from ..evaluate.annotations import ANNOTATION_FILE, ConceptMasks, read_annotations
from ..evaluate.labels import activation_vectors, label_neurons
from ..evaluate.matching import (
    correlation_rows,
    layer_agreement,
    matched_rows,
    precomputed_similarity,
)
from ..evaluate.neurons import (
    METHODS,
    StudyNeurons,
    collect_neurons,
    load_checkpoints,
    space_vectors,
)
from ..evaluate.text import evaluation_text, headline  # noqa: F401 (evaluation_text: API)
from ..progress import progress_bar
from ..runs import run_model, streams_projection
from ..space.unified import BaseSpace, UnifiedSpace
from ..viz import plot_auc_by_depth, plot_checks, plot_roc
from ..workspace import Workspace
from ..workspace.artifacts import (  # noqa: F401 (study_config, load_evaluation: API)
    evaluation_path,
    labels_path,
    load_base_space,
    load_evaluation,
    load_fidelity,
    load_importance,
    save_evaluation,
    save_labels,
    stored_importance,
    study_config,
)
from .context import Context, cache_key, stored_key
from .evaluation_checks import invariance_checks
from .evaluation_rankers import compare_rankers
from .importance import NO_DROP, reversion_ratio
from .probe import ensure_probe_sets
from .space import space_params
from .stimuli import base_descriptor, ensure_base_stimuli

log = logging.getLogger("conceptevo")
SCHEMA = 1

def annotation_path(cfg: StudyConfig) -> Path:
    ec = cfg.evaluation
    if ec.annotations:
        return cfg.resolve(ec.annotations)
    return cfg.resolve(cfg.probe.root) / ANNOTATION_FILE


def split_images(probe: ProbeSet, covered: np.ndarray, per_class: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(labelling ids, matching ids): per class, up to ``per_class`` annotated probe images
    to label the neurons and up to as many other images of the class for the activation
    vectors of the correlation baseline (each set takes at most half of a small class);
    seeded, sorted."""
    rng = np.random.default_rng(seed)
    label, match = [], []
    for c in range(len(probe.classes)):
        pool = rng.permutation(np.flatnonzero(probe.labels == c))
        annotated = pool[covered[pool]]
        take = min(per_class, annotated.size, (pool.size + 1) // 2)
        chosen = annotated[:take]
        label.append(chosen)
        match.append(np.setdiff1d(pool, chosen, assume_unique=True)[:min(per_class,
                                                                         pool.size - take)])
    label_ids, match_ids = np.sort(np.concatenate(label)), np.sort(np.concatenate(match))
    if label_ids.size == 0:
        raise WorkspaceError("no probe image is annotated; the annotation paths must be the "
                             "probe images' paths relative to the probe root (see "
                             "probe/index.csv and docs/concepts.md)")
    if match_ids.size < 2:
        raise WorkspaceError("the probe set is too small for the evaluation: it needs images "
                             "besides the labelling ones; lower [evaluation] images_per_class")
    return label_ids.astype(np.int64), match_ids.astype(np.int64)


# ----------------------------------------------------------------------------- labels
def evaluated_checkpoints(cfg: StudyConfig, ws: Workspace) -> list[tuple[str, int]]:
    """(run, epoch) of every checkpoint to label: those with stimuli and a projection, among
    ``[evaluation] epochs`` when set."""
    wanted = cfg.evaluation.epochs
    out = []
    for run in ws.stimuli_runs():
        projected = set(ws.projection_epochs(run))
        for epoch in ws.stimuli_epochs(run):
            if epoch in projected and (wanted is None or epoch in wanted):
                out.append((run, epoch))
    if not out:
        raise WorkspaceError(f"{ws.root} has no projected checkpoint to evaluate"
                             + (f" among [evaluation] epochs {wanted}" if wanted else "")
                             + "; run `conceptevo build CONFIG` first")
    return out


def ensure_labels(ctx: Context, probe: ProbeSet, masks: ConceptMasks, match_ids: np.ndarray,
                  checkpoints: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Concept labels of every checkpoint of ``checkpoints`` that lacks them (or whose key
    changed), with the neurons' activation vectors over the probe images ``match_ids``
    (disjoint from the labelling images, so that the correlation baseline does not see the
    images that decide the labels); returns the checkpoints computed."""
    cfg, ws, device = ctx.cfg, ctx.ws, ctx.device
    ec = cfg.evaluation
    stat = masks.source.stat()
    masks_key = stable_hash({"annotations": str(masks.source.resolve()),
                             "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             "ids": masks.probe_ids.tolist(), "mask": masks.bits.shape[1:],
                             "match": match_ids.tolist()})
    todo: dict[str, list[tuple[int, str]]] = {}
    for run, epoch in checkpoints:
        meta = ws.stimuli_meta(run, epoch) or {}
        key = stable_hash({"stimuli": meta.get("key"), "masks": masks_key,
                           "quantile": ec.quantile, "min_iou": ec.min_iou, "seed": cfg.seed})
        if ws.arrays_key(labels_path(ws, run, epoch)) != key:
            todo.setdefault(run, []).append((epoch, key))
    done = []
    n = sum(len(v) for v in todo.values())
    if not n:
        return done
    log.info("concept labels: %d checkpoint(s) on %d annotated images", n, len(masks))
    batch = cfg.stimuli.batch_size
    with progress_bar(n * (2 * len(masks) + len(match_ids)), "concept labels", "img") as bar:
        for run, items in todo.items():
            rm = run_model(cfg, run, device)
            for epoch, key in items:
                bar.set_postfix_str(f"{run} epoch {epoch}")
                rm.load(epoch, cfg.trust_checkpoints)

                def batches():
                    rows = np.arange(len(masks))
                    for start, x in zip(range(0, len(masks), batch),
                                        _tensors(probe, masks.probe_ids, batch, device)):
                        yield x, masks.masks(rows[start:start + batch], device)

                labels = label_neurons(rm.adapter, batches, len(masks), quantile=ec.quantile,
                                       min_iou=ec.min_iou, seed=cfg.seed, device=device,
                                       progress=bar.update)
                acts = activation_vectors(rm.adapter, _tensors(probe, match_ids, batch, device),
                                          device)
                bar.update(len(match_ids))
                save_labels(ws, run, epoch, replace(labels, activations=acts),
                            masks.concept_names,
                            {"key": key, "probe_ids": masks.probe_ids.tolist(),
                             "match_ids": match_ids.tolist()})
                done.append((run, epoch))
    return done


def _tensors(probe: ProbeSet, ids: np.ndarray, batch: int, device):
    """The probe images ``ids`` in batches, channels-last like the models (run_model)."""
    for x, _ in probe.batches(batch, device, ids):
        yield x.contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- spaces
@dataclass
class SeedSpace:
    """The base space built with one seed: the workspace's own (``stored``) or rebuilt."""

    seed: int
    space: BaseSpace
    stored: bool
    fidelity: dict


def seed_spaces(ctx: Context, probe: ProbeSet, seeds: int) -> list[SeedSpace]:
    """The base space with the study's seed (as stored) and ``seeds - 1`` others (neuron and
    image embeddings rebuilt from the same base stimuli with seeds ``seed + 1, ...``)."""
    cfg, ws = ctx.cfg, ctx.ws
    stored = load_fidelity(ws)
    out = [SeedSpace(cfg.seed, load_base_space(ws), True,
                     dict(seed=cfg.seed, rmse=stored["rmse"], **stored["fidelity"]))]
    if seeds > 1:
        base = ensure_base_stimuli(ctx, probe, base_descriptor(cfg))
        params = space_params(ctx)
        with progress_bar(seeds - 1, "the space with other seeds", "seed") as bar:
            for s in range(cfg.seed + 1, cfg.seed + seeds):
                space = UnifiedSpace(params, seed=s).fit(base).space_
                out.append(SeedSpace(s, space, False,
                                     dict(seed=s, rmse=space.rmse, **space.fidelity)))
                bar.update(1)
    return out


def fidelity_over_seeds(spaces: list[SeedSpace]) -> dict:
    """The base space's fidelity for each seed, its mean and spread (min, max)."""
    rows = [s.fidelity for s in spaces]
    keys = ("rmse", "mean_cosine", "top1", "top10")
    return {"seeds": rows,
            "spread": {k: [float(min(r[k] for r in rows)), float(max(r[k] for r in rows))]
                       for k in keys},
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


# ----------------------------------------------------------------------------- alignment
def similarities(neurons: StudyNeurons, vectors: dict[str, np.ndarray], queries: np.ndarray,
                 methods: list[str]) -> dict[str, Callable[[int], np.ndarray]]:
    """similarity(q) of every method for the query neurons ``queries``."""
    out = {}
    rows = correlation_rows(neurons.unit, queries) if neurons.unit is not None else None
    for m in methods:
        if m in vectors:
            out[m] = cosine_similarity_fn(vectors[m])
        elif m == "correlation":
            out[m] = correlation_similarity_fn(neurons.fixed["correlation"])
        elif m == "correlation-probe":
            out[m] = precomputed_similarity(rows, queries)
        elif m == "matched":
            out[m] = precomputed_similarity(matched_rows(rows, queries, neurons.partner),
                                            queries)
    return out


def run_alignment(neurons: StudyNeurons, labels: np.ndarray,
                  seeds: list[tuple[int, dict[str, np.ndarray]]], methods: list[str],
                  per_layer: int, k: int, n_boot: int) -> dict:
    """Every method on the same queries, for each seed of the space (``seeds``: the seed and
    the space methods' vectors): AUC, bootstrap interval and per depth; the first seed's ROC.
    A seed draws its own queries and random candidates. ``labels``: int [n] the truth (-1:
    no label; such neurons are never queries)."""
    index = NeuronIndex(neurons.checkpoint, neurons.depth, labels)
    out: dict = {"order": methods, "methods": {},
                 "depth_names": {str(d): n for d, n in enumerate(neurons.depth_names)},
                 "seeds": [s for s, _ in seeds]}
    with progress_bar(len(seeds) * len(methods), "alignment study", "method") as bar:
        for i, (seed, vectors) in enumerate(seeds):
            queries = sample_queries(index, per_layer, seed)
            if queries.size == 0:
                raise WorkspaceError("no neuron has a label (every best IoU is below "
                                     "[evaluation] min_iou, or no class dominates any "
                                     "neuron's stimuli): the alignment study needs labelled "
                                     "neurons; check the annotations or lower min_iou")
            sims = similarities(neurons, vectors, queries, methods)
            for method in methods:
                result = alignment_study(index, queries, sims[method], k=k, seed=seed)
                summary = result.auc(n_boot, seed)
                by_depth = {str(d): v for d, v in summary.pop("by_depth").items()}
                row = {"seed": seed, "auc": summary["auc"], "ci95": summary["ci95"],
                       "by_depth": {d: v["auc"] for d, v in by_depth.items()}}
                if i == 0:
                    fpr, tpr = roc_curve(result.scores, result.positive)
                    out["methods"][method] = dict(title=METHODS[method], **summary,
                                                  by_depth=by_depth, per_seed=[],
                                                  roc={"fpr": _round(fpr), "tpr": _round(tpr)})
                out["methods"][method]["per_seed"].append(row)
                bar.update(1)
    for r in out["methods"].values():
        aucs = [s["auc"] for s in r["per_seed"] if s["auc"] is not None]
        r["mean"] = float(np.mean(aucs)) if aucs else None
        r["spread"] = [float(min(aucs)), float(max(aucs))] if aucs else None
    out.update(comparison(out))
    out["n_pool"] = int(len(labels))
    out["n_checkpoints"] = len(neurons.checkpoints)
    return out


def comparison(alignment: dict) -> dict:
    """Ours against each baseline, seed by seed: won where our 95% interval lies wholly above
    the baseline's (a baseline whose AUC is undefined, none of its neighbours sharing a
    concept, is beaten); ``beats_all_baselines`` only when that holds for every baseline on
    every seed."""
    methods = alignment["methods"]
    ours = methods["unified"]["per_seed"]
    wins, per_seed = {}, []
    for i, mine in enumerate(ours):
        won = {}
        for m, r in methods.items():
            if m == "unified":
                continue
            theirs = r["per_seed"][i]
            won[m] = mine["auc"] is not None and (
                theirs["auc"] is None or mine["ci95"][0] > theirs["ci95"][1])
        per_seed.append(all(won.values()))
        for m, w in won.items():
            wins[m] = wins.get(m, 0) + int(w)
    return {"wins": wins, "beats_on_seed": per_seed, "beats_all_baselines": all(per_seed)}


def _round(values: np.ndarray, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def agreement_pairs(checkpoints: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """Checkpoint pairs for the agreement check: the same epoch of two runs; with one run,
    consecutive epochs."""
    pairs = [(i, j) for i, a in enumerate(checkpoints) for j, b in enumerate(checkpoints)
             if i < j and a[0] != b[0] and a[1] == b[1]]
    if not pairs:
        pairs = [(i, j) for i, a in enumerate(checkpoints) for j, b in enumerate(checkpoints)
                 if j == i + 1 and a[0] == b[0]]
    return pairs


def agreement_check(neurons: StudyNeurons, vectors: dict[str, np.ndarray]) -> dict:
    """Check (c): per layer, how often a neuron's nearest neighbour in the unified space
    (within the same layer of the other checkpoint of a pair) is its one-to-one correlation
    match, against chance; passed when above chance (binomial, p < 0.01) on every layer."""
    if neurons.partner is None:
        return {"skipped": "the checkpoints' activations are not stored ([space] projection "
                           "= \"stimuli\", or [stimuli] store_activations = false): there is "
                           "nothing to correlate"}
    pairs = agreement_pairs(neurons.checkpoints)
    if not pairs:
        return {"skipped": "one checkpoint only: there is nothing to match"}
    per = layer_agreement(vectors["unified"], neurons.partner, neurons.checkpoint,
                          neurons.depth, pairs)
    per_layer = {neurons.depth_names[d]: v for d, v in per.items()}
    return {"pairs": [[list(neurons.checkpoints[a]), list(neurons.checkpoints[b])]
                      for a, b in pairs],
            "per_layer": per_layer, "alpha": 0.01,
            "passed": bool(per_layer) and all(v["above_chance"] for v in per_layer.values())}


def class_study_verdict(alignment: dict) -> dict:
    """Check (d): the unified space's class-level AUC is above chance (0.5 below its 95%
    interval) on every seed."""
    ours = alignment["methods"]["unified"]["per_seed"]
    ok = [s["auc"] is not None and s["ci95"][0] > 0.5 for s in ours]
    return {"passed": all(ok), "above_chance_on_seeds": int(sum(ok)), "n_seeds": len(ok)}


def reversion_summary(ws: Workspace) -> list[dict]:
    """Top-bin vs random reversion drops of every stored (run, epoch pair), over classes."""
    groups: dict[tuple[str, int, int], list] = {}
    for run, c, t, t2 in stored_importance(ws):
        groups.setdefault((run, t, t2), []).append(load_importance(ws, run, c, t, t2)[1])
    out = []
    for (run, t, t2), revs in sorted(groups.items()):
        row = {"run": run, "from": t, "to": t2, "n_classes": len(revs)}
        for split in ("train", "heldout"):
            sums = [r.summary(split) for r in revs]
            sums = [s for s in sums if s]
            if not sums:
                continue
            top = np.array([s["top_bin_drop"] for s in sums])
            rand = np.array([s["random_drop"] for s in sums])
            hurt = rand > NO_DROP
            per_class = top[hurt] / rand[hurt]
            figures = {"top_bin_drop": float(top.mean()), "random_drop": float(rand.mean()),
                       "random_drop_std": float(np.mean([s["random_drop_std"] for s in sums])),
                       "ratio": reversion_ratio(top.mean(), rand.mean())}
            if per_class.size:
                figures["ratio_per_class"] = {
                    "mean": float(per_class.mean()), "std": float(per_class.std()),
                    "min": float(per_class.min()), "max": float(per_class.max()),
                    "n": int(per_class.size)}
            if split == "train":
                row.update(split="train", **figures)
            else:
                row["heldout"] = figures
        out.append(row)
    return out


# ----------------------------------------------------------------------------- plots
def write_plots(ws: Workspace, alignment: dict, prefix: str = "") -> dict[str, str]:
    """ROC curves of every method, and AUC by layer depth with 95% intervals (``prefix``
    names the files of another study than the concept one, e.g. ``classes_``)."""
    paths = {"roc": f"evaluation/{prefix}roc.png",
             "by_depth": f"evaluation/{prefix}auc_by_depth.png"}
    plot_roc(alignment, ws.path(paths["roc"]))
    plot_auc_by_depth(alignment, ws.path(paths["by_depth"]))
    return paths


# ------------------------------------------------------------------------------ stage
def label_summary(neurons: StudyNeurons, concept_names: list[str]) -> dict:
    label = neurons.concept
    by_concept = {concept_names[c]: int((label == c).sum()) for c in np.unique(label) if c >= 0}
    by_depth = []
    for d, name in enumerate(neurons.depth_names):
        sel = neurons.depth == d
        by_depth.append({"depth": d, "layer": name, "n": int(sel.sum()),
                         "labelled": int((label[sel] >= 0).sum()),
                         "mean_best_iou": float(neurons.iou[sel].mean()) if sel.any() else 0.0})
    return {"n_neurons": int(len(neurons.rows)), "n_pool": int(len(label)),
            "n_labelled": int((label >= 0).sum()),
            "by_concept": dict(sorted(by_concept.items(), key=lambda kv: -kv[1])),
            "by_depth": by_depth}


def run_evaluation(cfg: StudyConfig, ws: Workspace | None = None) -> dict:
    """``conceptevo evaluate``: :func:`ensure_evaluation` on ``cfg``'s workspace (or ``ws``)."""
    return ensure_evaluation(Context.create(cfg, ws or Workspace(cfg.workspace_path)))


def ensure_evaluation(ctx: Context) -> dict:
    """The whole stage: labels (cached), the alignment studies (concepts from the masks, and
    the classes that dominate neurons' stimuli) over the space's seeds, faithfulness, the
    annotation-free checks (:mod:`conceptevo.evaluate.invariance`, and the agreement with
    one-to-one correlation matching), plots, JSON. Without pixel-level concept masks the
    labels and the concept study are skipped (``skipped`` says why) and the rest still
    runs."""
    cfg, ws = ctx.cfg, ctx.ws
    if not ws.has_space():
        raise WorkspaceError(f"{ws.root} has no unified space yet; run `conceptevo build "
                             "CONFIG` first")
    ec = cfg.evaluation
    probe, _ = ensure_probe_sets(ctx)
    checkpoints = evaluated_checkpoints(cfg, ws)
    key = evaluation_key(ctx)
    if stored_key(ws, evaluation_path(ws)) == key:
        stored = load_evaluation(ws)
        if isinstance(stored, dict):
            log.info("evaluation: up to date (%s: nothing it reads changed)",
                     evaluation_path(ws))
            return stored
    report = {
        "key": key,
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "annotations": None, "labels": None, "alignment": None, "classes": None,
        "skipped": [],
        "settings": {"quantile": ec.quantile, "min_iou": ec.min_iou,
                     "queries_per_layer": ec.queries_per_layer, "neighbours": ec.neighbours,
                     "bootstrap": ec.bootstrap, "images_per_class": ec.images_per_class,
                     "seeds": ec.seeds, "class_share": ec.class_share,
                     "seed": cfg.seed, "checkpoints": [list(c) for c in checkpoints]},
        "environment": environment(),
    }
    masks_file = annotation_path(cfg)
    annotations = read_annotations(masks_file) if masks_file.is_file() else None
    if annotations is not None:
        ids, match_ids = split_images(probe, annotations.covers(probe.paths),
                                      ec.images_per_class, cfg.seed)
        size = ec.mask_size or probe.image_size[0]
        if size > probe.image_size[0]:
            raise ConfigError(f"[evaluation] mask_size {size} is larger than the probe images "
                              f"({probe.image_size[0]} px); use at most that")
        masks = annotations.masks_for(probe.paths, ids, size)
        ensure_labels(ctx, probe, masks, match_ids, checkpoints)
        report["annotations"] = {"path": str(annotations.source), "n_images": int(len(masks)),
                                 "n_match_images": int(len(match_ids)), "mask_size": int(size),
                                 "concepts": list(annotations.concept_names)}
    else:
        report["skipped"].append(
            f"concept labels and the concept alignment study: no pixel-level concept masks at "
            f"{masks_file} (set [evaluation] annotations to an annotation file, "
            "docs/concepts.md); the class-level study and the other checks ran")
    seeds = ec.seeds
    if seeds > 1 and streams_projection(cfg):
        report["skipped"].append(
            f"the space with {seeds - 1} other seed(s): the checkpoints were projected during "
            "their stimulus passes and their activations not stored ([stimuli] "
            "store_activations = false), so a space with another seed cannot project them; "
            "the figures are of the stored seed only (set store_activations = true for the "
            "spread over seeds)")
        seeds = 1
    if streams_projection(cfg):
        report["skipped"].append(
            "the activation-correlation baselines (correlation-probe, matched): they read "
            "every checkpoint's activations, not stored with [stimuli] store_activations = "
            "false")
    spaces = seed_spaces(ctx, probe, seeds)
    stored = spaces[0].space
    data = load_checkpoints(ws, checkpoints, stored.needs_activations
                            and not streams_projection(cfg), annotations is not None)
    neurons = collect_neurons(cfg, data, probe.labels, stored)
    with progress_bar(len(spaces), "space methods over seeds", "seed") as bar:
        seeds = []
        for s in spaces:
            vectors = space_vectors(cfg, data, s.space, s.stored, s.seed)
            seeds.append((s.seed, {m: v[neurons.rows] for m, v in vectors.items()}))
            bar.update(1)
    del data
    methods = neurons.methods(stored.needs_activations)
    if annotations is not None:
        alignment = run_alignment(neurons, neurons.concept, seeds, methods,
                                  ec.queries_per_layer, ec.neighbours, ec.bootstrap)
        alignment["plots"] = write_plots(ws, alignment)
        report.update(labels=label_summary(neurons, list(annotations.concept_names)),
                      alignment=alignment)
    if (neurons.klass >= 0).any():
        classes = run_alignment(neurons, neurons.klass, seeds, methods, ec.queries_per_layer,
                                ec.neighbours, ec.bootstrap)
        classes["plots"] = write_plots(ws, classes, "classes_")
        classes["labelled"] = class_label_summary(neurons, probe.classes)
        classes.update(class_study_verdict(classes))
        report["classes"] = classes
    else:
        report["skipped"].append(
            f"the class-level alignment study: no neuron has {ec.class_share:.0%} of its "
            "stimuli in one class (of the class's probe images where it has fewer; lower "
            "[evaluation] class_share)")
    try:
        checks = invariance_checks(ctx, probe, stored)
    except (ConfigError, CheckpointError) as error:
        checks = {"skipped": str(error)}
        report["skipped"].append(f"the permuted- and rescaled-copy checks: {error}")
    checks["agreement"] = agreement_check(neurons, seeds[0][1])
    if "skipped" in checks["agreement"]:
        report["skipped"].append(f"the agreement check: {checks['agreement']['skipped']}")
    report["checks"] = checks
    report["plots"] = {"checks": write_checks_plot(ws, report)}
    report["faithfulness"] = {"fidelity": fidelity_over_seeds(spaces),
                              "reversion": reversion_summary(ws),
                              "rankers": compare_rankers(ctx)}
    if report["faithfulness"]["rankers"] is None:
        report["skipped"].append("the comparison of the importance ranking with simple rankers: "
                                 "no stored importance (run `conceptevo importance`) or "
                                 "[evaluation] ranker_classes = 0")
    report["headline"] = headline(report["alignment"]) if report["alignment"] else \
        "concept alignment study skipped: no concept masks (the class-level study and the " \
        "annotation-free checks ran)"
    save_evaluation(ws, report)
    return report


def evaluation_key(ctx: Context) -> str:
    """The key of ``evaluation.json``: the study's whole configuration, the key of every
    stored stimulus pass, space artifact and importance result it can read, the annotation
    file (size, modification time), the figures' format and the environment that can make
    them differ (:func:`environment`). The same key: the same report, which is then reused."""
    from .. import __version__

    cfg, ws = ctx.cfg, ctx.ws
    stored = {}
    for part in ("stimuli", "space", "importance"):
        for path in sorted(ws.path(part).rglob("*.npz")):
            stored[path.relative_to(ws.root).as_posix()] = stored_key(ws, path)
    masks = annotation_path(cfg)
    stat = masks.stat() if masks.is_file() else None
    return cache_key(schema=SCHEMA, version=__version__, config=cfg.to_dict(),
                     artifacts=stored, environment=environment(),
                     annotations=[str(masks), stat.st_size, stat.st_mtime_ns] if stat else None)


def environment() -> dict:
    """What can make figures differ between machines (docs/concepts.md, reproducibility)."""
    import platform

    return {"torch": torch.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def class_label_summary(neurons: StudyNeurons, classes: list[str]) -> dict:
    """How many neurons of each layer have a class label."""
    return {"n_labelled": int((neurons.klass >= 0).sum()),
            "by_depth": [{"depth": d, "layer": name,
                          "n": int((neurons.depth == d).sum()),
                          "labelled": int(((neurons.depth == d) & (neurons.klass >= 0)).sum())}
                         for d, name in enumerate(neurons.depth_names)],
            "n_classes": len(classes)}


def write_checks_plot(ws: Workspace, report: dict) -> str | None:
    """The annotation-free checks in one figure (evaluation/checks.png), or None when none
    ran."""
    rel = "evaluation/checks.png"
    return rel if plot_checks(report, ws.path(rel)) else None
