"""Evaluation: concept labels (IoU), the alignment study's AUC and intervals, the stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from torch import nn

from conceptevo.data.probe import to_model_size
from conceptevo.errors import ProbeSetError
from conceptevo.evaluate.alignment import (
    NeuronIndex,
    alignment_study,
    bootstrap_auc,
    cosine_similarity_fn,
    roc_auc,
    roc_curve,
    sample_queries,
    weighted_auc,
)
from conceptevo.evaluate.annotations import read_annotations, resize_bits
from conceptevo.evaluate.labels import bilinear_matrix, label_neurons
from conceptevo.models.adapter import ModelAdapter


# ------------------------------------------------------------------------------ labels
def _identity_model() -> nn.Module:
    """One 1x1 convolution whose neuron c is input channel c."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    return nn.Sequential(conv)


def test_neuron_firing_exactly_on_a_concept_gets_it_with_iou_one():
    n, size = 8, 32
    masks = torch.zeros(n, 3, size, size, dtype=torch.bool)
    for i in range(n):                       # small parts: below the top 0.5% of pixels
        masks[i, 0, 2 * i:2 * i + 2, 3:5] = True            # concept 0
        masks[i, 1, 20:22, 2 * i:2 * i + 2] = True          # concept 1
        masks[i, 2, 2 * i:2 * i + 2, 3:4] = True            # concept 2: half of concept 0
    x = torch.zeros(n, 3, size, size)
    x[:, 0] = masks[:, 0] * (1 + torch.rand(n, size, size))   # fires exactly on concept 0
    x[:, 1] = masks[:, 1] * 2.0                              # exactly on concept 1
    labels = label_neurons(ModelAdapter(_identity_model()), lambda: [(x, masks)], n)
    assert labels.label.tolist() == [0, 1, -1]                # neuron 2 never fires: none
    assert labels.iou[0, 0] == pytest.approx(1.0)
    assert labels.iou[1, 1] == pytest.approx(1.0)
    assert labels.iou[0, 2] == pytest.approx(0.5)            # half of concept 0's pixels
    assert labels.iou[2].max() == 0
    assert labels.activations.shape == (3, n)


def _brute_force_iou(maps: list[np.ndarray], masks: np.ndarray, quantile: float) -> np.ndarray:
    """Network Dissection by loops: per neuron, threshold at the quantile of its raw map
    values, upsample with F.interpolate, IoU with each concept over all images."""
    rows = []
    for m in maps:                                            # [N, C, h, w]
        for c in range(m.shape[1]):
            t = np.quantile(m[:, c].ravel(), quantile)
            up = F.interpolate(torch.from_numpy(m[:, c:c + 1]), size=masks.shape[2:],
                               mode="bilinear", align_corners=False)[:, 0].numpy()
            on = up > t
            row = []
            for k in range(masks.shape[1]):
                inter = np.logical_and(on, masks[:, k]).sum()
                union = np.logical_or(on, masks[:, k]).sum()
                row.append(inter / union if union else 0.0)
            rows.append(row)
    return np.array(rows)


def test_label_iou_matches_brute_force_on_a_random_model(tiny_vgg_model):
    torch.manual_seed(0)
    model = tiny_vgg_model
    x = torch.randn(10, 3, 24, 24)
    masks = torch.rand(10, 4, 24, 24) > 0.7
    adapter = ModelAdapter(model)
    batches = lambda: [(x[:6], masks[:6]), (x[6:], masks[6:])]
    labels = label_neurons(adapter, batches, 10, quantile=0.9, min_iou=0.0,
                           max_samples=10**9)
    maps = []

    def keep(i, out):
        maps.append(out.detach().clone().numpy())
        return out.clone()

    with torch.no_grad(), adapter.hooks(keep):
        model.eval()(x)
    expected = _brute_force_iou(maps, masks.numpy(), 0.9)
    # the matrix upsampling differs from F.interpolate by float rounding only
    np.testing.assert_allclose(labels.iou, expected, atol=2e-3)
    assert (labels.label == expected.argmax(1)).mean() > 0.95


