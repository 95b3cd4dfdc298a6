"""The simple rankers of the reversion check against naive computations on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyResNet, TinyVGG, randomise
from torch import nn

from conceptevo.evaluate.rankers import ranker_table, rankers_text
from conceptevo.evolution.importance import importance
from conceptevo.evolution.rankers import (
    RANKERS,
    bin_profile,
    channel_parameters,
    image_ranker_scores,
    ranker_ranks,
    ranker_sets,
    weight_change,
)
from conceptevo.models.adapter import LayerInfo, ModelAdapter


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def naive_image_rankers(model_t, model_t2, x, c):
    """One image at a time, one layer at a time, a Python loop over channels:
    |dF| summed over positions, |sum g' * A'| and sum |A'|, averaged over the images."""
    layers_t, layers_t2 = convs(model_t), convs(model_t2)
    change, taylor, act = [], [], []
    for layer in range(len(layers_t)):
        ch_sum = np.zeros(layers_t[layer].out_channels)
        ta_sum, ac_sum = np.zeros_like(ch_sum), np.zeros_like(ch_sum)
        for b in range(len(x)):
            xb = x[b:b + 1]
            got: dict = {}
            h = layers_t[layer].register_forward_hook(
                lambda m, i, o, got=got: got.__setitem__("before", o.detach().clone()))
            with torch.no_grad():
                model_t(xb)
            h.remove()
            h = layers_t2[layer].register_forward_hook(
                lambda m, i, o, got=got: (got.__setitem__("after", o), o.clone())[1])
            logit = model_t2(xb)[0, c]
            h.remove()
            (grad,) = torch.autograd.grad(logit, got["after"])
            after = got["after"].detach()
            for n in range(len(ch_sum)):
                ch_sum[n] += float((after[0, n] - got["before"][0, n]).abs().sum())
                ta_sum[n] += abs(float((grad[0, n] * after[0, n]).sum()))
                ac_sum[n] += float(after[0, n].abs().sum())
        change += list(ch_sum / len(x))
        taylor += list(ta_sum / len(x))
        act += list(ac_sum / len(x))
    return {"change": np.array(change), "taylor": np.array(taylor),
            "activation": np.array(act)}


def naive_weight_change(model_t, model_t2):
    """Per channel: sqrt(sum of the squared changes of its weight row and its bias)."""
    out = []
    for m_t, m_t2 in zip(convs(model_t), convs(model_t2)):
        w, w2 = m_t.weight.detach().double(), m_t2.weight.detach().double()
        for n in range(m_t.out_channels):
            sq = float(((w2[n] - w[n]) ** 2).sum())
            if m_t.bias is not None:
                sq += float((m_t2.bias[n].detach().double() - m_t.bias[n].detach().double()) ** 2)
            out.append(np.sqrt(sq))
    return np.array(out)


@pytest.mark.parametrize("make", [TinyVGG, TinyResNet], ids=["vgg", "residual"])
def test_image_rankers_equal_the_naive_computation(make):
    torch.manual_seed(0)
    m_t, m_t2 = randomise(make(), 5).eval(), randomise(make(), 6).eval()
    x = torch.randn(7, 3, 16, 16)
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    batches = [(x[:3], np.arange(3)), (x[3:], np.arange(3, 7))]
    ours = image_ranker_scores(a_t, a_t2, batches, class_index=2)
    ref = naive_image_rankers(m_t, m_t2, x, 2)
    assert a_t.layer_names == [n for n, m in m_t.named_modules() if isinstance(m, nn.Conv2d)]
    for key in ("change", "taylor", "activation"):
        assert ours[key].dtype == np.float64 and ours[key].shape == ref[key].shape
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # taylor is a different ranking from activation and change: the test can tell them apart
    assert not np.allclose(ours["taylor"], ours["activation"])


def test_weight_change_is_the_norm_of_each_channels_rows():
    m_t, m_t2 = randomise(TinyResNet(), 1), randomise(TinyResNet(), 2)   # convs without bias
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    for a in (a_t, a_t2):
        a.describe(torch.randn(1, 3, 16, 16))
    got, skipped = weight_change(a_t, a_t2)
    np.testing.assert_allclose(got, naive_weight_change(m_t, m_t2), rtol=1e-12)
    assert skipped == {}
    m_t, m_t2 = randomise(TinyVGG(), 1), randomise(TinyVGG(), 2)         # with bias
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    for a in (a_t, a_t2):
        a.describe(torch.randn(1, 3, 16, 16))
    np.testing.assert_allclose(weight_change(a_t, a_t2)[0], naive_weight_change(m_t, m_t2),
                               rtol=1e-12)
    assert channel_parameters(m_t.features[0], 6) == ["weight", "bias"]


