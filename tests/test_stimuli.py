"""The stimulus engine against a brute-force computation (all activations, full sort)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyResNet, TinyVGG, randomise
from torch import nn

from conceptevo.errors import NonFiniteActivationError
from conceptevo.models.adapter import ModelAdapter
from conceptevo.stimuli import StimulusAccumulator, compute_stimuli, merge_shards, ranked_topk


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


# ------------------------------------------------------------ recorded activations (spilled)
def _synthetic(n_img=41, n_neu=13, seed=0):
    from conceptevo.models.adapter import LayerInfo

    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n_img, n_neu, generator=g) * 10.0 ** torch.randint(-6, 6, (n_img, n_neu),
                                                                           generator=g)
    acts[:, 2] = 0.0                       # a neuron that is 0 everywhere: scale 1
    acts[:, 4] = -torch.rand(n_img, generator=g)  # negative only: scale = max |a|
    acts[3, 5] = -torch.inf                # non-finite activations (already -inf, as
    acts[7:9, 6] = -torch.inf              # count_nonfinite leaves them)
    acts[:, 7] = -torch.inf                # a neuron with no finite activation at all
    layers = [LayerInfo("a", "Conv2d", 8, 0, (3, 3)), LayerInfo("b", "Conv2d", n_neu - 8, 8,
                                                                (2, 2))]
    where = torch.randint(0, 4, (n_img, n_neu), generator=g)
    return layers, acts.float(), where


def _numpy_scaled(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stored form written out in numpy: scale = max finite |a| per neuron (1 where 0),
    float16(a / scale), non-finite as -inf."""
    magnitude = np.abs(acts)
    scale = np.where(np.isfinite(magnitude), magnitude, 0).max(0).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1))
    return (acts / scale).astype(np.float16).T.copy(), scale


def _feed(acc, acts, where, order, batch):
    for s in range(0, len(order), batch):
        sel = torch.as_tensor(order[s:s + batch])
        acc.update(acts[sel].clone(), where[sel], sel)
    return acc


@pytest.mark.parametrize("batch,shuffle,read_bytes", [(1, False, 64), (5, True, 200),
                                                      (16, False, 1 << 20), (41, True, 52)])
def test_spilled_activations_are_bit_identical_to_numpy(monkeypatch, tmp_path, batch, shuffle,
                                                        read_bytes):
    import conceptevo.spill as spill

    monkeypatch.setattr(spill, "SPILL_READ_BYTES", read_bytes)  # many read-back blocks
    layers, acts, where = _synthetic()
    order = np.random.default_rng(batch).permutation(len(acts)) if shuffle \
        else np.arange(len(acts))
    acc = _feed(StimulusAccumulator(layers, len(acts), 4, 3, record_activations=True,
                                    spill_dir=tmp_path), acts, where, order, batch)
    r = acc.result()
    want, scale = _numpy_scaled(acts.numpy())
    assert r.activations.dtype == np.float16 and r.activations.shape == want.shape
    assert np.array_equal(r.activations.view(np.uint16), want.view(np.uint16))  # bit for bit
    assert np.array_equal(r.activation_scale, scale)
    assert np.isneginf(r.activations[5, 3]) and np.isneginf(r.activations[7]).all()
    assert acc.spill.closed and list(tmp_path.iterdir()) == []
    again = acc.result()  # a second call returns the same matrix (the file is gone)
    assert again.activations is r.activations


def test_spilled_shards_merge_and_pickle_to_the_single_pass_bit_for_bit(tmp_path):
    import pickle

    layers, acts, where = _synthetic(seed=3)
    n = len(acts)
    single = _feed(StimulusAccumulator(layers, n, 4, 3, record_activations=True), acts, where,
                   np.arange(n), 4).result()
    parts = []
    for block in (np.arange(0, 12), np.arange(12, 28), np.arange(28, n)):
        acc = _feed(StimulusAccumulator(layers, n, 4, 3, record_batches=True,
                                        record_activations=True, spill_dir=tmp_path),
                    acts, where, block, 4)
        parts.append(pickle.loads(pickle.dumps(acc)))  # as torchrun's gather sends it
        acc.close()
    merged = merge_shards(parts).result()
    for name in ("activations", "activation_scale", *single.ARRAYS):
        assert np.array_equal(getattr(merged, name), getattr(single, name)), name
    assert all(p.spill.closed for p in parts)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("failure", [_Boom, KeyboardInterrupt, NonFiniteActivationError])
def test_the_temporary_file_is_removed_on_error_and_interrupt(monkeypatch, tmp_path, failure):
    import tempfile as tempfile_module

    import conceptevo.spill as spill

    opened = []
    real = tempfile_module.TemporaryFile

    def recording(*args, **kwargs):
        f = real(*args, **kwargs)
        opened.append((f, kwargs.get("dir")))
        return f

    monkeypatch.setattr(spill.tempfile, "TemporaryFile", recording)
    torch.manual_seed(0)
    model = randomise(TinyVGG(), 1).eval()
    if failure is NonFiniteActivationError:
        with torch.no_grad():
            model.features[3].weight[1, 0, 0, 0] = float("nan")
    x = torch.randn(12, 3, 16, 16)
    spill = tmp_path / "spill"
    spill.mkdir()

    def batches():
        for s in range(0, 12, 4):
            if s == 8 and failure is not NonFiniteActivationError:
                assert opened and not opened[0][0].closed  # the file is open mid-pass
                raise failure()
            yield x[s:s + 4], torch.arange(s, s + 4)

    with pytest.raises(failure):
        compute_stimuli(ModelAdapter(model), batches(), 12, k_stimuli=2, k_responsive=2,
                        record_activations=True, spill_dir=spill)
    if failure is not NonFiniteActivationError:
        assert len(opened) == 1
    assert all(f.closed for f, _ in opened) and all(d == str(spill) for _, d in opened)
    assert list(spill.iterdir()) == []
    # success: the result is built, then the file is closed
    opened.clear()
    model = randomise(TinyVGG(), 1).eval()
    acc = compute_stimuli(ModelAdapter(model), [(x, torch.arange(12))], 12, k_stimuli=2,
                          k_responsive=2, record_activations=True, spill_dir=spill)
    assert len(opened) == 1 and not opened[0][0].closed
    acc.result()
    assert opened[0][0].closed and list(spill.iterdir()) == []


def test_the_temporary_file_lives_in_the_chosen_directory(tmp_path):
    layers, acts, where = _synthetic()
    acc = _feed(StimulusAccumulator(layers, len(acts), 4, 3, record_activations=True,
                                    spill_dir=tmp_path), acts, where, np.arange(20), 5)
    link = f"/proc/self/fd/{acc.spill._file.fileno()}"
    if not Path(link).exists():
        pytest.skip("no /proc here")
    assert os.readlink(link).startswith(str(tmp_path))
    acc.close()
    assert acc.spill.closed
