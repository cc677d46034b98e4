"""The error types fpn-jax raises besides Python's own (a leaf: imports nothing of fpn-jax)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint (or a file to convert) is missing, corrupt, or for another architecture."""
