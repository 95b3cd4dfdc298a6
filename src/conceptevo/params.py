"""The algorithms' hyper-parameters as plain data, at the floor of the package: what a study
file can set and the names of the choices it can make. The algorithm modules take their
parameter classes and choice names from here (and re-export them), and
:mod:`conceptevo.config` builds them from the study file; this module imports nothing of
ConceptEvo but its errors and schema helpers, so the config imports no algorithm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError
from .schema import MAX_SEED, bounded, check_fields

#: How the indirect image embedding is estimated (:mod:`conceptevo.space.image_embedding`).
INDIRECT_METHODS = ("neuron-mean", "image-mean", "skipgram")
#: How a neuron is projected: activation-weighted over the probe set, or its top-k stimuli.
PROJECTIONS = ("activations", "stimuli")
#: What orders the neurons by importance (:mod:`conceptevo.evolution.importance`).
RANKINGS = ("fraction", "mean")
#: The activation layouts a layer can be read as (:mod:`conceptevo.models.layouts`).
LAYOUTS = ("conv", "nhwc", "tokens", "flat")
#: Which tokens of a token layer are a neuron's positions.
TOKEN_MODES = ("patches", "all", "cls")


#: How the vocabulary's image embedding is solved (:mod:`conceptevo.space.image_embedding`).
IMAGE_METHODS = ("normal", "lsqr")


@dataclass
class SpaceParams:
    """Hyper-parameters of the unified space (:class:`conceptevo.space.unified.UnifiedSpace`);
    defaults: the reference's (SPEC). Checked when made: a value out of its range or an
    unknown method name raises :class:`~conceptevo.errors.ConfigError` naming it.

    ``dim``, ``epochs``, ``lr``, ``negatives``, ``batch_size``: the neuron embedding's.
    ``image_method``: how the vocabulary's image embedding is solved (:data:`IMAGE_METHODS`);
    ``indirect``: how the other probe images are embedded (:data:`INDIRECT_METHODS`);
    ``exclude_dead``: leave neurons that never fire out of the space. ``projection``: how a
    neuron of any checkpoint is placed (:data:`PROJECTIONS`), with the activation-weighted
    projection's ``temperature`` and ``ridge``. ``seed`` seeds every random step; ``device``
    is where the torch steps run (it does not change the result beyond float rounding).
    """

    dim: int = bounded(30, 1, 1024)
    epochs: int = bounded(20, 1, 1000, why="passes over every co-activated pair")
    lr: float = bounded(0.01, 0, 10, lo_open=True)
    negatives: int = bounded(3, 1, 100)
    batch_size: int = bounded(2048, 1, 10 ** 7)
    image_method: str = "normal"
    indirect: str = "neuron-mean"
    exclude_dead: bool = True
    projection: str = "activations"
    temperature: float = bounded(1.0, 0, 100, lo_open=True)
    ridge: float = bounded(1e-4, 0, 1, lo_open=True, why="relative to the mean of the Gram "
                                                          "matrix's diagonal")
    seed: int = bounded(0, 0, MAX_SEED)
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "space") -> None:
        """Every range and method name; ``where`` names the table in the error."""
        check_fields(self, where)
        for name, allowed in (("image_method", IMAGE_METHODS), ("indirect", INDIRECT_METHODS),
                              ("projection", PROJECTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"[{where}] {name} must be one of "
                                  f"{', '.join(map(repr, allowed))}, not "
                                  f"{getattr(self, name)!r}")

    @property
    def records_activations(self) -> bool:
        """Whether stimulus passes must keep every activation (the projection needs them)."""
        return self.projection == "activations"


@dataclass
class DiagnosisThresholds:
    """Rule thresholds (fractions unless stated)."""

    collapse_dead_degenerate: float = bounded(0.25, 0, 1)  # dead + degenerate share >= this
    collapse_rise: float = bounded(0.15, 0, 1)     # ... and this much above the first snapshot
    collapse_diversity_drop: float = bounded(0.10, 0, 1)  # diversity this much below the first
    stall_turnover: float = bounded(0.15, 0, 1)    # turnover below this: a stalled snapshot
    stall_snapshots: int = bounded(2, 1, 1000)     # for this many consecutive snapshots
    overfit_train_acc: float = bounded(0.90, 0, 1)  # training accuracy at least this ...
    overfit_gap: float = bounded(0.15, 0, 1)       # ... and at least this above validation
    degenerate_jaccard: float = bounded(0.8, 0, 1, lo_open=True)  # stimuli overlap: the same
    slow_turnover: float = bounded(0.5, 0, 1)      # slow-learning: turnover below this ...
    slow_probe_acc: float = bounded(0.5, 0, 1)     # ... while probe accuracy is below this
    noise_gap: float = bounded(0.12, 0, 1)         # label-noise: probe acc - train acc >= this
    noise_probe_acc: float = bounded(0.5, 0, 1)    # ... with a probe accuracy of at least this
    noise_snapshots: int = bounded(2, 1, 1000)     # ... for this many consecutive snapshots
    frozen_turnover: float = bounded(0.005, 0, 1)   # frozen-layer: its turnover below this ...
    frozen_others: float = bounded(0.3, 0, 1)     # ... while the others' mean is above this
    dead_layer: float = bounded(0.95, 0, 1, lo_open=True)  # dead-layer: this share dead
    shortcut_gap: float = bounded(0.35, 0, 1)      # shortcut: P(c | concept) - P(c | not)
    shortcut_rest: float = bounded(0.05, 0, 1)     # ... with P(c | not concept) at most this
    concept_purity: float = bounded(0.6, 0, 1)     # a neuron detects a concept from this purity


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (a :data:`REGIMES` preset fills the defaults).

    ``recipe``: the family of presets the ``regime`` is taken from (:data:`RECIPES`: "cnn",
    the default, or "vit" for vision transformers). ``optimizer``: "adamw" or "sgd" (with
    ``momentum``). ``train_subset``: train on this many images per class (None: all);
    ``repeat``: passes over those images per epoch (a small subset still gets a healthy
    number of steps per epoch). ``augment``: random translation by up to ``translate``
    pixels (reflect padding). ``schedule``: "cosine" decay to zero or "constant", after
    ``warmup_epochs`` of linear warm-up. ``label_noise``: this fraction of the training
    images (a seeded draw, fixed for the run) is trained with a wrong label, drawn uniformly
    among the other classes; validation labels stay clean. ``freeze``: parameter-name
    prefixes (e.g. ``"features.conv1_1"``) left at their initialisation (no gradient step, no
    weight decay): a layer someone forgot to unfreeze.
    """

    regime: str = "healthy"
    recipe: str = "cnn"
    epochs: int = bounded(8, 1, 100_000)
    optimizer: str = "adamw"
    lr: float = bounded(3e-3, 0, 100, lo_open=True)
    momentum: float = bounded(0.9, 0, 1)
    weight_decay: float = bounded(1e-4, 0, 10)
    batch_size: int = bounded(64, 1, 65_536)
    augment: bool = True
    translate: int = bounded(6, 0, 1024)
    train_subset: int | None = bounded(None, 1, 10 ** 7)
    repeat: int = bounded(1, 1, 10_000)
    schedule: str = "cosine"
    warmup_epochs: int = bounded(0, 0, 100_000)
    seed: int = bounded(0, 0, MAX_SEED)
    label_noise: float = bounded(0.0, 0, 1)
    freeze: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, values: dict) -> TrainConfig:  # (values are checked by the loader)
        """Built from a config table: the ``regime`` preset of the ``recipe``, then the keys
        given."""
        values = dict(values)
        return train_config(values.pop("regime", "healthy"), values.pop("recipe", "cnn"),
                            **values)

    def validate(self, where: str = "train") -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"[{where}] recipe must be one of {', '.join(map(repr, RECIPES))}, "
                              f"not {self.recipe!r}")
        if self.epochs < 1:
            raise ConfigError(f"[{where}] epochs must be >= 1, not {self.epochs}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ConfigError(f"[{where}] lr must be a positive number, not {self.lr}")
        if self.repeat < 1:
            raise ConfigError(f"[{where}] repeat must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"[{where}] batch_size must be >= 1")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"[{where}] optimizer must be \"adamw\" or \"sgd\"")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"[{where}] schedule must be \"cosine\" or \"constant\"")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError(f"[{where}] train_subset must be >= 1 image per class")
        if not 0 <= self.label_noise < 1:
            raise ConfigError(f"[{where}] label_noise must be a fraction in [0, 1), not "
                              f"{self.label_noise}")
        if not isinstance(self.freeze, (list, tuple)) or not all(
                isinstance(p, str) and p for p in self.freeze):
            raise ConfigError(f"[{where}] freeze must be a list of parameter-name prefixes, "
                              f"e.g. [\"features.conv1_1\"], not {self.freeze!r}")
        self.freeze = list(self.freeze)


