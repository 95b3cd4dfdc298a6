"""How a neuron of any model and epoch becomes a point of the unified space: the projection
methods, as small estimators of one protocol.

A projection is fitted on the base model (its stimuli, the embeddings ``v`` of its neurons and
which of them are in the space) and then transforms the stimulus pass of any checkpoint into
one vector per neuron. The two methods of the space (``[space] projection``):

* :class:`StimuliMean`, the paper's: an image embedding in which each base neuron is the mean
  of its top-k stimuli, solved by least squares on the vocabulary and estimated for the other
  probe images; a neuron is the mean embedding of its stimuli.
* :class:`ActivationWeighted`: an image embedding in which each base neuron is the
  softmax-weighted mean of every probe image by its activation; a neuron is the same weighted
  mean. It needs every activation of the stimulus pass.

The evaluation's baselines (:mod:`conceptevo.evaluate.neurons`) implement the same protocol,
so that the alignment study treats every method alike.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from ..stimuli import StimuliResult
from .image_embedding import (
    ActivationWeights,
    embed_images,
    fidelity,
    project,
    project_streamed,
)


@runtime_checkable
class Projection(Protocol):
    """One way to place the neurons of any checkpoint in the space.

    ``fit(base, v, known)``: learn from the base model's stimulus pass ``base``, the
    embeddings ``v`` float64 [n_base, d] of its neurons and ``known`` bool [n_base], the
    neurons that are in the space. ``transform(result)``: float64 [n_neurons, d], one vector
    per neuron of a checkpoint's stimulus pass. ``needs_activations``: ``transform`` reads
    every activation of the pass, not only its top-k stimuli.
    """

    name: ClassVar[str]
    needs_activations: ClassVar[bool]

    def fit(self, base: StimuliResult, v: np.ndarray, known: np.ndarray) -> Projection: ...

    def transform(self, result: StimuliResult) -> np.ndarray: ...


class ImageProjection:
    """A projection through an image embedding e_x of every probe image.

    Fitted attributes: ``image_embedding_`` float32 [n_images, d] (as the workspace stores
    it), ``rmse_`` (how well the base neurons are reproduced, sqrt(mean_n ||v~_n - v_n||^2)
    on the neurons the solve used) and ``fidelity_`` (the base model projected onto itself,
    :func:`~conceptevo.space.image_embedding.fidelity`).
    """

    name: ClassVar[str] = ""
    needs_activations: ClassVar[bool] = False

    def __init__(self, device: str = "cpu"):
        self.device = device

    def with_embedding(self, image_embedding: np.ndarray) -> ImageProjection:
        """This projection with a stored image embedding (no fit)."""
        self.image_embedding_ = np.asarray(image_embedding, dtype=np.float32)
        return self

    def _embedding(self) -> np.ndarray:
        if not hasattr(self, "image_embedding_"):
            raise RuntimeError(f"the {self.name!r} projection is not fitted: call fit(base, v, "
                               "known) or with_embedding(stored image embedding) first")
        return self.image_embedding_.astype(np.float64)


class StimuliMean(ImageProjection):
    """The paper's projection: a neuron is the mean embedding of its top-k stimuli.

    ``image_method`` solves the vocabulary's embedding (each base neuron the mean of its
    stimuli), ``indirect`` estimates the other probe images (seeded by ``seed``). Fitted also:
    ``vocab_`` bool [n_images], the images among the stimuli of the known base neurons.
    """

    name = "stimuli"
    needs_activations = False

    def __init__(self, image_method: str = "normal", indirect: str = "neuron-mean",
                 seed: int = 0, device: str = "cpu"):
        super().__init__(device)
        self.image_method, self.indirect, self.seed = image_method, indirect, seed

    def fit(self, base: StimuliResult, v: np.ndarray, known: np.ndarray) -> StimuliMean:
        e, self.vocab_, self.rmse_ = embed_images(base, v, known, self.image_method,
                                                  self.indirect, self.seed, device=self.device)
        self.image_embedding_ = e.astype(np.float32)  # the fidelity is that of the stored space
        rows = np.flatnonzero(known)
        self.fidelity_ = fidelity(self.project_stimuli(base.stimuli[rows]), v[rows])
        return self

    def project_stimuli(self, stimuli: np.ndarray) -> np.ndarray:
        """v~ float64 [n, d] of neurons given as their stimuli int64 [n, k]."""
        return project(stimuli, self._embedding())

    def transform(self, result: StimuliResult) -> np.ndarray:
        return self.project_stimuli(result.stimuli)


class ActivationWeighted(ImageProjection):
    """A neuron is the mean embedding of every probe image, weighted by a softmax of its
    activations (:class:`~conceptevo.space.image_embedding.ActivationWeights`, at
    ``temperature``); the image embedding is the minimum-norm ``ridge`` solution that
    reproduces the known base neurons exactly up to the ridge."""

    name = "activations"
    needs_activations = True

    def __init__(self, temperature: float = 1.0, ridge: float = 1e-4, device: str = "cpu"):
        super().__init__(device)
        self.temperature, self.ridge = float(temperature), float(ridge)

    def _weights(self, result: StimuliResult, rows=slice(None)) -> ActivationWeights:
        if result.activations is None:
            raise ValueError("the stimulus pass did not record the activations that the "
                             "activation-weighted projection needs")
        scale = None if result.activation_scale is None else result.activation_scale[rows]
        return ActivationWeights(result.activations[rows], self.temperature,
                                 device=self.device, scale=scale)

    def fit(self, base: StimuliResult, v: np.ndarray, known: np.ndarray) -> ActivationWeighted:
        rows = np.flatnonzero(known)
        weights = self._weights(base, rows)
        self.image_embedding_ = weights.solve(v[rows], self.ridge).astype(np.float32)
        projected = weights.project(self.image_embedding_)
        self.rmse_ = float(np.sqrt(((projected - v[rows]) ** 2).sum(1).mean()))
        self.fidelity_ = fidelity(projected, v[rows])
        return self

    def transform(self, result: StimuliResult) -> np.ndarray:
        return self._weights(result).project(self._embedding())

    def transform_streamed(self, blocks, n_neurons: int) -> np.ndarray:
        """``transform`` of a pass whose activations arrive as blocks of images
        (``blocks()``: a new iterator of (image ids, float32 [b, n_neurons]) on each call, e.g.
        ``StimulusAccumulator.activation_blocks``), without the whole matrix
        (:func:`~conceptevo.space.image_embedding.project_streamed`)."""
        return project_streamed(blocks, n_neurons, self._embedding(), self.temperature,
                                self.device)


#: The space's projection methods by their ``[space] projection`` name.
PROJECTION_METHODS: dict[str, type[ImageProjection]] = {
    cls.name: cls for cls in (ActivationWeighted, StimuliMean)}
