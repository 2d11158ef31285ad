"""Errors and the exit codes the CLI maps them to.

Exit codes (stable, documented in the README):

====  ==========================================================
0     success
2     usage error or bad input (missing/corrupt file, unsupported layer, ...)
3     verification failed (written output differs from Keras beyond tolerance)
4     ``inspect --strict`` found warnings or errors
129   stopped by SIGHUP (128 + 1)
130   stopped by SIGINT / Ctrl-C (128 + 2)
143   stopped by SIGTERM, e.g. a CI timeout or ``docker stop`` (128 + 15)
====  ==========================================================

On 129, 130 and 143 every temporary file and folder bnrewrite made (the
temporary output beside ``OUT``, the calibration spill folder) has been
removed and ``OUT`` was not placed (unless the signal came after it was).
"""

from __future__ import annotations

import re as _re
import signal as _signal

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_VERIFY = 3
EXIT_STRICT = 4
EXIT_SIGHUP = 128 + 1
EXIT_SIGINT = 128 + 2
EXIT_SIGTERM = 128 + 15


class Interrupted(KeyboardInterrupt):
    """A stopping signal (SIGINT, SIGTERM, SIGHUP) arrived; raised in the main thread.

    A ``KeyboardInterrupt`` (not an ``Exception``) so that ``except Exception``
    in bnrewrite or a framework cannot swallow it. ``exit_code`` is 128 + the
    signal number (:mod:`bnrewrite.outputs` installs the handlers).
    """

    def __init__(self, signum: int = _signal.SIGINT):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        try:
            self.signal_name = _signal.Signals(self.signum).name
        except ValueError:
            self.signal_name = f"signal {self.signum}"
        super().__init__(self.signal_name)

    @property
    def stop_line(self) -> str:
        """The one line printed once the temporaries are removed (the CLI, or the stop watchdog)."""
        return f"bnrewrite: interrupted ({self.signal_name}); temporary files removed"


class BnrewriteError(Exception):
    """Base class: a failure the user can act on, reported as one line.

    ``code`` names what kind of unsafe or unsupported content caused a refusal
    (``UNSAFE_LAMBDA_CODE``, ``UNSAFE_HDF5_EXTERNAL_LINK``, ...); ``inspect``
    reports it as a finding with that code (``bnrewrite.audit.CODES``)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, *args, code: str | None = None):
        super().__init__(*args)
        self.code = code


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
    new.code = getattr(e, "code", None)
    new.__cause__ = e.__cause__
    return new


def first_line(e: BaseException, limit: int = 200, empty: str | None = None) -> str:
    """The first line of an error's message, at most ``limit`` characters (TensorFlow's errors:
    their ``message``, without the op context). ``empty`` when there is none (default: the
    error's class name)."""
    text = getattr(e, "message", None)
    lines = (text if isinstance(text, str) and text.strip() else str(e)).strip().splitlines()
    return (lines[0] if lines else type(e).__name__ if empty is None else empty)[:limit]


_SGR = _re.compile(r"\x1b\[[0-9;]*m")


def root_cause(e: BaseException, limit: int = 400) -> str:
    """A framework error on one line, keeping its root cause: Keras wraps the real reason
    in its own first line ("Exception encountered when calling ...", "Could not
    deserialize ..."), and chains the original exception."""
    chain: list[BaseException] = []
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)

    def text(err: BaseException) -> str:
        skip = ("Exception encountered", "Call arguments", "Arguments received", "\u2022", "•", "File ",
                "Traceback")
        plain = _SGR.sub("", str(err))  # Keras bolds parts of its messages with terminal escapes
        lines = [l.strip() for l in plain.strip().splitlines() if l.strip() and not l.strip().startswith(skip)]
        return " ".join(lines[:2]) if lines else type(err).__name__

    outer = text(chain[0])
    inner = text(chain[-1])
    msg = outer if len(chain) == 1 or inner in outer else f"{outer} (root cause: {type(chain[-1]).__name__}: {inner})"
    return msg[:limit]


def scope_layer(node_name: str, names) -> str | None:
    """The layer among ``names`` whose TensorFlow name scope holds node ``node_name``
    (``"model/disc_1/Bucketize"`` -> ``"disc"``): the innermost scope that is one of ``names``,
    as written or without the ``_N`` suffix TF adds to make a scope unique."""
    for part in reversed(node_name.split("/")[:-1]):
        for cand in (part, _re.sub(r"_\d+$", "", part)):
            if cand in names:
                return cand
    return None


def unexpected(e: BaseException) -> RuntimeError:
    """The one line for an exception no part of bnrewrite turned into a :class:`BnrewriteError`."""
    if isinstance(e, RecursionError):  # e.g. tf_keras's recursive walk of a 4000-layer chain
        return RuntimeError("the model's layers are chained or nested deeper than the framework's recursive "
                            "graph code can follow (Python's recursion limit); the framework cannot load this "
                            "model either")
    return RuntimeError(f"unexpected {type(e).__name__}: {e}")
