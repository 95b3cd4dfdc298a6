"""The annotation-free checks: function-identical permuted and rescaled copies of a checkpoint,
and `conceptevo evaluate` on a study without masks."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import TinyResNet, TinyVGG, randomise, write_study
from torch import nn

from conceptevo.cli import main
from conceptevo.evaluate.invariance import (
    channel_flows,
    nearest_recovery,
    permuted_copy,
    rescaled_copy,
    rescaling_blocker,
    same_function,
)
from conceptevo.workspace import Workspace, atomic

CONVS = ["features.0", "features.3", "features.7"]


def conv_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each probed convolution's output, by a plain hook (cloned: an in-place ReLU follows)."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if name in CONVS:
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.__setitem__(name, out.detach().clone())))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


def trained_like(seed: int) -> nn.Module:
    model = randomise(TinyVGG(), seed).eval()
    bn = model.features[4]
    with torch.no_grad():  # batch-norm statistics away from their defaults
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
    return model


def test_the_flows_of_a_chain_and_where_they_stop():
    flows, why = channel_flows(TinyVGG(), CONVS)
    assert why is None
    assert [(f.conv, f.norm, f.consumer) for f in flows] == [
        ("features.0", None, "features.3"), ("features.3", "features.4", "features.7"),
        ("features.7", None, "head")]
    assert flows[2].between == ["features.8", "pool"]
    flows, why = channel_flows(TinyVGG(), ["head"])
    assert flows == [] and "not a plain (ungrouped) Conv2d" in why
    odd = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Conv2d(4, 2, 1))
    assert "LayerNorm" in channel_flows(odd, ["0"])[1]
    misread = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(7, 2))
    assert "reads 7 inputs, not the 4 channels" in channel_flows(misread, ["0"])[1]


@pytest.mark.parametrize("seed", range(3))
def test_a_permuted_copy_computes_the_same_with_its_channels_moved(seed):
    model = trained_like(seed)
    flows, _ = channel_flows(model, CONVS)
    twin, perms = permuted_copy(model, flows, seed)
    x = torch.randn(8, 3, 16, 16)
    assert same_function(model, twin, x) is not None
    a, b = conv_outputs(model, x), conv_outputs(twin, x)
    for name in CONVS:
        assert sorted(perms[name]) == list(range(a[name].shape[1]))
        assert not np.array_equal(perms[name], np.arange(len(perms[name])))
        for j, i in enumerate(perms[name]):  # channel j of the copy is channel perm[j]
            torch.testing.assert_close(b[name][:, j], a[name][:, i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_a_rescaled_copy_computes_the_same_with_its_channels_scaled(seed):
    model = trained_like(seed)
    flows, _ = channel_flows(model, CONVS)
    assert rescaling_blocker(model, flows) is None
    twin, scales = rescaled_copy(model, flows, seed)
    x = torch.randn(8, 3, 16, 16)
    assert same_function(model, twin, x, tol=1e-5) is not None
    a, b = conv_outputs(model, x), conv_outputs(twin, x)
    for name in CONVS:
        s = scales[name]
        assert (s >= np.exp(-1)).all() and (s <= np.exp(1)).all() and s.std() > 0
        for c in range(len(s)):
            torch.testing.assert_close(b[name][:, c], a[name][:, c] * float(s[c]),
                                       rtol=1e-4, atol=1e-5)
    # a non-homogeneous activation between a convolution and its reader blocks rescaling
    tanh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 2, 1))
    assert "Tanh" in rescaling_blocker(tanh, channel_flows(tanh, ["0"])[0])


def test_a_residual_model_is_caught_by_the_function_check():
    """Permuting a residual block's channels without its skip path changes the function."""
    model = randomise(TinyResNet(), 0).eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    flows, why = channel_flows(model, convs)
    assert why is None  # (in registration order it looks like a chain) ...
    twin, _ = permuted_copy(model, flows)
    x = torch.randn(4, 3, 16, 16)
    assert same_function(model, twin, x) is None  # ... but the skip paths tell
    assert same_function(model, copy.deepcopy(model), x) is not None


