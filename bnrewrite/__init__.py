"""bnrewrite: make Keras models safe to deploy where BatchNormalization is concerned.

Public API::

    import bnrewrite
    mg = bnrewrite.load("model.h5")          # ModelGraph; mg.graph is a networkx.MultiDiGraph
    report = bnrewrite.convert("model.h5", "model.onnx")
    audit = bnrewrite.inspect("model.h5")
    report = bnrewrite.convert("model.h5", "model.onnx", calibration=images)   # AdaBN
    bnrewrite.calibrate(mg, images)          # the same on a ModelGraph, in place
    new_model = bnrewrite.rewrite(model)     # a live keras / tf_keras model in, a new one out
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os

# onnxruntime >= 1.22 writes a telemetry session file to $TMPDIR and a device id and event queue under
# ~/.cache as soon as it is imported: bnrewrite touches no file the user did not name (and no network)
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .audit import Audit, inspect
from .calibration import calibrate
from .convert import ConvertReport, convert, load, rewrite
from .errors import BnrewriteError, InputError, UnsupportedModelError, VerificationError
from .graph import Layer, ModelGraph, TensorRef

__all__ = [
    "load", "convert", "rewrite", "inspect", "calibrate", "Audit", "ConvertReport", "ModelGraph", "Layer", "TensorRef",
    "BnrewriteError", "InputError", "UnsupportedModelError", "VerificationError", "__version__",
]
