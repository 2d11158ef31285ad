"""``bnrewrite inspect PATH...``: audit a fleet of model files, each isolated in its own process.

Paths may be files, folders (searched recursively for ``.h5``, ``.hdf5``, ``.keras`` and
SavedModel folders) and globs. Each file is inspected by a fresh ``python -m
bnrewrite.inspect_many FILE`` process with a time limit, ``jobs`` at a time, so one file
that crashes or hangs the HDF5 library costs its own record, never the others. The
parent never imports TensorFlow; a worker imports it only for what needs Keras (a
``.keras`` archive's weights, a SavedModel checkpoint): an ``.h5`` is read as data, so a
fleet of them is audited at disk speed.

Every file gives one record (docs/report-schema.md, ``kind: "inspect"``); a file that
could not be read has ``error`` set (``TIMEOUT`` / ``CRASHED`` when the worker did not
finish). The exit code is the worst over the files: 2 if any file could not be read,
else 4 with ``--strict`` if any warning or error finding, else 0.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")
#: seconds one file may take (env ``BNREWRITE_INSPECT_TIMEOUT``); the HDF5 child has its own limit
FILE_TIMEOUT = 120.0


def expand(paths) -> tuple[list[str], list[str]]:
    """``(model paths in a stable order, paths that matched nothing)``."""
    found: list[str] = []
    missing: list[str] = []
    for p in paths:
        p = str(p)
        if any(c in p for c in "*?["):
            hits = sorted(glob.glob(p, recursive=True))
            if not hits:
                missing.append(p)
            for h in hits:
                found.extend(_walk(h) if os.path.isdir(h) else [h])
        elif os.path.isdir(p):
            found.extend(_walk(p))
        elif os.path.lexists(p):
            found.append(p)
        else:
            missing.append(p)
    seen: set[str] = set()
    return [f for f in found if not (f in seen or seen.add(f))], missing


def _walk(folder: str) -> list[str]:
    """Model files below ``folder`` (a SavedModel folder is one entry, not searched further)."""
    if os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return [folder]
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        keep = []
        for d in dirs:
            full = os.path.join(root, d)
            if os.path.isfile(os.path.join(full, "saved_model.pb")):
                out.append(full)
            else:
                keep.append(d)
        dirs[:] = keep
        out.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(MODEL_SUFFIXES))
    return sorted(out)


def inspect_files(paths: list[str], *, jobs: int | None = None, unsafe: bool = False,
                  custom_objects_path: str | None = None, timeout: float | None = None) -> list[dict]:
    """One record per path, in the order given."""
    jobs = max(1, int(jobs or os.cpu_count() or 1))
    if timeout is None:
        timeout = float(os.environ.get("BNREWRITE_INSPECT_TIMEOUT", FILE_TIMEOUT))
    extra = (["--unsafe"] if unsafe else []) + (["--custom-objects", custom_objects_path] if custom_objects_path else [])

    def one(path: str) -> dict:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "bnrewrite.inspect_many", path, *extra]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            return _failed(path, "TIMEOUT", f"inspecting it did not finish within {timeout:g} s")
        try:
            record = json.loads(proc.stdout)
        except ValueError:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            why = f"signal {-proc.returncode}" if proc.returncode < 0 else (tail[-1] if tail else f"exit {proc.returncode}")
            return _failed(path, "CRASHED", f"the inspecting process died ({why[:300]})")
        record.setdefault("timings", {})["wall_s"] = time.perf_counter() - t0
        return record

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, paths))


def _failed(path: str, code: str, message: str) -> dict:
    from .audit import _record_head

    record = _record_head(path)
    record.update(bn_layers=[], findings=[], counts=None, worst_severity=None, timings={})
    record["error"] = {"code": code, "type": code.title(), "message": f"{path}: {message}", "exit_code": 2}
    record["exit_code"] = 2
    return record


def exit_code(records: list[dict], strict: bool) -> int:
    if any(r.get("error") for r in records):
        return 2
    if strict and any(r.get("worst_severity") in ("warning", "error") for r in records):
        return 4
    return 0


def _worker(argv: list[str]) -> None:
    """One file, in this process: print its record as JSON (an unreadable file is a record too)."""
    import argparse
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(prog="bnrewrite.inspect_many")
    ap.add_argument("path")
    ap.add_argument("--unsafe", action="store_true")
    ap.add_argument("--custom-objects")
    a = ap.parse_args(argv)
    from .audit import failed_record, inspect_record

    try:
        custom = None
        if a.custom_objects:
            from .custom import load_custom_objects

            custom = load_custom_objects(a.custom_objects)
        record, _ = inspect_record(a.path, unsafe=a.unsafe, custom_objects=custom)
    except Exception as e:  # noqa: BLE001 - every failure becomes the file's record
        record = failed_record(a.path, e)
    sys.stdout.write(json.dumps(record))
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover - run by inspect_files
    _worker(sys.argv[1:])
