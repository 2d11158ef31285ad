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

from .audit import Audit, inspect
from .calibration import calibrate
from .convert import ConvertReport, convert, load, rewrite
from .errors import BnrewriteError, InputError, UnsupportedModelError, VerificationError
from .graph import Layer, ModelGraph, TensorRef

__all__ = [
    "load", "convert", "rewrite", "inspect", "calibrate", "Audit", "ConvertReport", "ModelGraph", "Layer", "TensorRef",
    "BnrewriteError", "InputError", "UnsupportedModelError", "VerificationError", "__version__",
]
