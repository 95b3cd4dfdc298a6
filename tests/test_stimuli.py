"""The stimulus engine against a brute-force computation (all activations, full sort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TinyResNet, TinyVGG, randomise
from torch import nn

from conceptevo.errors import NonFiniteActivationError
from conceptevo.models.adapter import ModelAdapter
from conceptevo.stimuli import StimulusAccumulator, compute_stimuli, ranked_topk


def brute_force(model: nn.Module, x: torch.Tensor, k_s: int, k_i: int):
    """Materialise every activation with plain hooks (no ConceptEvo code) and sort."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    maps: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(convs))}
    handles = [m.register_forward_hook(lambda mod, inp, out, i=i: maps[i].append(out.clone()))
               for i, m in enumerate(convs)]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    full = [maps[i][0] for i in range(len(convs))]                     # [n, C, H, W] each
    acts = torch.cat([f.flatten(2).amax(2) for f in full], 1).numpy()  # [n_images, N]
    n_img, n_neu = acts.shape
    stimuli = np.empty((n_neu, k_s), dtype=np.int64)
    for j in range(n_neu):  # loop written plainly on purpose: this is the reference
        order = sorted(range(n_img), key=lambda i: (-acts[i, j], i))
        stimuli[j] = order[:k_s]
    responsive = np.empty((n_img, k_i), dtype=np.int64)
    for i in range(n_img):
        order = sorted(range(n_neu), key=lambda j: (-acts[i, j], j))
        responsive[i] = order[:k_i]
    locs = []
    for f in full:
        c = f.shape[1]
        flat = f.flatten(2)                                               # [n, C, HW]
        for ch in range(c):
            locs.append(flat[:, ch].argmax(1))
    argmax = torch.stack(locs, 1).numpy()                                 # [n_images, N]
    widths = np.concatenate([[f.shape[3]] * f.shape[1] for f in full])
    return acts, stimuli, responsive, argmax, widths


def run_engine(model, x, k_s, k_i, batch_size, order=None, record_activations=True):
    adapter = ModelAdapter(model)
    ids = torch.arange(len(x)) if order is None else torch.as_tensor(order)

    def batches():
        for s in range(0, len(x), batch_size):
            sel = ids[s:s + batch_size]
            yield x[sel], sel

    return compute_stimuli(adapter, batches(), len(x), k_stimuli=k_s, k_responsive=k_i,
                           record_activations=record_activations).result()


@pytest.mark.parametrize("make", [TinyVGG, TinyResNet], ids=["vgg", "residual"])
def test_engine_matches_brute_force_for_any_batch_size(make):
    torch.manual_seed(1)
    model = randomise(make(), 3).eval()
    x = torch.randn(37, 3, 16, 16)
    k_s, k_i = 5, 7
    acts, stimuli, responsive, argmax, widths = brute_force(model, x, k_s, k_i)
    results = [run_engine(model, x, k_s, k_i, bs) for bs in (1, 4, 16, 37)]
    # shuffled arrival order (as in a sharded pass) gives the same result too
    results.append(run_engine(model, x, k_s, k_i, 8, order=np.random.default_rng(0)
                              .permutation(37)))
    for r in results:
        np.testing.assert_array_equal(r.stimuli, stimuli)
        np.testing.assert_array_equal(r.responsive, responsive)
        np.testing.assert_allclose(r.stimuli_act, np.take_along_axis(acts.T, stimuli, 1),
                                   rtol=1e-5)
        np.testing.assert_allclose(r.responsive_act, np.take_along_axis(acts, responsive, 1),
                                   rtol=1e-5)
        flat = np.take_along_axis(argmax.T, stimuli, 1)
        np.testing.assert_array_equal(r.stimuli_loc[..., 0], flat // widths[:, None])
        np.testing.assert_array_equal(r.stimuli_loc[..., 1], flat % widths[:, None])
        np.testing.assert_allclose(r.act_max, acts.max(0), rtol=1e-5)
        np.testing.assert_allclose(r.act_mean, acts.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.frac_positive, (acts > 0).mean(0))
        # every activation, stored as float16 relative to the neuron's largest |a|
        scale = np.abs(acts).max(0)
        scale = np.where(scale > 0, scale, 1)
        np.testing.assert_allclose(r.activation_scale, scale, rtol=1e-5)
        assert np.abs(r.activation_matrix() - acts.T).max(1) / scale == pytest.approx(
            0, abs=1e-3)
    # identical rankings whatever the batch size (activation values may differ in the last
    # bits because convolution kernels depend on the batch size)
    for r in results[1:]:
        for name in ("stimuli", "stimuli_loc", "responsive", "n_nonfinite"):
            np.testing.assert_array_equal(getattr(r, name), getattr(results[0], name))


def test_ties_and_dead_neurons_break_by_smallest_id():
    model = TinyVGG().eval()
    with torch.no_grad():  # channel 0 of the first conv outputs a constant: every image ties
        model.features[0].weight[0].zero_()
        model.features[0].bias[0] = -1.0
    x = torch.randn(11, 3, 16, 16)
    for bs in (2, 3, 11):
        r = run_engine(model, x, 4, 3, bs)
        np.testing.assert_array_equal(r.stimuli[0], [0, 1, 2, 3])
        assert r.dead[0] and r.act_max[0] == -1.0 and r.frac_positive[0] == 0


def test_ranked_topk_against_lexsort():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (50, 30), generator=g).float()   # many ties
    ids = torch.randperm(30, generator=g).expand(50, 30)
    top_v, top_ids, cols = ranked_topk(values, ids, 6)
    for r in range(50):
        ref = sorted(range(30), key=lambda c: (-values[r, c].item(), ids[r, c].item()))[:6]
        assert cols[r].tolist() == ref
    assert torch.equal(top_ids, ids.gather(1, cols))
    assert torch.equal(top_v, values.gather(1, cols))


