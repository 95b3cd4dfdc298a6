"""Image embeddings: the bridge from the base model's space to every other model.

1. Vocabulary images (the stimuli of the base neurons) get embeddings e_x such that every base
   neuron is the mean of its stimuli:  minimise  sum_n || v_n - mean_{x in X_n} e_x ||^2.
   With A[n, x] = 1/|X_n| this is the sparse least-squares problem A E = V. There are usually
   more vocabulary images than neurons, so the system is under-determined; ConceptEvo returns
   its minimum-norm solution E = A^T (A A^T + lambda I)^{-1} V, the limit of ridge regression
   as lambda -> 0 (lambda is 1e-8 of the mean diagonal of A A^T, which only matters when two
   neurons have identical stimuli). A A^T is a small n_neurons x n_neurons matrix whose
   Cholesky factorisation solves all d columns at once (under a second for VGG16's 4,224
   neurons). ``method="lsqr"`` solves each column with LSQR from zero instead (also the
   minimum-norm solution; slower, kept for comparison).
2. The other probe images get embeddings from the images or neurons they share responsive
   neurons with (:func:`embed_other_images`).
3. Any neuron of any model is then projected as the mean embedding of its stimuli
   (:func:`project`), and :func:`fidelity` measures how well the base neurons survive the
   round trip.

The activation-weighted projection (ConceptEvo's default, ``[space] projection =
"activations"``) replaces "the mean over the top-k stimuli" by a weighted mean over every probe
image, with weights that fall off exponentially below the neuron's strongest activation
(:func:`activation_weights`): w_n(x) proportional to exp((a_n(x) - max a_n) / (T sigma_n)). The
image embedding is then the minimum-norm (ridge) solution of W E = V for the base neurons
(:func:`solve_image_embedding` with the dense W), so every probe image gets an embedding from
the base neurons directly and no indirect step is needed. A neuron is described by how it
ranks the whole probe set rather than by its 20 best images alone, which places neurons of
the same concept closer together (docs/space.md has the measurements).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

from ..params import INDIRECT_METHODS, PROJECTIONS  # noqa: F401 (part of this module's API)

if TYPE_CHECKING:
    from ..stimuli import StimuliResult


def stimulus_matrix(stimuli: np.ndarray, rows: np.ndarray, n_images: int,
                    allowed: np.ndarray | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """A [len(rows), n_vocab] with A[i, x] = 1/|X_n| for the stimuli X_n of neuron rows[i],
    and the vocabulary (sorted image ids) its columns stand for.

    ``allowed`` (bool [n_images]) keeps only those images in the vocabulary: a neuron then
    averages its allowed stimuli (a row with none stays empty).
    """
    sub = np.asarray(stimuli)[rows]
    n, k = sub.shape
    keep = np.ones(sub.shape, dtype=bool) if allowed is None else allowed[sub]
    row_ids = np.repeat(np.arange(n), k)[keep.reshape(-1)]
    vocab, cols = np.unique(sub.reshape(-1)[keep.reshape(-1)], return_inverse=True)
    weight = 1.0 / np.maximum(keep.sum(1), 1)
    a = sp.csr_matrix((weight[row_ids], (row_ids, cols)), shape=(n, vocab.size))
    a.sum_duplicates()
    return a, vocab


def solve_image_embedding(a: sp.csr_matrix, v: np.ndarray, method: str = "normal",
                          ridge: float = 1e-8, device: str | torch.device = "cpu",
                          dense_limit: int = 12_000) -> np.ndarray:
    """Minimum-norm solution E [n_vocab, d] of A E = V (see the module docstring).

    ``"normal"`` factorises the n_neurons x n_neurons matrix A A^T + lambda I by a dense
    Cholesky decomposition on ``device`` (float64) up to ``dense_limit`` neurons, by a sparse
    LU beyond; ``"lsqr"`` runs LSQR on each column.
    """
    v = np.asarray(v, dtype=np.float64)
    if method == "normal":
        gram = (a @ a.T).tocsc()
        lam = ridge * float(gram.diagonal().mean())
        if gram.shape[0] <= dense_limit:
            g = torch.as_tensor(gram.toarray(), dtype=torch.float64, device=device)
            g.diagonal().add_(lam)
            chol = torch.linalg.cholesky(g)
            y = torch.cholesky_solve(torch.as_tensor(v, dtype=torch.float64, device=device),
                                     chol).cpu().numpy()
        else:
            shifted = (gram + lam * sp.identity(gram.shape[0], format="csc")).tocsc()
            y = spla.splu(shifted, permc_spec="MMD_AT_PLUS_A").solve(v)
        return np.asarray(a.T @ y)
    if method == "lsqr":
        cols = [spla.lsqr(a, v[:, j], atol=1e-12, btol=1e-12, iter_lim=20 * a.shape[1])[0]
                for j in range(v.shape[1])]
        return np.stack(cols, axis=1)
    raise ValueError(f"unknown image embedding method {method!r}; use 'normal' or 'lsqr'")


def rmse(a: sp.csr_matrix, e: np.ndarray, v: np.ndarray) -> float:
    """sqrt(mean_n || (A E)_n - v_n ||^2): how well the images reproduce the base neurons."""
    diff = np.asarray(a @ e) - v
    return float(np.sqrt((diff ** 2).sum(1).mean()))


def _mean_rows(index: np.ndarray, valid: np.ndarray, table: np.ndarray) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Mean of table[index[i, j]] over j where valid[i, j]; rows with none are flagged."""
    count = valid.sum(1)
    total = (table[np.where(valid, index, 0)] * valid[..., None]).sum(1)
    ok = count > 0
    out = np.zeros((index.shape[0], table.shape[1]), dtype=np.float64)
    out[ok] = total[ok] / count[ok, None]
    return out, ok


