"""ConceptEvo: see how the concepts learned by an image classifier are born and evolve.

The public API (see docs/api.md)::

    from conceptevo import Workspace, load_config, ModelAdapter, compute_stimuli

Each step of the method is a plain function or estimator over arrays; the workspace stores
their results and the pipeline orders them.
"""

__version__ = "0.1.0"

from .config import StudyConfig, load_config
from .data.concept_world import ConceptWorld
from .data.probe import ProbeSet, from_dataset, load_image_folder
from .errors import ConceptEvoError
from .models.adapter import LayerInfo, ModelAdapter, select_layers
from .models.checkpoints import find_checkpoints, load_checkpoint
from .models.registry import build_model
from .monitor import Monitor, TrainingIssueWarning
from .space.coactivation import CoActivation
from .space.image_embedding import (
    activation_weights,
    fidelity,
    project,
    solve_image_embedding,
)
from .space.map2d import ConceptMap
from .space.neuron_embedding import NeuronEmbedding
from .space.projection import ActivationWeighted, Projection, StimuliMean
from .space.unified import (
    BaseSpace,
    SpaceParams,
    UnifiedSpace,
    build_base_space,
    project_result,
)
from .stimuli import StimuliResult, compute_stimuli
from .workspace import Workspace

__all__ = [
    "ActivationWeighted", "BaseSpace", "CoActivation", "ConceptEvoError", "ConceptMap",
    "ConceptWorld", "LayerInfo",
    "ModelAdapter", "Monitor", "NeuronEmbedding", "ProbeSet", "Projection", "SpaceParams",
    "StimuliMean", "StimuliResult", "StudyConfig", "TrainingIssueWarning", "UnifiedSpace",
    "Workspace", "__version__", "activation_weights",
    "build_base_space", "build_model", "compute_stimuli", "fidelity", "find_checkpoints",
    "from_dataset", "load_checkpoint", "load_config", "load_image_folder", "project",
    "project_result", "select_layers", "solve_image_embedding",
]
