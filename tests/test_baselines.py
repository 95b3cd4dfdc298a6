"""The diagnosis baselines: metric-only rules, linear CKA, WeightWatcher alpha, the chooser."""

from __future__ import annotations

import io
import logging
import math
import sys
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from torch import nn

from conceptevo.errors import ConfigError
from conceptevo.evolution.baselines import (
    METRIC_SCORES,
    WW_ALPHA_RANGE,
    MetricThresholds,
    choose_threshold,
    cka_rows,
    first_crossing,
    layer_cka,
    linear_cka,
    metric_rules,
    metric_score_table,
    score_series,
    weightwatcher_alpha,
)
from conceptevo.models.adapter import LayerInfo
from conceptevo.schema import check_field
from conceptevo.stimuli import StimuliResult


def runs_of(**series) -> list[dict]:
    """Rows ``{"epoch": i, key: series[key][i]}`` (a None value: the key is left out)."""
    n = len(next(iter(series.values())))
    return [{"epoch": i, **{k: v[i] for k, v in series.items() if v[i] is not None}}
            for i in range(n)]


def fired(flags, rule: str) -> int | None:
    epochs = [f.epoch for f in flags if f.rule == rule]
    assert len(epochs) <= 1, "a rule fires once"
    return epochs[0] if epochs else None


# --------------------------------------------------------------------------- metric rules

def test_chance_level_fires_after_initialisation_only():
    rows = runs_of(val_acc=[0.10, 0.40, 0.18, 0.15])
    assert fired(metric_rules(rows, n_classes=10), "chance-level") == 2  # 0.18 <= 0.1 + 0.1
    assert fired(metric_rules(rows), "chance-level") is None  # no n_classes: not evaluated
    stuck = runs_of(val_acc=[0.10, 0.11, 0.12])
    assert fired(metric_rules(stuck, n_classes=10), "chance-level") == 1  # never epoch 0
    later = MetricThresholds(chance_after=2)
    assert fired(metric_rules(stuck, later, n_classes=10), "chance-level") == 2
    healthy = runs_of(val_acc=[0.10, 0.45, 0.70, 0.80])
    assert fired(metric_rules(healthy, n_classes=10), "chance-level") is None
    flag = metric_rules(rows, n_classes=10)[0]
    assert flag.evidence == {"val_acc": 0.18, "chance": 0.1} and "chance" in flag.message


def test_train_val_gap():
    rows = runs_of(train_acc=[0.1, 0.5, 0.8, 0.95, 0.99], val_acc=[0.1, 0.45, 0.7, 0.75, 0.7])
    flags = metric_rules(rows)
    assert fired(flags, "train-val-gap") == 3  # gaps 0, .05, .10, .20
    assert fired(metric_rules(rows, MetricThresholds(gap=0.3)), "train-val-gap") is None
    # a row missing either accuracy is skipped, not an error
    gappy = runs_of(train_acc=[0.1, 0.9, None, 0.9], val_acc=[0.1, None, 0.5, 0.5])
    assert fired(metric_rules(gappy), "train-val-gap") == 3


def test_plateau_is_early_stopping():
    loss = [2.0, 1.5, 1.2, 1.25, 1.3, 1.1, 1.15, 1.2, 1.3]
    rows = runs_of(val_loss=loss)
    assert fired(metric_rules(rows), "plateau") == 4           # 1.2 at 2, no better at 3, 4
    assert fired(metric_rules(rows, MetricThresholds(patience=3)), "plateau") == 8
    assert fired(metric_rules(rows, MetricThresholds(patience=5)), "plateau") is None
    # min_delta: an improvement must beat the best by more than min_delta, and a smaller
    # decrease does not become the new best (Keras / Lightning semantics)
    slow = runs_of(val_loss=[1.0, 0.95, 0.91, 0.86])
    assert fired(metric_rules(slow, MetricThresholds(min_delta=0.1)), "plateau") == 2
    assert fired(metric_rules(slow, MetricThresholds(min_delta=0.04)), "plateau") is None
    # 0.95 and 0.91 do not beat 1.0 by 0.1, so the best stays 1.0 and 0.86 beats it by more
    # than 0.1: an improvement (had 0.91 become the best, the wait would reach 3 at epoch 3)
    assert fired(metric_rules(slow, MetricThresholds(min_delta=0.1, patience=3)),
                 "plateau") is None
    # a NaN loss is no improvement; rows without a validation loss do not count
    nan = runs_of(val_loss=[1.0, 0.5, float("nan"), None, float("nan")])
    assert fired(metric_rules(nan), "plateau") == 4
    assert fired(metric_rules(runs_of(val_loss=[2.0, 1.0, 0.5, 0.4])), "plateau") is None


