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

import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from ..config import StudyConfig, config_from_dict
from ..data.probe import ProbeSet
from ..errors import ConfigError, WorkspaceError
from ..progress import progress_bar
from ..space.coactivation import CoActivation
from ..space.image_embedding import project
from ..space.neuron_embedding import NeuronEmbedding
from ..space.unified import build_base_space, project_known
from ..workspace import Workspace, atomic
from ..workspace.store import epoch_name
from .alignment import (
    NeuronIndex,
    StudyResult,
    alignment_study,
    correlation_similarity_fn,
    cosine_similarity_fn,
    roc_curve,
    sample_queries,
)
from .annotations import ANNOTATION_FILE, ConceptMasks, read_annotations
from .labels import ConceptLabels, activation_vectors, label_neurons

log = logging.getLogger("conceptevo")
SCHEMA = 1

#: The methods of the alignment study, ours first, in the order of the report. "stimuli" (the
#: paper's projection) is scored when the space projects by activations (else it is "unified").
METHODS: dict[str, str] = {
    "unified": "Unified space (ours)",
    "stimuli": "Projection by top-k stimuli (the paper's)",
    "no-indirect": "Projection without indirect image embeddings",
    "correlation": "Activation correlation (Pearson)",
    "separate": "Per-model embeddings (no unification)",
    "random": "Random vectors",
}


# ----------------------------------------------------------------------------- config
def study_config(ws: Workspace) -> StudyConfig:
    """The config a workspace was built with (``study.json``), as data only: a workspace may
    come from anyone, so this configuration builds no model factory it names (only
    ``torchvision:`` and ``conceptevo:`` models) and unpickles no checkpoint because it says
    ``trust_checkpoints`` (``--trust-checkpoints`` on the command line still can)."""
    study = ws.load_study()
    if not study:
        raise WorkspaceError(f"{ws.root} has no study.json; run `conceptevo build CONFIG` "
                             "first, or give the study config: `conceptevo evaluate CONFIG`")
    data = {k: v for k, v in study.items() if k not in ("base_dir", "trust_checkpoints")}
    cfg = config_from_dict(data, study.get("base_dir", "."), str(ws.path("study.json")))
    cfg.allow_code = False
    cfg.trust_checkpoints = False
    return cfg


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
def labels_path(ws: Workspace, run: str, epoch: int) -> Path:
    return ws.path("evaluation", "labels", run, f"{epoch_name(epoch)}.npz")


def load_labels(ws: Workspace, run: str, epoch: int) -> tuple[ConceptLabels, list[str]]:
    """The stored labels of one checkpoint and the concept names. The stored activation
    vectors are those on the matching images (meta ``match_ids``), not on the labelling
    images."""
    _, a = ws.load_arrays(labels_path(ws, run, epoch))
    return (ConceptLabels(a["iou"], a["label"], a["threshold"], a["activations"]),
            json.loads(str(a["concept_names"])))


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


def ensure_labels(cfg: StudyConfig, ws: Workspace, probe: ProbeSet, masks: ConceptMasks,
                  match_ids: np.ndarray, checkpoints: list[tuple[str, int]]
                  ) -> list[tuple[str, int]]:
    """Concept labels of every checkpoint of ``checkpoints`` that lacks them (or whose key
    changed), with the neurons' activation vectors over the probe images ``match_ids``
    (disjoint from the labelling images, so that the correlation baseline does not see the
    images that decide the labels); returns the checkpoints computed."""
    from ..runs import resolve_device, run_model, stable_hash

    ec = cfg.evaluation
    device = resolve_device(cfg.device)
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
    names = np.array(json.dumps(masks.concept_names))
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
                ws.save_arrays(labels_path(ws, run, epoch),
                               {"key": key, "run": run, "epoch": epoch,
                                "probe_ids": masks.probe_ids.tolist(),
                                "match_ids": match_ids.tolist()},
                               iou=labels.iou, label=labels.label, threshold=labels.threshold,
                               activations=acts, concept_names=names)
                done.append((run, epoch))
    return done


