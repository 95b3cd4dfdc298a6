"""Correlation matching, the class-level labels and the seed-by-seed comparison, each against a
brute-force computation on small inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conceptevo.evaluate.matching import (
    MATCH_BONUS,
    correlation_rows,
    layer_agreement,
    match_layers,
    matched_rows,
    standardise,
)


def _layout(n_ckpt: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(checkpoint, depth) of neurons laid out checkpoint by checkpoint, layer by layer."""
    ckpt = np.concatenate([np.full(sum(sizes), c) for c in range(n_ckpt)])
    depth = np.tile(np.repeat(np.arange(len(sizes)), sizes), n_ckpt)
    return ckpt, depth


def test_standardised_rows_give_pearson_correlation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 30)) * rng.uniform(0.1, 10, (7, 1)) + rng.normal(size=(7, 1))
    unit = standardise(a)
    assert np.allclose(unit @ unit.T, np.corrcoef(a), atol=1e-5)
    rows = correlation_rows(unit, np.array([4, 1]))
    assert np.allclose(rows, np.corrcoef(a)[[4, 1]], atol=1e-5)


def test_constant_or_non_finite_rows_correlate_with_nothing():
    a = np.array([[1.0, 2, 3, 4], [5, 5, 5, 5], [1, np.inf, 2, 3], [4, 3, 2, 2]])
    unit = standardise(a)
    assert np.isfinite(unit[[0, 3]]).all() and np.isnan(unit[[1, 2]]).all()
    rows = correlation_rows(unit, np.array([0, 1]))
    assert np.isnan(rows[0, [1, 2]]).all() and np.isnan(rows[1]).all()
    assert rows[0, 3] == pytest.approx(np.corrcoef(a[0], a[3])[0, 1], abs=1e-6)


def _brute_force_matching(corr: np.ndarray) -> dict[int, int]:
    """Row -> column maximising the summed correlation, over every injective assignment."""
    n, m = corr.shape
    best, best_map = -np.inf, None
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            total = corr[np.arange(n), list(cols)].sum()
            if total > best:
                best, best_map = total, dict(enumerate(cols))
    else:
        for rows in itertools.permutations(range(n), m):
            total = corr[list(rows), np.arange(m)].sum()
            if total > best:
                best, best_map = total, {r: c for c, r in enumerate(rows)}
    return best_map


def test_one_to_one_matching_is_the_best_assignment_of_every_layer_and_pair():
    rng = np.random.default_rng(1)
    sizes = (3, 4)
    ckpt, depth = _layout(3, sizes)
    unit = standardise(rng.normal(size=(len(ckpt), 12)))
    partner = match_layers(unit, ckpt, depth)
    corr = unit.astype(np.float64) @ unit.T
    for a, b in itertools.permutations(range(3), 2):
        for d in range(len(sizes)):
            ra = np.flatnonzero((ckpt == a) & (depth == d))
            rb = np.flatnonzero((ckpt == b) & (depth == d))
            expected = _brute_force_matching(corr[np.ix_(ra, rb)])
            got = {i: int(np.flatnonzero(rb == partner[r, b])[0]) for i, r in enumerate(ra)}
            assert got == expected
    own = partner[np.arange(len(ckpt)), ckpt]
    assert (own == -1).all()
    # symmetric: a's partner in b has a as its partner in a
    for i in range(len(ckpt)):
        for c in range(3):
            if partner[i, c] >= 0:
                assert partner[partner[i, c], ckpt[i]] == i


def test_layers_of_different_sizes_leave_the_worst_fit_unmatched():
    ckpt = np.array([0, 0, 0, 1, 1])
    depth = np.zeros(5, dtype=int)
    rng = np.random.default_rng(2)
    base = rng.normal(size=(2, 20))
    acts = np.vstack([base[0], base[1], rng.normal(size=20), base[1] + 0.01, base[0] + 0.01])
    partner = match_layers(standardise(acts), ckpt, depth)
    assert partner[:, 1].tolist() == [4, 3, -1, -1, -1]
    assert partner[3:, 0].tolist() == [1, 0]


def test_matched_scores_rank_partners_first_then_by_correlation():
    rng = np.random.default_rng(3)
    ckpt, depth = _layout(3, (4,))
    unit = standardise(rng.normal(size=(len(ckpt), 15)))
    partner = match_layers(unit, ckpt, depth)
    queries = np.array([0, 5])
    rows = correlation_rows(unit, queries)
    scored = matched_rows(rows, queries, partner)
    for i, q in enumerate(queries):
        mates = {int(p) for p in partner[q] if p >= 0}
        for j in range(len(ckpt)):
            bonus = MATCH_BONUS if j in mates else 0.0
            assert scored[i, j] == pytest.approx(rows[i, j] + bonus)
        others = np.flatnonzero(ckpt != ckpt[q])
        top = others[np.argsort(-scored[i, others])[:len(mates)]]
        assert set(top.tolist()) == mates


