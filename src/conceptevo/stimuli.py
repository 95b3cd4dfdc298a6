"""Stimuli and responsive neurons: one streaming forward pass of the probe set per checkpoint.

* Stimuli of neuron n: the ``k_stimuli`` probe images with the largest activation a_n(x),
  with each activation and the location (h, w) of the maximum in the layer's feature map.
* Responsive neurons of image x: the ``k_responsive`` neurons with the largest activation on
  x, ranked over all probed layers at once on raw activations (as the reference does).
* Per neuron summary statistics for diagnosis: maximum and mean activation, fraction of images
  with a positive activation, and the count of non-finite activations.
* The model's top-1 prediction for every image (the logits come with the same forward pass):
  the probe accuracy of the checkpoint, and the check that the probe's class order is the
  model's output order (:mod:`conceptevo.data.classes`).
* Optionally (``record_activations``), every activation a_n(x): the input of the
  activation-weighted projection into the unified space (docs/space.md). It is stored as
  float16 relative to each neuron's largest absolute activation (``activation_scale``), so a
  checkpoint costs 2 bytes per neuron and probe image. While the pass runs, each batch's
  float32 activations are appended to an anonymous temporary file (sequential writes; the
  page cache, not the process's memory, holds them) and each neuron's running maximum |a| is
  kept; :meth:`StimulusAccumulator.result` then reads the file back in blocks of images into
  the float16 matrix. The pass's memory is that matrix, 2 bytes per neuron and image, plus a
  batch; the file takes 4 bytes per neuron and image on disk until the result is built
  (docs/scaling.md).

The pass keeps a running top-k buffer per neuron and merges each batch into it with
``torch.topk``, so memory is ``n_neurons x k`` plus one batch of activations. Ties are broken
deterministically by the smaller id (image id for stimuli, neuron id for responsive neurons),
which makes the result independent of the batch size and of how the probe set is sharded.

A pass can be split over processes (``torchrun``, docs/scaling.md): each one streams a shard
of the batches into its own accumulator (``record_batches=True``) and :func:`merge_shards`
combines them into exactly the accumulator a single pass over every batch would hold, bit for
bit: the top-k merges are exact, and the float64 activation sums are re-added batch by batch
in the order a single pass adds them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import NonFiniteActivationError
from .models.adapter import LayerInfo, ModelAdapter
from .spill import ActivationSpill

NONFINITE_POLICIES = ("raise", "record")
_NO_ID = torch.iinfo(torch.int64).max


def ranked_topk(values: torch.Tensor, ids: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row ordered by value (descending), ties by id (ascending).

    Parameters
    ----------
    values : float [R, M], no NaN (``-inf`` marks empty slots).
    ids : int64 [R, M] (may be an expanded view), the tie-breaking key of each column.
    k : number of entries kept, ``k <= M``.

    Returns
    -------
    top_values : [R, k], top_ids : int64 [R, k], columns : int64 [R, k] (to gather extras).

    ``torch.topk`` does the selection; a row whose k-th and (k+1)-th values tie is re-ranked
    exactly by a lexicographic sort, so ties never depend on the order columns arrive in.
    """
    rows, m = values.shape
    if k > m:
        raise ValueError(f"cannot take the top {k} of {m} entries")
    if k < m:
        top_v, cols = values.topk(k + 1, dim=1)
        boundary_tie = top_v[:, k - 1] == top_v[:, k]
        top_v, cols = top_v[:, :k], cols[:, :k]
    else:
        cols = torch.arange(m, device=values.device).expand(rows, m).clone()
        top_v = values.clone()
        boundary_tie = torch.zeros(rows, dtype=torch.bool, device=values.device)
    top_ids = ids.gather(1, cols)
    # Order the selection by (value desc, id asc): stable sort on id, then on value.
    by_id = top_ids.argsort(dim=1, stable=True)
    by_value = top_v.gather(1, by_id).argsort(dim=1, descending=True, stable=True)
    order = by_id.gather(1, by_value)
    cols = cols.gather(1, order)
    if boundary_tie.any():
        tied = boundary_tie.nonzero().squeeze(1)
        sub_v, sub_ids = values[tied], ids[tied]
        by_id = sub_ids.argsort(dim=1, stable=True)
        by_value = sub_v.gather(1, by_id).argsort(dim=1, descending=True, stable=True)
        cols[tied] = by_id.gather(1, by_value)[:, :k]
    return values.gather(1, cols), ids.gather(1, cols), cols


