"""Errors a user can act on. The command-line tools print them as one line and exit with code 2.

Every message names the problem and what to do about it; anything else escaping is a bug.
"""


class SeerError(Exception):
    """Base class: a problem with the user's input or environment, not with seer itself."""

    exit_code = 2


class UsageError(SeerError):
    """An argument is out of range or inconsistent (steps, interval, resolution, prompt...)."""


class EngineDirError(SeerError):
    """An engine directory is missing, incomplete, altered or of another schema version."""


class OutputError(SeerError):
    """An output cannot be written where asked: the disk is full or read-only, permission is denied,
    another process is writing it, or something that is not seer's is in the way."""


class BackendUnavailable(SeerError):
    """The requested backend cannot run here (package not installed, no GPU...)."""


class ModelSourceError(SeerError):
    """The model to export cannot be found or is not a FLUX pipeline."""


class NotTrusted(SeerError):
    """Loading this part of an engine directory would run code from it, and the caller has not
    said it trusts the directory."""


class NonFiniteError(SeerError):
    """A request produced NaN or Inf (a guidance scale, a graph, the Taylor factors or the sampler
    overflowed): refused instead of writing a black image."""


class MemoryLimitError(SeerError):
    """A request would need more memory than is available or than the configured budget allows."""