def test_loss_rise():
    rows = runs_of(val_loss=[2.0, 1.0, 1.1, 1.24, 1.3, 0.5])
    assert fired(metric_rules(rows), "loss-rise") == 4         # 1.3 >= 1.25 * 1.0
    flag = [f for f in metric_rules(rows) if f.rule == "loss-rise"][0]
    assert flag.evidence["rise"] == pytest.approx(0.3)
    assert fired(metric_rules(rows, MetricThresholds(loss_rise=0.5)), "loss-rise") is None
    diverged = runs_of(val_loss=[2.0, 1.0, float("inf")])
    flag = [f for f in metric_rules(diverged) if f.rule == "loss-rise"][0]
    assert flag.epoch == 2 and math.isinf(flag.evidence["rise"]) and "diverged" in flag.message


def test_healthy_run_fires_nothing_and_order_does_not_matter():
    rows = runs_of(train_acc=[0.1, 0.5, 0.7, 0.8], val_acc=[0.1, 0.48, 0.66, 0.74],
                   val_loss=[2.3, 1.4, 1.0, 0.8])
    assert metric_rules(rows, n_classes=10) == []
    bad = runs_of(train_acc=[0.1, 0.9, 0.99, 1.0], val_acc=[0.1, 0.6, 0.6, 0.55],
                  val_loss=[2.3, 1.0, 1.2, 1.4])
    assert metric_rules(bad[::-1], n_classes=10) == metric_rules(bad, n_classes=10)
    assert metric_rules([]) == []


def brute_force(rows: list[dict], th: MetricThresholds, n_classes: int) -> dict:
    """Each rule's first epoch, straight from its definition (min_delta 0), no shared code."""
    val = [r["val_acc"] for r in rows]
    train = [r["train_acc"] for r in rows]
    loss = [r["val_loss"] for r in rows]
    out = {}
    out["chance-level"] = next((i for i in range(len(rows)) if i >= th.chance_after
                                and val[i] <= 1 / n_classes + th.chance_margin), None)
    out["train-val-gap"] = next((i for i in range(len(rows)) if train[i] - val[i] >= th.gap),
                                None)
    # wait = epochs since the first epoch holding the lowest loss so far
    out["plateau"] = next((i for i in range(len(rows))
                           if i - int(np.argmin(loss[:i + 1])) >= th.patience), None)
    out["loss-rise"] = next((i for i in range(len(rows))
                             if loss[i] >= (1 + th.loss_rise) * min(loss[:i + 1])), None)
    return out


def test_metric_rules_match_brute_force_on_random_runs():
    rng = np.random.default_rng(0)
    th = MetricThresholds(chance_margin=0.05, gap=0.1, patience=2, loss_rise=0.2)
    seen = {rule: 0 for rule in ("chance-level", "train-val-gap", "plateau", "loss-rise")}
    for _ in range(300):
        n = int(rng.integers(2, 12))
        # values on a grid of 1/8, 1/16: exact in binary, so "=" ties are exact too
        val = rng.integers(0, 9, n) / 8
        train = np.clip(val + rng.integers(-1, 4, n) / 16, 0, 1)
        loss = rng.integers(1, 9, n) / 4
        rows = runs_of(train_acc=list(train), val_acc=list(val), val_loss=list(loss))
        expected = brute_force(rows, th, n_classes=8)
        flags = metric_rules(rows, th, n_classes=8)
        for rule, epoch in expected.items():
            assert fired(flags, rule) == epoch, (rule, rows)
            seen[rule] += epoch is not None
        table = metric_score_table(rows)
        # the score table is what the rules threshold
        assert fired(flags, "plateau") == first_crossing(
            score_series(table, "epochs_since_best_val_loss"), th.patience, "above")
        assert fired(flags, "loss-rise") == first_crossing(
            score_series(table, "val_loss_rise"), th.loss_rise, "above")
        assert fired(flags, "train-val-gap") in (0, first_crossing(
            score_series(table, "gap"), th.gap, "above"))
    assert all(count >= 10 for count in seen.values()), seen  # each rule fired and did not


