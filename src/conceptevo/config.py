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
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .params import (
    LAYOUTS,
    RANKINGS,
    TOKEN_MODES,
    DiagnosisThresholds,
    SpaceParams,
    TrainConfig,
)
from .schema import (
    MAX_SEED,
    bounded,
    check_class_names,
    check_field,
    check_name,
    check_text,
    same_as,
)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: largest probe image side: a probe image is decoded once and kept at this size (uint8)
MAX_IMAGE_SIZE = 2048
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")
#: the distances of UMAP's map that make sense for embeddings
UMAP_METRICS = ("cosine", "euclidean", "correlation", "manhattan", "chebyshev", "minkowski",
                "canberra", "braycurtis")


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
    per_class: int | None = bounded(None, 1, 10 ** 7)
    fraction: float | None = bounded(None, 0, 1, lo_open=True)
    image_size: int | None = bounded(None, 8, MAX_IMAGE_SIZE,
                                     why="a probe image is decoded and kept at this size")
    classes: list[str] | str | None = None
    mean: list[float] = bounded(list(IMAGENET_MEAN), -1e3, 1e3, items=True)
    std: list[float] = bounded(list(IMAGENET_STD), 0, 1e3, lo_open=True, items=True)
    seed: int = bounded(0, 0, MAX_SEED)
    skip_unreadable: bool = False

    def validate(self, where: str) -> None:
        if not self.root:
            raise ConfigError(f"[{where}] needs `root`, the directory of the images "
                              "(one sub-directory per class)")
        if self.per_class is not None and self.fraction is not None:
            raise ConfigError(f"[{where}] sets both per_class and fraction; keep one")
        if isinstance(self.classes, list):
            check_class_names(self.classes, f"[{where}] classes")
        elif isinstance(self.classes, str) and not self.classes.strip():
            raise ConfigError(f"[{where}] classes must be a list of class names or the path "
                              "of a text file with one name per line")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"[{where}] mean and std need 3 values each (one per colour "
                              "channel)")


@dataclass
class ModelConfig:
    """The architecture and the layers to probe.

    ``arch``: ``torchvision:NAME`` (built with ``weights=None``: nothing is downloaded),
    ``timm:NAME`` (``pretrained=False``), ``hf:MODEL_TYPE`` or ``hf:PATH`` (a Hugging Face
    image classifier from a local config), ``conceptevo:NAME`` (a model that ships with
    ConceptEvo) or ``package.module:function`` (your factory), called with ``kwargs``
    (docs/models.md). ``layers``: module names, globs
    (``"layer*.conv2"``) or a comma-separated string; default every ``Conv2d``. ``output``:
    where the logits are when the model returns a tuple, a dict or a Hugging Face
    ``ModelOutput`` (a key or an index; default: the tensor itself, a tuple's first element,
    a dict's ``"logits"``).
    """

    arch: str = ""
    kwargs: dict = field(default_factory=dict)
    layers: str | list[str] | None = None
    reduction: str = "max"
    output: str | int | None = bounded(None, -64, 63)
    layouts: dict | None = None
    tokens: str = "patches"
    patch_margin: float = bounded(0.5, 0, 16, why="patches around a token's patch")

    def adapter_options(self) -> dict:
        """Keyword arguments of :class:`~conceptevo.models.adapter.ModelAdapter` besides the
        model: what to probe and how."""
        return {"layers": self.layers, "reduction": self.reduction, "output": self.output,
                "layouts": self.layouts, "tokens": self.tokens}

    def neuron_key(self) -> dict:
        """What defines the neurons, for cache keys (defaults left out: keys of workspaces
        built before layouts existed stay valid)."""
        key = {"layers": self.layers, "reduction": self.reduction}
        if self.layouts:
            key["layouts"] = self.layouts
        if self.tokens != "patches":
            key["tokens"] = self.tokens
        return key

    def validate(self, where: str) -> None:
        if not self.arch:
            raise ConfigError(f"[{where}] needs `arch`, e.g. \"torchvision:resnet18\" or "
                              "\"mypackage.models:build\"")
        if ":" not in self.arch or len(self.arch) > 300:
            raise ConfigError(f"[{where}] arch {self.arch[:60]!r} must look like "
                              "\"torchvision:resnet18\" or \"package.module:function\"")
        if self.reduction not in ("max", "mean"):
            raise ConfigError(f"[{where}] reduction must be \"max\" or \"mean\", "
                              f"not {self.reduction!r}")
        if self.tokens not in TOKEN_MODES:
            raise ConfigError(f"[{where}] tokens must be one of "
                              f"{', '.join(map(repr, TOKEN_MODES))}, not {self.tokens!r}")
        for layer, kind in (self.layouts or {}).items():
            if kind not in LAYOUTS:
                raise ConfigError(f"[{where}] layouts: {layer!r} = {kind!r} is not a layout; "
                                  f"use one of {', '.join(map(repr, LAYOUTS))}")