_HEALTHY = {"lr": 3e-3, "augment": True, "train_subset": None, "weight_decay": 1e-4}

#: The paper's three VGG16 regimes in miniature, calibrated on the concept world with
#: ``conceptevo:small_vgg``, and the issue zoo's other regimes (benchmarks/diagnosis_zoo.py).
#: ``lr-too-high`` keeps the healthy recipe with a learning rate 10x too large: most concept
#: detectors are lost within an epoch while the loss stays finite. ``overfit`` drops
#: augmentation and weight decay and trains on 10 images per class (seen 30 times per epoch,
#: so an epoch has as many steps as a healthy one); run it with ``dropout = 0`` in the model's
#: kwargs. Training accuracy reaches 100% while validation accuracy stays about 30 points
#: lower. The zoo adds: ``lr-high`` (3x: still learns, ends worse), ``lr-too-low`` (1/100:
#: learns very slowly), ``label-noise`` (30% of the training labels wrong), ``frozen-layer``
#: (the first convolution of ``small_vgg`` left at its random initialisation) and
#: ``shortcut``, the healthy recipe on training and validation data with a planted cue (the
#: run's ``train_root`` / ``val_root``: a concept world with ``shortcut_class``).
REGIMES: dict[str, dict] = {
    "healthy": dict(_HEALTHY),
    "lr-too-high": dict(_HEALTHY, lr=3e-2),
    "overfit": {"lr": 3e-3, "augment": False, "train_subset": 10, "repeat": 30,
                "batch_size": 32, "weight_decay": 0.0},
    "lr-high": dict(_HEALTHY, lr=1e-2),
    "lr-too-low": dict(_HEALTHY, lr=3e-5),
    "label-noise": dict(_HEALTHY, label_noise=0.3),
    "frozen-layer": dict(_HEALTHY, freeze=["features.conv1_1", "features.bn1_1"]),
    "shortcut": dict(_HEALTHY),
}


