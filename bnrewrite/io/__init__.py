"""Readers and writers: Keras files in, Keras 3 / ONNX out."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..graph import ModelGraph

WRITE_SUFFIXES = (".onnx", ".keras", ".h5")


def read_model(path, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    """Read a Keras model file into a graph.

    The input must be a regular file (a symlink to one is fine; a FIFO, device or socket
    is refused); its *content* picks the reader, whatever the suffix: HDF5 (also under a
    ``.keras`` name) or a ``.keras`` zip (also under an ``.h5`` name). A tf.keras SavedModel
    folder is read as data (:mod:`.savedmodel`); a live Keras model is read by :mod:`.memory`.
    Other folders and unknown content are InputErrors.
    """
    from .memory import is_model
    from .safe_files import check_regular, describe_content, sniff

    if is_model(path):  # a live keras.Model / tf_keras Model (bnrewrite.io.memory)
        from .memory import read_memory

        return read_memory(path, unsafe=unsafe, custom_objects=custom_objects)
    p = Path(path)
    kind = sniff(p)  # InputError if missing or neither a folder nor a regular file
    if p.is_dir():
        if kind == "savedmodel":  # read as data: keras_metadata.pb + variables/, never the graph
            from .savedmodel import read_savedmodel

            return read_savedmodel(p, unsafe=unsafe, custom_objects=custom_objects)
        raise InputError(f"{p}: is a directory, not a model file nor a SavedModel folder (no saved_model.pb)")
    check_regular(p)
    if kind == "hdf5":
        from .h5 import read_h5
        from .original import bn_subclass_names

        return read_h5(p, unsafe=unsafe, custom_classes=frozenset(custom_objects or ()),
                       bn_classes=bn_subclass_names(custom_objects))
    if kind == "zip":
        from .keras_zip import read_keras

        return read_keras(p, unsafe=unsafe, custom_objects=custom_objects)
    raise InputError(f"{p}: not a Keras model file: {describe_content(p)} "
                     "(expected an HDF5 file or a .keras zip archive)")


def read_config(path) -> dict | None:
    """The model config of a file, read as data only (no framework, no weights), or None
    when the file has none. For ``inspect``'s scan of unsafe content."""
    import json

    from .memory import is_model
    from .safe_files import check_regular, config_limit, read_zip_members, sniff

    if is_model(path):  # a live model: read_model's refusal is the finding (audit's file checks need a path)
        return None
    p = Path(path)
    kind = sniff(p)
    if kind == "savedmodel":
        from .savedmodel import read_config as savedmodel_config

        return savedmodel_config(p)
    check_regular(p)
    if kind == "hdf5":
        from .h5 import extract

        raw = extract(p)
        text = (raw.get("attrs") or {}).get("model_config")
    elif kind == "zip":
        text = read_zip_members(p, {"config.json": config_limit()}, what=".keras archive").get("config.json")
    else:
        return None
    try:
        config = json.loads(text) if text is not None else None
    except (ValueError, TypeError, RecursionError):
        return None
    return config if isinstance(config, dict) else None