def test_agreement_counts_nearest_neighbours_that_are_matches():
    rng = np.random.default_rng(4)
    ckpt, depth = _layout(2, (5, 6))
    acts = rng.normal(size=(len(ckpt), 40))
    unit = standardise(acts)
    partner = match_layers(unit, ckpt, depth)
    space = rng.normal(size=(len(ckpt), 3))
    got = layer_agreement(space, partner, ckpt, depth, [(0, 1)])
    cos = (space / np.linalg.norm(space, axis=1, keepdims=True)) @ \
        (space / np.linalg.norm(space, axis=1, keepdims=True)).T
    for d in (0, 1):
        hits = trials = 0
        for src, dst in ((0, 1), (1, 0)):
            for i in np.flatnonzero((ckpt == src) & (depth == d)):
                cand = np.flatnonzero((ckpt == dst) & (depth == d))
                nearest = cand[np.argmax(cos[i, cand])]
                hits += int(nearest == partner[i, dst])
                trials += 1
        assert got[d]["agreement"] == pytest.approx(hits / trials)
        assert got[d]["n"] == trials
        assert got[d]["chance"] == pytest.approx(1 / np.sum((ckpt == 0) & (depth == d)))


def test_a_space_that_follows_the_function_agrees_with_the_matching_on_a_permuted_copy():
    rng = np.random.default_rng(5)
    ckpt, depth = _layout(2, (8, 8))
    acts = rng.normal(size=(16, 60))
    perm = np.concatenate([rng.permutation(8), 8 + rng.permutation(8)])
    all_acts = np.vstack([acts, acts[perm] + 1e-3 * rng.normal(size=(16, 60))])
    partner = match_layers(standardise(all_acts), ckpt, depth)
    assert (partner[16 + np.arange(16), 0] == perm).all()
    good = layer_agreement(all_acts, partner, ckpt, depth, [(0, 1)])
    assert all(v["agreement"] == 1.0 and v["above_chance"] for v in good.values())
    shuffled = layer_agreement(rng.normal(size=(32, 60)), partner, ckpt, depth, [(0, 1)])
    assert not any(v["above_chance"] for v in shuffled.values())


def test_class_labels_follow_the_share_of_stimuli():
    from conceptevo.evaluate.neurons import class_labels

    class Stim:
        def __init__(self, stimuli, dead):
            self.stimuli, self.dead = np.asarray(stimuli), np.asarray(dead)

    image_labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])          # class 2 has one image
    stim = Stim([[0, 1, 2, 4], [4, 5, 0, 1], [7, 0, 4, 5], [0, 1, 2, 3], [4, 5, 6, 0]],
                [False, False, False, True, False])
    got = class_labels(stim, image_labels, 0.75)
    expected = []
    for row, dead in zip(stim.stimuli, stim.dead):
        label = -1
        for c in range(3):
            most = min(np.sum(image_labels == c), len(row))
            n = np.sum(image_labels[row] == c)
            if n > 0 and n >= 0.75 * most and not dead and label == -1:
                label = c
        expected.append(label)
    assert got.tolist() == expected == [0, -1, 2, -1, 1]


def test_ours_wins_a_seed_only_with_a_disjoint_interval_against_every_baseline():
    from conceptevo.stages.evaluation import comparison, headline

    def method(title, rows):
        aucs = [r[0] for r in rows if r[0] is not None]
        return {"title": title, "auc": rows[0][0], "ci95": rows[0][1],
                "mean": float(np.mean(aucs)), "spread": [min(aucs), max(aucs)],
                "per_seed": [{"seed": s, "auc": a, "ci95": ci}
                             for s, (a, ci) in enumerate(rows)]}

    alignment = {"seeds": [0, 1], "methods": {
        "unified": method("Ours", [(0.9, [0.88, 0.92]), (0.9, [0.88, 0.92])]),
        "correlation": method("Corr", [(0.85, [0.83, 0.87]), (0.87, [0.85, 0.885])]),
        "separate": method("Sep", [(None, [None, None]), (0.5, [0.48, 0.52])])}}
    alignment["methods"]["separate"]["mean"] = 0.5
    got = comparison(alignment)
    assert got == {"wins": {"correlation": 1, "separate": 2}, "beats_on_seed": [True, False],
                   "beats_all_baselines": False}
    alignment.update(got)
    text = headline(alignment)
    assert "on 1 of 2" in text and "against Corr" in text and "Sep" not in text.split("against")[1]
    alignment["methods"]["correlation"]["per_seed"][1]["ci95"] = [0.85, 0.879]
    assert comparison(alignment)["beats_all_baselines"]


def test_fidelity_seeds_is_read_as_seeds():
    from conceptevo.config import EvaluationConfig, section_from_dict

    assert section_from_dict(EvaluationConfig, {"fidelity_seeds": 5}, "evaluation").seeds == 5
    assert section_from_dict(EvaluationConfig, {"seeds": 2}, "evaluation").seeds == 2
