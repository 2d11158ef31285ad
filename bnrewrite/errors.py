"""Errors and the exit codes the CLI maps them to.

Exit codes (stable, documented in the README):

====  ==========================================================
0     success
2     usage error or bad input (missing/corrupt file, unsupported layer, ...)
3     verification failed (written output differs from Keras beyond tolerance)
4     ``inspect --strict`` found warnings or errors
====  ==========================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_VERIFY = 3
EXIT_STRICT = 4


class BnrewriteError(Exception):
    """Base class: a failure the user can act on, reported as one line."""

    exit_code = EXIT_BAD_INPUT


class InputError(BnrewriteError):
    """The input file, data or options are unusable (exit 2)."""


class UnsupportedModelError(InputError):
    """The model uses something bnrewrite cannot rebuild or export (exit 2)."""


class VerificationError(BnrewriteError):
    """The written output does not match Keras within tolerance (exit 3).

    ``report`` carries the full conversion report so callers can still inspect
    the figures.
    """

    exit_code = EXIT_VERIFY

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def with_path(e: InputError, path) -> InputError:
    """The same error (same class) with its message prefixed by ``path``, unless it names it."""
    msg = str(e)
    if str(path) in msg:
        return e
    new = type(e)(f"{path}: {msg}")
    new.__cause__ = e.__cause__
    return new