def test_metric_score_table():
    rows = runs_of(train_acc=[0.1, 0.9, None, 0.95], val_acc=[0.1, 0.7, 0.72, 0.7],
                   val_loss=[2.0, 1.0, 1.5, None])
    table = metric_score_table(rows[::-1])
    assert table["epoch"] == [0, 1, 2, 3]
    assert table["val_acc"] == [0.1, 0.7, 0.72, 0.7]
    assert table["gap"][2] is None  # where train_acc is missing
    assert [table["gap"][i] for i in (0, 1, 3)] == pytest.approx([0.0, 0.2, 0.25])
    assert table["epochs_since_best_val_loss"] == [0.0, 0.0, 1.0, None]
    assert table["val_loss_rise"] == [0.0, 0.0, 0.5, None]
    assert set(METRIC_SCORES) <= set(table)
    assert score_series(table, "gap")[1] == (1, pytest.approx(0.2))


def test_thresholds_are_bounded():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(MetricThresholds)}
    with pytest.raises(ConfigError, match="chance_after"):
        check_field(fields["chance_after"], 0, "chance_after")
    with pytest.raises(ConfigError, match="loss_rise"):
        check_field(fields["loss_rise"], 0.0, "loss_rise")
    check_field(fields["min_delta"], 0.5, "min_delta")


# --------------------------------------------------------------------------- linear CKA

def cka_brute(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC form: tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), K = X X^T, L = Y Y^T."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    return np.trace(k @ h @ l_ @ h) / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h))


@pytest.mark.parametrize("n,p,q", [(40, 5, 7), (6, 30, 20), (10, 1, 3), (25, 25, 25)])
def test_linear_cka_matches_hsic(n, p, q):
    # (40, 5, 7) takes the feature-space path, (6, 30, 20) the Gram-matrix one
    rng = np.random.default_rng(n + p + q)
    x = rng.normal(size=(n, p)) + 3.0
    y = x[:, :1] @ rng.normal(size=(1, q)) + 0.5 * rng.normal(size=(n, q))
    for a, b in ((x, y), (x, rng.normal(size=(n, q)))):
        assert linear_cka(a, b) == pytest.approx(cka_brute(a, b), rel=1e-10)
        assert linear_cka(b, a) == pytest.approx(linear_cka(a, b), rel=1e-12)
        assert 0 <= linear_cka(a, b) <= 1 + 1e-12


def test_linear_cka_invariances():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 6))
    base = linear_cka(x, y)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)        # orthogonal
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-10)  # isotropic scale
    assert linear_cka(x + 4.0, y - 2.0) == pytest.approx(base, rel=1e-10)   # centred inside
    assert linear_cka(x, x) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(x, x @ q * 3) == pytest.approx(1.0, rel=1e-10)
    # not invariant to a general linear map (a non-isotropic scaling)
    assert linear_cka(x * np.arange(1, 9), x) < 0.99
    # float16 / float32 input is computed in float64
    assert linear_cka(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(base, 1e-6)


def test_linear_cka_constant_side_is_nan():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 4))
    # (the float64 mean of 7 copies of 0.7 is not 0.7: centring alone leaves ~1e-16)
    assert math.isnan(linear_cka(np.full((7, 3), 0.7), x))
    assert math.isnan(linear_cka(x, np.zeros((7, 2))))
    assert math.isnan(linear_cka(x[:1], x[:1]))   # one input: every column is constant
    # one constant column only: it carries nothing, exactly
    with_const = np.hstack([x, np.full((7, 1), 0.7)])
    assert linear_cka(with_const, x) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="arrays"):
        linear_cka(x, x[:5])


