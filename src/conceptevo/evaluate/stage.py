"""Deprecated: the evaluation stage moved to :mod:`conceptevo.stages.evaluation` (and
``study_config`` to :mod:`conceptevo.workspace.artifacts`); importing this module warns, and
it will be removed."""

import warnings

from ..stages.evaluation import evaluation_text, run_evaluation  # noqa: F401
from ..workspace.artifacts import load_evaluation, study_config  # noqa: F401

warnings.warn("conceptevo.evaluate.stage is deprecated: use conceptevo.stages.evaluation "
              "(run_evaluation, evaluation_text) and conceptevo.workspace.artifacts "
              "(study_config, load_evaluation)", DeprecationWarning, stacklevel=2)
