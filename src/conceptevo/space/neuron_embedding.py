"""The neuron embedding of the base model: skip-gram with negative sampling over co-activation.

Each epoch pairs, for every image, its co-activated neurons in a random order (consecutive
ones form a pair). For a pair (u, v) and negatives r_1..r_K drawn uniformly from all neurons,
the loss is

    L(u, v) = -log sigma(v_u . v_v) - sum_r [ log sigma(-v_u . v_r) + log sigma(-v_v . v_r) ]

and, as in the reference, SGD moves v_u and v_v (the negatives stay fixed). The reference
updates one pair at a time in Python; here a mini-batch of pairs is processed with tensor
operations and the updates are scattered back with ``index_add_`` (updates of a neuron that
appears several times in a batch add up, as they would, one after the other, in the per-pair
loop, up to second-order terms of the small learning rate).

On the CPU ``fit`` runs with one PyTorch thread (``num_threads``), whatever the process's
setting, and restores that setting afterwards. Each batch's operations are tiny (2,048 pairs x
30 dimensions), so extra threads never pay; worse, when other processes compete for the
cores, OpenMP's worker threads wait for each other at every one of the thousands of small
operations. On the 2-core machine of benchmarks/bench_space.py (4,224 neurons, 20 epochs,
``neuron_embedding_threads``), with 0, 1 and 2 CPU-bound processes alongside, the 2-thread fit
took 28, 85 and 157 s, the 1-thread fit 1.3, 2.3 and 3.3 s (and the reference's per-pair
loop 28, 63 and 96 s). The result is the same with any thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .coactivation import CoActivation


def pair_loss(emb: torch.Tensor, a: torch.Tensor, b: torch.Tensor, neg: torch.Tensor
              ) -> torch.Tensor:
    """Per-pair loss ``L`` [B] for pairs (a, b) [B] and negatives [B, K]."""
    va, vb, vr = emb[a], emb[b], emb[neg]
    pos = F.logsigmoid((va * vb).sum(1))
    neg_a = F.logsigmoid(-(vr @ va.unsqueeze(2)).squeeze(2)).sum(1)
    neg_b = F.logsigmoid(-(vr @ vb.unsqueeze(2)).squeeze(2)).sum(1)
    return -(pos + neg_a + neg_b)


class NeuronEmbedding:
    """Skip-gram with negative sampling over co-activated neurons (vectorised).

    Parameters
    ----------
    dim : embedding dimension d (reference 30).
    epochs : passes over the co-activation pairs (reference 20).
    lr : SGD learning rate (reference 0.01).
    negatives : negatives per pair (reference 3).
    batch_size : pairs per vectorised update (the loss is insensitive to it at the small
        learning rates of SGNS; larger is faster).
    init_range : embeddings start uniform in [-init_range, init_range] (reference 0.5).
    seed : seeds the initialisation, the pairing and the negatives.
    device : "cpu" or a CUDA device.
    num_threads : PyTorch CPU threads while fitting (default 1, see the module docstring);
        the process's setting is restored afterwards. None keeps the process's setting.
        The embedding is deterministic for a seed; with 1 thread it does not depend on the
        process's thread count either.

    Attributes
    ----------
    embedding_ : float32 [n_neurons, dim]; rows of neurons without co-activation keep their
        initial random value and are flagged in ``trained_``.
    trained_ : bool [n_neurons], neurons that appear in at least one pair.
    loss_ : list of the mean pair loss of each epoch.
    n_pairs_ : pairs per epoch.
    """

    def __init__(self, dim: int = 30, epochs: int = 20, lr: float = 0.01, negatives: int = 3,
                 batch_size: int = 2048, init_range: float = 0.5, seed: int = 0,
                 device: str | torch.device = "cpu", num_threads: int | None = 1):
        self.dim, self.epochs, self.lr, self.negatives = dim, epochs, lr, negatives
        self.batch_size, self.init_range, self.seed, self.device = (batch_size, init_range,
                                                                    seed, device)
        self.num_threads = num_threads

    @contextlib.contextmanager
    def _threads(self):
        """``num_threads`` PyTorch threads for the block (CPU only), then the previous count."""
        if self.num_threads is None or torch.device(self.device).type != "cpu":
            yield
            return
        previous = torch.get_num_threads()
        if previous != self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    def fit(self, coact: CoActivation, progress: Callable[[int], None] | None = None,
            init: np.ndarray | None = None) -> NeuronEmbedding:
        """Learn the embedding; ``progress`` is called with the pairs of each batch.

        ``init`` (float [n_neurons, dim]) replaces the random initialisation (a warm start).
        """
        with self._threads():
            return self._fit(coact, progress, init)

    def _fit(self, coact: CoActivation, progress: Callable[[int], None] | None,
             init: np.ndarray | None) -> NeuronEmbedding:
        g = torch.Generator().manual_seed(self.seed)
        n = coact.n_neurons
        emb = (torch.rand(n, self.dim, generator=g) * 2 - 1) * self.init_range
        if init is not None:
            emb = torch.as_tensor(np.asarray(init), dtype=torch.float32).clone()
        emb = emb.to(self.device)
        self.loss_ = []
        for _ in range(self.epochs):
            a_all, b_all = coact.epoch_pairs(g)
            neg_all = torch.randint(0, n, (a_all.numel(), self.negatives), generator=g)
            a_all, b_all, neg_all = (t.to(self.device) for t in (a_all, b_all, neg_all))
            total = 0.0
            for start in range(0, a_all.numel(), self.batch_size):
                a = a_all[start:start + self.batch_size]
                b = b_all[start:start + self.batch_size]
                neg = neg_all[start:start + self.batch_size]
                total += float(self._step(emb, a, b, neg))
                if progress is not None:
                    progress(a.numel())
            self.loss_.append(total / max(a_all.numel(), 1))
        self.embedding_ = emb.cpu().numpy().astype(np.float32)
        self.trained_ = coact.neuron_counts() > 0
        self.n_pairs_ = coact.n_pairs
        return self

    def _step(self, emb: torch.Tensor, a: torch.Tensor, b: torch.Tensor, neg: torch.Tensor
              ) -> torch.Tensor:
        """One vectorised SGD step on a batch of pairs; returns the summed loss before it."""
        va, vb, vr = emb[a], emb[b], emb[neg]                       # [B, d], [B, d], [B, K, d]
        s_pos = (va * vb).sum(1)                                    # [B]
        s_neg = torch.bmm(vr, torch.stack([va, vb], dim=2))         # [B, K, 2]: r.u, r.v
        loss = -(F.logsigmoid(s_pos) + F.logsigmoid(-s_neg).sum((1, 2)))
        # d/du: -(1 - sigma(u.v)) v + sum_r sigma(r.u) r   (and symmetrically for v)
        pull = torch.bmm(torch.sigmoid(s_neg).transpose(1, 2), vr)  # [B, 2, d]
        coeff = (1 - torch.sigmoid(s_pos)).unsqueeze(1)
        grad = torch.cat([pull[:, 0] - coeff * vb, pull[:, 1] - coeff * va])
        emb.index_add_(0, torch.cat([a, b]), grad, alpha=-self.lr)
        return loss.sum()