def stimuli_result(raw: np.ndarray, layers: list[tuple[str, int]], meta: dict | None = None,
                   record: bool = True) -> StimuliResult:
    """A StimuliResult whose recorded activations are ``raw`` [n_neurons, n_images] (NaN/inf:
    non-finite, stored as -inf), scaled per neuron as the stimulus pass stores them."""
    n, images = raw.shape
    infos, offset = [], 0
    for name, channels in layers:
        infos.append(LayerInfo(name, "Conv2d", channels, offset, (1, 1)))
        offset += channels
    assert offset == n
    finite = np.where(np.isfinite(raw), np.abs(raw), 0).max(1)
    scale = np.where(finite > 0, finite, 1).astype(np.float32)
    act = np.where(np.isfinite(raw), raw / scale[:, None], -np.inf).astype(np.float16)
    k = 2
    return StimuliResult(infos, np.zeros((n, k), np.int64), np.zeros((n, k), np.float32),
                         np.zeros((n, k, 2), np.int16), np.zeros((images, 1), np.int64),
                         np.zeros((images, 1), np.float32), np.ones(n, np.float32),
                         np.ones(n, np.float32), np.ones(n, np.float32),
                         np.zeros(n, np.int64), meta=dict(meta or {}),
                         activations=act if record else None,
                         activation_scale=scale if record else None)


def stored(result: StimuliResult, sl: slice) -> np.ndarray:
    """What the pass kept of a layer, by hand: float16 x scale, non-finite as 0, [images, c]."""
    act = result.activations[sl].astype(np.float64) * result.activation_scale[sl, None]
    return np.where(np.isfinite(act), act, 0).T


def test_layer_cka_on_a_hand_built_result():
    rng = np.random.default_rng(3)
    images = 30
    a = rng.normal(size=(7, images)) * np.array([1, 2, 3, 50, 60, 70, 80])[:, None]
    b = a + rng.normal(size=a.shape) * 5
    b[2, 4] = np.nan   # non-finite activations count as 0
    a[5, 0] = np.inf
    layers = [("conv1", 3), ("conv2", 4)]
    prev = stimuli_result(a, layers, {"run": "r", "epoch": 1})
    cur = stimuli_result(b, layers, {"run": "r", "epoch": 2})
    got = layer_cka(prev, cur)
    assert list(got) == ["conv1", "conv2"]
    for name, sl in (("conv1", slice(0, 3)), ("conv2", slice(3, 7))):
        assert got[name] == pytest.approx(cka_brute(stored(prev, sl), stored(cur, sl)),
                                          rel=1e-9)
        # the float16 storage is close to the raw activations (non-finite as 0)
        raw_a, raw_b = (np.where(np.isfinite(m[sl]), m[sl], 0).T for m in (a, b))
        assert got[name] == pytest.approx(cka_brute(raw_a, raw_b), abs=2e-3)
    assert layer_cka(prev, prev) == pytest.approx({"conv1": 1.0, "conv2": 1.0})
    # layers are matched by name; a layer only one side has is left out
    other = stimuli_result(b[3:], [("conv2", 4)])
    assert list(layer_cka(prev, other)) == ["conv2"]
    assert layer_cka(prev, other)["conv2"] == pytest.approx(got["conv2"])


def test_layer_cka_needs_recorded_activations():
    raw = np.random.default_rng(4).normal(size=(3, 10))
    ok = stimuli_result(raw, [("l", 3)], {"run": "r", "epoch": 1})
    missing = stimuli_result(raw, [("l", 3)], {"run": "lr-high", "epoch": 7}, record=False)
    with pytest.raises(ValueError, match=r"run 'lr-high' at epoch 7.*record"):
        layer_cka(ok, missing)
    with pytest.raises(ValueError, match=r"epoch 3"):
        cka_rows([(3, missing), (4, ok)])
    with pytest.raises(ValueError, match="probe images"):
        layer_cka(ok, stimuli_result(raw[:, :5], [("l", 3)]))


