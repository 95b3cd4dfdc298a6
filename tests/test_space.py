"""The unified space against independent computations on small inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptevo.space.coactivation import CoActivation
from conceptevo.space.image_embedding import (
    ActivationWeights,
    activation_weights,
    embed_other_images,
    fidelity,
    project,
    rmse,
    solve_image_embedding,
    stimulus_matrix,
)
from conceptevo.space.map2d import ConceptMap
from conceptevo.space.neuron_embedding import NeuronEmbedding, pair_loss


def random_stimuli(n_neurons=60, n_images=200, k=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_images, k, replace=False) for _ in range(n_neurons)])


# ------------------------------------------------------------------------ co-activation
def test_coactivation_matches_a_dictionary_of_images():
    stimuli = random_stimuli(30, 40, 4, seed=1)
    valid = np.ones(30, bool)
    valid[[3, 7]] = False
    co = CoActivation.from_stimuli(stimuli, valid)
    groups: dict[int, set] = {}
    for n in range(30):
        if valid[n]:
            for x in stimuli[n]:
                groups.setdefault(int(x), set()).add(n)
    shared = {x: g for x, g in groups.items() if len(g) > 1}
    assert co.n_images == len(shared)
    assert co.n_pairs == sum(len(g) - 1 for g in shared.values())
    a, b = co.epoch_pairs(torch.Generator().manual_seed(0))
    assert a.numel() == co.n_pairs
    # every pair shares an image, and each image's pairs chain its neurons (a path)
    for u, v in zip(a.tolist(), b.tolist()):
        assert set(stimuli[u]) & set(stimuli[v]) and valid[u] and valid[v]
    degree = np.bincount(np.concatenate([a.numpy(), b.numpy()]), minlength=30)
    assert degree.sum() == 2 * co.n_pairs


# -------------------------------------------------------------------- neuron embedding
def per_pair_sgd(co: CoActivation, init, epochs, lr, negatives, seed):
    """The reference algorithm, one pair at a time in plain Python/NumPy."""
    rng = np.random.default_rng(seed)
    emb = np.array(init, dtype=np.float64)
    sig = lambda z: 1 / (1 + np.exp(-z))
    by_image: dict[int, list] = {}
    for n, x in zip(co.neurons.tolist(), co.images.tolist()):
        by_image.setdefault(x, []).append(n)
    images = list(by_image)
    for _ in range(epochs):
        rng.shuffle(images)
        for x in images:
            neurons = list(by_image[x])
            rng.shuffle(neurons)
            for u, v in zip(neurons[:-1], neurons[1:]):
                vu, vv = emb[u].copy(), emb[v].copy()
                coeff = 1 - sig(vu @ vv)
                g_u, g_v = -coeff * vv, -coeff * vu
                for r in rng.integers(0, co.n_neurons, negatives):
                    g_u += sig(emb[r] @ vu) * emb[r]
                    g_v += sig(emb[r] @ vv) * emb[r]
                emb[u] -= lr * g_u
                emb[v] -= lr * g_v
    return emb


def evaluation_loss(emb, co, seed=123, negatives=3):
    g = torch.Generator().manual_seed(seed)
    a, b = co.epoch_pairs(g)
    neg = torch.randint(0, co.n_neurons, (a.numel(), negatives), generator=g)
    return float(pair_loss(torch.as_tensor(emb, dtype=torch.float32), a, b, neg).mean())


def grouped_stimuli(groups=6, per_group=12, pool=20, k=6, seed=0):
    """Neurons in groups that draw their stimuli from a group's own pool of images."""
    rng = np.random.default_rng(seed)
    return np.stack([g * pool + rng.choice(pool, k, replace=False)
                     for g in range(groups) for _ in range(per_group)])