@pytest.fixture
def tiny_vgg_model():
    from conftest import TinyVGG

    torch.manual_seed(1)
    return TinyVGG(num_classes=3)


def test_bilinear_matrix_equals_interpolate():
    m = torch.randn(2, 3, 5, 7)
    up = bilinear_matrix(5, 20) @ m @ bilinear_matrix(7, 20).T
    ref = F.interpolate(m, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- annotations
def test_masks_follow_the_probe_geometry():
    """A non-square image and its mask, resized and centre-cropped like the probe images,
    still coincide."""
    h, w = 40, 70
    img = np.full((h, w, 3), 128, np.uint8)
    bits = np.zeros((1, h, w), np.uint32)
    img[10:25, 40:60] = (255, 0, 0)
    bits[0, 10:25, 40:60] = 1
    seen = to_model_size(Image.fromarray(img), 32)
    red = (seen[..., 0] > 200) & (seen[..., 1] < 60)
    mask = resize_bits(bits, 32)[0] == 1
    iou = (red & mask).sum() / (red | mask).sum()
    assert iou > 0.8


def test_annotation_file_errors(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, paths=np.array(["x.png"]), concept_names=np.array(["a"]))
    with pytest.raises(ProbeSetError, match="lacks concept_bits"):
        read_annotations(path)
    np.savez(path, paths=np.array(["x.png"]), concept_names=np.array(["a"] * 9),
             concept_bits=np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ProbeSetError, match="9 concept names do not fit the 8 bits"):
        read_annotations(path)
    with pytest.raises(ProbeSetError, match="does not exist"):
        read_annotations(tmp_path / "missing.npz")
    np.savez(path, paths=np.array(["x.png", "y.png"]), concept_names=np.array(["a", "b"]),
             concept_bits=np.array([[[1, 2]], [[3, 0]]], np.uint8))
    ann = read_annotations(path)
    assert ann.covers(["y.png", "z.png"]).tolist() == [True, False]
    with pytest.raises(ProbeSetError, match="have no annotation"):
        ann.masks_for(["z.png"], np.array([0]), 2)
    masks = ann.masks_for(["y.png", "x.png"], np.array([0, 1]), 2).masks(np.array([0, 1]))
    # y.png: [[3, 0]] -> concept a at (0,0), b at (0,0); x.png: [[1, 2]]
    assert masks.shape == (2, 2, 2, 2)
    assert masks[0, :, 0, 0].tolist() == [True, True]
    assert masks[1, :, 0, 0].tolist() == [True, False]


# ------------------------------------------------------------------------------- AUC
def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 12, 300).astype(float)     # many ties
        positive = rng.random(300) < 0.3
        assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores),
                                                          abs=1e-12)
        weights = rng.integers(0, 4, (3, 300)).astype(float)
        expected = [roc_auc_score(positive, scores, sample_weight=w) for w in weights]
        np.testing.assert_allclose(weighted_auc(scores, positive, weights), expected,
                                   atol=1e-12)
        fpr, tpr = roc_curve(scores, positive)
        sk_fpr, sk_tpr, _ = sk_roc_curve(positive, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)