def test_cka_rows():
    rng = np.random.default_rng(5)
    images = 20
    frozen = rng.normal(size=(2, images))
    snaps = {}
    for epoch in range(3):
        moving = rng.normal(size=(3, images))
        dead = np.zeros((2, images)) if epoch == 2 else rng.normal(size=(2, images))
        snaps[epoch] = stimuli_result(np.vstack([frozen, moving, dead]),
                                      [("frozen", 2), ("moving", 3), ("dead", 2)],
                                      {"run": "r", "epoch": epoch})
    rows = cka_rows([(2, snaps[2]), (0, snaps[0]), (1, snaps[1])])
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, (e0, e1) in zip(rows, [(0, 1), (1, 2)]):
        per = row["per_layer"]
        assert per == {k: pytest.approx(v, nan_ok=True)
                       for k, v in layer_cka(snaps[e0], snaps[e1]).items()}
        assert per["frozen"] == pytest.approx(1.0)
        assert per["moving"] < 0.9
        finite = [v for v in per.values() if math.isfinite(v)]
        assert row["cka_min"] == pytest.approx(min(finite))
        assert row["cka_mean"] == pytest.approx(np.mean(finite))
    assert math.isnan(rows[1]["per_layer"]["dead"])   # a dead layer: nan, left out of min
    assert cka_rows([(0, snaps[0])]) == []
    assert score_series(rows, "cka_min") == [(1, rows[0]["cka_min"]), (2, rows[1]["cka_min"])]


# --------------------------------------------------------------------------- WeightWatcher

class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.hidden = nn.Linear(32, 64)
        self.wide = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.wide(torch.relu(self.hidden(self.features(x))))))


def test_weightwatcher_alpha_on_a_tiny_cnn():
    pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = TinyCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    filters = list(warnings.filters)
    out = io.StringIO()
    with redirect_stdout(out):
        got = weightwatcher_alpha(model)
    assert out.getvalue() == ""                         # its prints are silenced
    assert root.handlers == handlers and root.level == level  # its basicConfig undone
    assert warnings.filters == filters                  # its global "ignore" undone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    names = ["features.0", "features.2", "hidden", "wide", "head"]
    assert list(got["alpha"]) == names and got["n_layers"] == 5 and got["failed"] == []
    assert list(got["layer_id"]) == names
    alphas = np.array(list(got["alpha"].values()))
    assert np.isfinite(alphas).all() and (alphas > 1).all()
    assert got["mean_alpha"] == pytest.approx(alphas.mean())
    lo, hi = WW_ALPHA_RANGE
    assert got["frac_outside"] == pytest.approx(np.mean((alphas < lo) | (alphas > hi)))
    assert isinstance(got["version"], str)


def test_weightwatcher_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "weightwatcher", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r"conceptevo\[zoo\].*weightwatcher"):
        weightwatcher_alpha(nn.Linear(64, 64))


# --------------------------------------------------------------------------- thresholds

def test_first_crossing():
    scores = [(3, 0.9), (0, 5.0), (1, 0.2), (2, None), (4, float("nan")), (5, 0.95)]
    assert first_crossing(scores, 0.9, "above") == 3      # epoch 0 never counts
    assert first_crossing(scores, 0.91, "above") == 5
    assert first_crossing(scores, 1.0, "above") is None
    assert first_crossing(scores, 0.2, "below") == 1
    assert first_crossing(scores, 0.1, "below") is None
    assert first_crossing([(2, float("inf"))], 1e9, "above") == 2
    assert first_crossing([], 0.0, "above") is None
    with pytest.raises(ValueError, match="direction"):
        first_crossing(scores, 0.5, "up")


def test_choose_threshold_separable():
    runs = {"healthy": [(0, 0.9), (1, 0.1), (2, 0.3), (3, 0.2)],  # epoch 0 (0.9) ignored
            "overfit": [(1, 0.1), (2, 0.5), (3, 0.8)],
            "lr-high": [(1, 0.9), (2, 0.2)],
            "frozen": [(1, 0.0), (2, None)]}
    threshold, summary = choose_threshold(runs, ["healthy"], "above")
    # 0.4 and 0.65 both catch overfit and lr-high: the tie goes to the larger margin
    assert threshold == pytest.approx(0.65)
    assert summary == {"healthy": None, "overfit": 3, "lr-high": 1, "frozen": None}
    # mirrored: direction "below" on negated scores
    neg = {k: [(e, None if s is None else -s) for e, s in v] for k, v in runs.items()}
    threshold, summary = choose_threshold(neg, ["healthy"], "below")
    assert threshold == pytest.approx(-0.65)
    assert summary == {"healthy": None, "overfit": 3, "lr-high": 1, "frozen": None}