@dataclass
class StimuliResult:
    """Everything one stimulus pass measures for one checkpoint.

    Attributes
    ----------
    layers : probed layers (their ``offset`` gives each layer's neuron range).
    stimuli : int64 [n_neurons, k_stimuli] image ids, most exciting first.
    stimuli_act : float32 [n_neurons, k_stimuli] their activations.
    stimuli_loc : int16 [n_neurons, k_stimuli, 2] (h, w) of the maximum in the layer's map.
    responsive : int64 [n_images, k_responsive] neuron ids, strongest first.
    responsive_act : float32 [n_images, k_responsive] their activations.
    act_max, act_mean, frac_positive : float32 [n_neurons] over the probe set.
    n_nonfinite : int64 [n_neurons] count of NaN/inf activations (0 unless recorded).
    activations : float16 [n_neurons, n_images] a_n(x) / activation_scale[n] (non-finite
        activations as -inf), or None when the pass did not record them.
    activation_scale : float32 [n_neurons] each neuron's largest absolute finite activation
        (1 where it is 0), or None.
    predicted : int32 [n_images] the model's top-1 output per image (-1 where the logits were
        not finite), or None (a result stored before predictions were recorded).
    projected : float32 [n_neurons, d] v~ of every neuron in the unified space whose key is
        ``meta["space"]``, computed from the activations during a pass that does not store
        them (``[stimuli] store_activations = false``, docs/scaling.md), or None.
    """

    layers: list[LayerInfo]
    stimuli: np.ndarray
    stimuli_act: np.ndarray
    stimuli_loc: np.ndarray
    responsive: np.ndarray
    responsive_act: np.ndarray
    act_max: np.ndarray
    act_mean: np.ndarray
    frac_positive: np.ndarray
    n_nonfinite: np.ndarray
    meta: dict = field(default_factory=dict)
    activations: np.ndarray | None = None
    activation_scale: np.ndarray | None = None
    predicted: np.ndarray | None = None
    projected: np.ndarray | None = None

    ARRAYS = ("stimuli", "stimuli_act", "stimuli_loc", "responsive", "responsive_act",
              "act_max", "act_mean", "frac_positive", "n_nonfinite")

    @property
    def n_neurons(self) -> int:
        return self.stimuli.shape[0]

    @property
    def n_images(self) -> int:
        return self.responsive.shape[0]

    @property
    def dead(self) -> np.ndarray:
        """bool [n_neurons]: neurons with no positive activation on any probe image."""
        return self.act_max <= 0

    def activation_matrix(self) -> np.ndarray:
        """float32 [n_neurons, n_images]: every recorded activation a_n(x)."""
        if self.activations is None:
            raise ValueError("this stimulus pass did not record the activations")
        return self.activations.astype(np.float32) * self.activation_scale[:, None]

    def layer_of(self) -> np.ndarray:
        """int64 [n_neurons]: the layer index of each neuron."""
        return np.repeat(np.arange(len(self.layers)), [li.channels for li in self.layers])

    def layer_slice(self, name: str) -> slice:
        for info in self.layers:
            if info.name == name:
                return slice(info.offset, info.offset + info.channels)
        raise KeyError(f"no layer {name!r}; layers: {[li.name for li in self.layers]}")