def test_weight_change_skips_a_layer_without_channel_rows():
    """A probed ReLU has no parameter: NaN there, a reason, and no rank or bin for it."""
    m_t, m_t2 = randomise(TinyVGG(), 1), randomise(TinyVGG(), 2)
    layers = ["features.0", "features.1"]
    a_t, a_t2 = ModelAdapter(m_t, layers=layers), ModelAdapter(m_t2, layers=layers)
    for a in (a_t, a_t2):
        a.describe(torch.randn(1, 3, 16, 16))
    got, skipped = weight_change(a_t, a_t2)
    assert np.isfinite(got[:6]).all() and np.isnan(got[6:]).all()
    assert list(skipped) == ["features.1"] and "no parameter" in skipped["features.1"]
    ranks = ranker_ranks(a_t.layers_, {"weight": got})
    assert (ranks["weight"][6:] == -1).all()
    assert sorted(ranks["weight"][:6]) == list(range(6))
    assert {li for li, *_ in ranker_sets(a_t.layers_, ranks, 3)} == {0}


def test_ranks_and_bins_match_a_manual_sort():
    layers = [LayerInfo("a", "Conv2d", 5, 0, (1, 1)), LayerInfo("b", "Conv2d", 4, 5, (1, 1))]
    score = np.array([0.2, 0.9, 0.2, 0.5, 0.1, 3.0, 1.0, 2.0, 1.0])
    ranks = ranker_ranks(layers, {"s": score})["s"]
    # larger first; ties by the smaller channel
    assert ranks.tolist() == [2, 0, 3, 1, 4, 0, 2, 1, 3]
    sets = ranker_sets(layers, {"s": ranks}, bins=2)
    assert [(li, b, ch.tolist()) for li, _, b, ch in sets] == [
        (0, 0, [0, 1, 3]), (0, 1, [2, 4]), (1, 0, [0, 2]), (1, 1, [1, 3])]


@pytest.mark.parametrize("drops,monotone", [
    ([0.3, 0.2, 0.1], True), ([0.3, 0.3, 0.1], True), ([0.3, 0.1, 0.2], False),
    ([0.1, 0.1, 0.1], False), ([0.1, 0.2, 0.3], False), ([0.2], False)])
def test_bin_profile(drops, monotone):
    assert bin_profile(np.array(drops)) is monotone


def test_magnitude_ranker_is_the_mean_sensitivity_ranking():
    """The magnitude variant ranks by E[s], which can differ from the fraction of positives."""
    torch.manual_seed(3)
    m_t, m_t2 = randomise(TinyVGG(), 7).eval(), randomise(TinyVGG(), 8).eval()
    x = torch.randn(9, 3, 16, 16)
    result = importance(ModelAdapter(m_t), ModelAdapter(m_t2), [(x, np.arange(9))], 0)
    ranks = ranker_ranks(result.layers, {"magnitude": result.mean_sensitivity})["magnitude"]
    for info in result.layers:
        sl = slice(info.offset, info.offset + info.channels)
        order = np.argsort(-result.mean_sensitivity[sl], kind="stable")
        assert np.argsort(ranks[sl]).tolist() == order.tolist()


def test_ranker_table_aggregates_the_cases():
    layers = ["l1", "l2"]

    def case(ours, mag):
        drops = {"ours": {"l1": np.array(ours), "l2": np.array(ours)},
                 "random": {"l1": np.array([0.1]), "l2": np.array([0.1])}}
        for name in RANKERS:
            drops[name] = {"l1": np.array(mag)}     # every simple ranker skips l2
        return {"run": "r", "class": 0, "from": 1, "to": 2, "accuracy": 0.9,
                "base_matches_stored": True, "drops": drops}

    table = ranker_table([case([0.5, 0.2], [0.4, 0.3]), case([0.3, 0.1], [0.3, 0.4])],
                         layers, 2, {"weight on l2": "why"})
    ours, mag = table["rankers"]["ours"], table["rankers"]["magnitude"]
    assert ours["per_layer"]["l1"]["bin_drops"] == pytest.approx([0.4, 0.15])
    assert ours["per_layer"]["l1"]["monotone_share"] == 1.0
    assert mag["per_layer"]["l1"]["monotone_share"] == 0.5
    assert list(mag["per_layer"]) == ["l1"]
    # ours 0.5 > 0.4 (a win), 0.3 == 0.3 (half)
    assert mag["per_layer"]["l1"]["ours_top_bin_higher"] == pytest.approx(0.75)
    assert table["order"] == ["ours", *RANKERS, "random"] and table["n_cases"] == 2
    assert "drops" not in table["cases"][0]
    text = "\n".join(rankers_text(table))
    assert "Weight-change norm" in text and "skipped weight on l2: why" in text
    assert "skipped" in rankers_text(None)[0]


