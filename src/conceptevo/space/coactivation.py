"""Co-activation: neurons that share a stimulus image.

For each probe image x, ``N_x`` is the set of base neurons that have x among their stimuli.
Two neurons are co-activated when they share such an image; only images with
``|N_x| > 1`` carry co-activation. The statistics are kept as the (neuron, image) incidence
entries sorted by image, from which every epoch of the neuron embedding draws its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CoActivation:
    """The incidence of base neurons and their stimulus images.

    Attributes
    ----------
    neurons : int64 [nnz] neuron id of each (neuron, image) entry, grouped by image.
    images : int64 [nnz] image id of each entry (non-decreasing).
    n_neurons : number of base neurons (ids are ``0 .. n_neurons - 1``).
    """

    neurons: np.ndarray
    images: np.ndarray
    n_neurons: int

    @classmethod
    def from_stimuli(cls, stimuli: np.ndarray, valid: np.ndarray | None = None
                     ) -> CoActivation:
        """Build from stimuli int64 [n_neurons, k]; ``valid`` bool [n_neurons] drops neurons
        (dead ones) whose stimuli carry no concept. Images with a single neuron are dropped."""
        n, k = stimuli.shape
        neuron = np.repeat(np.arange(n, dtype=np.int64), k)
        image = np.asarray(stimuli, dtype=np.int64).reshape(-1)
        if valid is not None:
            keep = np.repeat(np.asarray(valid, dtype=bool), k)
            neuron, image = neuron[keep], image[keep]
        order = np.lexsort((neuron, image))
        neuron, image = neuron[order], image[order]
        _, inverse, counts = np.unique(image, return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        return cls(neuron[shared], image[shared], n)

    @property
    def n_images(self) -> int:
        """Images with at least two neurons (the ones that carry co-activation)."""
        return int(np.unique(self.images).size)

    @property
    def n_pairs(self) -> int:
        """Pairs drawn per epoch: sum over images of ``|N_x| - 1``."""
        return int(self.images.size - self.n_images)

    def neuron_counts(self) -> np.ndarray:
        """int64 [n_neurons]: co-activation entries per neuron (0: isolated neuron)."""
        return np.bincount(self.neurons, minlength=self.n_neurons)

    def epoch_pairs(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One epoch of positive pairs: each image's neurons in a random order, consecutive
        ones paired (the reference's scheme). Returns (a, b), int64 [n_pairs] each, in a
        random order."""
        neurons = torch.from_numpy(self.neurons)
        images = torch.from_numpy(self.images)
        key = images.double() + torch.rand(images.shape, generator=generator, dtype=torch.float64)
        order = torch.argsort(key)
        nb, ib = neurons[order], images[order]
        same = ib[1:] == ib[:-1]
        a, b = nb[:-1][same], nb[1:][same]
        shuffle = torch.randperm(a.numel(), generator=generator)
        return a[shuffle], b[shuffle]
