"""The unified semantic space, end to end: from the base model's stimuli to the embedding of
every probe image, ready to project any neuron of any model and epoch.

:func:`build_base_space` chains the steps of ``../../docs/space.md``:
co-activation -> neuron embedding -> image embedding of the vocabulary -> embedding of the
other probe images (the paper's projection by stimuli), and, for the activation-weighted
projection, the image embedding that reproduces the base neurons from their activations.
:func:`project_result` projects one checkpoint either way. :func:`compare_indirect_methods`
measures, by holding out part of the vocabulary, how well each way of embedding
non-vocabulary images preserves the space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import SpaceError
from ..stimuli import StimuliResult
from .coactivation import CoActivation
from .image_embedding import (
    INDIRECT_METHODS,
    PROJECTIONS,
    ActivationWeights,
    embed_other_images,
    fidelity,
    project,
    rmse,
    solve_image_embedding,
    stimulus_matrix,
)
from .neuron_embedding import NeuronEmbedding


@dataclass
class SpaceParams:
    """Parameters of the base space (defaults: the reference's, see SPEC)."""

    dim: int = 30
    epochs: int = 20
    lr: float = 0.01
    negatives: int = 3
    batch_size: int = 2048
    image_method: str = "normal"
    indirect: str = "neuron-mean"
    exclude_dead: bool = True
    projection: str = "activations"
    temperature: float = 1.0
    ridge: float = 1e-4
    seed: int = 0
    device: str = "cpu"


@dataclass
class BaseSpace:
    """The base space and the image embedding derived from it.

    Attributes
    ----------
    neuron_embedding : float32 [n_base, d], v_n (rows of invalid neurons are NaN).
    valid : bool [n_base], neurons that are in the space: alive (a positive activation on
        the probe set, when dead neurons are excluded) and co-activated with another neuron.
    loss : mean pair loss of each neuron-embedding epoch.
    image_embedding : float32 [n_images, d], e_x for every probe image: the embedding that
        projections use (of the activation-weighted projection, or equal to
        ``stimulus_embedding``).
    vocab : bool [n_images], images among the stimuli of valid base neurons.
    rmse : how well the images reproduce the valid base neurons by the space's projection,
        sqrt(mean_n ||v~_n - v_n||^2).
    fidelity : projection of the base model onto itself (see :func:`fidelity`).
    info : counts (pairs per epoch, vocabulary size, ...).
    stimulus_embedding : float32 [n_images, d], the paper's image embedding: exact least
        squares on the vocabulary (each base neuron the mean of its stimuli), indirect
        embeddings for the other images.
    projection, temperature : how neurons are projected (see :func:`project_result`).
    """

    neuron_embedding: np.ndarray
    valid: np.ndarray
    loss: list[float]
    image_embedding: np.ndarray
    vocab: np.ndarray
    rmse: float
    fidelity: dict
    info: dict = field(default_factory=dict)
    stimulus_embedding: np.ndarray | None = None
    projection: str = "stimuli"
    temperature: float = 1.0


def base_validity(base: StimuliResult, exclude_dead: bool = True) -> np.ndarray:
    return ~base.dead if exclude_dead else np.ones(base.n_neurons, dtype=bool)


def build_base_space(base: StimuliResult, params: SpaceParams,
                     progress: Callable[[int], None] | None = None) -> BaseSpace:
    """Neuron embedding, image embedding and indirect embedding from the base stimuli."""
    alive = base_validity(base, params.exclude_dead)
    coact = CoActivation.from_stimuli(base.stimuli, alive)
    model = NeuronEmbedding(params.dim, params.epochs, params.lr, params.negatives,
                            params.batch_size, seed=params.seed, device=params.device)
    model.fit(coact, progress)
    valid = alive & model.trained_
    if valid.sum() < 2:
        raise SpaceError(
            f"the base model has {int(valid.sum())} neuron(s) that share a stimulus with another "
            f"(of {base.n_neurons}; {int((~alive).sum())} dead): a unified space needs at least "
            "2. Probe more layers, more probe images or a larger [stimuli] k_stimuli, or "
            "choose another base checkpoint ([space] base_run / base_epoch)")
    v = model.embedding_.astype(np.float64)
    e_stim, vocab, err = embed_images(base, v, valid, params.image_method, params.indirect,
                                      params.seed, device=params.device)
    e_stim = e_stim.astype(np.float32)  # as stored: the fidelity is that of the stored space
    rows = np.flatnonzero(valid)
    fid_stim = fidelity(project(base.stimuli[rows], e_stim.astype(np.float64)), v[rows])
    info = {"n_neurons": int(base.n_neurons), "n_valid": int(valid.sum()),
            "n_dead": int((~alive).sum()), "n_isolated": int((alive & ~model.trained_).sum()),
            "pairs_per_epoch": int(coact.n_pairs), "n_vocab": int(vocab.sum()),
            "n_images": int(base.n_images), "stimuli_rmse": err, "stimuli_fidelity": fid_stim}
    e, fid = e_stim, fid_stim
    if params.projection == "activations":
        weights = ActivationWeights(base.activations[rows], params.temperature,
                                    device=params.device, scale=base.activation_scale[rows])
        e = weights.solve(v[rows], params.ridge).astype(np.float32)
        projected = weights.project(e)
        err = float(np.sqrt(((projected - v[rows]) ** 2).sum(1).mean()))
        fid = fidelity(projected, v[rows])
    elif params.projection != "stimuli":
        raise ValueError(f"unknown projection {params.projection!r}; use one of {PROJECTIONS}")
    emb = model.embedding_.copy()
    emb[~valid] = np.nan
    return BaseSpace(emb, valid, list(model.loss_), e, vocab, err, fid, info, e_stim,
                     params.projection, params.temperature)


def project_result(result: StimuliResult, space: BaseSpace, device: str = "cpu"
                   ) -> np.ndarray:
    """v~ float64 [n_neurons, d] of every neuron of one checkpoint, by the space's
    projection: activation-weighted over the probe set (``result`` must hold its
    activations; computed on ``device``) or the mean embedding of the neuron's stimuli."""
    e = np.asarray(space.image_embedding, dtype=np.float64)
    if space.projection == "activations":
        if result.activations is None:
            raise ValueError("the stimulus pass did not record the activations that the "
                             "activation-weighted projection needs")
        return ActivationWeights(result.activations, space.temperature, device=device,
                                 scale=result.activation_scale).project(e)
    return project(result.stimuli, e)


def embed_images(base: StimuliResult, v: np.ndarray, known: np.ndarray, method: str,
                 indirect: str, seed: int = 0, allowed: np.ndarray | None = None,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray, float]:
    """Image embedding of every probe image: exact least squares on the vocabulary of the
    ``known`` base neurons (bool [n_base]), ``indirect`` for the other images.

    ``allowed`` (bool [n_images]) restricts the vocabulary (to test the indirect methods).
    ``indirect="none"`` leaves the other images at zero (they are flagged out of ``vocab``).
    Returns (e float64 [n_images, d], vocab bool [n_images], rmse on the known neurons).
    """
    rows = np.flatnonzero(known)
    a, vocab_ids = stimulus_matrix(base.stimuli, rows, base.n_images, allowed)
    nonempty = np.asarray(a.getnnz(axis=1)) > 0
    a, rows = a[nonempty], rows[nonempty]
    e_vocab = solve_image_embedding(a, v[rows], method, device=device)
    err = rmse(a, e_vocab, v[rows])
    e = np.zeros((base.n_images, v.shape[1]))
    e[vocab_ids] = e_vocab
    vocab = np.zeros(base.n_images, dtype=bool)
    vocab[vocab_ids] = True
    if indirect != "none":
        others = np.flatnonzero(~vocab)
        e[others] = embed_other_images(others, base.responsive, e, vocab, v, known, indirect,
                                       seed=seed)
    return e, vocab, err


def project_known(stimuli: np.ndarray, e: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Projection using vocabulary images only (the baseline without indirect embeddings):
    the mean over the stimuli that are in the vocabulary; zero when none is."""
    inside = vocab[stimuli]
    total = (e[stimuli] * inside[..., None]).sum(1)
    return total / np.maximum(inside.sum(1), 1)[:, None]


def compare_indirect_methods(base: StimuliResult, space: BaseSpace, params: SpaceParams,
                             holdout: float = 0.2, hide: float = 0.5,
                             methods=INDIRECT_METHODS + ("none",)) -> dict:
    """Leave-neurons-out test of the ways to embed images outside the vocabulary.

    A random ``holdout`` fraction of the valid base neurons is removed from the base (their
    embeddings are not used), and a random ``hide`` fraction of their stimuli is removed from
    the vocabulary. Each held-out neuron is then projected like a neuron of another model:
    the mean embedding of its stimuli, of which the hidden ones need an indirect embedding.
    It must land on its own v_n among all valid base neurons. ``"none"`` projects with
    vocabulary images only (the baseline without indirect embeddings).
    """
    rng = np.random.default_rng(params.seed)
    valid_rows = np.flatnonzero(space.valid)
    held = np.sort(rng.choice(valid_rows, size=max(1, int(holdout * valid_rows.size)),
                              replace=False))
    known = space.valid.copy()
    known[held] = False
    candidates = np.unique(base.stimuli[held])
    hidden = rng.choice(candidates, size=int(hide * candidates.size), replace=False)
    allowed = np.ones(base.n_images, dtype=bool)
    allowed[hidden] = False
    v = np.nan_to_num(space.neuron_embedding.astype(np.float64))
    targets = np.searchsorted(valid_rows, held)
    out = {"holdout_fraction": holdout, "hide_fraction": hide, "n_held_out": int(held.size),
           "methods": {}}
    for method in methods:
        e, vocab, _ = embed_images(base, v, known, params.image_method, method, params.seed,
                                   allowed, params.device)
        stim = base.stimuli[held]
        proj = project_known(stim, e, vocab) if method == "none" else project(stim, e)
        fid = fidelity(proj, v[valid_rows], targets)
        fid["outside_vocab"] = float((~vocab[stim]).mean())
        out["methods"][method] = fid
    return out