def _index(n_ckpt: int = 6, per_ckpt: int = 40, n_labels: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = n_ckpt * per_ckpt
    return NeuronIndex(np.repeat(np.arange(n_ckpt), per_ckpt), np.tile(np.arange(2), n // 2),
                       rng.integers(0, n_labels, n))


def test_random_vectors_give_auc_near_half_within_the_interval():
    index = _index()
    vectors = np.random.default_rng(1).standard_normal((len(index.label), 30))
    queries = sample_queries(index, 60, seed=0)
    result = alignment_study(index, queries, cosine_similarity_fn(vectors), k=5, seed=0)
    summary = result.auc(n_boot=1000)
    lo, hi = summary["ci95"]
    assert lo < summary["auc"] < hi
    assert lo < 0.5 < hi
    # candidates: 5 neighbours + 1 random, never from the query's own checkpoint
    assert len(result.scores) == 6 * len(queries)
    cands = result.extra["candidates"]
    assert (index.checkpoint[cands] != index.checkpoint[result.query]).all()


def test_planted_concepts_are_found():
    """Vectors that encode the label (plus noise) must give an AUC near 1."""
    index = _index()
    rng = np.random.default_rng(2)
    vectors = np.eye(4)[index.label] * 3 + rng.standard_normal((len(index.label), 4)) * 0.5
    queries = sample_queries(index, 60, seed=0)
    summary = alignment_study(index, queries, cosine_similarity_fn(vectors)).auc(200)
    assert summary["auc"] > 0.9
    assert summary["positive_rate"] > 0.7
    assert set(summary["by_depth"]) == {0, 1}


def test_bootstrap_interval_narrows_with_more_queries():
    rng = np.random.default_rng(3)
    widths = []
    for n_q in (30, 600):
        groups = np.repeat(np.arange(n_q), 6)
        positive = rng.random(len(groups)) < 0.5
        scores = positive + rng.standard_normal(len(groups))
        lo, hi = bootstrap_auc(scores, positive, groups, 500)
        assert lo < roc_auc(scores, positive) < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_a_method_whose_neighbours_never_share_a_concept_has_no_auc(tmp_path):
    """A method with no positive candidate (the ViT demo's per-model spaces) has an undefined
    AUC: reported as n/a, not a crash, and left out of the baselines to beat."""
    from conceptevo.evaluate.alignment import StudyResult
    from conceptevo.stages.evaluation import comparison, evaluation_text, headline
    from conceptevo.viz import plot_auc_by_depth, plot_roc

    groups = np.repeat(np.arange(20), 6)
    none = StudyResult(np.linspace(0, 1, 120), np.zeros(120, bool), groups, groups % 2)
    summary = none.auc(100)
    assert summary["auc"] is None and summary["ci95"] == [None, None]
    assert summary["undefined"] == "no candidate shares its query's concept"
    assert summary["by_depth"] == {} and summary["positive_rate"] == 0.0
    assert json.loads(json.dumps(summary)) == summary          # valid JSON: no NaN
    assert np.isnan(bootstrap_auc(none.scores, none.positive, groups, 50)).all()
    rng = np.random.default_rng(0)
    positive = rng.random(120) < 0.3
    some = StudyResult(positive + rng.standard_normal(120), positive, groups, groups % 2)
    ours = dict(title="Unified space (ours)", **some.auc(100), roc={"fpr": [0, 1],
                                                                    "tpr": [0, 1]})
    alignment = {"order": ["unified", "separate"], "n_checkpoints": 2, "seeds": [0],
                 "methods": {"unified": ours,
                             "separate": dict(title="Per-model embeddings", **summary,
                                              roc={"fpr": [0, 1], "tpr": [0, 1]})}}
    for r in alignment["methods"].values():   # one seed: its figures are the spread's
        r.update(per_seed=[{"seed": 0, "auc": r["auc"], "ci95": r["ci95"]}], mean=r["auc"],
                 spread=None if r["auc"] is None else [r["auc"], r["auc"]])
    alignment.update(comparison(alignment))
    assert alignment["beats_all_baselines"] and alignment["wins"] == {"separate": 1}
    text = evaluation_text({"alignment": alignment, "settings": {"neighbours": 5,
                                                                  "min_iou": 0.04},
                            "labels": {"n_labelled": 3, "n_pool": 9},
                            "faithfulness": {"fidelity": {"seeds": [0], "spread": {
                                "top1": [0.5, 0.5], "top10": [1, 1],
                                "mean_cosine": [0.9, 0.9]}}, "reversion": []},
                            "headline": headline(alignment)})
    assert "Per-model embeddings" in text and "n/a (no candidate shares" in text
    assert headline(alignment).startswith(f"unified space AUC {ours['auc']:.3f}")
    assert plot_roc(alignment, tmp_path / "roc.png").stat().st_size > 0
    assert plot_auc_by_depth(alignment, tmp_path / "depth.png").stat().st_size > 0


# ------------------------------------------------------------------------------- stage
def test_demo_evaluation(tiny_demo):
    root, out, _ = tiny_demo
    report = json.loads((root / "evaluation" / "evaluation.json").read_text())
    methods = report["alignment"]["methods"]
    assert list(methods) == ["unified", "stimuli", "no-indirect", "correlation",
                             "correlation-probe", "matched", "separate", "random"]
    seeds = report["alignment"]["seeds"]
    assert seeds == [0, 1, 2] == [s["seed"] for s in report["faithfulness"]["fidelity"]["seeds"]]
    for r in methods.values():
        assert 0 <= r["ci95"][0] <= r["auc"] <= r["ci95"][1] <= 1
        assert r["roc"]["fpr"][0] == 0 and r["roc"]["tpr"][-1] == pytest.approx(1)
        # per seed, the first being the figures above; the mean and spread are theirs
        per_seed = r["per_seed"]
        assert [s["seed"] for s in per_seed] == seeds
        assert (per_seed[0]["auc"], per_seed[0]["ci95"]) == (r["auc"], r["ci95"])
        aucs = [s["auc"] for s in per_seed]
        assert r["mean"] == pytest.approx(np.mean(aucs))
        assert r["spread"] == [min(aucs), max(aucs)]
        assert all(s["ci95"][0] <= s["auc"] <= s["ci95"][1] for s in per_seed)
    # the seeds differ: each draws its own queries (and rebuilds the space for ours)
    assert len({s["auc"] for s in methods["unified"]["per_seed"]}) > 1
    wins = report["alignment"]["wins"]
    for m in methods:
        if m != "unified":
            brute = sum(o["ci95"][0] > b["ci95"][1] for o, b in
                        zip(methods["unified"]["per_seed"], methods[m]["per_seed"]))
            assert wins[m] == brute
    assert report["alignment"]["beats_all_baselines"] == all(
        w == len(seeds) for w in wins.values())
    assert report["environment"]["torch_threads"] >= 1
    assert (root / "evaluation" / "roc.png").stat().st_size > 1000
    assert (root / "evaluation" / "auc_by_depth.png").stat().st_size > 1000
    assert report["labels"]["n_labelled"] > 0
    assert len(report["faithfulness"]["fidelity"]["seeds"]) == 3
    assert report["faithfulness"]["reversion"], "the demo stores importance: ratios expected"
    rankers = report["faithfulness"]["rankers"]
    assert rankers["order"] == ["ours", "magnitude", "change", "weight", "taylor", "activation",
                                "random"]
    assert rankers["n_cases"] == len(rankers["cases"]) > 0
    # the re-run of the unreverted model gives the stored accuracy: same images, same model
    assert all(case["base_matches_stored"] for case in rankers["cases"])
    for name in rankers["order"]:
        per_layer = rankers["rankers"][name]["per_layer"]
        assert list(per_layer) == rankers["layers"]      # the demo's layers are all convs
        for entry in per_layer.values():
            assert len(entry["bin_drops"]) == (1 if name == "random" else rankers["bins"])
            assert entry["top_bin_drop"] == pytest.approx(entry["bin_drops"][0])
            assert entry["n"] == rankers["n_cases"]
    assert "alignment" in out["checks"]
    labels = sorted((root / "evaluation" / "labels").rglob("*.npz"))
    assert len(labels) == len(report["settings"]["checkpoints"])


def test_evaluate_cli_reuses_labels_and_is_deterministic(tiny_demo, tmp_path, capsys):
    import shutil

    from conceptevo.cli import main

    root, _, _ = tiny_demo
    copy = tmp_path / "ws"
    shutil.copytree(root, copy)
    before = {p: p.stat().st_mtime_ns for p in (copy / "evaluation" / "labels").rglob("*.npz")}
    first = json.loads((copy / "evaluation" / "evaluation.json").read_text())
    # without the report (which is reused while nothing it reads changes) it is computed
    # again; the study.json of the copy still points at the original's data: labels reused
    (copy / "evaluation" / "evaluation.json").unlink()
    assert main(["evaluate", str(copy), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    after = {p: p.stat().st_mtime_ns for p in (copy / "evaluation" / "labels").rglob("*.npz")}
    assert before == after
    for m in first["alignment"]["methods"]:
        assert again["alignment"]["methods"][m]["auc"] == first["alignment"]["methods"][m]["auc"]


def test_bootstrap_by_query_pairs_equals_weighting_every_candidate():
    """The bootstrap's pair counts by query give, for every draw, the AUC of the candidates
    weighted by their query's count (the direct computation), and each pair count is the
    brute-force count of the positive-negative pairs of two queries."""
    from conceptevo.evaluate.alignment import query_pairs, weighted_auc

    rng = np.random.default_rng(7)
    groups = np.repeat(rng.permutation(30) * 3, 6)
    positive = rng.random(len(groups)) < 0.4
    scores = np.round(positive + rng.standard_normal(len(groups)), 1)   # with ties
    ids, wins, n_pos, n_neg = query_pairs(scores, positive, groups)
    for a in range(0, 30, 7):
        for b in range(0, 30, 5):
            pa = scores[(groups == ids[a]) & positive]
            nb = scores[(groups == ids[b]) & ~positive]
            brute = sum((x > y) + 0.5 * (x == y) for x in pa for y in nb)
            assert wins[a, b] == pytest.approx(brute)
    lo, hi = bootstrap_auc(scores, positive, groups, 200, seed=3)
    draws = np.random.default_rng(3).integers(0, len(ids), (200, len(ids)))
    counts = np.stack([np.bincount(d, minlength=len(ids)) for d in draws]).astype(float)
    inverse = np.searchsorted(ids, groups)
    direct = weighted_auc(scores, positive, counts[:, inverse])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])), abs=1e-12)