def _tensors(probe: ProbeSet, ids: np.ndarray, batch: int, device):
    """The probe images ``ids`` in batches, channels-last like the models (run_model)."""
    for x, _ in probe.batches(batch, device, ids):
        yield x.contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- neurons
@dataclass
class StudyNeurons:
    """The pool of the alignment study: one row per neuron, with every method's vector.

    Attributes
    ----------
    index : checkpoint id, layer depth and label of each neuron.
    vectors : method -> float [n, d] (for "correlation": the activation vectors).
    checkpoints : (run, epoch) of each checkpoint id.
    depth_names : layer name of each depth (of the first checkpoint).
    iou : float32 [n] best IoU of each neuron.
    rows : bool [n_all]: which neurons of the checkpoints (concatenated) are in the pool.
    """

    index: NeuronIndex
    vectors: dict[str, np.ndarray]
    checkpoints: list[tuple[str, int]]
    depth_names: list[str]
    iou: np.ndarray
    rows: np.ndarray


def separate_embedding(stimuli: np.ndarray, alive: np.ndarray, cfg: StudyConfig, seed: int
                       ) -> np.ndarray:
    """A neuron embedding of one model alone (the baseline without unification): the same
    algorithm and parameters as the base space, on this model's co-activation, from its own
    random start (``seed``: a shared start would align the spaces of models of one
    architecture by channel index, a unification by accident); NaN rows for neurons that
    co-activate with no other."""
    sc = cfg.space
    coact = CoActivation.from_stimuli(stimuli, alive)
    model = NeuronEmbedding(sc.dim, sc.epochs, sc.lr, sc.negatives, sc.batch_size,
                            seed=seed).fit(coact)
    out = model.embedding_.astype(np.float64)
    out[~(alive & model.trained_)] = np.nan
    return out


def collect_neurons(cfg: StudyConfig, ws: Workspace, checkpoints: list[tuple[str, int]]
                    ) -> StudyNeurons:
    """Every method's vector for the neurons of ``checkpoints``, restricted to the common
    pool (alive, finite in every method)."""
    from ..space.stage import load_base_space

    space = load_base_space(ws)
    e = space.stimulus_embedding.astype(np.float64)
    vocab = space.vocab.astype(bool)
    weighted = space.projection == "activations"
    rng = np.random.default_rng(cfg.seed)
    parts: dict[str, list] = {m: [] for m in METHODS if weighted or m != "stimuli"}
    ckpt_ids, depth, label, iou, alive_parts = [], [], [], [], []
    depth_names: list[str] = []
    with progress_bar(len(checkpoints), "alignment study: neurons", "ckpt") as bar:
        for i, (run, epoch) in enumerate(checkpoints):
            stim = ws.load_stimuli(run, epoch)
            _, proj = ws.load_arrays(ws.projection_path(run, epoch))
            labels, _ = load_labels(ws, run, epoch)
            alive = ~stim.dead
            layer_of = np.repeat(np.arange(len(stim.layers)),
                                 [li.channels for li in stim.layers])
            if not depth_names:
                depth_names = [li.name for li in stim.layers]
            parts["unified"].append(proj["embedding"].astype(np.float64))
            if weighted:
                parts["stimuli"].append(project(stim.stimuli, e))
            parts["no-indirect"].append(project_known(stim.stimuli, e, vocab))
            parts["correlation"].append(labels.activations.astype(np.float64))
            parts["separate"].append(separate_embedding(stim.stimuli, alive, cfg,
                                                        cfg.seed + 1000 + i))
            parts["random"].append(rng.standard_normal((stim.n_neurons, e.shape[1])))
            ckpt_ids.append(np.full(stim.n_neurons, i))
            depth.append(layer_of)
            label.append(np.where(alive, labels.label, -1))
            iou.append(labels.best_iou)
            alive_parts.append(alive)
            bar.update(1)
    vectors = {m: np.concatenate(v) for m, v in parts.items()}
    usable = np.concatenate(alive_parts) & np.all([np.isfinite(v).all(1) & (np.abs(v).sum(1) > 0)
                             for m, v in vectors.items() if m != "correlation"], axis=0)
    corr = vectors["correlation"]
    usable &= corr.std(1) > 0
    index = NeuronIndex(np.concatenate(ckpt_ids)[usable], np.concatenate(depth)[usable],
                        np.concatenate(label)[usable])
    return StudyNeurons(index, {m: v[usable] for m, v in vectors.items()}, checkpoints,
                        depth_names, np.concatenate(iou)[usable], usable)


