"""The neurons of the alignment study and every method's view of them.

A study's evaluated checkpoints are read once (:func:`load_checkpoints`); the pool of neurons
every method is scored on is fixed from them (:func:`collect_neurons`): alive neurons whose
vector is defined in every method. What does not depend on the space's seed is computed there
once: the activation correlations (over the matching images when concept labels exist, over
the whole probe set when the stimulus pass recorded the activations) and the one-to-one
matching. What does (the unified space and the baselines built from it) is recomputed for each
seed of the space by :func:`space_vectors`.

Two sets of truth labels can score the study: the concepts of the pixel masks (``concept``)
and, on any study, the class that dominates a neuron's stimuli (``klass``, a weak label that
only deep, class-selective neurons get).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import StudyConfig
from ..params import SpaceParams
from ..progress import progress_bar
from ..space.coactivation import CoActivation
from ..space.neuron_embedding import NeuronEmbedding
from ..space.projection import Projection, StimuliMean
from ..space.unified import BaseSpace, project_known
from ..stimuli import StimuliResult
from ..workspace import Workspace
from ..workspace.artifacts import (  # noqa: F401 (labels_path: re-exported)
    labels_path,
    load_labels,
    load_projection,
)
from .labels import ConceptLabels
from .matching import match_layers, standardise

#: The methods of the alignment study, ours first, in the order of the report. "stimuli" (the
#: paper's projection) is scored when the space projects by activations (else it is
#: "unified"); "correlation" when concept labels exist (it uses their matching images);
#: "correlation-probe" and "matched" when the stimulus pass recorded the activations.
METHODS: dict[str, str] = {
    "unified": "Unified space (ours)",
    "stimuli": "Projection by top-k stimuli (the paper's)",
    "no-indirect": "Projection without indirect image embeddings",
    "correlation": "Activation correlation (Pearson, matching images)",
    "correlation-probe": "Activation correlation over the whole probe set",
    "matched": "Correlation matched one-to-one (Hungarian)",
    "separate": "Per-model embeddings (no unification)",
    "random": "Random vectors",
}
#: the methods whose vectors depend on the space (and its seed)
SPACE_METHODS = ("unified", "stimuli", "no-indirect", "separate", "random")


@dataclass
class Checkpoint:
    """What the study reads of one evaluated checkpoint."""

    run: str
    epoch: int
    stimuli: StimuliResult
    projection: np.ndarray
    labels: ConceptLabels | None


def load_checkpoints(ws: Workspace, checkpoints: list[tuple[str, int]], activations: bool,
                     with_labels: bool) -> list[Checkpoint]:
    """The stimuli (with every recorded activation when ``activations``: the
    activation-weighted projection records them), the stored projection and (with
    ``with_labels``) the concept labels of each checkpoint."""
    out = []
    with progress_bar(len(checkpoints), "alignment study: reading", "ckpt") as bar:
        for run, epoch in checkpoints:
            stim = ws.load_stimuli(run, epoch, activations=activations)
            proj = load_projection(ws, run, epoch)
            labels = load_labels(ws, run, epoch)[0] if with_labels else None
            out.append(Checkpoint(run, epoch, stim, proj["embedding"].astype(np.float64),
                                  labels))
            bar.update(1)
    return out


def class_labels(stimuli: StimuliResult, image_labels: np.ndarray, share: float) -> np.ndarray:
    """int [n_neurons]: the class of at least ``share`` of a neuron's stimuli (its top-k probe
    images; of the class's probe images where the class has fewer than k), -1 where no class
    has that share or the neuron is dead."""
    image_labels = np.asarray(image_labels)
    n_classes = int(image_labels.max()) + 1
    classes = image_labels[stimuli.stimuli]                        # [n, k]
    n, k = classes.shape
    counts = np.zeros((n, n_classes))
    np.add.at(counts, (np.repeat(np.arange(n), k), classes.ravel()), 1)
    most = np.minimum(np.bincount(image_labels, minlength=n_classes), k)
    enough = (counts >= share * most[None, :]) & (counts > 0)
    best = np.where(enough, counts, -1).argmax(1)
    ok = enough.any(1) & ~stimuli.dead
    return np.where(ok, best, -1)


@dataclass
class StudyNeurons:
    """The pool of the alignment study: one row per neuron.

    Attributes
    ----------
    checkpoint, depth : int [n] each neuron's checkpoint id and layer index.
    concept : int [n] its concept label (-1: none, or no masks).
    klass : int [n] the class dominating its stimuli (-1: none).
    fixed : the seed-independent vectors ("correlation": activations on the matching images).
    unit : float32 [n, n_images] standardised whole-probe activations, or None.
    partner : int [n, n_checkpoints] one-to-one matches (:func:`match_layers`), or None.
    checkpoints : (run, epoch) of each checkpoint id; depth_names : layer name of each depth.
    iou : float32 [n] best IoU of each neuron (None without masks).
    rows : bool [n_all] which neurons of the checkpoints (concatenated) are in the pool.
    """

    checkpoint: np.ndarray
    depth: np.ndarray
    concept: np.ndarray
    klass: np.ndarray
    fixed: dict[str, np.ndarray]
    unit: np.ndarray | None
    partner: np.ndarray | None
    checkpoints: list[tuple[str, int]]
    depth_names: list[str]
    iou: np.ndarray | None
    rows: np.ndarray

    def methods(self, weighted: bool) -> list[str]:
        have = set(SPACE_METHODS) | set(self.fixed)
        if self.unit is not None:
            have |= {"correlation-probe", "matched"}
        if not weighted:
            have.discard("stimuli")
        return [m for m in METHODS if m in have]


def collect_neurons(cfg: StudyConfig, data: list[Checkpoint], image_labels: np.ndarray,
                    space: BaseSpace) -> StudyNeurons:
    """The pool (alive neurons defined in every method, ``space``'s vectors deciding for the
    space's methods) and its seed-independent parts."""
    alive = np.concatenate([~d.stimuli.dead for d in data])
    ckpt = np.concatenate([np.full(d.stimuli.n_neurons, i) for i, d in enumerate(data)])
    depth = np.concatenate([d.stimuli.layer_of() for d in data])
    with_labels = all(d.labels is not None for d in data)
    concept = np.concatenate([np.where(~d.stimuli.dead, d.labels.label, -1) for d in data]) \
        if with_labels else np.full(len(alive), -1)
    klass = np.concatenate([class_labels(d.stimuli, image_labels, cfg.evaluation.class_share)
                            for d in data])
    usable = alive.copy()
    for v in space_vectors(cfg, data, space, stored=True, seed=cfg.seed).values():
        usable &= np.isfinite(v).all(1) & (np.abs(v).sum(1) > 0)
    fixed = {}
    if with_labels:
        corr = np.concatenate([d.labels.activations.astype(np.float64) for d in data])
        usable &= corr.std(1) > 0
        fixed["correlation"] = corr
    unit = None
    if all(d.stimuli.activations is not None for d in data):
        unit = np.concatenate([standardise(d.stimuli.activations) for d in data])
        usable &= np.isfinite(unit).all(1)
    rows = np.flatnonzero(usable)
    partner = None
    if unit is not None:
        unit = unit[rows]
        partner = match_layers(unit, ckpt[rows], depth[rows])
    names = [li.name for li in data[0].stimuli.layers]
    iou = np.concatenate([d.labels.best_iou for d in data])[rows] if with_labels else None
    return StudyNeurons(ckpt[rows], depth[rows], concept[rows], klass[rows],
                        {m: v[rows] for m, v in fixed.items()}, unit, partner,
                        [(d.run, d.epoch) for d in data], names, iou, usable)


class VocabularyMean(StimuliMean):
    """Baseline: the paper's projection without indirect image embeddings. A neuron is the
    mean embedding of those of its stimuli that are in the vocabulary (zero when none is)."""

    name = "no-indirect"

    def __init__(self, image_method: str = "normal", seed: int = 0, device: str = "cpu"):
        super().__init__(image_method, "none", seed, device)

    def with_vocabulary(self, image_embedding: np.ndarray, vocab: np.ndarray
                        ) -> VocabularyMean:
        """This baseline on a fitted space's image embedding and vocabulary (no fit)."""
        self.vocab_ = np.asarray(vocab, dtype=bool)
        return self.with_embedding(image_embedding)

    def project_stimuli(self, stimuli: np.ndarray) -> np.ndarray:
        return project_known(stimuli, self._embedding(), self.vocab_)


class SeparateEmbedding:
    """Baseline without unification: each model gets a neuron embedding of its own, by the
    same algorithm and ``params`` as the base space, on its own co-activation, from its own
    random start (the n-th model transformed uses seed ``params.seed + n``: a shared start
    would align the spaces of models of one architecture by channel index, a unification by
    accident). Neurons that co-activate with no other get NaN rows. Nothing is learned from
    the base model."""

    name = "separate"
    needs_activations = False

    def __init__(self, params: SpaceParams):
        self.params, self.models_ = params, 0

    def fit(self, base: StimuliResult, v: np.ndarray, known: np.ndarray) -> SeparateEmbedding:
        return self

    def transform(self, result: StimuliResult) -> np.ndarray:
        p, alive = self.params, ~result.dead
        coact = CoActivation.from_stimuli(result.stimuli, alive)
        model = NeuronEmbedding(p.dim, p.epochs, p.lr, p.negatives, p.batch_size,
                                seed=p.seed + self.models_, device=p.device).fit(coact)
        self.models_ += 1
        out = model.embedding_.astype(np.float64)
        out[~(alive & model.trained_)] = np.nan
        return out


class RandomVectors:
    """Baseline: a standard normal vector of ``dim`` values per neuron (one generator seeded
    by ``seed``, drawn from in the order the checkpoints are transformed)."""

    name = "random"
    needs_activations = False

    def __init__(self, dim: int, seed: int = 0):
        self.dim, self.rng = dim, np.random.default_rng(seed)

    def fit(self, base: StimuliResult, v: np.ndarray, known: np.ndarray) -> RandomVectors:
        return self

    def transform(self, result: StimuliResult) -> np.ndarray:
        return self.rng.standard_normal((result.n_neurons, self.dim))


def space_methods(cfg: StudyConfig, space: BaseSpace, seed: int) -> dict[str, Projection]:
    """The methods of :data:`SPACE_METHODS` on a fitted ``space``, as projections
    (``seed`` seeds the per-model embeddings and the random vectors); "stimuli" only when
    the space projects by activations (else it is "unified")."""
    methods: dict[str, Projection] = {"unified": space.projector()}
    if space.needs_activations:
        methods["stimuli"] = StimuliMean().with_embedding(space.stimulus_embedding)
    methods["no-indirect"] = VocabularyMean().with_vocabulary(space.stimulus_embedding,
                                                              space.vocab)
    methods["separate"] = SeparateEmbedding(cfg.space.params(seed=seed + 1000))
    methods["random"] = RandomVectors(space.stimulus_embedding.shape[1], seed)
    return methods


def space_vectors(cfg: StudyConfig, data: list[Checkpoint], space: BaseSpace, stored: bool,
                  seed: int) -> dict[str, np.ndarray]:
    """The vectors of the space's methods for every neuron of ``data`` (concatenated), from
    ``space`` (``stored``: the workspace's own, whose projections are read, not recomputed);
    ``seed`` seeds the per-model embeddings and the random vectors. The unified space's
    vectors are rounded to float32, as the workspace stores them."""
    methods = space_methods(cfg, space, seed)
    parts: dict[str, list] = {m: [] for m in methods}
    for d in data:
        for name, method in methods.items():
            if name == "unified":
                parts[name].append(d.projection if stored else method.transform(d.stimuli)
                                   .astype(np.float32).astype(np.float64))
            else:
                parts[name].append(method.transform(d.stimuli))
    return {m: np.concatenate(v) for m, v in parts.items()}