@dataclass
class RunConfig:
    """One training run: a name and its per-epoch checkpoints.

    ``checkpoints`` is a directory, a glob (``ckpt/*.pt``) or a pattern with ``{epoch}``, which
    may contain globs too (``ckpt/epoch={epoch}-step=*.ckpt``). ``arch`` / ``kwargs`` override
    ``[model]`` for this run. ``metrics``: the run's training log (a CSV with an ``epoch``
    column, Lightning's CSVLogger directory or ``metrics.csv``, or TensorBoard event files),
    read into the workspace (:mod:`conceptevo.data.metrics`). ``train_root`` / ``val_root``:
    the images this run is trained and validated on, when not ``[training]``'s (e.g. a run
    trained on data with a planted shortcut).
    """

    name: str = ""
    checkpoints: str = ""
    arch: str | None = None
    kwargs: dict | None = None
    train: TrainConfig | None = None
    metrics: str | None = None
    train_root: str | None = None
    val_root: str | None = None

    def validate(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"[{where}] needs a `name`")
        check_name(self.name, f"[{where}]")
        if not self.checkpoints:
            raise ConfigError(f"[{where}] (run {self.name!r}) needs `checkpoints`: a directory, "
                              "a glob or a pattern with {epoch}")
        if self.train is not None and self.metrics is not None:
            raise ConfigError(f"[{where}] run {self.name!r} is trained by ConceptEvo, which "
                              "records its metrics; remove `metrics`")
        if self.metrics is not None and not self.metrics.strip():
            raise ConfigError(f"[{where}] run {self.name!r}: metrics must name a file or a "
                              "directory")
        if (self.train_root is not None or self.val_root is not None) and self.train is None:
            raise ConfigError(f"[{where}] run {self.name!r} names train_root / val_root but "
                              "has no `train` table: they say what ConceptEvo trains it on")
        for key in ("train_root", "val_root"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise ConfigError(f"[{where}] run {self.name!r}: {key} must name a directory")
        if self.train is not None:
            self.train.validate(f"{where}.train")
            if any(c in self.checkpoints for c in "*?[") and "{epoch}" not in self.checkpoints:
                raise ConfigError(
                    f"[{where}] run {self.name!r} is trained by ConceptEvo, so `checkpoints` must "
                    "say where to write them: a directory or a pattern with {epoch}, not a glob")


@dataclass
class StimuliConfig:
    """Step 1: ``k_stimuli`` top images per neuron, ``k_responsive`` top neurons per image.

    ``store_activations``: with the activation-weighted projection, keep every activation of
    every checkpoint in the workspace (2 bytes per neuron and probe image: the evaluation's
    activation-based comparisons and spaces with other seeds use them), or only the base
    model's, projecting every other checkpoint at the end of its own pass into the base
    space built first (bounded storage, docs/scaling.md). ``amp``: the passes' forward in
    mixed precision (float16 on CUDA, bfloat16 on CPU; measured in docs/scaling.md).
    """

    k_stimuli: int = bounded(20, 1, 10_000)
    k_responsive: int = bounded(20, 1, 10_000)
    batch_size: int = bounded(128, 1, 65_536)
    on_nonfinite: str = "raise"
    store_activations: bool = True
    amp: bool = False

    def validate(self, where: str) -> None:
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
    base_epoch: int | None = bounded(None, 0, 10 ** 9)
    base_arch: str | None = None
    base_kwargs: dict | None = None
    base_checkpoint: str | None = None
    dim: int = same_as(SpaceParams, "dim")
    epochs: int = same_as(SpaceParams, "epochs")
    lr: float = same_as(SpaceParams, "lr")
    negatives: int = same_as(SpaceParams, "negatives")
    batch_size: int = same_as(SpaceParams, "batch_size")
    image_method: str = same_as(SpaceParams, "image_method")
    indirect: str = same_as(SpaceParams, "indirect")
    exclude_dead: bool = same_as(SpaceParams, "exclude_dead")
    projection: str = same_as(SpaceParams, "projection")
    temperature: float = same_as(SpaceParams, "temperature")
    ridge: float = same_as(SpaceParams, "ridge")
    umap_neighbors: int = bounded(15, 2, 200)
    umap_min_dist: float = bounded(0.1, 0, 1, why="UMAP needs min_dist <= its spread, 1")
    umap_metric: str = "cosine"

    @property
    def records_activations(self) -> bool:
        """Whether stimulus passes keep every activation (the projection needs them)."""
        return self.params().records_activations

    def params(self, seed: int = 0, device: str = "cpu") -> SpaceParams:
        """The unified space's hyper-parameters (checked: a :class:`ConfigError` names the
        setting)."""
        names = [f.name for f in dataclasses.fields(SpaceParams) if f.name not in ("seed",
                                                                                   "device")]
        return SpaceParams(**{n: getattr(self, n) for n in names}, seed=seed, device=device)

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
        if self.umap_metric not in UMAP_METRICS:
            raise ConfigError(f"[{where}] umap_metric must be one of {', '.join(UMAP_METRICS)}, "
                              f"not {self.umap_metric!r}")
        self.params()  # the hyper-parameters' ranges and method names (SpaceParams)


@dataclass
class ImportanceConfig:
    """Step 4: importance of concept evolutions for a class, and its verification.

    ``images`` class images are sampled from the probe set (all when fewer); the reversion
    check reverts ``bins`` bins of each layer's ranking and ``random_draws`` random sets of
    the same size, on those images and on the class's held-out images. ``ranking``: what
    orders the neurons, ``"fraction"`` (the paper's: the fraction of class images with a
    positive sensitivity, ties by the mean) or ``"mean"`` (the magnitude variant: the mean
    sensitivity, ties by the fraction; ``conceptevo evaluate`` compares the two).
    """

    images: int = bounded(250, 1, 100_000)
    bins: int = bounded(4, 1, 100)
    random_draws: int = bounded(5, 0, 1000)
    batch_size: int = bounded(64, 1, 4096)
    ranking: str = "fraction"

    def validate(self, where: str) -> None:
        if self.ranking not in RANKINGS:
            raise ConfigError(f"[{where}] ranking must be one of {', '.join(RANKINGS)}, not "
                              f"{self.ranking!r}")


@dataclass
class EvaluationConfig:
    """``conceptevo evaluate``: concept labels from pixel-level masks and the alignment study.

    ``annotations`` is an annotation file in the format of docs/concepts.md (default:
    ``annotations.npz`` in the probe root, which the concept world writes). Neurons of the
    checkpoints of ``epochs`` (default: every epoch) of every run are labelled on at most
    ``images_per_class`` probe images of each class, with masks at ``mask_size`` pixels
    (default: the probe image size; smaller is faster and coarser). ``tags``: a CSV of
    image-level concept tags (``path,concept``, docs/concepts.md) for probe sets without
    masks; the diagnosis's shortcut rule reads it (or the masks when there are no tags).
    ``seeds``: the space is rebuilt with this many seeds (the stored one first) and every
    figure of the alignment studies and the fidelity is reported for each, with mean and
    spread. ``class_share``: a neuron's class-level label (for the class-level study, which
    needs no masks) is the class of at least this share of its stimuli. ``ranker_classes``:
    the importance ranking is compared with simple rankers by reversion on at most this many
    classes of each stored (run, epoch pair) (0: not compared).
    """

    annotations: str | None = None
    tags: str | None = None
    images_per_class: int = bounded(25, 1, 100_000)
    epochs: list[int] | None = bounded(None, 0, 10 ** 9, items=True)
    mask_size: int | None = bounded(None, 4, MAX_IMAGE_SIZE)
    quantile: float = bounded(0.995, 0.5, 1)
    min_iou: float = bounded(0.04, 0, 1)
    queries_per_layer: int = bounded(200, 1, 100_000)
    neighbours: int = bounded(5, 1, 1000)
    bootstrap: int = bounded(1000, 1, 100_000)
    seeds: int = bounded(3, 1, 100)
    class_share: float = bounded(0.5, 0, 1)
    ranker_classes: int = bounded(4, 0, 100_000)
    fidelity_seeds: int | None = bounded(None, 1, 100)

    @classmethod
    def from_mapping(cls, kwargs: dict) -> EvaluationConfig:
        # ``fidelity_seeds``: the name of ``seeds`` before the alignment study used them too
        if kwargs.get("fidelity_seeds") is not None and "seeds" not in kwargs:
            kwargs["seeds"] = kwargs["fidelity_seeds"]
        kwargs.pop("fidelity_seeds", None)
        return cls(**kwargs)

    def validate(self, where: str) -> None:
        if not 0 < self.class_share <= 1:
            raise ConfigError(f"[{where}] class_share must be in (0, 1], not {self.class_share}")
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
    seed: int = bounded(0, 0, MAX_SEED)
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
    # False for a configuration read back from a workspace (study.json): no model factory
    # it names is imported and no checkpoint unpickled because it says so
    allow_code: bool = field(default=True, metadata={"internal": True})

    def validate(self) -> None:
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"device = {self.device[:40]!r} is not a device: use \"auto\", "
                              "\"cpu\", \"cuda\", \"cuda:N\" or \"mps\"")
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
                errors.append((arg, e))
        # a table for a table (or a list for a list) failed inside: say what inside
        for arg, e in errors:
            if (isinstance(value, dict) and dataclasses.is_dataclass(arg)) or \
                    (isinstance(value, list) and typing.get_origin(arg) is list):
                raise e
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
    if isinstance(value, str):
        check_text(value, where)
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
        name = f"{where}.{key}" if where else key
        kwargs[key] = _convert(value, hints[key], name)
        check_field(fields[key], kwargs[key], name)
    from_mapping = getattr(cls, "from_mapping", None)
    return from_mapping(kwargs) if from_mapping is not None else cls(**kwargs)


def section_from_dict(cls, data, where: str):
    """One section (e.g. :class:`DiagnosisThresholds`) from a mapping, checked like a study
    file's (unknown keys, types, ranges)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, not {data!r}")
    return _from_dict(cls, data, where)


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
        raise ConfigError(f"config file {path} does not exist" + (
            " (it is not a regular file)" if path.exists() else ""))
    if path.stat().st_size > 1 << 20:
        raise ConfigError(f"config file {path} is {path.stat().st_size:,} bytes; a study config "
                          "is a small TOML file (at most 1 MB)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8") from None
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