def run_alignment(neurons: StudyNeurons, per_layer: int, k: int, n_boot: int, seed: int
                  ) -> dict:
    """Every method on the same queries: AUC, bootstrap interval, ROC, per depth."""
    queries = sample_queries(neurons.index, per_layer, seed)
    if queries.size == 0:
        raise WorkspaceError("no neuron has a concept label (every best IoU is below "
                             "[evaluation] min_iou): the alignment study needs labelled "
                             "neurons; check the annotations or lower min_iou")
    methods = [m for m in METHODS if m in neurons.vectors]
    out: dict = {"order": methods, "methods": {},
                 "depth_names": {str(d): n for d, n in enumerate(neurons.depth_names)}}
    results: dict[str, StudyResult] = {}
    with progress_bar(len(methods), "alignment study", "method") as bar:
        for method in methods:
            vectors = neurons.vectors[method]
            sim = correlation_similarity_fn(vectors) if method == "correlation" else \
                cosine_similarity_fn(vectors)
            result = alignment_study(neurons.index, queries, sim, k=k, seed=seed)
            results[method] = result
            fpr, tpr = roc_curve(result.scores, result.positive)
            summary = result.auc(n_boot, seed)
            summary["by_depth"] = {str(d): v for d, v in summary["by_depth"].items()}
            out["methods"][method] = dict(title=METHODS[method], **summary,
                                          roc={"fpr": _round(fpr), "tpr": _round(tpr)})
            bar.update(1)
    ours = out["methods"]["unified"]
    baselines = [m for m in methods if m != "unified"]
    # a baseline whose AUC is undefined (none of its neighbours shares a concept) is beaten
    defined = [m for m in baselines if out["methods"][m]["auc"] is not None]
    out["beats_all_baselines"] = ours["auc"] is not None and bool(all(
        ours["ci95"][0] > out["methods"][m]["ci95"][1] for m in defined))
    out["n_pool"] = int(len(neurons.index.label))
    out["n_checkpoints"] = len(neurons.checkpoints)
    return out