class StimulusAccumulator:
    """Running top-k buffers of one stimulus pass; batches may arrive in any order.

    Parameters
    ----------
    layers : the adapter's :class:`LayerInfo` list.
    n_images : size of the probe set (image ids are ``0 .. n_images - 1``).
    k_stimuli, k_responsive : sizes of the two rankings (``k_responsive`` 0: no ranking of
        responsive neurons, ``responsive`` is then [n_images, 0]).
    device : where the buffers live (the model's device).
    record_batches : also keep each batch's activation sums (float64 [n_neurons] per batch,
        keyed by the batch's first image id), so that :func:`merge_shards` can add them in the
        order of a single pass. For a shard of a distributed pass.
    record_activations : also keep every activation, for the activation-weighted
        projection: each batch's float32 activations go to an :class:`ActivationSpill` (a
        temporary file, 4 bytes per neuron and image on disk) and each neuron's largest
        finite |a| is tracked; :meth:`result` builds the float16 matrix from them and closes
        the file. Call :meth:`close` (or use the accumulator as a context manager) to drop
        an accumulator without building its result; :func:`compute_stimuli` does so itself
        when the pass fails or is interrupted.
    spill_dir : directory of that temporary file (default: the system's temporary
        directory, i.e. ``TMPDIR``).
    """

    def __init__(self, layers: list[LayerInfo], n_images: int, k_stimuli: int,
                 k_responsive: int, device: torch.device | str = "cpu",
                 record_batches: bool = False, record_activations: bool = False,
                 spill_dir: str | os.PathLike | None = None):
        n = sum(li.channels for li in layers)
        if k_stimuli > n_images:
            raise ValueError(f"k_stimuli={k_stimuli} exceeds the {n_images} probe images")
        if k_responsive > n:
            raise ValueError(f"k_responsive={k_responsive} exceeds the {n} probed neurons")
        self.layers, self.n_images, self.n_neurons = layers, n_images, n
        self.k_stimuli, self.k_responsive = k_stimuli, k_responsive
        dev = torch.device(device)
        self.top_act = torch.full((n, k_stimuli), -torch.inf, device=dev)
        self.top_ids = torch.full((n, k_stimuli), _NO_ID, dtype=torch.long, device=dev)
        self.top_where = torch.zeros((n, k_stimuli), dtype=torch.long, device=dev)
        self.responsive = torch.full((n_images, k_responsive), -1, dtype=torch.long)
        self.responsive_act = torch.full((n_images, k_responsive), -torch.inf)
        self.act_max = torch.full((n,), -torch.inf, dtype=torch.float64, device=dev)
        self.act_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        self.n_positive = torch.zeros(n, dtype=torch.long, device=dev)
        self.n_nonfinite = torch.zeros(n, dtype=torch.long, device=dev)
        self.n_seen = 0
        self.batch_sums: list[tuple[int, torch.Tensor]] | None = [] if record_batches else None
        # recorded activations: float32 rows in a temporary file, and max |a| per neuron
        self.spill = ActivationSpill(n, spill_dir) if record_activations else None
        self.abs_max = torch.zeros(n, dtype=torch.float32) if record_activations else None
        self._built: dict | None = None  # the float16 activations once result() built them
        self.seen = torch.zeros(n_images, dtype=torch.bool)
        self.predicted = torch.full((n_images,), -1, dtype=torch.int32)
        self._neuron_ids = torch.arange(n, device=dev)

    def update(self, acts: torch.Tensor, where: torch.Tensor, image_ids: torch.Tensor,
               logits: torch.Tensor | None = None) -> None:
        """Merge one batch: acts float [B, N], where int64 [B, N], image_ids int64 [B], and
        optionally the model's logits [B, n_outputs] (their top-1 output is recorded).

        Non-finite activations must already be replaced by ``-inf`` and counted with
        :meth:`count_nonfinite`.
        """
        b = acts.shape[0]
        acts_t = acts.t()
        cand_act = torch.cat([self.top_act, acts_t], dim=1)
        cand_ids = torch.cat([self.top_ids, image_ids.view(1, b).expand(self.n_neurons, b)], 1)
        cand_where = torch.cat([self.top_where, where.t()], dim=1)
        self.top_act, self.top_ids, cols = ranked_topk(cand_act, cand_ids, self.k_stimuli)
        self.top_where = cand_where.gather(1, cols)

        rows = image_ids.cpu()
        if self.k_responsive:
            r_act, r_ids, _ = ranked_topk(acts, self._neuron_ids.expand(b, self.n_neurons),
                                          self.k_responsive)
            self.responsive[rows] = r_ids.cpu()
            self.responsive_act[rows] = r_act.float().cpu()

        finite = torch.isfinite(acts)
        self.act_max = torch.maximum(self.act_max, acts.max(dim=0).values.double())
        batch_sum = torch.where(finite, acts, 0.0).sum(dim=0, dtype=torch.float64)
        self.act_sum += batch_sum
        if self.batch_sums is not None:
            self.batch_sums.append((int(image_ids[0]), batch_sum))
        self.n_positive += (acts > 0).sum(dim=0)
        self.n_seen += b
        self.seen[rows] = True
        if logits is not None:
            top = logits.detach().argmax(dim=1).to(torch.int32)
            top[~torch.isfinite(logits.detach()).all(dim=1)] = -1
            self.predicted[rows] = top.cpu()
        if self.spill is not None:
            self._record(acts, rows)

    @property
    def records_activations(self) -> bool:
        return self.spill is not None

    def _record(self, acts: torch.Tensor, rows: torch.Tensor) -> None:
        """Spill a batch's activations and fold it into each neuron's largest finite |a|."""
        if self._built is not None:
            raise RuntimeError("this accumulator's activations were already read out by "
                               "result(); start a new accumulator")
        a = acts.detach().float().cpu().contiguous()
        if a.shape[0]:
            magnitude = a.abs().nan_to_num_(nan=0.0, posinf=0.0)
            self.abs_max = torch.maximum(self.abs_max, magnitude.amax(dim=0))
            self.spill.append(a.numpy(), rows.numpy())

    def close(self) -> None:
        """Remove the temporary file of the recorded activations (if any); the result can
        then no longer be built unless it was already."""
        if self.spill is not None:
            self.spill.close()

    def __enter__(self) -> StimulusAccumulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count_nonfinite(self, acts: torch.Tensor) -> torch.Tensor:
        """Count NaN/inf per neuron and replace them by -inf in place; returns the mask."""
        bad = ~torch.isfinite(acts)
        self.n_nonfinite += bad.sum(dim=0)
        acts.masked_fill_(bad, -torch.inf)
        return bad

    def merge(self, other: StimulusAccumulator) -> None:
        """Fold in the accumulator of a disjoint shard of the probe set (exact)."""
        cand_act = torch.cat([self.top_act, other.top_act.to(self.top_act.device)], 1)
        cand_ids = torch.cat([self.top_ids, other.top_ids.to(self.top_ids.device)], 1)
        cand_where = torch.cat([self.top_where, other.top_where.to(self.top_where.device)], 1)
        self.top_act, self.top_ids, cols = ranked_topk(cand_act, cand_ids, self.k_stimuli)
        self.top_where = cand_where.gather(1, cols)
        if self.k_responsive:
            filled = other.responsive[:, 0] >= 0
            self.responsive[filled] = other.responsive[filled]
            self.responsive_act[filled] = other.responsive_act[filled]
        self.act_max = torch.maximum(self.act_max, other.act_max.to(self.act_max.device))
        self.act_sum += other.act_sum.to(self.act_sum.device)
        self.n_positive += other.n_positive.to(self.n_positive.device)
        self.n_nonfinite += other.n_nonfinite.to(self.n_nonfinite.device)
        self.n_seen += other.n_seen
        if (self.spill is None) != (other.spill is None):
            raise ValueError("cannot merge an accumulator that records activations with one "
                             "that does not")
        if self.spill is not None:
            if self._built is not None:
                raise RuntimeError("this accumulator's activations were already read out by "
                                   "result(); merge before building the result")
            if other._built is not None:
                raise RuntimeError("the other accumulator's activations were already read "
                                   "out by result(); merge before building the result")
            self.spill.extend(other.spill)
            self.abs_max = torch.maximum(self.abs_max, other.abs_max)
        self.predicted[other.seen] = other.predicted[other.seen]
        self.seen |= other.seen

    def to(self, device: torch.device | str) -> StimulusAccumulator:
        """Move the buffers to ``device`` (in place; returns self). Partial results travel
        between processes on the CPU."""
        dev = torch.device(device)
        for name in ("top_act", "top_ids", "top_where", "act_max", "act_sum", "n_positive",
                     "n_nonfinite", "_neuron_ids"):
            setattr(self, name, getattr(self, name).to(dev))
        if self.batch_sums is not None:
            self.batch_sums = [(first, s.to(dev)) for first, s in self.batch_sums]
        return self

    def result(self, meta: dict | None = None) -> StimuliResult:
        if self.n_seen != self.n_images:
            raise RuntimeError(f"the pass saw {self.n_seen} images, expected {self.n_images}")
        widths = torch.tensor([li.map_size[1] for li in self.layers])
        width = torch.repeat_interleave(widths, torch.tensor([li.channels for li in self.layers]))
        where = self.top_where.cpu()
        loc = torch.stack([where // width[:, None], where % width[:, None]], dim=2)
        n = max(self.n_seen, 1)
        return StimuliResult(
            layers=list(self.layers),
            stimuli=self.top_ids.cpu().numpy(),
            stimuli_act=self.top_act.float().cpu().numpy(),
            stimuli_loc=loc.to(torch.int16).numpy(),
            responsive=self.responsive.numpy(),
            responsive_act=self.responsive_act.numpy(),
            act_max=self.act_max.float().cpu().numpy(),
            act_mean=(self.act_sum / n).float().cpu().numpy(),
            frac_positive=(self.n_positive.double() / n).float().cpu().numpy(),
            n_nonfinite=self.n_nonfinite.cpu().numpy(),
            meta=dict(meta or {}),
            predicted=self.predicted.numpy().copy(),
            **self._scaled_activations(),
        )

    def float_activations(self) -> np.ndarray | None:
        """float32 [n_neurons, n_images] of every recorded activation as computed (images
        never seen: -inf), or None when none were recorded. Call it before :meth:`result`,
        which rounds them to float16 and discards the temporary file."""
        if self.spill is None:
            return None
        if self.spill.closed:
            raise RuntimeError("the recorded activations were already rounded by result()")
        out = np.full((self.n_neurons, self.n_images), -np.inf, dtype=np.float32)
        for ids, rows in self.spill.blocks():
            out[:, ids] = rows.T
        return out

    def activation_blocks(self):
        """Yield (image ids int64 [b], float32 activations [b, n_neurons]) block by block from
        the temporary file, each value rounded as the stored float16 matrix rounds it (a / scale
        in float16, times scale): what a pass that does not store its activations projects
        with (:func:`conceptevo.space.image_embedding.project_streamed`). Call it before
        :meth:`result` or :meth:`drop_activations`; the blocks reuse one buffer."""
        if self.spill is None or self.spill.closed:
            raise RuntimeError("this accumulator holds no recorded activations (not recorded, "
                               "or already rounded by result() or dropped)")
        scale = torch.where(self.abs_max > 0, self.abs_max, 1.0)
        for ids, rows in self.spill.blocks():
            yield ids, (torch.from_numpy(rows) / scale).half().float().mul_(scale)

    def drop_activations(self) -> None:
        """Discard the recorded activations (their temporary file too): :meth:`result` then
        builds a result without them, as if the pass had not recorded them."""
        self.close()
        self.spill, self.abs_max = None, None

    def _scaled_activations(self) -> dict:
        """float16 [n_neurons, n_images] a / scale (scale: each neuron's largest finite |a|,
        1 where it is 0; images never seen stay -inf), built from the spilled rows block by
        block; the temporary file is closed afterwards and the matrix kept for later calls."""
        if self.spill is None:
            return {}
        if self._built is None:
            if self.spill.closed and self.spill.rows:
                raise RuntimeError("the recorded activations were discarded (close() was "
                                   "called before result())")
            scale = torch.where(self.abs_max > 0, self.abs_max, 1.0)
            out = np.full((self.n_neurons, self.n_images), -np.inf, dtype=np.float16)
            for ids, rows in self.spill.blocks():
                half = (torch.from_numpy(rows) / scale).half().numpy()
                lo, hi = int(ids[0]), int(ids[-1]) + 1
                if hi - lo == len(ids) and np.array_equal(ids, np.arange(lo, hi)):
                    out[:, lo:hi] = half.T
                else:
                    out[:, ids] = half.T
            self.spill.close()
            self._built = {"activations": out,
                           "activation_scale": scale.numpy().astype(np.float32)}
        return dict(self._built)


def merge_shards(shards: list[StimulusAccumulator | None]) -> StimulusAccumulator:
    """One accumulator from the accumulators of disjoint shards of a pass (None: a shard
    with no batch), identical to the accumulator of a single pass over the same batches.

    Every ranking, maximum and count merges exactly in any order. The activation sums are
    float64 and float addition is not associative, so when every shard recorded its batch sums
    (``record_batches=True``) they are added again one batch at a time, in the order of the
    batches' first image ids: the order a single pass adds them. (The batches themselves must
    be the single pass's batches, as whole batches: an image's activations do not depend on
    its batch, but the summation order inside a batch's sum could.)
    """
    parts = [s for s in shards if s is not None]
    if not parts:
        raise ValueError("no shard of the pass saw any image")
    out = parts[0]
    for other in parts[1:]:
        out.merge(other)
        other.close()  # its activations, if recorded, are in out's file now
    recorded = [s.batch_sums for s in parts]
    if all(r is not None for r in recorded):
        batches = sorted((item for r in recorded for item in r), key=lambda item: item[0])
        total = torch.zeros_like(out.act_sum)
        for _, batch_sum in batches:
            total += batch_sum.to(total.device)
        out.act_sum = total
        out.batch_sums = batches
    return out


def _nonfinite_report(layers: list[LayerInfo], bad_per_neuron: torch.Tensor) -> str:
    parts = []
    for info in layers:
        count = int(bad_per_neuron[info.offset:info.offset + info.channels].sum())
        if count:
            parts.append(f"{info.name} ({count} activations)")
    return ", ".join(parts)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast precision of ``amp`` passes: float16 on CUDA, bfloat16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def compute_stimuli(adapter: ModelAdapter,
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    n_images: int, *, k_stimuli: int = 20, k_responsive: int = 20,
                    device: torch.device | str = "cpu", on_nonfinite: str = "raise",
                    context: str = "", accumulator: StimulusAccumulator | None = None,
                    channels_last: bool = False, record_batches: bool = False, amp: bool = False,
                    record_activations: bool = False,
                    spill_dir: str | os.PathLike | None = None,
                    progress: Callable[[int], None] | None = None) -> StimulusAccumulator:
    """Stream ``batches`` of (images [B, C, H, W], image ids [B]) through the model.

    The model is put in eval mode and run without gradients on ``device``.

    Parameters
    ----------
    on_nonfinite : "raise" (default) stops at the first NaN/inf activation with an error that
        names ``context`` (the checkpoint) and the layers; "record" ranks them below every
        finite value and counts them per neuron (``n_nonfinite``), for diagnosis.
    accumulator : continue an existing accumulator.
    record_batches : keep each batch's sums in the new accumulator, for :func:`merge_shards`
        (a shard of a distributed pass: ``batches`` are then whole batches of the full pass).
    record_activations : keep every activation (see :class:`StimulusAccumulator`): about
        2 bytes per neuron and image of memory for the result, and a temporary file of 4 bytes
        per neuron and image in ``spill_dir`` (default: the system's temporary directory)
        until ``.result()`` is built. If the pass fails or is interrupted (KeyboardInterrupt
        too), the file of an accumulator this call created is removed before the exception
        propagates.
    amp : run the forward passes in mixed precision (``torch.autocast``: float16 on CUDA,
        bfloat16 elsewhere, :func:`amp_dtype`); activations are ranked and stored in float32
        as they come out (rounded to the autocast precision). docs/scaling.md measures what
        it changes.
    channels_last : feed the images in channels-last layout (about 2x faster convolutions on
        CPUs when the model's weights are channels-last too; results are the same).
    progress : called with the number of images of each finished batch.

    Returns the :class:`StimulusAccumulator`; call ``.result()`` for a :class:`StimuliResult`.
    """
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}")
    model = adapter.model
    was_training = model.training
    model.eval()
    acc = accumulator
    try:
        with torch.no_grad():
            for images, ids in batches:
                images = images.to(device, non_blocking=True)
                if channels_last and images.dim() == 4:
                    images = images.contiguous(memory_format=torch.channels_last)
                ids = ids.to(device)
                if adapter.layers_ is None:
                    adapter.describe(images[:1])
                if acc is None:
                    acc = StimulusAccumulator(adapter.layers_, n_images, k_stimuli,
                                              k_responsive, device, record_batches,
                                              record_activations, spill_dir)
                # locations are needed only where an image can enter a neuron's top-k
                with torch.autocast(images.device.type, dtype=amp_dtype(images.device),
                                    enabled=amp):
                    acts, where, logits = adapter.activations(images,
                                                              acc.top_act[:, -1].float())
                if not torch.isfinite(acts).all():
                    bad = acc.count_nonfinite(acts)
                    if on_nonfinite == "raise":
                        where_bad = _nonfinite_report(adapter.layers_, bad.sum(0))
                        raise NonFiniteActivationError(
                            f"{context or 'the model'} produces NaN/inf activations in "
                            f"{where_bad}; its weights have probably diverged (check the "
                            "training loss), or set on_nonfinite='record' to keep going")
                acc.update(acts, where, ids, logits)
                if progress is not None:
                    progress(images.shape[0])
    except BaseException:
        if acc is not None and acc is not accumulator:
            acc.close()  # the temporary file of the recorded activations goes with it
        raise
    finally:
        model.train(was_training)
    if acc is None:
        raise ValueError("the probe set produced no batch")
    return acc
