"""On-disk store of a study: schema, atomic writes, stage cache, export."""

from .store import SCHEMA_VERSION, Workspace

__all__ = ["SCHEMA_VERSION", "Workspace"]