def test_choose_threshold_not_separable():
    runs = {"healthy": [(1, 0.5), (2, 0.95)], "a": [(1, 0.9)], "b": [(1, 0.6), (2, 0.2)]}
    assert choose_threshold(runs, ["healthy"], "above") == (
        None, {"healthy": None, "a": None, "b": None})
    # only some separable: the most caught with no false alarm
    runs["c"] = [(1, 0.99), (2, 1.2)]
    threshold, summary = choose_threshold(runs, ["healthy"], "above")
    assert threshold == pytest.approx(1.2)  # the extreme: farthest from the healthy 0.95
    assert summary == {"healthy": None, "a": None, "b": None, "c": 2}
    # two healthy runs bound it from both sides for "below"
    below = {"h1": [(1, 0.5)], "h2": [(1, 0.3)], "x": [(1, 0.1)], "y": [(1, 0.2)]}
    threshold, summary = choose_threshold(below, ["h1", "h2"], "below")
    assert threshold == pytest.approx(0.25) and summary["x"] == summary["y"] == 1
    assert choose_threshold({"h": [(0, 1.0)]}, ["h"], "above") == (None, {"h": None})
    with pytest.raises(ValueError, match="healthy"):
        choose_threshold(below, ["nope"], "below")


def test_choose_threshold_with_infinite_scores():
    runs = {"healthy": [(1, 0.0), (2, 0.1)], "diverged": [(1, 0.2), (2, float("inf"))],
            "overfit": [(1, 0.05), (2, 0.3)]}
    threshold, summary = choose_threshold(runs, ["healthy"], "above")
    # 0.15 and 0.25 catch both: the larger margin wins, and catches the divergence later
    assert threshold == pytest.approx(0.25) and summary == {
        "healthy": None, "diverged": 2, "overfit": 2}
    only_inf = {"healthy": [(1, 0.1)], "diverged": [(1, float("inf"))]}
    threshold, summary = choose_threshold(only_inf, ["healthy"], "above")
    assert threshold == math.inf and summary["diverged"] == 1


def caught(runs: dict, healthy: list[str], t: float, direction: str) -> int:
    """Faulty runs flagged at ``t``, -1 when a healthy one is."""
    hits = {k: first_crossing(v, t, direction) for k, v in runs.items()}
    if any(hits[h] is not None for h in healthy):
        return -1
    return sum(hits[k] is not None for k in runs if k not in healthy)


def test_choose_threshold_is_optimal_brute_force():
    """Against every threshold on a fine grid: nothing beats the chosen one."""
    rng = np.random.default_rng(6)
    grid = np.linspace(-0.05, 1.05, 111)  # scores on multiples of 0.1: grid hits between
    for _ in range(40):
        runs = {f"r{i}": [(e, float(rng.integers(0, 11)) / 10) for e in range(4)]
                for i in range(5)}
        healthy = ["r0", "r1"]
        for direction in ("above", "below"):
            threshold, summary = choose_threshold(runs, healthy, direction)
            counts = [caught(runs, healthy, t, direction) for t in grid]
            best = max(counts)
            if best <= 0:
                assert threshold is None and set(summary.values()) == {None}
                continue
            assert caught(runs, healthy, threshold, direction) == best
            assert summary == {k: first_crossing(v, threshold, direction)
                               for k, v in runs.items()}
            # the most conservative among the equally good: no observed score lies between
            # it and the farthest equally good threshold
            better = [t for t, c in zip(grid, counts) if c == best]
            values = {s for v in runs.values() for e, s in v if e >= 1}
            if direction == "above":
                assert not [v for v in values if threshold < v < max(better) - 1e-9]
            else:
                assert not [v for v in values if min(better) + 1e-9 < v < threshold]
