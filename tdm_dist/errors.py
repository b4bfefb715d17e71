"""The error types of tdm_dist.

Every error a user can cause is a ``TdmError`` whose message names the bad input and what was expected.
The CLI catches ``TdmError`` at the boundary and exits non-zero with the message (``--debug`` shows the
traceback).
"""

from __future__ import annotations


class TdmError(Exception):
    """Base class of every error tdm_dist raises on purpose."""


class ConfigError(TdmError, ValueError):
    """A setting, argument or name is invalid (unknown env, bad preset, horizon that does not fit...)."""


class DataError(TdmError, ValueError):
    """Data is malformed: NaN/inf values, wrong shapes, dims that disagree with the env spec."""


class CheckpointError(TdmError):
    """A checkpoint is missing, corrupt, or does not match what it is used for."""
