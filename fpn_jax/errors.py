"""The error types fpn-jax raises besides Python's own (a leaf: imports nothing of fpn-jax)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint (or a file to convert) is missing, corrupt, or for another architecture."""


class UsageError(ValueError):
    """What a command line or experiment was given cannot run: missing data or model, bad files or flags.

    The experiments' command lines print these as one line, without a traceback.
    """