def test_a_study_built_twice_with_one_seed_gives_the_same_figures(tmp_path, capsys):
    """Reproducibility from scratch: one small study (a user-style VGG's checkpoints on an
    image folder, no masks) built and evaluated in two fresh workspaces gives the same AUC on
    every seed of every method of the class-level study to 3 decimals, and the same checks.
    (Training with one seed gives the same weights: tests/test_train.py.)"""
    from study_factory import tiny_study

    from conceptevo.cli import main

    reports = []
    for config in tiny_study(tmp_path, n_checkpoints=3, workspaces=("first", "second")):
        assert main(["-q", "build", "--config", str(config)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(config), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))

    def rounded(value):
        if isinstance(value, float):
            return round(value, 3)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    def figures(report):
        out = {m: [None if s["auc"] is None else round(s["auc"], 3) for s in r["per_seed"]]
               for m, r in report["classes"]["methods"].items()}
        checks = report["checks"]
        out["checks"] = rounded(checks)
        out["fidelity"] = [round(s["mean_cosine"], 3)
                           for s in report["faithfulness"]["fidelity"]["seeds"]]
        return out

    first, second = map(figures, reports)
    assert len(first["unified"]) == 3 and first["unified"][0] is not None
    assert "recovery" in first["checks"]["permuted_copy"]
    assert first == second


def test_the_evaluation_is_reused_while_nothing_it_reads_changes(tiny_demo):
    """evaluation.json's key: the tiny demo's stored report is current; another evaluation
    setting, another importance result or a touched annotation file make it stale."""
    import dataclasses
    import os

    from conceptevo.config import load_config
    from conceptevo.stages.context import Context
    from conceptevo.stages.evaluation import annotation_path, evaluation_key
    from conceptevo.workspace import Workspace

    root, _, _ = tiny_demo
    cfg, ws = load_config(root / "study.toml"), Workspace(root)
    stored = json.loads((root / "evaluation" / "evaluation.json").read_text())["key"]
    assert evaluation_key(Context.create(cfg, ws)) == stored
    other = dataclasses.replace(cfg, evaluation=dataclasses.replace(
        cfg.evaluation, bootstrap=cfg.evaluation.bootstrap + 1))
    assert evaluation_key(Context.create(other, ws)) != stored
    masks = annotation_path(cfg)
    before = masks.stat()
    try:
        os.utime(masks, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
        assert evaluation_key(Context.create(cfg, ws)) != stored
    finally:
        os.utime(masks, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert evaluation_key(Context.create(cfg, ws)) == stored
