"""Reader for Keras 3 ``.keras`` archives.

An archive is a zip with ``config.json`` (the model config, Keras 3 dialect),
``metadata.json`` (``keras_version``) and ``model.weights.h5``. The graph comes
from ``config.json``; the weights are taken from the variables of the model
Keras itself rebuilds from the archive (in ``safe_mode`` unless ``unsafe``),
because ``model.weights.h5`` stores them by position only.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

from ..errors import InputError, with_path
from ..graph import ModelGraph
from .config import build_graph
from .weights import live_weights


def read_keras(path: Path, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise InputError(f"{path}: not a Keras 3 archive (no config.json inside)")
            if "model.weights.h5" not in names:
                raise InputError(f"{path}: Keras archive has no model.weights.h5")
            raw = z.read("config.json")
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise InputError(f"{path}: not a readable .keras archive ({str(e)[:200]})") from None
    except ValueError as e:
        raise InputError(f"{path}: metadata.json is not valid JSON ({str(e)[:200]})") from None
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise InputError(f"{path}: config.json is not valid JSON ({str(e)[:200]})") from None

    source = {"path": str(path), "format": "keras", "keras_version": str(meta.get("keras_version", "3"))}
    requests: list[tuple[tuple, str, dict]] = []

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        d: dict = {}
        requests.append((nest, name, d))  # filled once Keras has loaded the archive
        return d

    try:
        mg = build_graph(
            config, lookup, legacy=False, source=source, unsafe=unsafe,
            custom_classes=frozenset(custom_objects or ()),
        )
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: malformed config.json ({type(e).__name__}: {str(e)[:200]})") from None
    except InputError as e:
        raise with_path(e, path) from None

    import keras

    try:
        model = keras.saving.load_model(
            path, compile=False, safe_mode=not unsafe, custom_objects=custom_objects
        )
    except Exception as e:  # Keras raises many types for a bad archive
        raise InputError(f"{path}: Keras could not load the archive's weights ({_first_line(e)})") from None
    for nest, name, d in requests:
        layer = model
        try:
            for p in (*nest, name):
                layer = layer.get_layer(p)
        except ValueError:
            raise InputError(f"{path}: layer {'/'.join((*nest, name))} not found in the archive") from None
        d.update(live_weights(layer))
    return mg


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]