#: The same three regimes for vision transformers, calibrated on the concept world with
#: ``conceptevo:small_vit`` (the demo's 4,000 training images). A ViT from scratch wants more
#: epochs than the CNN (20), a linear warm-up (2 epochs) before the cosine decay, and AdamW's
#: decoupled weight decay at ViT strength (0.05). ``overfit`` is the CNN's overfitting recipe
#: (10 images per class seen 30 times per epoch, no augmentation, no weight decay; run it with
#: ``dropout = 0``) with the ViT's warm-up. ``lr-too-high`` is the healthy recipe with a
#: learning rate 100x too large (a pre-norm transformer under AdamW is far more tolerant of a
#: large rate than the CNN): it stays near chance for most of the run and recovers part of the
#: way only once the cosine schedule has brought the rate back down. Measured per seed in
#: benchmarks/results/architectures.json (``python benchmarks/demo_architectures.py``).
VIT_REGIMES: dict[str, dict] = {
    "healthy": {"epochs": 20, "lr": 2e-3, "augment": True, "train_subset": None,
                "weight_decay": 0.05, "warmup_epochs": 2},
    "lr-too-high": {"epochs": 20, "lr": 2e-1, "augment": True, "train_subset": None,
                    "weight_decay": 0.05, "warmup_epochs": 2},
    "overfit": {"epochs": 20, "lr": 2e-3, "augment": False, "train_subset": 10, "repeat": 30,
                "batch_size": 32, "weight_decay": 0.0, "warmup_epochs": 2},
}

#: The regime presets of each architecture family (``TrainConfig.recipe``).
RECIPES: dict[str, dict[str, dict]] = {"cnn": REGIMES, "vit": VIT_REGIMES}


def train_config(regime: str = "healthy", recipe: str = "cnn", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from the ``regime`` preset of ``recipe`` (:data:`RECIPES`)
    plus explicit overrides."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown training recipe {recipe!r}; choose one of "
                          f"{', '.join(RECIPES)} (cnn: convolutional networks, vit: vision "
                          "transformers)")
    presets = RECIPES[recipe]
    if regime not in presets:
        raise ConfigError(f"unknown training regime {regime!r}; choose one of "
                          f"{', '.join(presets)}")
    values = dict(presets[regime], regime=regime, recipe=recipe)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown training setting(s) {sorted(unknown)}")
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


#: settings added after the first release, with the value that behaves as before: left out
#: of :func:`config_dict` at that value, so that runs trained before keep their identity
_LATER_SETTINGS = {"recipe": "cnn", "label_noise": 0.0, "freeze": []}


def config_dict(cfg: TrainConfig) -> dict:
    """The settings that identify a run (what a finished run is recognised by): every field,
    except those of :data:`_LATER_SETTINGS` at their original value."""
    values = asdict(cfg)
    for key, original in _LATER_SETTINGS.items():
        if values.get(key) == original:
            del values[key]
    return values
