"""Readers and writers: Keras files in, Keras 3 / ONNX out."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..graph import ModelGraph

READ_SUFFIXES = (".h5", ".hdf5", ".keras")
WRITE_SUFFIXES = (".onnx", ".keras", ".h5")


def read_model(path, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    """Read a Keras model file into a graph (format chosen by suffix)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a model file (SavedModel folders are not supported)")
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from .h5 import read_h5

        return read_h5(p, unsafe=unsafe, custom_classes=frozenset(custom_objects or ()))
    if suffix == ".keras":
        from .keras_zip import read_keras

        return read_keras(p, unsafe=unsafe, custom_objects=custom_objects)
    raise InputError(f"{p}: unknown model file suffix {p.suffix!r} (expected one of {', '.join(READ_SUFFIXES)})")
