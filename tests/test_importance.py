"""Sensitivity, importance and reversion against naive computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyResNet, TinyVGG, randomise
from torch import nn

from conceptevo.evolution.importance import (
    ReversionPlan,
    batch_sensitivity,
    capture_outputs,
    importance,
    rank_within_layers,
    replace_channels,
    run_reversion,
)
from conceptevo.models.adapter import ModelAdapter


def naive_sensitivity(model_t, model_t2, x, c):
    """One autograd call per image and per layer, a Python loop over neurons."""
    convs_t = [m for m in model_t.modules() if isinstance(m, nn.Conv2d)]
    convs_t2 = [m for m in model_t2.modules() if isinstance(m, nn.Conv2d)]
    rows = []
    for b in range(len(x)):
        xb = x[b:b + 1]
        row = []
        for layer in range(len(convs_t)):
            got: dict = {}
            h2 = convs_t2[layer].register_forward_hook(
                lambda m, i, o, got=got: got.__setitem__("after", o.detach().clone()))
            with torch.no_grad():
                model_t2(xb)
            h2.remove()
            h = convs_t[layer].register_forward_hook(
                lambda m, i, o, got=got: (got.__setitem__("before", o), o.clone())[1])
            logit = model_t(xb)[0, c]
            h.remove()
            (grad,) = torch.autograd.grad(logit, got["before"])
            delta = got["after"] - got["before"].detach()
            for n in range(grad.shape[1]):
                row.append(float((grad[0, n] * delta[0, n]).sum()))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("make", [TinyVGG, TinyResNet], ids=["vgg", "residual"])
def test_batched_sensitivity_equals_the_naive_computation(make):
    torch.manual_seed(0)
    m_t, m_t2 = randomise(make(), 1).eval(), randomise(make(), 2).eval()
    x = torch.randn(6, 3, 16, 16)
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    ours = batch_sensitivity(a_t, a_t2, x, class_index=1).double()
    ref = naive_sensitivity(m_t, m_t2, x, 1)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_importance_is_the_fraction_of_positive_sensitivities():
    torch.manual_seed(1)
    m_t, m_t2 = randomise(TinyVGG(), 3).eval(), randomise(TinyVGG(), 4).eval()
    x = torch.randn(10, 3, 16, 16)
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    batches = [(x[:4], np.arange(4)), (x[4:], np.arange(4, 10))]
    result = importance(a_t, a_t2, batches, class_index=2)
    s = naive_sensitivity(m_t, m_t2, x, 2).numpy()
    np.testing.assert_allclose(result.score, (s > 0).mean(0))
    np.testing.assert_allclose(result.mean_sensitivity, s.mean(0), rtol=1e-5, atol=1e-7)
    for li, info in enumerate(result.layers):
        sl = slice(info.offset, info.offset + info.channels)
        order = sorted(range(info.channels),
                       key=lambda ch: (-result.score[sl][ch], -result.mean_sensitivity[sl][ch], ch))
        assert list(result.layer_ranking(li)) == order


def test_rank_within_layers_breaks_ties():
    from conceptevo.models.adapter import LayerInfo
    layers = [LayerInfo("a", "Conv2d", 3, 0, (1, 1)), LayerInfo("b", "Conv2d", 2, 3, (1, 1))]
    score = np.array([0.5, 0.5, 0.9, 0.1, 0.1])
    tie = np.array([1.0, 2.0, 0.0, 0.0, 0.0])
    assert rank_within_layers(layers, score, tie).tolist() == [2, 1, 0, 0, 1]


def test_reverting_all_channels_gives_the_earlier_layer_output_and_none_changes_nothing():
    torch.manual_seed(2)
    m_t, m_t2 = randomise(TinyResNet(), 5).eval(), randomise(TinyResNet(), 6).eval()
    x = torch.randn(5, 3, 16, 16)
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    a_t.describe(x[:1])
    a_t2.describe(x[:1])
    maps_t, _ = capture_outputs(a_t, x)
    for layer, info in enumerate(a_t.layers_):
        every = torch.arange(info.channels)
        with replace_channels(a_t2, layer, every, lambda layer=layer: maps_t[layer]):
            maps, _ = capture_outputs(a_t2, x)
        torch.testing.assert_close(maps[layer], maps_t[layer])
    _, plain = capture_outputs(a_t2, x)
    with replace_channels(a_t2, 1, torch.zeros(0, dtype=torch.long), lambda: maps_t[1]):
        _, untouched = capture_outputs(a_t2, x)
    assert torch.equal(plain, untouched)
    # the first layer fully reverted: the layer and everything after it are M^t's only if
    # the rest of the network is M^t's too; here the downstream layers still see M^t2's
    # weights, so the logits differ from both models
    with replace_channels(a_t2, 0, torch.arange(8), lambda: maps_t[0]):
        _, mixed = capture_outputs(a_t2, x)
    assert not torch.allclose(mixed, plain)


def test_reversion_plan_and_accuracy_bookkeeping():
    torch.manual_seed(3)
    m_t, m_t2 = randomise(TinyVGG(), 7).eval(), randomise(TinyVGG(), 8).eval()
    x = torch.randn(12, 3, 16, 16)
    a_t, a_t2 = ModelAdapter(m_t), ModelAdapter(m_t2)
    result = importance(a_t, a_t2, [(x, np.arange(12))], class_index=0)
    plan = ReversionPlan.build(result, bins=3, draws=2, seed=0)
    names = [(layer, name) for layer, name, _ in plan.rows]
    assert names[0] == (-1, "none")
    assert len(plan.rows) == 1 + len(result.layers) * (3 + 2)
    first = [ch for layer, name, ch in plan.rows if layer == 0 and name in "012"]
    assert sorted(np.concatenate(first).tolist()) == list(range(6))   # bins partition
    top1, top5 = run_reversion(a_t, a_t2, plan, [(x[:5], None), (x[5:], None)], 0)
    with torch.no_grad():
        pred = m_t2(x).topk(3, dim=1).indices   # 3 classes: top-5 is every class
    assert top1[0] == pytest.approx((pred[:, 0] == 0).float().mean().item())
    assert top5[0] == pytest.approx((pred == 0).any(1).float().mean().item())
    assert ((0 <= top1) & (top1 <= top5) & (top5 <= 1)).all()
