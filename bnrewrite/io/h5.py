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
import subprocess
import sys
from pathlib import Path

from ..errors import InputError, with_path
from ..graph import ModelGraph
from .config import build_graph
from .weights import key_weights, relative_name


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


#: seconds the child process may take to read a ``.h5`` (env ``BNREWRITE_READ_TIMEOUT``)
READ_TIMEOUT = 60.0
# Run h5_extract.py by path, without the script's folder or the cwd on sys.path.
_RUN = "import runpy, sys; sys.path.pop(0); sys.argv.pop(0); runpy.run_path(sys.argv[0], run_name='__main__')"


def read_h5(path: Path, *, unsafe: bool = False, custom_classes=frozenset()) -> ModelGraph:
    raw = _extract_isolated(path)
    if raw["error"]:
        kind, _, msg = raw["error"].partition(": ")
        if kind == "open":
            raise InputError(f"{path}: not a readable HDF5 file ({msg})")
        raise InputError(f"{path}: damaged HDF5 file ({msg})")
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
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: model_config is not valid JSON ({_short(e)})") from None
    if not raw["has_model_weights"]:
        raise InputError(f"{path}: HDF5 file has a model_config but no model_weights group")
    version = _text(attrs.get("keras_version", "2"))
    source = {
        "path": str(path), "format": "h5", "keras_version": version,
        "backend": _text(attrs.get("backend", "")),
    }
    groups = raw["groups"]

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        top = nest[0] if nest else name
        if top not in groups:
            return {}
        grp = groups[top]
        names = grp["weight_names"]
        if nest:  # a nested layer's weights start with its name (Keras 3: after the models' names)
            names = [n for n in names if _first_own(n, nest) == name]
        items = []
        for n in names:
            value = grp["data"][n]
            if isinstance(value, str):
                raise InputError(f"{path}: weight {top}/{n} is unreadable ({value[len('error: '):]})")
            items.append((relative_name(n, name), value))
        return key_weights(class_name, items)

    try:
        return build_graph(
            config, lookup, legacy=not version.startswith("3"), source=source,
            unsafe=unsafe, custom_classes=custom_classes,
        )
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: malformed model_config ({type(e).__name__}: {_short(e)})") from None
    except InputError as e:
        raise with_path(e, path) from None


def _extract_isolated(path: Path) -> dict:
    """:func:`h5_extract.extract` in a child process, so a hang or crash of HDF5 on a damaged
    file is a clear error here, not a stuck or dead bnrewrite."""
    timeout = float(os.environ.get("BNREWRITE_READ_TIMEOUT", READ_TIMEOUT))
    script = Path(__file__).with_name("h5_extract.py")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUN, str(script), str(path)],
            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise InputError(
            f"{path}: reading the HDF5 file did not finish within {timeout:g} s (damaged file?)"
        ) from None
    if proc.returncode != 0:
        if proc.returncode < 0:
            why = f"the HDF5 library crashed on it, signal {-proc.returncode}"
        else:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            why = tail[-1][:200] if tail else f"exit code {proc.returncode}"
        raise InputError(f"{path}: damaged HDF5 file ({why})")
    return pickle.loads(proc.stdout)  # our own child's output


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _first_own(weight_name: str, nest: tuple) -> str:
    """First component of ``weight_name`` that is not one of the enclosing models' names."""
    parts = weight_name.split("/")
    i = 0
    while i < len(parts) - 1 and parts[i] in nest:
        i += 1
    return parts[i]
