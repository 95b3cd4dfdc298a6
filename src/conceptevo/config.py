"""The study configuration: one TOML file names the probe set, the model, the runs and every
parameter of the pipeline.

The schema is the set of dataclasses below; :func:`load_config` checks every key and type
against it, suggests the closest key for a misspelt one ("did you mean"), and resolves
relative paths against the directory of the TOML file. Nothing in a config is evaluated as
code, except an explicit ``package.module:function`` model factory.

Example::

    workspace = "workspace"

    [probe]
    root = "data/train"        # an ImageFolder directory
    per_class = 100
    image_size = 64

    [model]
    arch = "torchvision:resnet18"
    kwargs = { num_classes = 10 }

    [[runs]]
    name = "healthy"
    checkpoints = "checkpoints/healthy/epoch_{epoch}.pt"
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .evolution.diagnosis import DiagnosisThresholds
from .train import TrainConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _at_least_one(section, where: str, *keys: str) -> None:
    """Every setting of ``keys`` of ``section`` must be >= 1."""
    for key in keys:
        if getattr(section, key) < 1:
            raise ConfigError(f"[{where}] {key} must be >= 1, not {getattr(section, key)}")


@dataclass
class ProbeConfig:
    """A probe set (or held-out set): a sample of an ImageFolder directory.

    ``per_class`` images of each class, or a ``fraction`` of each class (neither: all).
    Images are resized (shorter side) and centre-cropped to ``image_size`` and normalised
    with ``mean`` / ``std`` before the model sees them; without ``image_size``, 224 or, for a
    model that takes one size only, that size (:mod:`conceptevo.models.input_size`).
    ``classes``: the class folder names in the model's output order (a list, or a text file
    with one name per line); default the names in ``classes.txt`` of the root when there is
    one, else the sorted folder names. A ``[heldout]`` set always uses the probe set's
    image_size, mean, std and classes.
    """

    root: str = ""
    per_class: int | None = None
    fraction: float | None = None
    image_size: int | None = None
    classes: list[str] | str | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    seed: int = 0
    skip_unreadable: bool = False

    def validate(self, where: str) -> None:
        if not self.root:
            raise ConfigError(f"[{where}] needs `root`, the directory of the images "
                              "(one sub-directory per class)")
        if self.per_class is not None and self.fraction is not None:
            raise ConfigError(f"[{where}] sets both per_class and fraction; keep one")
        if self.per_class is not None and self.per_class < 1:
            raise ConfigError(f"[{where}] per_class must be >= 1, not {self.per_class}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"[{where}] fraction must be in (0, 1], not {self.fraction}")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"[{where}] image_size must be >= 8, not {self.image_size}")
        if isinstance(self.classes, list):
            from .data.classes import check_class_names
            check_class_names(self.classes, f"[{where}] classes")
        elif isinstance(self.classes, str) and not self.classes.strip():
            raise ConfigError(f"[{where}] classes must be a list of class names or the path "
                              "of a text file with one name per line")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"[{where}] mean and std need 3 values each (std > 0)")


@dataclass
class ModelConfig:
    """The architecture and the layers to probe.

    ``arch``: ``torchvision:NAME`` (built with ``weights=None``: nothing is downloaded),
    ``conceptevo:NAME`` (a model that ships with ConceptEvo) or ``package.module:function``
    (your factory), called with ``kwargs``. ``layers``: module names, globs
    (``"layer*.conv2"``) or a comma-separated string; default every ``Conv2d``. ``output``:
    where the logits are when the model returns a tuple, a dict or a Hugging Face
    ``ModelOutput`` (a key or an index; default: the tensor itself, a tuple's first element,
    a dict's ``"logits"``).
    """

    arch: str = ""
    kwargs: dict = field(default_factory=dict)
    layers: str | list[str] | None = None
    reduction: str = "max"
    output: str | int | None = None

    def validate(self, where: str) -> None:
        if not self.arch:
            raise ConfigError(f"[{where}] needs `arch`, e.g. \"torchvision:resnet18\" or "
                              "\"mypackage.models:build\"")
        if ":" not in self.arch:
            raise ConfigError(f"[{where}] arch {self.arch!r} must look like "
                              "\"torchvision:resnet18\" or \"package.module:function\"")
        if self.reduction not in ("max", "mean"):
            raise ConfigError(f"[{where}] reduction must be \"max\" or \"mean\", "
                              f"not {self.reduction!r}")


@dataclass
class RunConfig:
    """One training run: a name and its per-epoch checkpoints.

    ``checkpoints`` is a directory, a glob (``ckpt/*.pt``) or a pattern with ``{epoch}``, which
    may contain globs too (``ckpt/epoch={epoch}-step=*.ckpt``). ``arch`` / ``kwargs`` override
    ``[model]`` for this run. ``metrics``: the run's training log (a CSV with an ``epoch``
    column, Lightning's CSVLogger directory or ``metrics.csv``, or TensorBoard event files),
    read into the workspace (:mod:`conceptevo.data.metrics`).
    """

    name: str = ""
    checkpoints: str = ""
    arch: str | None = None
    kwargs: dict | None = None
    train: TrainConfig | None = None
    metrics: str | None = None

    def validate(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"[{where}] needs a `name`")
        if any(c in self.name for c in "/\\:*?\"<>|") or self.name.startswith("."):
            raise ConfigError(f"[{where}] run name {self.name!r} must be usable as a folder "
                              "name (no / \\ : * ? \" < > | and no leading dot)")
        if not self.checkpoints:
            raise ConfigError(f"[{where}] (run {self.name!r}) needs `checkpoints`: a directory, "
                              "a glob or a pattern with {epoch}")
        if self.train is not None and self.metrics is not None:
            raise ConfigError(f"[{where}] run {self.name!r} is trained by ConceptEvo, which "
                              "records its metrics; remove `metrics`")
        if self.metrics is not None and not self.metrics.strip():
            raise ConfigError(f"[{where}] run {self.name!r}: metrics must name a file or a "
                              "directory")
        if self.train is not None:
            self.train.validate(f"{where}.train")
            if any(c in self.checkpoints for c in "*?[") and "{epoch}" not in self.checkpoints:
                raise ConfigError(
                    f"[{where}] run {self.name!r} is trained by ConceptEvo, so `checkpoints` must "
                    "say where to write them: a directory or a pattern with {epoch}, not a glob")


@dataclass
class StimuliConfig:
    """Step 1: ``k_stimuli`` top images per neuron, ``k_responsive`` top neurons per image."""

    k_stimuli: int = 20
    k_responsive: int = 20
    batch_size: int = 128
    on_nonfinite: str = "raise"

    def validate(self, where: str) -> None:
        _at_least_one(self, where, "k_stimuli", "k_responsive", "batch_size")
        if self.on_nonfinite not in ("raise", "record"):
            raise ConfigError(f"[{where}] on_nonfinite must be \"raise\" or \"record\"")


@dataclass
class SpaceConfig:
    """Steps 2-3: the base model, the neuron and image embeddings, and the 2-D map.

    The base model is a checkpoint of the study (``base_run``, default the first run, at
    ``base_epoch``, default its last epoch) or an external model (``base_arch`` with
    ``base_checkpoint`` and ``base_kwargs``) probed on the same probe set.
    """

    base_run: str | None = None
    base_epoch: int | None = None
    base_arch: str | None = None
    base_kwargs: dict | None = None
    base_checkpoint: str | None = None
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
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    umap_metric: str = "cosine"

    @property
    def records_activations(self) -> bool:
        """Whether stimulus passes keep every activation (the projection needs them)."""
        return self.projection == "activations"

    def validate(self, where: str, runs: list[RunConfig]) -> None:
        if (self.base_arch is None) != (self.base_checkpoint is None):
            raise ConfigError(f"[{where}] an external base model needs both base_arch and "
                              "base_checkpoint")
        if self.base_arch is not None and self.base_run is not None:
            raise ConfigError(f"[{where}] choose base_run or base_arch/base_checkpoint, not "
                              "both")
        names = [r.name for r in runs]
        if self.base_run is not None and self.base_run not in names:
            close = difflib.get_close_matches(self.base_run, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; runs: {', '.join(names)}"
            raise ConfigError(f"[{where}] base_run {self.base_run!r} is not a run{hint}")
        _at_least_one(self, where, "dim", "epochs", "negatives", "batch_size", "umap_neighbors")
        if self.lr <= 0:
            raise ConfigError(f"[{where}] lr must be > 0")
        if self.image_method not in ("normal", "lsqr"):
            raise ConfigError(f"[{where}] image_method must be \"normal\" or \"lsqr\"")
        from .space.image_embedding import INDIRECT_METHODS
        if self.indirect not in INDIRECT_METHODS:
            raise ConfigError(f"[{where}] indirect must be one of {', '.join(INDIRECT_METHODS)}")
        from .space.image_embedding import PROJECTIONS
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"[{where}] projection must be one of {', '.join(PROJECTIONS)}")
        if not self.temperature > 0:
            raise ConfigError(f"[{where}] temperature must be > 0 (got {self.temperature})")
        if not self.ridge > 0:
            raise ConfigError(f"[{where}] ridge must be > 0 (got {self.ridge})")


@dataclass
class ImportanceConfig:
    """Step 4: importance of concept evolutions for a class, and its verification.

    ``images`` class images are sampled from the probe set (all when fewer); the reversion
    check reverts ``bins`` bins of each layer's ranking and ``random_draws`` random sets of
    the same size, on those images and on the class's held-out images.
    """

    images: int = 250
    bins: int = 4
    random_draws: int = 5
    batch_size: int = 64

    def validate(self, where: str) -> None:
        _at_least_one(self, where, "images", "bins", "batch_size")
        if self.random_draws < 0:
            raise ConfigError(f"[{where}] random_draws must be >= 0")


@dataclass
class EvaluationConfig:
    """``conceptevo evaluate``: concept labels from pixel-level masks and the alignment study.

    ``annotations`` is an annotation file in the format of docs/concepts.md (default:
    ``annotations.npz`` in the probe root, which the concept world writes). Neurons of the
    checkpoints of ``epochs`` (default: every epoch) of every run are labelled on at most
    ``images_per_class`` probe images of each class, with masks at ``mask_size`` pixels
    (default: the probe image size; smaller is faster and coarser).
    """

    annotations: str | None = None
    images_per_class: int = 25
    epochs: list[int] | None = None
    mask_size: int | None = None
    quantile: float = 0.995
    min_iou: float = 0.04
    queries_per_layer: int = 200
    neighbours: int = 5
    bootstrap: int = 1000
    fidelity_seeds: int = 3

    def validate(self, where: str) -> None:
        _at_least_one(self, where, "images_per_class", "queries_per_layer", "neighbours",
                      "bootstrap", "fidelity_seeds")
        if self.mask_size is not None and self.mask_size < 4:
            raise ConfigError(f"[{where}] mask_size must be >= 4, not {self.mask_size}")
        if not 0.5 <= self.quantile < 1:
            raise ConfigError(f"[{where}] quantile must be in [0.5, 1), not {self.quantile}")
        if not 0 <= self.min_iou < 1:
            raise ConfigError(f"[{where}] min_iou must be in [0, 1), not {self.min_iou}")


@dataclass
class TrainingDataConfig:
    """Where ``conceptevo train`` reads its images (ImageFolder trees). The images are resized
    and normalised like the probe set (``[probe]`` image_size, mean, std)."""

    train_root: str = ""
    val_root: str = ""

    def validate(self, where: str) -> None:
        if not self.train_root or not self.val_root:
            raise ConfigError(f"[{where}] needs train_root and val_root (ImageFolder "
                              "directories)")


@dataclass
class StudyConfig:
    """A whole study. Paths are relative to the directory of the config file."""

    workspace: str = "workspace"
    device: str = "auto"
    seed: int = 0
    trust_checkpoints: bool = False
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    heldout: ProbeConfig | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    runs: list[RunConfig] = field(default_factory=list)
    stimuli: StimuliConfig = field(default_factory=StimuliConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    diagnosis: DiagnosisThresholds = field(default_factory=DiagnosisThresholds)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    training: TrainingDataConfig | None = None
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def validate(self) -> None:
        self.probe.validate("probe")
        if self.heldout is not None:
            # held-out images are shown to the same models: same size and normalisation
            self.heldout.image_size = self.probe.image_size
            self.heldout.mean, self.heldout.std = list(self.probe.mean), list(self.probe.std)
            self.heldout.classes = None  # the probe set's, in its order
            self.heldout.validate("heldout")
        self.model.validate("model")
        self.stimuli.validate("stimuli")
        if self.training is not None:
            self.training.validate("training")
        elif any(run.train is not None for run in self.runs):
            raise ConfigError("runs with a `train` table need a [training] section naming "
                              "train_root and val_root")
        if not self.runs:
            raise ConfigError("the config has no [[runs]]; add at least one with a name and "
                              "its checkpoints")
        seen = set()
        for i, run in enumerate(self.runs):
            run.validate(f"runs #{i + 1}")
            if run.name in seen:
                raise ConfigError(f"two runs are named {run.name!r}; run names must be unique")
            seen.add(run.name)
        self.space.validate("space", self.runs)
        self.importance.validate("importance")
        self.evaluation.validate("evaluation")

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, made absolute against the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def workspace_path(self) -> Path:
        return self.resolve(self.workspace)

    def run(self, name: str) -> RunConfig:
        for run in self.runs:
            if run.name == name:
                return run
        raise ConfigError(f"no run named {name!r}; runs: {', '.join(r.name for r in self.runs)}")

    def set_image_size(self, size: int) -> None:
        """Fix the probe (and held-out) image size, e.g. once inferred from the model."""
        self.probe.image_size = int(size)
        if self.heldout is not None:
            self.heldout.image_size = int(size)

    def arch_of(self, run: RunConfig) -> tuple[str, dict]:
        return (run.arch or self.model.arch,
                run.kwargs if run.kwargs is not None else self.model.kwargs)

    def to_dict(self) -> dict:
        return _to_dict(self)


# ----------------------------------------------------------------------------- loading
def _type_name(tp) -> str:
    if tp is type(None):
        return "nothing"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return f"a list of {_type_name(arg)}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            dict: "a table", list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where} must be {_type_name(tp)}, not {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        return _from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be {_type_name(tp)}, not {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{where} must be {_type_name(tp)}, not {value!r}")
    return value


def _from_dict(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {key!r} in {where or 'the top level'}{hint}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    from_mapping = getattr(cls, "from_mapping", None)
    return from_mapping(kwargs) if from_mapping is not None else cls(**kwargs)


def config_from_dict(data: dict, base_dir: str | Path = ".", source: str = "config"
                     ) -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from a parsed TOML document."""
    try:
        cfg = _from_dict(StudyConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    cfg.base_dir = Path(base_dir).resolve()
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_config(path: str | Path) -> StudyConfig:
    """Read, check and resolve a study TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return config_from_dict(data, path.parent, str(path))


def _to_dict(obj):
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if value is not None:
                out[f.name] = _to_dict(value)
        return out
    if isinstance(obj, list):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj
