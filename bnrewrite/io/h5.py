"""Reader for full-model HDF5 files (``.h5``/``.hdf5``) from tf.keras, Keras 2 and Keras 3.

Layout read: root attribute ``model_config`` (JSON), ``keras_version``,
``backend``; group ``model_weights/<layer>`` with attribute ``weight_names``
(``"conv/kernel:0"`` in tf.keras, ``"conv/kernel"`` in Keras 3) naming datasets
relative to that group. A nested model's group holds the weights of all its
inner layers, named from the inner layer down.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..graph import ModelGraph
from .config import build_graph
from .weights import key_weights, relative_name


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_h5(path: Path, *, unsafe: bool = False, custom_classes=frozenset()) -> ModelGraph:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({_short(e)})") from None
    with f:
        if "model_config" not in f.attrs:
            if "layer_names" in f.attrs or "model_weights" not in f:
                raise InputError(
                    f"{path}: weights-only HDF5 file (no model_config); save the whole model "
                    "with model.save(), not model.save_weights()"
                )
            raise InputError(f"{path}: HDF5 file has no model_config attribute")
        try:
            config = json.loads(_text(f.attrs["model_config"]))
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: model_config is not valid JSON ({_short(e)})") from None
        if "model_weights" not in f:
            raise InputError(f"{path}: HDF5 file has a model_config but no model_weights group")
        version = _text(f.attrs.get("keras_version", "2"))
        source = {
            "path": str(path), "format": "h5", "keras_version": version,
            "backend": _text(f.attrs.get("backend", "")),
        }
        mw = f["model_weights"]

        def lookup(nest: tuple, name: str, class_name: str) -> dict:
            top = nest[0] if nest else name
            if top not in mw:
                return {}
            grp = mw[top]
            names = [_text(n) for n in grp.attrs.get("weight_names", [])]
            if nest:  # a nested layer's weights start with its name (Keras 3: after the models' names)
                names = [n for n in names if _first_own(n, nest) == name]
            items = []
            for n in names:
                try:
                    items.append((relative_name(n, name), np.asarray(grp[n][()])))
                except (KeyError, OSError) as e:
                    raise InputError(f"{path}: weight {top}/{n} is unreadable ({_short(e)})") from None
            return key_weights(class_name, items)

        try:
            return build_graph(
                config, lookup, legacy=not version.startswith("3"), source=source,
                unsafe=unsafe, custom_classes=custom_classes,
            )
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise InputError(f"{path}: malformed model_config ({type(e).__name__}: {_short(e)})") from None


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _first_own(weight_name: str, nest: tuple) -> str:
    """First component of ``weight_name`` that is not one of the enclosing models' names."""
    parts = weight_name.split("/")
    i = 0
    while i < len(parts) - 1 and parts[i] in nest:
        i += 1
    return parts[i]
