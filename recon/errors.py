"""Every error recon reports to a user, in one hierarchy.

A :class:`ReconError` is a problem with the user's input or environment, with a message that
names the file or the params key and says what is wrong: the stage runner prints it on one line
(``<stage>: error: <message>``) with no traceback. Anything else that escapes is a bug in recon
and keeps its traceback. Each class also derives from the builtin exception that the code raised
before the hierarchy existed, so ``except ValueError`` in callers keeps working.
"""
from __future__ import annotations


class ReconError(Exception):
    """A refusal that the user can act on; the message is complete on its own."""


class ParamsError(ReconError, ValueError):
    """A value in params.yaml (or a command-line option) is missing, misspelt, mistyped or out of range."""


class CheckpointError(ReconError, ValueError):
    """A checkpoint file is unreadable, truncated, unsafe or describes an absurd network."""


class PhotoError(ReconError, ValueError):
    """A photo or image file cannot be decoded or does not fit."""


class AlignError(ReconError, ValueError):
    """Alignment cannot be done as asked."""


class DegradationError(ReconError, ValueError):
    """A degradation that cannot be applied as configured (raised before any work starts)."""


class DownloadError(ReconError, RuntimeError):
    """A file could not be fetched or failed verification; the message says what to do."""


class DownloadInterrupted(DownloadError):
    """A transfer stopped part-way; its partial file is kept and the next run resumes it."""


class ProjectionError(ReconError, RuntimeError):
    """The optimization cannot go on (non-finite loss); the last good snapshot is kept."""


class MissingInputError(ReconError, FileNotFoundError):
    """An earlier stage's output (or a named input file) is not there."""