def test_vectorised_neuron_embedding_is_no_worse_than_per_pair_sgd():
    co = CoActivation.from_stimuli(grouped_stimuli())
    params = dict(epochs=10, lr=0.05, negatives=3)
    start_loss, ours, loop = [], [], []
    for seed in range(3):  # same initialisation for both; pair order and negatives differ
        init = np.random.default_rng(seed).random((co.n_neurons, 8)) - 0.5
        model = NeuronEmbedding(dim=8, **params, batch_size=64, seed=seed).fit(co, init=init)
        start_loss.append(evaluation_loss(init, co))
        ours.append(evaluation_loss(model.embedding_, co))
        loop.append(evaluation_loss(per_pair_sgd(co, init, **params, seed=seed), co))
        assert model.loss_[-1] < model.loss_[0]
    assert np.mean(ours) < np.mean(start_loss) - 0.1            # it learns
    assert np.mean(ours) <= np.mean(loop) * 1.002, (ours, loop)  # no worse than per pair
    # the groups are found: each neuron's nearest neighbour belongs to its group
    unit = model.embedding_ / np.linalg.norm(model.embedding_, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    group = np.arange(co.n_neurons) // 12
    assert (group[sims.argmax(1)] == group).mean() > 0.9
    # same seed, same embedding
    again = NeuronEmbedding(dim=8, **params, batch_size=64, seed=2).fit(co, init=init)
    np.testing.assert_array_equal(again.embedding_, model.embedding_)


# ---------------------------------------------------------------------- image embedding
def reference_gradient_descent(a, v, lr=0.1, max_iter=10_000, stop=0.01, seed=0):
    """The reference solver: full-batch gradient descent on sum_n ||(A E)_n - v_n||^2 / N
    from uniform(-0.5, 0.5), lr 0.1, stopping at RMSE 0.01."""
    rng = np.random.default_rng(seed)
    e = rng.random((a.shape[1], v.shape[1])) - 0.5
    for _ in range(max_iter):
        residual = a @ e - v
        if np.sqrt((residual ** 2).sum(1).mean()) < stop:
            break
        e -= lr * (a.T @ residual) / a.shape[0]
    return e


def test_least_squares_beats_the_reference_gradient_descent():
    stimuli = random_stimuli(60, 200, 6, seed=3)
    v = np.random.default_rng(4).normal(size=(60, 5))
    a, vocab = stimulus_matrix(stimuli, np.arange(60), 200)
    assert np.array_equal(vocab, np.unique(stimuli))
    dense = np.zeros((60, vocab.size))
    for n in range(60):
        dense[n, np.searchsorted(vocab, stimuli[n])] = 1 / 6
    np.testing.assert_allclose(a.toarray(), dense)
    ours = solve_image_embedding(a, v)
    gd = reference_gradient_descent(a, v)
    assert rmse(a, ours, v) < 1e-6 < rmse(a, gd, v)
    # the minimum-norm solution: equal to the pseudo-inverse one, and LSQR agrees
    np.testing.assert_allclose(ours, np.linalg.pinv(dense) @ v, atol=1e-6)
    np.testing.assert_allclose(solve_image_embedding(a, v, "lsqr"), ours, atol=1e-5)


def test_projection_and_fidelity_by_hand():
    e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    stimuli = np.array([[0, 1], [2, 3], [1, 3]])
    proj = project(stimuli, e)
    np.testing.assert_allclose(proj, [[0.5, 0.5], [0.0, 0.5], [-0.5, 0.5]])
    base = np.array([[1.0, 1.0], [0.0, 1.0], [-1.0, 0.2]])
    fid = fidelity(proj, base)
    cos = [1.0, 1.0, (0.5 + 0.1) / (np.sqrt(0.5) * np.sqrt(1.04))]
    assert fid["mean_cosine"] == pytest.approx(np.mean(cos))
    # neuron 2 finds base 2 nearest? cos with base 1 is 0.5/sqrt(0.5)=0.707 < 0.832: yes
    assert fid["top1"] == pytest.approx(1.0) and fid["top10"] == 1.0
    swapped = fidelity(proj[[1, 0]], base, targets=np.array([0, 1]))
    assert swapped["top1"] == 0.0


def brute_force_weights(acts, temperature):
    """The activation weights one neuron and one image at a time."""
    out = np.zeros(acts.shape)
    for n, row in enumerate(acts):
        finite = [a for a in row if np.isfinite(a)]
        mean = sum(finite) / len(finite)
        sigma = (sum((a - mean) ** 2 for a in finite) / len(finite)) ** 0.5
        top = max(finite)
        for x, a in enumerate(row):
            if not np.isfinite(a):
                continue
            out[n, x] = 1.0 if sigma == 0 else np.exp((a - top) / (temperature * sigma))
        out[n] /= out[n].sum()
    return out


def test_activation_weights_against_brute_force():
    rng = np.random.default_rng(5)
    acts = rng.normal(size=(12, 30)) * rng.uniform(0.1, 50, (12, 1)) + rng.normal(size=(12, 1))
    acts[3] = 2.5                       # the same on every image: uniform weights
    acts[4, [1, 7]] = -np.inf           # non-finite activations weigh 0
    acts[5, 2] = np.nan
    for t in (0.5, 1.0, 3.0):
        w = activation_weights(acts, t)
        np.testing.assert_allclose(w, brute_force_weights(acts, t), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    w = activation_weights(acts, 1.0)
    np.testing.assert_allclose(w[3], 1 / 30, rtol=1e-6)
    assert w[4, 1] == w[4, 7] == w[5, 2] == 0
    # the scale and offset of a neuron's activations do not matter, the ranking of images does
    np.testing.assert_allclose(activation_weights(7 * acts[:3] - 4, 1.0), w[:3], rtol=1e-4)
    # a lower temperature concentrates the weight on the strongest images
    top = acts[0].argmax()
    assert activation_weights(acts, 0.2)[0, top] > w[0, top] > activation_weights(acts, 5)[0, top]


def test_weighted_image_embedding_reproduces_the_base_and_projects_by_hand():
    rng = np.random.default_rng(6)
    acts = rng.normal(size=(20, 90))
    acts[2, 5] = -np.inf
    v = rng.normal(size=(20, 4))
    w = brute_force_weights(acts, 1.0)
    # in blocks of 3 neurons (block_size 270 values) as in one
    blocked = ActivationWeights(acts, 1.0, block_size=270)
    np.testing.assert_allclose(blocked.dense(), w, rtol=1e-5, atol=1e-9)
    # values stored relative to a per-neuron scale, rescaled block by block: the same weights
    scale = np.abs(np.where(np.isfinite(acts), acts, 0)).max(1).astype(np.float32)
    relative = (acts / scale[:, None]).astype(np.float32)
    np.testing.assert_array_equal(
        ActivationWeights(relative, 1.0, block_size=270, scale=scale).dense(),
        ActivationWeights(relative * scale[:, None], 1.0, block_size=270).dense())
    e = blocked.solve(v, ridge=1e-9)
    # minimum-norm solution of W E = V: it reproduces every base neuron, and equals the
    # pseudo-inverse solution (up to float32 weights)
    np.testing.assert_allclose(blocked.project(e), v, atol=1e-3)
    np.testing.assert_allclose(e, np.linalg.pinv(w) @ v, rtol=1e-3, atol=1e-3)
    # a ridge trades exactness for smaller image embeddings
    e_ridge = ActivationWeights(acts, 1.0).solve(v, ridge=1e-2)
    assert np.linalg.norm(e_ridge) < np.linalg.norm(e)
    # projection of other neurons: the weighted mean, one neuron and one image at a time
    other = rng.normal(size=(3, 90))
    wo = brute_force_weights(other, 1.0)
    projected = ActivationWeights(other, 1.0, block_size=90).project(e)
    for n in range(3):
        np.testing.assert_allclose(projected[n], sum(wo[n, x] * e[x] for x in range(90)),
                                   rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wo @ e, projected, rtol=1e-4, atol=1e-4)


def test_closed_form_indirect_embeddings_by_hand():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    known = np.array([True, True, False, False])
    v = np.array([[2.0, 0.0], [0.0, 4.0], [9.0, 9.0]])
    valid = np.array([True, True, False])
    responsive = np.array([[0, 2], [1, 0], [0, 1], [2, 1]])
    out = embed_other_images(np.array([2, 3]), responsive, e, known, v, valid, "neuron-mean")
    np.testing.assert_allclose(out, [[1.0, 2.0], [0.0, 4.0]])      # invalid neuron 2 ignored
    out = embed_other_images(np.array([2, 3]), responsive, e, known, v, valid, "image-mean")
    # known images 0, 1 bridge: neuron 0 is responsive for both (centroid (0.5, 1)),
    # neuron 1 for image 1 (0, 2), neuron 2 for image 0 (1, 0)
    np.testing.assert_allclose(out, [[0.25, 1.5], [0.5, 1.0]])


def test_map_is_identical_for_the_same_seed():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 6)).astype(np.float32)
    new = base[:20] + 0.1 * rng.normal(size=(20, 6)).astype(np.float32)
    m1 = ConceptMap(n_neighbors=10, seed=3).fit(base)
    m2 = ConceptMap(n_neighbors=10, seed=3).fit(base)
    np.testing.assert_array_equal(m1.embedding_, m2.embedding_)
    np.testing.assert_array_equal(m1.transform(new), m2.transform(new))
