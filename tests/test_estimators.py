"""The unified space and its projection methods as estimators: one protocol, fit/transform,
hyper-parameters checked where they are declared, and the same numbers as the functions
the stages used before the estimators existed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import conceptevo as ce
from conceptevo.config import SpaceConfig
from conceptevo.errors import ConfigError
from conceptevo.evaluate.neurons import RandomVectors, SeparateEmbedding, VocabularyMean
from conceptevo.params import PROJECTIONS, SpaceParams
from conceptevo.space.coactivation import CoActivation
from conceptevo.space.image_embedding import ActivationWeights, embed_images, project
from conceptevo.space.neuron_embedding import NeuronEmbedding
from conceptevo.space.projection import (
    PROJECTION_METHODS,
    ActivationWeighted,
    Projection,
    StimuliMean,
)
from conceptevo.space.unified import UnifiedSpace, build_base_space, project_result
from conceptevo.stimuli import compute_stimuli


def stimulus_pass(seed: int, n_images: int = 120) -> ce.StimuliResult:
    """The stimuli (and every activation) of a small random CNN on random images."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(n_images, 3, 10, 10, generator=torch.Generator().manual_seed(99))
    ids = torch.arange(n_images)
    batches = [(x[s:s + 40], ids[s:s + 40]) for s in range(0, n_images, 40)]
    return compute_stimuli(ce.ModelAdapter(model), batches, n_images, k_stimuli=6,
                           k_responsive=6, record_activations=True).result()


@pytest.fixture(scope="module")
def passes():
    return stimulus_pass(0), stimulus_pass(1)


SMALL = dict(dim=6, epochs=4, batch_size=256)


def by_hand(base, params: SpaceParams):
    """The space composed from the algorithms directly, without UnifiedSpace or the projection
    classes: (v_n with NaN outside the space, validity, paper's e_x, the space's e_x)."""
    alive = ~base.dead
    model = NeuronEmbedding(params.dim, params.epochs, params.lr, params.negatives,
                            params.batch_size, seed=params.seed).fit(
        CoActivation.from_stimuli(base.stimuli, alive))
    valid = alive & model.trained_
    v = model.embedding_.astype(np.float64)
    paper = embed_images(base, v, valid, params.image_method, params.indirect,
                         params.seed)[0].astype(np.float32)
    e = paper
    if params.projection == "activations":
        rows = np.flatnonzero(valid)
        e = ActivationWeights(base.activations[rows], params.temperature,
                              scale=base.activation_scale[rows]).solve(
            v[rows], params.ridge).astype(np.float32)
    emb = model.embedding_.copy()
    emb[~valid] = np.nan
    return emb, valid, paper, e


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_fit_transform_is_the_space_and_its_projection(passes, projection):
    base, other = passes
    params = SpaceParams(projection=projection, **SMALL)
    est = UnifiedSpace(params).fit(base)
    space = est.space_
    emb, valid, paper, e = by_hand(base, params)
    np.testing.assert_array_equal(space.neuron_embedding, emb)
    np.testing.assert_array_equal(space.valid, valid)
    np.testing.assert_array_equal(space.stimulus_embedding, paper)
    np.testing.assert_array_equal(space.image_embedding, e)
    want = (ActivationWeights(other.activations, params.temperature,
                              scale=other.activation_scale).project(e.astype(np.float64))
            if projection == "activations" else project(other.stimuli, e.astype(np.float64)))
    np.testing.assert_array_equal(est.transform(other), want)
    # the functional forms and a space read back from the workspace give the same
    np.testing.assert_array_equal(project_result(other, build_base_space(base, params)), want)
    np.testing.assert_array_equal(UnifiedSpace.from_space(space).transform(other), want)
    assert space.needs_activations == (projection == "activations")
    assert isinstance(est.projection_, PROJECTION_METHODS[projection])