def _round(values: np.ndarray, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


# ------------------------------------------------------------------------ faithfulness
def fidelity_over_seeds(cfg: StudyConfig, ws: Workspace, probe: ProbeSet, seeds: int
                        ) -> dict:
    """The base space's fidelity with the study's seed (as stored) and ``seeds - 1`` others
    (rebuilt here: neuron embedding and image embedding), and its spread."""
    from ..space.stage import base_descriptor, ensure_base_stimuli, space_params

    stored = ws.read_json(ws.space_path("fidelity.json"))
    rows = [dict(seed=cfg.seed, rmse=stored["rmse"], **stored["fidelity"])]
    if seeds > 1:
        base = ensure_base_stimuli(cfg, ws, probe, base_descriptor(cfg))
        params = space_params(cfg)
        with progress_bar(seeds - 1, "fidelity over seeds", "seed") as bar:
            for s in range(1, seeds):
                space = build_base_space(base, replace(params, seed=cfg.seed + s))
                rows.append(dict(seed=cfg.seed + s, rmse=space.rmse, **space.fidelity))
                bar.update(1)
    keys = ("rmse", "mean_cosine", "top1", "top10")
    return {"seeds": rows,
            "spread": {k: [float(min(r[k] for r in rows)), float(max(r[k] for r in rows))]
                       for k in keys},
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


def reversion_summary(ws: Workspace) -> list[dict]:
    """Top-bin vs random reversion drops of every stored (run, epoch pair), over classes."""
    from ..evolution.stage import NO_DROP, load_importance, reversion_ratio, stored_importance

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
def write_plots(ws: Workspace, alignment: dict) -> dict[str, str]:
    """ROC curves of every method, and AUC by layer depth with 95% intervals."""
    from ..viz import plot_auc_by_depth, plot_roc

    paths = {"roc": "evaluation/roc.png", "by_depth": "evaluation/auc_by_depth.png"}
    plot_roc(alignment, ws.path(paths["roc"]))
    plot_auc_by_depth(alignment, ws.path(paths["by_depth"]))
    return paths


# ------------------------------------------------------------------------------ stage
def label_summary(neurons: StudyNeurons, concept_names: list[str]) -> dict:
    idx = neurons.index
    by_concept = {concept_names[c]: int((idx.label == c).sum())
                  for c in np.unique(idx.label) if c >= 0}
    by_depth = []
    for d, name in enumerate(neurons.depth_names):
        sel = idx.depth == d
        by_depth.append({"depth": d, "layer": name, "n": int(sel.sum()),
                         "labelled": int((idx.label[sel] >= 0).sum()),
                         "mean_best_iou": float(neurons.iou[sel].mean()) if sel.any() else 0.0})
    return {"n_neurons": int(len(neurons.rows)), "n_pool": int(len(idx.label)),
            "n_labelled": int((idx.label >= 0).sum()),
            "by_concept": dict(sorted(by_concept.items(), key=lambda kv: -kv[1])),
            "by_depth": by_depth}


def headline(alignment: dict) -> str:
    methods = alignment["methods"]
    ours = methods["unified"]
    if ours["auc"] is None:
        return f"unified space AUC undefined: {ours['undefined']}"
    defined = [m for m in methods if m != "unified" and methods[m]["auc"] is not None]
    verdict = ("beats every baseline (non-overlapping 95% intervals)"
               if alignment["beats_all_baselines"] else
               "does not beat every baseline with non-overlapping 95% intervals")
    text = f"unified space AUC {auc_text(ours)}"
    if defined:
        b = methods[max(defined, key=lambda m: methods[m]["auc"])]
        text += f"; best baseline {b['title'].lower()} {auc_text(b)}"
    return f"{text}; ours {verdict}"


def auc_text(result: dict) -> str:
    """"0.912 [0.901, 0.923]", or "n/a (why)" for an undefined AUC."""
    if result["auc"] is None:
        return f"n/a ({result.get('undefined', 'undefined')})"
    lo, hi = result["ci95"]
    return f"{result['auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def run_evaluation(cfg: StudyConfig, ws: Workspace | None = None) -> dict:
    """The whole stage: labels (cached), alignment study, faithfulness, the annotation-free
    checks (:mod:`conceptevo.evaluate.invariance`), plots, JSON. Without pixel-level concept
    masks the labels and the alignment study are skipped (``skipped`` says why) and the rest
    still runs."""
    from ..errors import CheckpointError
    from ..pipeline import ensure_probe_sets
    from ..space.stage import load_base_space
    from .invariance import invariance_checks

    ws = ws or Workspace(cfg.workspace_path)
    if not ws.has_space():
        raise WorkspaceError(f"{ws.root} has no unified space yet; run `conceptevo build "
                             "CONFIG` first")
    ec = cfg.evaluation
    probe, _ = ensure_probe_sets(cfg, ws)
    checkpoints = evaluated_checkpoints(cfg, ws)
    report = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "annotations": None, "labels": None, "alignment": None, "skipped": [],
        "settings": {"quantile": ec.quantile, "min_iou": ec.min_iou,
                     "queries_per_layer": ec.queries_per_layer, "neighbours": ec.neighbours,
                     "bootstrap": ec.bootstrap, "images_per_class": ec.images_per_class,
                     "seed": cfg.seed, "checkpoints": [list(c) for c in checkpoints]},
    }
    masks_file = annotation_path(cfg)
    if masks_file.is_file():
        annotations = read_annotations(masks_file)
        ids, match_ids = split_images(probe, annotations.covers(probe.paths),
                                      ec.images_per_class, cfg.seed)
        size = ec.mask_size or probe.image_size[0]
        if size > probe.image_size[0]:
            raise ConfigError(f"[evaluation] mask_size {size} is larger than the probe images "
                              f"({probe.image_size[0]} px); use at most that")
        masks = annotations.masks_for(probe.paths, ids, size)
        ensure_labels(cfg, ws, probe, masks, match_ids, checkpoints)
        neurons = collect_neurons(cfg, ws, checkpoints)
        alignment = run_alignment(neurons, ec.queries_per_layer, ec.neighbours, ec.bootstrap,
                                  cfg.seed)
        alignment["plots"] = write_plots(ws, alignment)
        report.update(
            annotations={"path": str(annotations.source), "n_images": int(len(masks)),
                         "n_match_images": int(len(match_ids)), "mask_size": int(size),
                         "concepts": list(annotations.concept_names)},
            labels=label_summary(neurons, list(annotations.concept_names)),
            alignment=alignment)
    else:
        report["skipped"].append(
            f"concept labels and the alignment study: no pixel-level concept masks at "
            f"{masks_file} (set [evaluation] annotations to an annotation file, "
            "docs/concepts.md)")
    try:
        checks = invariance_checks(cfg, ws, probe, load_base_space(ws))
    except (ConfigError, CheckpointError) as error:
        checks = {"skipped": str(error)}
        report["skipped"].append(f"the permuted- and rescaled-copy checks: {error}")
    report["checks"] = checks
    report["faithfulness"] = {"fidelity": fidelity_over_seeds(cfg, ws, probe, ec.fidelity_seeds),
                              "reversion": reversion_summary(ws)}
    report["headline"] = headline(report["alignment"]) if report["alignment"] else \
        "alignment study skipped: no concept masks (the annotation-free checks ran)"
    atomic.write_json(ws.path("evaluation", "evaluation.json"), report)
    return report


def load_evaluation(ws: Workspace) -> dict | None:
    path = ws.path("evaluation", "evaluation.json")
    return ws.read_json(path)


def evaluation_text(report: dict) -> str:
    """The figures as a table (the CLI's and the demo's output)."""
    from .invariance import checks_text

    lines = [f"skipped: {why}" for why in report.get("skipped") or []]
    a = report["alignment"]
    if a:
        lines += _alignment_lines(report)
    checks = report.get("checks") or {}
    if "permuted_copy" in checks:
        lines += checks_text(checks)
    fid = report["faithfulness"]["fidelity"]
    sp = fid["spread"]
    lines.append(f"fidelity over {len(fid['seeds'])} seeds: top-1 {sp['top1'][0]:.1%}-"
                 f"{sp['top1'][1]:.1%}, top-10 {sp['top10'][0]:.1%}-{sp['top10'][1]:.1%}, "
                 f"mean cosine {sp['mean_cosine'][0]:.3f}-{sp['mean_cosine'][1]:.3f}")
    for r in report["faithfulness"]["reversion"]:
        ratio = f"{r['ratio']:.1f}" if r.get("ratio") is not None else "n/a"
        pc = r.get("ratio_per_class")
        extra = f" (per class {pc['mean']:.1f} +- {pc['std']:.1f})" if pc else ""
        lines.append(f"reversion {r['run']} {r['from']}->{r['to']}: top bin "
                     f"{r['top_bin_drop']:.1%} vs random {r['random_drop']:.1%}, ratio "
                     f"{ratio}{extra}")
    lines.append(report["headline"])
    return "\n".join(lines)


def _alignment_lines(report: dict) -> list[str]:
    a = report["alignment"]
    lines = [f"alignment study: {a['methods']['unified']['n_queries']} query neurons over "
             f"{a['n_checkpoints']} checkpoints, {report['settings']['neighbours']} nearest "
             "neighbours from other checkpoints + 1 random neuron each; positive = same "
             "concept label",
             f"{'method':<46} {'AUC':>6} {'95% CI':>16}"]
    for m in a["order"]:
        r = a["methods"][m]
        if r["auc"] is None:
            lines.append(f"{r['title']:<46} {'n/a':>6} ({r['undefined']})")
        else:
            lines.append(f"{r['title']:<46} {r['auc']:>6.3f} "
                         f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
    lab = report["labels"]
    lines.append(f"concept labels: {lab['n_labelled']} of {lab['n_pool']} alive neurons "
                 f"labelled (IoU >= {report['settings']['min_iou']})")
    return lines
