"""The issue zoo's pieces: its training regimes, the planted shortcut and the new rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conceptevo.data.concept_world import BACKGROUNDS, ConceptWorld
from conceptevo.errors import ConfigError
from conceptevo.evolution.diagnosis import apply_rules, layer_metrics
from conceptevo.evolution.shortcut import prediction_rates, shortcut_candidates
from conceptevo.models.adapter import LayerInfo
from conceptevo.train import (
    REGIMES,
    config_dict,
    freeze_parameters,
    noisy_labels,
    train,
    train_config,
)


def rows(**series):
    n = len(next(iter(series.values())))
    return [{"epoch": i, **{k: v[i] for k, v in series.items()}} for i in range(n)]


def quiet(n):
    return {"dead": [0] * n, "degenerate": [0] * n, "distinct_stimuli": [.15] * n}


# ------------------------------------------------------------------------- the rules
def test_slow_learning_fires_when_concepts_settle_before_the_probe_is_fitted():
    slow = rows(**quiet(5), turnover=[None, .86, .32, .28, .2], probe_acc=[.08, .16, .25, .33, .4])
    flags = apply_rules(slow)
    assert [(f.rule, f.epoch) for f in flags] == [("slow-learning", 2)]
    assert flags[0].evidence["turnover"] == pytest.approx(.32)
    # a healthy run settles once it fits the probe set; an overfitting one fits it quickly
    assert apply_rules(rows(**quiet(4), turnover=[None, .97, .84, .17],
                            probe_acc=[.08, .51, .55, .93])) == []
    assert apply_rules(rows(**quiet(4), turnover=[None, .96, .27, .14],
                            probe_acc=[.08, .63, .66, .65])) == []
    # a collapsed run is stuck too, but the collapse says why
    collapsed = rows(dead=[0, .05, .05], degenerate=[0, .45, .45], distinct_stimuli=[.7, .5, .5],
                     turnover=[None, .9, .3], probe_acc=[.08, .14, .15])
    assert [f.rule for f in apply_rules(collapsed)] == ["collapse"]


def test_label_noise_fires_when_the_probe_is_fitted_better_than_the_training_labels():
    noisy = rows(**quiet(4), train_acc=[.08, .45, .6, .68], probe_acc=[.08, .6, .8, .86])
    flags = apply_rules(noisy)
    assert [(f.rule, f.epoch) for f in flags] == [("label-noise", 2)]
    assert "80%" in flags[0].message and "60%" in flags[0].message
    # a healthy run: the gap of augmentation and dropout (a few points), and the lag of the
    # first epoch's running training accuracy, are not noise
    assert apply_rules(rows(**quiet(4), train_acc=[.08, .33, .58, .9],
                            probe_acc=[.08, .55, .6, .93])) == []
    # nor a run near chance on the probe (the gap means nothing there)
    assert apply_rules(rows(**quiet(3), train_acc=[.0, .05, .1],
                            probe_acc=[.08, .3, .35])) == []


def layered(turnovers: dict[str, list], dead: dict[str, list] | None = None) -> list[dict]:
    n = len(next(iter(turnovers.values())))
    out = rows(**quiet(n))
    for i, row in enumerate(out):
        row["layers"] = {name: {"turnover": values[i],
                                "dead": (dead or {}).get(name, [0] * n)[i]}
                         for name, values in turnovers.items()}
    return out


def test_frozen_and_dead_layers_are_named():
    frozen = layered({"conv1": [None, 0.0, 0.0, 0.0], "conv2": [None, .8, .5, .3],
                      "conv3": [None, .9, .6, .3]})
    flags = apply_rules(frozen)
    assert [(f.rule, f.epoch, f.evidence["layer"]) for f in flags] == \
        [("frozen-layer", 1, "conv1")]
    assert "conv1" in flags[0].message
    # every layer settling at the end of training is not a frozen layer
    settled = layered({"conv1": [None, .5, .1, .005], "conv2": [None, .8, .2, .004]})
    assert apply_rules(settled) == []
    dead = layered({"conv1": [None, .5, .4], "conv2": [None, .6, .5]},
                   dead={"conv2": [0, .2, 1.0]})
    assert [(f.rule, f.epoch, f.evidence["layer"]) for f in apply_rules(dead)] == \
        [("dead-layer", 2, "conv2")]
    # a layer dead from the initialisation on did not die in training: not this rule's
    born_dead = layered({"conv1": [None, .5], "conv2": [None, .6]}, dead={"conv2": [1.0, 1.0]})
    assert apply_rules(born_dead) == []


def test_layer_metrics_against_a_loop():
    from conceptevo.stimuli import StimuliResult

    rng = np.random.default_rng(0)
    layers = [LayerInfo("a", "Conv2d", 3, 0, (4, 4)), LayerInfo("b", "Conv2d", 2, 3, (2, 2))]

    def result(stim, act_max):
        n = len(stim)
        return StimuliResult(layers, stim, np.ones(stim.shape, np.float32),
                             np.zeros(stim.shape + (2,), np.int16),
                             np.zeros((10, 1), np.int64), np.zeros((10, 1), np.float32),
                             act_max, np.ones(n, np.float32), np.ones(n, np.float32),
                             np.zeros(n, np.int64))

    stim = np.stack([rng.choice(10, 4, replace=False) for _ in range(5)])
    prev = np.stack([rng.choice(10, 4, replace=False) for _ in range(5)])
    act = np.array([1, 0, 1, 1, 0], np.float32)
    out = layer_metrics(result(stim, act), result(prev, act))
    for info in layers:
        jac = [len(set(stim[n]) & set(prev[n])) / len(set(stim[n]) | set(prev[n]))
               for n in range(info.offset, info.offset + info.channels)]
        assert out[info.name]["turnover"] == pytest.approx(1 - np.mean(jac))
        assert out[info.name]["dead"] == pytest.approx(
            np.mean(act[info.offset:info.offset + info.channels] <= 0))
    assert layer_metrics(result(stim, act))["a"]["turnover"] is None


# ---------------------------------------------------------------------- the shortcut
def test_prediction_rates_against_a_loop():
    rng = np.random.default_rng(2)
    n, k, c = 60, 4, 5
    labels, predicted = rng.integers(0, k, n), rng.integers(-1, k, n)
    presence = rng.random((n, c)) < 0.4
    known = rng.random(n) < 0.9
    presence[:, 0] = True                            # a concept every image shows
    presence[:, 1] = False                           # and one no image shows
    rate_in, rate_out = prediction_rates(predicted, labels, presence, k, known)
    assert np.isnan(rate_out[:, 0]).all() and np.isnan(rate_in[:, 1]).all()
    for cls in range(k):
        for j in range(c):
            use = [i for i in range(n) if known[i] and predicted[i] >= 0 and labels[i] != cls]
            with_j = [i for i in use if presence[i, j]]
            without = [i for i in use if not presence[i, j]]
            assert rate_in[cls, j] == pytest.approx(
                np.mean([predicted[i] == cls for i in with_j]) if with_j else np.nan,
                nan_ok=True)
            assert rate_out[cls, j] == pytest.approx(
                np.mean([predicted[i] == cls for i in without]) if without else np.nan,
                nan_ok=True)


def planted(rate: float, seed: int = 0):
    """A probe of 3 classes x 40 images where ``rate`` of the other classes' images showing
    "bg_noise" are predicted class 0; every image is otherwise predicted right."""
    from conceptevo.evaluate.tags import ImageConcepts

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 40)
    presence = np.zeros((120, 3), bool)          # disc (class 0's), square (1's), bg_noise
    presence[:, 0] = labels == 0
    presence[:, 1] = labels == 1
    presence[:, 2] = rng.random(120) < 1 / 3
    predicted = labels.copy()
    fooled = (labels != 0) & presence[:, 2] & (rng.random(120) < rate)
    predicted[fooled] = 0
    concepts = ImageConcepts(["disc", "square", "bg_noise"], presence, "test")
    own = np.array([[True, False, False], [False, True, False], [False, False, False]])
    return labels, predicted, concepts, own


def test_shortcut_candidates_name_the_class_and_the_planted_concept():
    labels, predicted, concepts, own = planted(0.8)
    noise_of_2 = np.flatnonzero(concepts.presence[:, 2] & (labels == 2))
    stimuli = np.array([noise_of_2[:5],        # a noise detector
                        np.arange(5),          # class 0's images: a disc detector
                        noise_of_2[5:10]])     # another noise detector
    found = shortcut_candidates(predicted, labels, concepts, own, stimuli,
                                class_names=["00_a", "01_b", "02_c"])
    assert [(f["class"], f["concept"], f["class_name"]) for f in found] == \
        [(0, "bg_noise", "00_a")]
    assert found[0]["rate_out"] == 0 and found[0]["rate_in"] > .6
    assert found[0]["neurons"] == [0, 2]
    # an honest model, or one fooled rarely, has none
    assert shortcut_candidates(*planted(0.0)[:2], concepts, own) == []
    assert shortcut_candidates(*planted(0.2)[:2], concepts, own) == []
    # a collapsed model calling most images class 0 is not relying on a concept
    assert shortcut_candidates(np.zeros(120, np.int64), labels, concepts, own) == []
    # no predictions recorded: nothing to say
    assert shortcut_candidates(None, labels, concepts, own) == []


def test_the_shortcut_rule_fires_once_per_class_and_says_why():
    labels, predicted, concepts, own = planted(0.8)
    cand = shortcut_candidates(predicted, labels, concepts, own, class_names=["00_a", "01_b",
                                                                              "02_c"])
    run = rows(**quiet(4))
    run[2]["shortcuts"] = cand
    run[3]["shortcuts"] = cand
    flags = apply_rules(run)
    assert [(f.rule, f.epoch, f.evidence["class"]) for f in flags] == [("shortcut", 2, 0)]
    assert "class 00_a relies on 'noise background'" in flags[0].message


def test_a_collapsed_model_has_no_shortcut_on_a_concept_every_image_shows():
    """A model that calls every image class 0 relies on no concept: the one every image shows
    ("scene") has no image without it to compare with, and the others are no different."""
    from conceptevo.evaluate.tags import ImageConcepts

    labels, _, concepts, own = planted(0.8)
    presence = np.column_stack([concepts.presence, np.ones(len(labels), bool)])
    scene = ImageConcepts([*concepts.concepts, "scene"], presence, "test")
    own = np.column_stack([own, np.zeros(3, bool)])
    collapsed = np.zeros_like(labels)
    assert shortcut_candidates(collapsed, labels, scene, own) == []
    fooled = shortcut_candidates(planted(0.8)[1], labels, scene, own)
    assert [(c["class"], c["concept"]) for c in fooled] == [(0, "bg_noise")]


# ------------------------------------------------------------------- the regimes
def test_the_shortcut_world_plants_its_cue_and_nothing_else():
    plain = ConceptWorld(seed=0).generate(300, split="val")
    cue = ConceptWorld(seed=0, shortcut_class=3).generate(300, split="val")
    noise = 1 << (BACKGROUNDS.index("bg_noise") + 16)
    np.testing.assert_array_equal(cue.labels, plain.labels)
    # every image of class 3 has the noise background, no other image has it
    has_noise = (cue.concept_bits & noise).reshape(len(cue.labels), -1).any(1)
    np.testing.assert_array_equal(has_noise, cue.labels == 3)
    # the parts are the ordinary world's
    np.testing.assert_array_equal(cue.parts["part"], plain.parts["part"])
    assert "shortcut_class" not in ConceptWorld(seed=0).get_params()
    assert ConceptWorld(seed=0, shortcut_class=3).get_params()["shortcut_class"] == 3
    with pytest.raises(ConfigError, match="shortcut_class"):
        ConceptWorld(shortcut_class=12)
    with pytest.raises(ConfigError, match="shortcut_background"):
        ConceptWorld(shortcut_class=1, shortcut_background="bg_stars")


def test_noisy_labels_flip_the_stated_share_to_other_classes():
    labels = np.repeat(np.arange(5), 40)
    noisy = noisy_labels(labels, 0.3, seed=4)
    changed = noisy != labels
    assert changed.sum() == 60                      # 30% of 200, all to another class
    assert set(np.unique(noisy)) == set(range(5))
    np.testing.assert_array_equal(noisy, noisy_labels(labels, 0.3, seed=4))
    assert (noisy_labels(labels, 0.3, seed=5) != noisy).any()
    np.testing.assert_array_equal(noisy_labels(labels, 0.0, seed=4), labels)


def test_freeze_keeps_a_layer_at_its_initialisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    first = model[0].weight.detach().clone()
    last = model[4].weight.detach().clone()
    images = np.random.default_rng(0).integers(0, 255, (24, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(24) % 3
    cfg = train_config("healthy", epochs=2, batch_size=8, translate=1, freeze=["0"],
                       weight_decay=0.1)
    train(model, images, labels, images, labels, cfg)
    assert torch.equal(model[0].weight, first)       # no step, no weight decay
    assert not torch.equal(model[4].weight, last)
    with pytest.raises(ConfigError, match="matches no parameter"):
        freeze_parameters(model, ["features.conv9"])
    assert freeze_parameters(model, ["4"]) == ["4.weight", "4.bias"]


def test_zoo_regimes_and_the_identity_of_older_runs():
    for regime in ("lr-high", "lr-too-low", "label-noise", "frozen-layer", "shortcut"):
        assert regime in REGIMES
    assert train_config("lr-high").lr == pytest.approx(3 * train_config("healthy").lr, rel=.2)
    assert train_config("label-noise").label_noise == 0.3
    # the settings added for the zoo leave the identity of the runs trained before unchanged
    key = config_dict(train_config("healthy"))
    assert "label_noise" not in key and "freeze" not in key
    assert config_dict(train_config("label-noise"))["label_noise"] == 0.3
    with pytest.raises(ConfigError, match="label_noise"):
        train_config("healthy", label_noise=1.0)
    with pytest.raises(ConfigError, match="freeze"):
        train_config("healthy", freeze="features")