def test_projections_against_their_definitions(passes):
    base, other = passes
    est = UnifiedSpace(**SMALL).fit(base)
    space, e = est.space_, est.space_.image_embedding.astype(np.float64)
    # activation-weighted: the softmax-weighted mean over every probe image
    acts = other.activations.astype(np.float64) * other.activation_scale[:, None]
    w = ActivationWeights(acts, space.temperature).dense().astype(np.float64)
    np.testing.assert_allclose(est.transform(other), w @ e, rtol=1e-4, atol=1e-5)
    # the paper's: the mean of the stimuli's embeddings, one neuron at a time
    paper = StimuliMean().with_embedding(space.stimulus_embedding)
    got = paper.transform(other)
    for n in range(0, other.n_neurons, 5):
        want = np.mean([space.stimulus_embedding[x].astype(np.float64)
                        for x in other.stimuli[n]], axis=0)
        np.testing.assert_allclose(got[n], want, rtol=1e-12)
    # fitting the paper's projection reproduces the stored paper embedding
    v = np.nan_to_num(space.neuron_embedding.astype(np.float64))
    refit = StimuliMean(seed=0).fit(base, v, space.valid)
    np.testing.assert_array_equal(refit.image_embedding_, space.stimulus_embedding)
    np.testing.assert_array_equal(refit.vocab_, space.vocab)


def test_every_method_of_the_study_implements_the_protocol(passes):
    base, other = passes
    params = SpaceParams(**SMALL)
    space = UnifiedSpace(params).fit(base).space_
    v = np.nan_to_num(space.neuron_embedding.astype(np.float64))
    methods = [ActivationWeighted(), StimuliMean(), VocabularyMean(),
               SeparateEmbedding(params), RandomVectors(params.dim, seed=3)]
    assert {m.name for m in methods[:2]} == set(PROJECTIONS) == set(PROJECTION_METHODS)
    for m in methods:
        assert isinstance(m, Projection), m
        out = m.fit(base, v, space.valid).transform(other)
        assert out.shape == (other.n_neurons, params.dim) and out.dtype == np.float64, m.name
    # the vocabulary-only baseline: stimuli outside the vocabulary do not count
    e, vocab, _ = embed_images(base, v, space.valid, "normal", "none")
    vm = VocabularyMean().fit(base, v, space.valid)
    n = int(np.argmax((~vocab[other.stimuli]).any(1) & vocab[other.stimuli].any(1)))
    inside = [x for x in other.stimuli[n] if vocab[x]]
    np.testing.assert_allclose(vm.transform(other)[n], e[inside].mean(0), rtol=1e-5)
    # seeded baselines repeat; successive models get their own starts
    a, b = SeparateEmbedding(params), SeparateEmbedding(params)
    first = a.transform(other)
    np.testing.assert_array_equal(first, b.transform(other))
    assert not np.allclose(np.nan_to_num(a.transform(other)), np.nan_to_num(first))
    np.testing.assert_array_equal(RandomVectors(6, 3).transform(other),
                                  RandomVectors(6, 3).transform(other))


def test_an_unfitted_estimator_says_so(passes):
    _, other = passes
    with pytest.raises(RuntimeError, match="not fitted"):
        UnifiedSpace().transform(other)
    with pytest.raises(RuntimeError, match="not fitted"):
        StimuliMean().transform(other)
    without = dataclasses.replace(other, activations=None)
    with pytest.raises(ValueError, match="did not record the activations"):
        ActivationWeighted().with_embedding(np.zeros((other.n_images, 3))).transform(without)
    # the paper's projection needs only the stimuli
    assert project(other.stimuli, np.ones((other.n_images, 3))).shape == (other.n_neurons, 3)


@pytest.mark.parametrize("change, message", [
    (dict(dim=0), r"\[space\] dim = 0 is out of range"),
    (dict(temperature=0.0), r"\[space\] temperature = 0 is out of range"),
    (dict(projection="pca"), r"\[space\] projection must be one of 'activations', 'stimuli'"),
    (dict(indirect="nearest"), r"\[space\] indirect must be one of"),
    (dict(image_method="svd"), r"\[space\] image_method must be one of"),
])
def test_hyper_parameters_are_checked_on_the_estimator_and_the_config(change, message):
    with pytest.raises(ConfigError, match=message):
        UnifiedSpace(**change)
    with pytest.raises(ConfigError, match=message):
        SpaceParams(**change)
    with pytest.raises(ConfigError, match=message):
        SpaceConfig(**change).validate("space", [])


def test_the_config_declares_the_estimators_ranges_once():
    params = {f.name: f for f in dataclasses.fields(SpaceParams)}
    for f in dataclasses.fields(SpaceConfig):
        if f.name in params:
            assert f.default == params[f.name].default, f.name
            assert f.metadata == params[f.name].metadata, f.name
    cfg = SpaceConfig(dim=12, projection="stimuli")
    assert cfg.params(seed=5) == SpaceParams(dim=12, projection="stimuli", seed=5)
