"""The unified semantic space, end to end: from the base model's stimuli to the embedding of
every probe image, ready to project any neuron of any model and epoch.

:class:`UnifiedSpace` is the estimator: ``UnifiedSpace(params).fit(base_stimuli)`` chains the
steps of ``../../docs/space.md`` (co-activation -> neuron embedding -> the image embedding of
the space's projection method, :mod:`conceptevo.space.projection`), and
``.transform(stimuli_result)`` places every neuron of any checkpoint. What it learned is a
:class:`BaseSpace`, the form the workspace stores. :func:`compare_indirect_methods` measures,
by holding out part of the vocabulary, how well each way of embedding non-vocabulary images
preserves the space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import SpaceError
from ..params import SpaceParams
from ..stimuli import StimuliResult
from .coactivation import CoActivation
from .image_embedding import INDIRECT_METHODS, embed_images, fidelity, project
from .neuron_embedding import NeuronEmbedding
from .projection import (
    PROJECTION_METHODS,
    ActivationWeighted,
    ImageProjection,
    StimuliMean,
)

__all__ = ["BaseSpace", "SpaceParams", "UnifiedSpace", "base_validity", "build_base_space",
           "compare_indirect_methods", "embed_images", "project_known", "project_result",
           "projection_method"]


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

    @property
    def needs_activations(self) -> bool:
        """Whether projecting a checkpoint reads every activation of its stimulus pass."""
        return PROJECTION_METHODS[self.projection].needs_activations

    def projector(self, device: str = "cpu") -> ImageProjection:
        """The fitted projection of this space (from its stored image embedding)."""
        params = SpaceParams(projection=self.projection, temperature=self.temperature,
                             device=device)
        return projection_method(params).with_embedding(self.image_embedding)


def projection_method(params: SpaceParams) -> ImageProjection:
    """The (unfitted) projection method that ``params`` choose."""
    if params.projection == ActivationWeighted.name:
        return ActivationWeighted(params.temperature, params.ridge, params.device)
    return StimuliMean(params.image_method, params.indirect, params.seed, params.device)


def base_validity(base: StimuliResult, exclude_dead: bool = True) -> np.ndarray:
    return ~base.dead if exclude_dead else np.ones(base.n_neurons, dtype=bool)


class UnifiedSpace:
    """The unified space as an estimator (hyper-parameters in :class:`SpaceParams`, checked
    when they are made).

    ``fit(base)`` learns the space from the base model's stimulus pass: the neuron embedding
    of its co-activated neurons, the paper's image embedding (:class:`StimuliMean`, always
    computed: the evaluation compares it) and, for the activation-weighted projection, that
    method's image embedding. ``transform(result)`` projects every neuron of a checkpoint.

    Fitted attributes: ``space_`` (:class:`BaseSpace`, what the workspace stores) and
    ``projection_`` (the fitted projection method).
    """

    def __init__(self, params: SpaceParams | None = None, **overrides):
        self.params = replace(params or SpaceParams(), **overrides)

    @classmethod
    def from_space(cls, space: BaseSpace, device: str = "cpu") -> UnifiedSpace:
        """An estimator fitted to a stored space (``conceptevo.workspace.artifacts``)."""
        self = cls(projection=space.projection, temperature=space.temperature, device=device)
        self.space_, self.projection_ = space, space.projector(device)
        return self

    def fit(self, base: StimuliResult, progress: Callable[[int], None] | None = None
            ) -> UnifiedSpace:
        """Neuron embedding, image embedding(s) and indirect embedding from the base stimuli;
        ``progress(n)`` is called as co-activated pairs are trained on."""
        params = self.params
        alive = base_validity(base, params.exclude_dead)
        coact = CoActivation.from_stimuli(base.stimuli, alive)
        model = NeuronEmbedding(params.dim, params.epochs, params.lr, params.negatives,
                                params.batch_size, seed=params.seed, device=params.device)
        model.fit(coact, progress)
        valid = alive & model.trained_
        if valid.sum() < 2:
            raise SpaceError(
                f"the base model has {int(valid.sum())} neuron(s) that share a stimulus with "
                f"another (of {base.n_neurons}; {int((~alive).sum())} dead): a unified space "
                "needs at least 2. Probe more layers, more probe images or a larger [stimuli] "
                "k_stimuli, or choose another base checkpoint ([space] base_run / base_epoch)")
        v = model.embedding_.astype(np.float64)
        paper = StimuliMean(params.image_method, params.indirect, params.seed,
                            params.device).fit(base, v, valid)
        info = {"n_neurons": int(base.n_neurons), "n_valid": int(valid.sum()),
                "n_dead": int((~alive).sum()), "n_isolated": int((alive & ~model.trained_).sum()),
                "pairs_per_epoch": int(coact.n_pairs), "n_vocab": int(paper.vocab_.sum()),
                "n_images": int(base.n_images), "stimuli_rmse": paper.rmse_,
                "stimuli_fidelity": paper.fidelity_}
        method = paper if params.projection == StimuliMean.name else \
            projection_method(params).fit(base, v, valid)
        emb = model.embedding_.copy()
        emb[~valid] = np.nan
        self.space_ = BaseSpace(emb, valid, list(model.loss_), method.image_embedding_,
                                paper.vocab_, method.rmse_, method.fidelity_, info,
                                paper.image_embedding_, params.projection, params.temperature)
        self.projection_ = method
        return self

    def transform(self, result: StimuliResult) -> np.ndarray:
        """v~ float64 [n_neurons, d] of every neuron of one checkpoint, by the space's
        projection (``result`` must hold its activations when the projection needs them)."""
        if not hasattr(self, "projection_"):
            raise RuntimeError("UnifiedSpace is not fitted: call fit(base_stimuli) first")
        return self.projection_.transform(result)


def build_base_space(base: StimuliResult, params: SpaceParams,
                     progress: Callable[[int], None] | None = None) -> BaseSpace:
    """``UnifiedSpace(params).fit(base).space_``: the space learned from the base stimuli."""
    return UnifiedSpace(params).fit(base, progress).space_


def project_result(result: StimuliResult, space: BaseSpace, device: str = "cpu"
                   ) -> np.ndarray:
    """v~ float64 [n_neurons, d] of every neuron of one checkpoint, by the space's
    projection: activation-weighted over the probe set (``result`` must hold its
    activations; computed on ``device``) or the mean embedding of the neuron's stimuli."""
    return space.projector(device).transform(result)
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