def embed_other_images(targets: np.ndarray, responsive: np.ndarray, e: np.ndarray,
                       known: np.ndarray, neuron_embedding: np.ndarray, neuron_valid: np.ndarray,
                       method: str = "neuron-mean", seed: int = 0, lr: float = 0.01,
                       epochs: int = 1, negatives: int = 2, pairs_per_neuron: int = 500,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embeddings [len(targets), d] of probe images outside the vocabulary.

    Parameters
    ----------
    targets : int64 image ids to embed.
    responsive : int64 [n_images, k_i] responsive neurons of every probe image (base model).
    e : float [n_images, d] image embeddings; rows where ``known`` are fixed and used.
    neuron_embedding, neuron_valid : the base space v_n [n_neurons, d] and its valid rows.
    method :
        ``"neuron-mean"`` (closed form): the mean base embedding of the image's responsive
        neurons, e_x = mean_{n in R_x} v_n.
        ``"image-mean"`` (closed form): the mean embedding of the known images that share a
        responsive neuron with x, averaged per shared neuron.
        ``"skipgram"`` (the paper's): images that share a responsive neuron are pulled
        together by skip-gram with negatives while known embeddings stay fixed (reference:
        lr 0.01, 1 epoch, 2 negatives, up to 500 pairs per neuron), starting from
        uniform(-0.5, 0.5).
    """
    targets = np.asarray(targets, dtype=np.int64)
    d = e.shape[1]
    if targets.size == 0:
        return np.zeros((0, d))
    resp = np.asarray(responsive)[targets]
    if method == "neuron-mean":
        valid = neuron_valid[resp]
        out, ok = _mean_rows(resp, valid, neuron_embedding.astype(np.float64))
        out[~ok] = e[known].mean(0)
        return out
    if method == "image-mean":
        n_neurons = neuron_embedding.shape[0]
        known_ids = np.flatnonzero(known)
        r_known = np.asarray(responsive)[known_ids]                      # [n_known, k_i]
        rows = np.repeat(np.arange(known_ids.size), r_known.shape[1])
        inc = sp.csr_matrix((np.ones(rows.size), (r_known.reshape(-1), rows)),
                            shape=(n_neurons, known_ids.size))            # neuron x known image
        counts = np.asarray(inc.sum(1)).ravel()
        centroid = np.asarray(inc @ e[known_ids]) / np.maximum(counts, 1)[:, None]
        out, ok = _mean_rows(resp, counts[resp] > 0, centroid)
        out[~ok] = e[known].mean(0)
        return out
    if method == "skipgram":
        return _indirect_skipgram(targets, responsive, e, known, seed, lr, epochs, negatives,
                                  pairs_per_neuron, progress)
    raise ValueError(f"unknown indirect method {method!r}; use one of {INDIRECT_METHODS}")


def _indirect_skipgram(targets, responsive, e, known, seed, lr, epochs, negatives,
                       pairs_per_neuron, progress) -> np.ndarray:
    """The reference's indirect embedding, vectorised over mini-batches of image pairs."""
    g = torch.Generator().manual_seed(seed)
    n_images, k = responsive.shape
    emb = torch.from_numpy(np.asarray(e, dtype=np.float32)).clone()
    is_target = torch.zeros(n_images, dtype=torch.bool)
    is_target[torch.from_numpy(targets)] = True
    emb[is_target] = torch.rand(int(is_target.sum()), emb.shape[1], generator=g) - 0.5
    neuron = torch.from_numpy(np.asarray(responsive, dtype=np.int64).reshape(-1))
    image = torch.arange(n_images).repeat_interleave(k)
    for _ in range(epochs):
        # each neuron's images in a random order; consecutive ones (first 500) are pairs
        key = neuron.double() + torch.rand(neuron.shape, generator=g, dtype=torch.float64)
        order = torch.argsort(key)
        nb, ib = neuron[order], image[order]
        start = torch.ones_like(nb, dtype=torch.bool)
        start[1:] = nb[1:] != nb[:-1]
        group_start = torch.cummax(torch.where(start, torch.arange(nb.numel()), 0), 0).values
        position = torch.arange(nb.numel()) - group_start
        same = (nb[1:] == nb[:-1]) & (position[:-1] < pairs_per_neuron)
        x, y = ib[:-1][same], ib[1:][same]
        useful = is_target[x] | is_target[y]
        x, y = x[useful], y[useful]
        for s in range(0, x.numel(), 512):
            xb, yb = x[s:s + 512], y[s:s + 512]
            vx, vy = emb[xb], emb[yb]
            coeff = (1 - torch.sigmoid((vx * vy).sum(1))).unsqueeze(1)
            for src, other, v_src in ((xb, vy, vx), (yb, vx, vy)):
                neg = emb[torch.randint(0, n_images, (src.numel(), negatives), generator=g)]
                sig = torch.sigmoid((neg @ v_src.unsqueeze(2)).squeeze(2)).unsqueeze(2)
                grad = coeff * other - (sig * neg).sum(1)
                grad[~is_target[src]] = 0
                emb.index_add_(0, src, grad, alpha=lr)
            if progress is not None:
                progress(xb.numel())
    return emb[torch.from_numpy(targets)].double().numpy()


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


def project(stimuli: np.ndarray, e: np.ndarray) -> np.ndarray:
    """v~ [n, d]: each neuron as the mean embedding of its stimuli (stimuli int64 [n, k])."""
    return e[np.asarray(stimuli)].mean(1)


def _exponent(top: torch.Tensor, var: torch.Tensor, temperature: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) float32 of the weights exp((a - shift) * scale) of neurons whose finite
    activations have the maximum ``top`` and the variance ``var``: shift = top and scale =
    1 / (temperature sigma), or 0 and 0 for a flat neuron (sigma <= 1e-6 |top|), which then
    weighs every image alike."""
    sigma = var.double().sqrt()
    flat = ~(sigma > 1e-6 * top.double().abs().clamp(min=1e-30))
    inv = torch.where(flat, 0.0, 1.0 / (temperature * sigma)).float()
    return torch.where(flat, 0.0, top.float()), inv


class ActivationWeights:
    """The weights of the activation-weighted projection.

    w_n(x) = exp((a_n(x) - max_x a_n(x)) / (temperature * sigma_n)) / Z_n, with sigma_n the
    standard deviation of neuron n's activations over the probe set and Z_n the sum over the
    probe set: the image a neuron responds to most weighs most, an image one standard
    deviation lower exp(-1 / temperature) times that. Non-finite activations weigh 0; a
    neuron whose activation is the same on every image (sigma 0) weighs every image equally.

    ``activations`` [n, n_images] may be stored relative to a per-neuron ``scale`` (the
    float16 ``StimuliResult.activations`` with their ``activation_scale``): each block is then
    rescaled on its own, so no float32 copy of the whole matrix is made. They are read in
    blocks of whole rows (about ``block_size`` values each), in torch on ``device`` (float32
    weights, float64 statistics): a projection is one pass and never holds more than one
    block of weights.
    """

    def __init__(self, activations: np.ndarray, temperature: float = 1.0,
                 block_size: int = 1 << 23, device: str | torch.device = "cpu",
                 scale: np.ndarray | None = None):
        self.a = np.asarray(activations)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        self.temperature = float(temperature)
        self.rows_per_block = max(1, int(block_size) // max(1, self.a.shape[1]))
        self.device = torch.device(device)

    def _weights(self, a: torch.Tensor) -> torch.Tensor:
        """Normalised weights float32 [r, n_images] of a block of whole rows (``a`` is
        overwritten)."""
        finite = torch.isfinite(a)
        clean = bool(finite.all())
        if clean:
            var, _ = torch.var_mean(a, dim=1, correction=0, keepdim=True)
            top = a.amax(1, keepdim=True)
        else:  # statistics over the finite values only
            count = finite.sum(1, keepdim=True).clamp(min=1)
            mean = torch.where(finite, a, 0.0).sum(1, keepdim=True) / count
            var = torch.where(finite, a - mean, 0.0).square().sum(1, keepdim=True) / count
            top = torch.where(finite, a, -torch.inf).amax(1, keepdim=True)
        shift, inv = _exponent(top, var, self.temperature)
        # w = exp((a - top) / (T sigma)), in place; flat rows get exp(0) = 1 everywhere
        w = a.sub_(shift).mul_(inv).clamp_(max=0).exp_()
        if not clean:
            w.masked_fill_(~finite, 0.0)
        norm = w.sum(1, keepdim=True, dtype=torch.float64).clamp(min=np.finfo(np.float64).tiny)
        return w.div_(norm.float())

    def blocks(self):
        """(row slice, normalised weights float32 [r, n_images]), block by block."""
        n = self.a.shape[0]
        for start in range(0, n, self.rows_per_block):
            rows = slice(start, min(start + self.rows_per_block, n))
            a = np.asarray(self.a[rows], dtype=np.float32)
            if self.scale is not None:
                a = a * self.scale[rows, None]
            yield rows, self._weights(torch.tensor(a, device=self.device))

    def dense(self) -> np.ndarray:
        """The whole weight matrix [n, n_images], float32."""
        return torch.cat([w for _, w in self.blocks()]).cpu().numpy()

    def project(self, e: np.ndarray) -> np.ndarray:
        """v~ [n, d] = W E, one block of neurons at a time."""
        e_t = torch.as_tensor(np.asarray(e, dtype=np.float32), device=self.device)
        out = np.zeros((self.a.shape[0], e_t.shape[1]))
        for rows, w in self.blocks():
            out[rows] = (w @ e_t).cpu().numpy()
        return out

    def solve(self, v: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
        """The minimum-norm ridge solution E [n_images, d] of W E = V (these neurons are the
        base): E = W^T (W W^T + lambda I)^-1 V with lambda = ridge x mean diag(W W^T),
        factorised by Cholesky in float64. Holds W (float32) in memory once."""
        w = torch.cat([w for _, w in self.blocks()])
        gram = (w @ w.T).double()
        gram.diagonal().add_(ridge * float(gram.diagonal().mean()))
        y = torch.cholesky_solve(torch.as_tensor(np.asarray(v, dtype=np.float64),
                                                 device=self.device),
                                 torch.linalg.cholesky(gram))
        return (w.T @ y.float()).double().cpu().numpy()


def project_streamed(blocks: Callable[[], Iterable[tuple[np.ndarray, torch.Tensor]]],
                     n_neurons: int, e: np.ndarray, temperature: float = 1.0,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """v~ [n_neurons, d] of the activation-weighted projection (the weights of
    :class:`ActivationWeights`) from activations that arrive as blocks of images, never as
    the whole [n_neurons, n_images] matrix: what a stimulus pass that does not store its
    activations projects with (docs/scaling.md).

    ``blocks()`` returns a new iterator over (image ids int64 [b], activations float32
    [b, n_neurons]) on each call, the same values each time (images missing from every block
    weigh 0, as non-finite activations do). Two passes: the per-neuron count, sum, sum of
    squares (float64) and maximum of the finite activations; then each block's unnormalised
    weights exp((a - max) / (T sigma)), their sums and the weighted sums of the image
    embeddings ``e`` [n_images, d], accumulated in float64. Memory: a few n_neurons x d
    arrays and one block. Equal to :meth:`ActivationWeights.project` up to the order of float
    summation (a neuron without a finite activation is NaN in both).
    """
    dev = torch.device(device)
    count = torch.zeros(n_neurons, dtype=torch.float64, device=dev)
    total = torch.zeros_like(count)
    squares = torch.zeros_like(count)
    top = torch.full((n_neurons,), -torch.inf, dtype=torch.float32, device=dev)
    for _, a in blocks():
        a = a.to(dev)
        finite = torch.isfinite(a)
        clean = torch.where(finite, a, 0.0).double()
        count += finite.sum(0)
        total += clean.sum(0)
        squares += clean.square().sum(0)
        top = torch.maximum(top, torch.where(finite, a, -torch.inf).amax(0))
    mean = total / count.clamp(min=1)
    var = (squares / count.clamp(min=1) - mean.square()).clamp(min=0)
    shift, inv = _exponent(top, var, temperature)
    e_t = torch.as_tensor(np.asarray(e, dtype=np.float32), device=dev)
    norm = torch.zeros_like(count)
    weighted = torch.zeros((n_neurons, e_t.shape[1]), dtype=torch.float64, device=dev)
    for ids, a in blocks():
        a = a.to(dev)
        finite = torch.isfinite(a)
        w = (a - shift).mul_(inv).clamp_(max=0).exp_().masked_fill_(~finite, 0.0)
        norm += w.sum(0, dtype=torch.float64)
        weighted += (w.T @ e_t[torch.as_tensor(ids, device=dev)]).double()
    out = weighted / norm.clamp(min=np.finfo(np.float64).tiny)[:, None]
    out[count == 0] = torch.nan  # no finite activation: no place (as ActivationWeights gives)
    return out.cpu().numpy()


def activation_weights(activations: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Weights [n, n_images] of the activation-weighted projection, rows summing to 1 (see
    :class:`ActivationWeights`, which computes the same block by block). float64."""
    return ActivationWeights(activations, temperature).dense()


def fidelity(projected: np.ndarray, base: np.ndarray, targets: np.ndarray | None = None,
             chunk: int = 4096) -> dict:
    """How well projected neurons land on their own base embedding.

    Parameters
    ----------
    projected : [m, d] projected neurons v~.
    base : [n, d] the candidate base embeddings.
    targets : int [m], the row of ``base`` that each projected neuron should find (default:
        ``arange(m)``, i.e. the base model projected onto itself).

    Returns mean cosine(v~_i, v_target(i)), and retrieval accuracy: the fraction of neurons
    whose own base embedding is the nearest (top-1) / among the 10 nearest (top-10) to v~_i
    by cosine similarity.
    """
    p = F.normalize(torch.as_tensor(projected, dtype=torch.float64), dim=1)
    b = F.normalize(torch.as_tensor(base, dtype=torch.float64), dim=1)
    t = torch.arange(p.shape[0]) if targets is None else torch.as_tensor(targets)
    own = (p * b[t]).sum(1)
    better = torch.empty(p.shape[0], dtype=torch.long)
    for s in range(0, p.shape[0], chunk):
        sims = p[s:s + chunk] @ b.T
        better[s:s + chunk] = (sims > own[s:s + chunk, None]).sum(1)
    return {"mean_cosine": float(own.mean()), "top1": float((better < 1).double().mean()),
            "top10": float((better < 10).double().mean()), "n_neurons": int(p.shape[0])}