def test_nearest_recovery_against_a_loop():
    rng = np.random.default_rng(0)
    original = rng.normal(size=(30, 4))
    original[5] = original[4] * 2        # the same direction: a tie with 4
    truth = rng.permutation(30)
    copy = original[truth] + rng.normal(scale=0.3, size=(30, 4))
    use = rng.random(30) < 0.8
    rows, hit = nearest_recovery(copy, original, truth, use)
    expected_rows = [i for i in range(30) if use[truth[i]]]
    assert rows.tolist() == expected_rows

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    for r, h in zip(rows, hit):
        best = max(cos(copy[r], original[j]) for j in range(30) if use[j])
        assert h == (cos(copy[r], original[truth[r]]) >= best - 1e-6)
    exact_rows, exact = nearest_recovery(original[truth], original, truth, use)
    assert exact.all()


def test_evaluate_runs_the_checks_on_a_study_without_masks(tmp_path, image_folder, capsys):
    """A user's study: image folders, their own model, no masks or tags. The evaluation says
    what it skipped and passes both checks."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for epoch in range(2):
        torch.save(trained_like(epoch).state_dict(), ckpt / f"epoch_{epoch}.pt")
    cfg = write_study(tmp_path, image_folder, (ckpt / "epoch_{epoch}.pt").as_posix())
    cfg.write_text(cfg.read_text() + "\n[space]\ndim = 4\nepochs = 3\numap_neighbors = 5\n"
                   "\n[evaluation]\nseeds = 2\n")
    assert main(["build", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "skipped: concept labels and the concept alignment study: no pixel-level concept " \
        "masks" in out
    assert "permuted-copy check (a epoch 1): PASS" in out
    assert "rescaled-copy check (a epoch 1): PASS" in out
    report = atomic.read_json(Workspace(tmp_path / "ws").path("evaluation", "evaluation.json"))
    assert report["alignment"] is None and report["labels"] is None
    perm, scaled = report["checks"]["permuted_copy"], report["checks"]["rescaled_copy"]
    assert perm["recovery"] >= 0.99 and perm["n_neurons"] > 0 and perm["passed"]
    assert set(perm["per_layer"]) == set(CONVS)
    assert scaled["max_shift"] <= 1e-4 and scaled["passed"]
    assert scaled["max_shift_stored"] is not None
    # (c) agreement with the one-to-one matching, epoch 0 against epoch 1 of the one run
    agreement = report["checks"]["agreement"]
    assert agreement["pairs"] == [[["a", 0], ["a", 1]]]
    assert set(agreement["per_layer"]) == set(CONVS)
    assert "agreement with one-to-one correlation matching" in out
    # (d) the class-level study, seed by seed, or why it could not run
    classes = report["classes"]
    if classes is None:
        assert any("class-level alignment study" in why for why in report["skipped"])
    else:
        assert classes["seeds"] == [0, 1]
        assert len(classes["methods"]["unified"]["per_seed"]) == 2
        assert "matched" in classes["methods"] and "correlation" not in classes["methods"]
    assert len(report["faithfulness"]["fidelity"]["seeds"]) == 2
    assert (tmp_path / "ws" / "evaluation" / "checks.png").stat().st_size > 1000
    json.dumps(report)  # (plain JSON)


def test_the_unrounded_activations_are_each_neurons_maximum_over_its_map():
    from conceptevo.models.adapter import ModelAdapter
    from conceptevo.stimuli import compute_stimuli

    model = trained_like(0)
    x = torch.randn(10, 3, 16, 16)
    acc = compute_stimuli(ModelAdapter(model), [(x[:6], torch.arange(6)),
                                                (x[6:], torch.arange(6, 10))], 10,
                          k_stimuli=3, k_responsive=2, record_activations=True)
    full = acc.float_activations()
    maps = conv_outputs(model, x)
    brute = torch.cat([maps[n].amax((2, 3)) for n in CONVS], 1).T.numpy()
    np.testing.assert_allclose(full, brute, rtol=1e-5, atol=1e-6)
    result = acc.result()  # rounds them: float16 relative to each neuron's largest
    np.testing.assert_allclose(result.activations.astype(np.float32)
                               * result.activation_scale[:, None], brute, rtol=1e-3, atol=1e-3)
    with pytest.raises(RuntimeError, match="already rounded"):
        acc.float_activations()
