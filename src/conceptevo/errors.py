"""Exceptions raised by ConceptEvo.

Every error is a :class:`ConceptEvoError` so that the command line can print its message
(which names the file, layer, key or value at fault and what to do) without a traceback.
"""

from __future__ import annotations


class ConceptEvoError(Exception):
    """Base class of every error ConceptEvo raises on purpose."""


class ConfigError(ConceptEvoError):
    """A configuration file or argument is malformed, unknown or inconsistent."""


class CheckpointError(ConceptEvoError):
    """A checkpoint cannot be found, read, trusted or fitted to its architecture."""


class LayerSelectionError(ConceptEvoError):
    """A layer selection matches nothing or names a module that cannot be probed."""


class ProbeSetError(ConceptEvoError):
    """The probe set is empty, unreadable or inconsistent."""


class NonFiniteActivationError(ConceptEvoError):
    """A model produced NaN or infinite activations."""


class WorkspaceError(ConceptEvoError):
    """A workspace is missing, incompatible or cannot be written."""


class CorruptArtifactError(WorkspaceError):
    """A workspace file cannot be read back (truncated, damaged, or not a regular file inside
    the workspace). ``path`` names it; stages recompute what they can, and a reader says which
    file it is and what to do."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = path


class SpaceError(ConceptEvoError):
    """The base model cannot define a unified space (too few co-activated neurons)."""
