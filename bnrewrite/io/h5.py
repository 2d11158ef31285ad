"""Reader for full-model HDF5 files (``.h5``/``.hdf5``) from tf.keras, Keras 2 and Keras 3.

Layout read: root attribute ``model_config`` (JSON), ``keras_version``,
``backend``; group ``model_weights/<layer>`` with attribute ``weight_names``
(``"conv/kernel:0"`` in tf.keras, ``"conv/kernel"`` in Keras 3) naming datasets
relative to that group. A nested model's group holds the weights of all its
inner layers, named from the inner layer down.

The file is read by a child process (:mod:`bnrewrite.io.h5_extract`, about
0.4 s): HDF5 can hang or crash on a damaged file, and only a separate process
can be stopped (after ``BNREWRITE_READ_TIMEOUT`` s, default 60) and reported
as bad input.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import InputError, with_path
from ..graph import ModelGraph
from .config import build_graph
from .safe_files import GiB, config_limit, fmt_bytes, weights_limit
from .weights import key_weights, relative_name


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


#: seconds the child process may take to read a ``.h5`` (env ``BNREWRITE_READ_TIMEOUT``)
READ_TIMEOUT = 60.0
#: address space the child may use beyond the data it reads (Python, numpy, h5py, HDF5 caches)
CHILD_HEADROOM = 1 * GiB
# one BLAS thread and few malloc arenas: the child's address space stays close to what it holds;
# HDF5 loads no filter plugins ("::" disables them)
_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "MALLOC_ARENA_MAX": "2", "HDF5_PLUGIN_PRELOAD": "::"}
#: the last child's exit status and peak resident memory (KiB), for tests and diagnostics
last_child: dict = {}
# Run h5_extract.py by path, without the script's folder or the cwd on sys.path.
_RUN = "import runpy, sys; sys.path.pop(0); sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"


def extract(path: Path, mode: str = "model", **kw) -> dict:
    """:func:`_extract_isolated`, with a file the HDF5 library cannot open or read as one
    InputError (``member`` names the HDF5 file inside an archive)."""
    raw = _extract_isolated(path, mode, **kw)
    if raw["error"]:
        kind, _, msg = raw["error"].partition(": ")
        what = kw.get("member")
        if kind == "open":
            raise InputError(f"{path}: {what + ' is' if what else ''} not a readable HDF5 file ({msg})"
                             if what else f"{path}: not a readable HDF5 file ({msg})")
        raise InputError(f"{path}: damaged {what or 'HDF5 file'} ({msg})")
    return raw


def read_h5(path: Path, *, unsafe: bool = False, custom_classes=frozenset(), bn_classes=frozenset()) -> ModelGraph:
    raw = extract(path)
    attrs = raw["attrs"]
    if "model_config" not in attrs:
        if raw["has_layer_names"] or not raw["has_model_weights"]:
            raise InputError(
                f"{path}: weights-only HDF5 file (no model_config); save the whole model "
                "with model.save(), not model.save_weights()"
            )
        raise InputError(f"{path}: HDF5 file has no model_config attribute")
    try:
        config = json.loads(_text(attrs["model_config"]))
    except (ValueError, TypeError, RecursionError) as e:
        raise InputError(f"{path}: model_config is not valid JSON ({_short(e)})") from None
    if not raw["has_model_weights"]:
        raise InputError(f"{path}: HDF5 file has a model_config but no model_weights group")
    from .keras1 import is_keras1

    if is_keras1(attrs, config):  # Keras 1.x: its own dialect and weight layouts (bnrewrite.io.keras1)
        from .keras1 import read_keras1

        return read_keras1(path, raw, config, unsafe=unsafe, custom_classes=custom_classes, bn_classes=bn_classes)
    version = _text(attrs.get("keras_version", "2"))
    source = {
        "path": str(path), "format": "h5", "keras_version": version,
        "backend": _text(attrs.get("backend", "")),
    }
    groups = raw["groups"]
    layer_names = _layer_names(config)

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        top = nest[0] if nest else name
        if top not in groups:
            return {}
        grp = groups[top]
        names = grp["weight_names"]
        if nest:  # a nested layer's weights start with its name (Keras 3: after the models' names)
            names = [n for n in names if _owner(n, nest, layer_names) == name]
        items = []
        for n in names:
            value = grp["data"][n]
            if isinstance(value, str):
                raise InputError(f"{path}: weight {top}/{n} is unreadable ({value[len('error: '):]})")
            items.append((relative_name(n, name), value))
        return key_weights(items)

    legacy = not version.startswith("3")
    try:
        mg = build_graph(
            config, lookup, legacy=legacy, source=source,
            unsafe=unsafe, custom_classes=custom_classes, bn_classes=bn_classes,
        )
        from .original import Original

        mg.original = Original(framework=mg.framework, format="h5", config=config, weights=raw,
                               path=str(path))
        return mg
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: malformed model_config ({type(e).__name__}: {_short(e)})") from None
    except InputError as e:
        raise with_path(e, path) from None


def _extract_isolated(path: Path, mode: str = "model", *, data: bytes | None = None,
                      limit: int | None = None, member: str | None = None) -> dict:
    """:mod:`h5_extract` in a child process, so a hang or crash of HDF5 on a damaged or
    hostile file is a clear error here, not a stuck or dead bnrewrite.

    ``mode`` ``"model"`` reads the file ``path``; ``"weights"`` reads the HDF5 image ``data``
    (a ``.keras`` archive's ``model.weights.h5``, named ``member`` in messages) sent on the
    child's stdin. ``limit`` (default :func:`weights_limit` of the input's size) bounds the
    bytes the datasets read may declare. The child runs with ``RLIMIT_AS`` = limit + input
    + 1 GiB, dies with this process (``PR_SET_PDEATHSIG``; fallbacks: EOF on its stdin, and
    an alarm after the timeout) and is killed after ``BNREWRITE_READ_TIMEOUT`` s (default 60).
    A refusal by the child (links, external storage, virtual datasets, sizes), a child out
    of memory, killed or crashed are InputErrors; ``"open: ..."``/``"damaged: ..."`` errors are
    returned in ``result["error"]`` for the caller to word.
    """
    label = f"{path}: {member}" if member else f"{path}"
    timeout = float(os.environ.get("BNREWRITE_READ_TIMEOUT", READ_TIMEOUT))
    size = len(data) if data is not None else os.stat(path).st_size
    if limit is None:
        limit = weights_limit(size)
    as_bytes = int(os.environ.get("_BNREWRITE_CHILD_AS_BYTES", 0)) or \
        limit + 2 * (len(data) if data is not None else 0) + CHILD_HEADROOM
    script = Path(__file__).with_name("h5_extract.py")
    source = "-" if data is not None else os.fspath(path)
    cmd = [sys.executable, "-c", _RUN, str(script), mode, source, str(limit), str(as_bytes),
           str(os.getpid()), f"{timeout:g}", str(config_limit())]
    env = dict(os.environ, **_CHILD_ENV)
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                close_fds=True)

        def stop():
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, stop)
        timer.daemon = True
        timer.start()
        result, usage = None, None
        try:
            try:
                proc.stdin.write(struct.pack("<Q", len(data) if data is not None else 0))
                if data is not None:
                    view = memoryview(data)
                    for i in range(0, len(view), 1 << 20):
                        proc.stdin.write(view[i:i + (1 << 20)])
                proc.stdin.flush()
            except OSError:  # the child died early: reported below
                pass
            try:
                result = _ChildUnpickler(proc.stdout).load()
            except Exception:  # noqa: BLE001 - no (complete) result: the exit status says why
                result = None
            usage = _reap(proc)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        last_child.clear()
        own = result.get("peak_rss_kib") if isinstance(result, dict) else None
        last_child.update(returncode=proc.returncode, maxrss_kib=own or getattr(usage, "ru_maxrss", None),
                          limit=limit, as_bytes=as_bytes)
        if timed_out.is_set():
            what = "model.weights.h5" if member else "the HDF5 file"
            raise InputError(f"{label}: reading {what} did not finish within {timeout:g} s (damaged file?)")
        if result is None or proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
            if proc.returncode < 0:
                sig = -proc.returncode
                if sig == signal.SIGKILL:
                    raise InputError(f"{label}: the HDF5 reader was killed (signal 9; out of memory? "
                                     f"it may use {fmt_bytes(as_bytes)})")
                raise InputError(f"{label}: damaged HDF5 file (the HDF5 library crashed on it, signal {sig})")
            if tail and "MemoryError" in tail[-1]:
                raise InputError(_memory_message(label, "", as_bytes))
            why = tail[-1][:200] if tail else f"exit code {proc.returncode}"
            raise InputError(f"{label}: damaged HDF5 file ({why})")
    error = result.get("error") or ""
    if error.startswith("refused: "):
        why = error[len("refused: "):]
        raise InputError(f"{label}: refusing to read it: {why}", code=_refusal_code(why))
    if error.startswith("memory: "):
        raise InputError(_memory_message(label, error[len("memory: "):], as_bytes))
    return result


def _memory_message(label: str, what: str, as_bytes: int) -> str:
    at = f": {what}" if what else ""
    return (f"{label}: declares more data than the reader may hold in memory ({fmt_bytes(as_bytes)}){at}; "
            "set BNREWRITE_MAX_WEIGHT_BYTES to raise the limit")


def _reap(proc: subprocess.Popen):
    """Wait for the child; its resource usage (``ru_maxrss`` in KiB on Linux) if available."""
    if hasattr(os, "wait4"):
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        except ChildProcessError:
            pass
    proc.wait()
    return None


class _ChildUnpickler(pickle.Unpickler):
    """Unpickles only what the child sends: containers, strings, numbers and numpy arrays."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} from the HDF5 reader")


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _owner(weight_name: str, nest: tuple, layer_names: set) -> str:
    """The layer of a nested model that owns ``weight_name``: after the enclosing models' names, the
    longest leading part that is a layer's name -- layer names may hold "/" (``layer1/conv`` owns
    ``layer1/conv/kernel:0``, ``layer1/conv/bn`` owns ``layer1/conv/bn/beta:0``); else its first part."""
    parts = weight_name.split("/")
    i = 0
    while i < len(parts) - 1 and parts[i] in nest:
        i += 1
    rest = parts[i:]
    for j in range(len(rest) - 1, 1, -1):
        if "/".join(rest[:j]) in layer_names:
            return "/".join(rest[:j])
    return rest[0]


def _layer_names(config) -> set:
    """Every layer name in a model config, at any depth."""
    found, stack = set(), [config]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if "class_name" in obj and isinstance(obj.get("config"), dict):
                name = obj["config"].get("name", obj.get("name"))
                if isinstance(name, str):
                    found.add(name)
            stack.extend(obj.values())
        elif isinstance(obj, list):
            stack.extend(obj)
    return found


#: refusal text of the HDF5 extractor -> finding code (``inspect`` reports these)
_REFUSAL_CODES = (
    ("external file", "UNSAFE_HDF5_EXTERNAL_STORAGE"), ("external link", "UNSAFE_HDF5_EXTERNAL_LINK"),
    ("soft link", "UNSAFE_HDF5_SOFT_LINK"), ("virtual dataset", "UNSAFE_HDF5_VIRTUAL_DATASET"),
    ("declares", "OVERSIZED_DATA"), ("decompression bomb", "OVERSIZED_DATA"), ("names", "OVERSIZED_DATA"),
)


def _refusal_code(why: str) -> str:
    return next((code for needle, code in _REFUSAL_CODES if needle in why), "UNSAFE_HDF5")