def test_token_layer_rankers_equal_the_naive_computation():
    """A vision transformer's MLP Linear ([B, tokens, C]): sums over every token, and the
    weight change of the Linear's rows."""
    import torchvision

    def vit(seed):
        torch.manual_seed(seed)
        m = torchvision.models.VisionTransformer(16, 8, 2, 2, 16, 24, num_classes=3)
        with torch.no_grad():
            m.heads.head.weight.normal_(0, 0.3)
            m.class_token.normal_(0, 0.5)
        return m.double().eval()

    name = "encoder.layers.encoder_layer_1.mlp.0"
    m_t, m_t2 = vit(0), vit(1)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    a_t, a_t2 = ModelAdapter(m_t, layers=[name]), ModelAdapter(m_t2, layers=[name])
    ours = image_ranker_scores(a_t, a_t2, [(x, np.arange(4))], class_index=1)
    lin_t, lin_t2 = m_t.get_submodule(name), m_t2.get_submodule(name)
    ref = {k: np.zeros(24) for k in ("change", "taylor", "activation")}
    for b in range(len(x)):
        got: dict = {}
        h = lin_t.register_forward_hook(lambda m, i, o, got=got: got.__setitem__("t", o.detach()))
        with torch.no_grad():
            m_t(x[b:b + 1])
        h.remove()
        h = lin_t2.register_forward_hook(lambda m, i, o, got=got: got.__setitem__("t2", o))
        logit = m_t2(x[b:b + 1])[0, 1]
        h.remove()
        (g,) = torch.autograd.grad(logit, got["t2"])
        a2 = got["t2"].detach()
        for n in range(24):
            ref["change"][n] += float((a2[0, :, n] - got["t"][0, :, n]).abs().sum()) / len(x)
            ref["taylor"][n] += abs(float((g[0, :, n] * a2[0, :, n]).sum())) / len(x)
            ref["activation"][n] += float(a2[0, :, n].abs().sum()) / len(x)
    for key, value in ref.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-9, err_msg=key)
    w, skipped = weight_change(a_t, a_t2)
    rows = torch.cat([lin_t2.weight - lin_t.weight, (lin_t2.bias - lin_t.bias)[:, None]], 1)
    np.testing.assert_allclose(w, rows.detach().norm(dim=1).numpy(), rtol=1e-12)
    assert skipped == {}


def test_importance_ranked_by_the_mean_sensitivity():
    """[importance] ranking = "mean": the rank orders by the mean sensitivity, ties by the
    fraction, then the channel; the scores themselves are the same."""
    torch.manual_seed(4)
    m_t, m_t2 = randomise(TinyVGG(), 9).eval(), randomise(TinyVGG(), 10).eval()
    x = torch.randn(8, 3, 16, 16)
    args = (ModelAdapter(m_t), ModelAdapter(m_t2), [(x, np.arange(8))], 1)
    paper, mean = importance(*args), importance(*args, ranking="mean")
    np.testing.assert_array_equal(paper.score, mean.score)
    assert mean.meta == {"ranking": "mean"} and paper.meta == {"ranking": "fraction"}
    for li, info in enumerate(mean.layers):
        sl = slice(info.offset, info.offset + info.channels)
        order = sorted(range(info.channels), key=lambda ch: (
            -mean.mean_sensitivity[sl][ch], -mean.score[sl][ch], ch))
        assert list(mean.layer_ranking(li)) == order
    assert not np.array_equal(paper.rank, mean.rank)
    with pytest.raises(ValueError, match="ranking must be one of"):
        importance(*args, ranking="median")


def test_the_ranking_setting_is_checked():
    from conceptevo.config import ImportanceConfig
    from conceptevo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[importance\] ranking must be one of"):
        ImportanceConfig(ranking="median").validate("importance")
    ImportanceConfig(ranking="mean").validate("importance")
