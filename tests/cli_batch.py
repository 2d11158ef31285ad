"""Run many ``bnrewrite`` command lines in ONE fresh Python process.

Each CLI run in its own process pays a TensorFlow import (5-10 s); the
hardening table has dozens of rows. This runner imports bnrewrite once and
runs every case through the real entry point (``bnrewrite.cli.main``, click
standalone mode, so ``sys.exit`` codes are the real exit codes) with file
descriptors 1 and 2 redirected to files: what a case prints -- Python or C
level, TensorFlow logging included -- is captured exactly as a terminal would
see it. An exception escaping ``main`` is printed as a traceback into that
case's stderr, as the interpreter would, so "no traceback" is tested for real.

Usage: ``python tests/cli_batch.py cases.json results.json``; cases are
``[{"id", "argv", "cwd"}]``, results ``{id: {"code", "stdout", "stderr", "seconds"}}``.
A case running longer than ``CASE_TIMEOUT`` s ends with code ``"timeout"``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback

CASE_TIMEOUT = 120


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_case(argv: list[str], cwd: str) -> dict:
    from bnrewrite.cli import main

    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out_f.fileno(), 1)
    os.dup2(err_f.fileno(), 2)
    old_cwd = os.getcwd()
    t0 = time.perf_counter()
    signal.alarm(CASE_TIMEOUT)
    try:
        os.chdir(cwd)
        main(args=argv, prog_name="bnrewrite", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _Timeout:
        code = "timeout"
    except BaseException:  # what the interpreter would print for an escaping exception
        traceback.print_exc()
        code = 1
    finally:
        signal.alarm(0)
        os.chdir(old_cwd)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    seconds = time.perf_counter() - t0
    out_f.seek(0)
    err_f.seek(0)
    return {
        "code": code, "seconds": seconds,
        "stdout": out_f.read().decode("utf-8", "replace"),
        "stderr": err_f.read().decode("utf-8", "replace"),
    }


def main() -> None:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGALRM, _alarm)
    with open(cases_path) as f:
        cases = json.load(f)
    results = {}
    for case in cases:
        results[case["id"]] = run_case(case["argv"], case["cwd"])
        with open(results_path, "w") as f:  # partial results survive a crash
            json.dump(results, f)


if __name__ == "__main__":
    main()