def test_merging_shards_is_exact():
    torch.manual_seed(0)
    model = randomise(TinyResNet(), 5).eval()
    x = torch.randn(30, 3, 16, 16)
    whole = run_engine(model, x, 4, 4, 30)
    adapter = ModelAdapter(model)
    adapter.describe(x[:1])
    parts = []
    for shard in (torch.arange(0, 30, 2), torch.arange(1, 30, 2)):
        acc = StimulusAccumulator(adapter.layers_, 30, 4, 4, record_activations=True)
        compute_stimuli(adapter, [(x[shard], shard)], 30, k_stimuli=4, k_responsive=4,
                        accumulator=acc)
        parts.append(acc)
    parts[0].merge(parts[1])
    merged = parts[0].result()
    for name in (*whole.ARRAYS, "activations", "activation_scale"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-5,
                                   atol=1e-6)


def test_nan_weights_are_reported_with_checkpoint_and_layer():
    model = TinyVGG().eval()
    with torch.no_grad():
        model.features[3].weight[1, 0, 0, 0] = float("nan")
    adapter = ModelAdapter(model)
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(NonFiniteActivationError, match=r"epoch 7.*features\.3"):
        compute_stimuli(adapter, [(x, torch.arange(4))], 4, k_stimuli=2, k_responsive=2,
                        context="run 'a' epoch 7")
    # recorded instead: NaN ranks below every finite value and is counted per neuron
    acc = compute_stimuli(adapter, [(x, torch.arange(4))], 4, k_stimuli=2, k_responsive=2,
                          on_nonfinite="record")
    r = acc.result()
    sl = r.layer_slice("features.3")
    assert r.n_nonfinite[sl][1] == 4 and r.n_nonfinite[: sl.start].sum() == 0
    assert np.isfinite(r.stimuli_act[: sl.start]).all()


def test_channels_last_layout_gives_the_same_stimuli():
    torch.manual_seed(2)
    model = randomise(TinyResNet(), 4).eval()
    x = torch.randn(23, 3, 16, 16)
    plain = run_engine(model, x, 4, 6, 8)
    model = model.to(memory_format=torch.channels_last)
    adapter = ModelAdapter(model)
    batches = [(x[s:s + 8], torch.arange(s, min(s + 8, 23))) for s in range(0, 23, 8)]
    fast = compute_stimuli(adapter, batches, 23, k_stimuli=4, k_responsive=6,
                           channels_last=True).result()
    for name in ("stimuli", "stimuli_loc", "responsive"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(plain, name))
    np.testing.assert_allclose(fast.stimuli_act, plain.stimuli_act, rtol=1e-5)
