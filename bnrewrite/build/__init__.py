"""Builders: a :class:`~bnrewrite.graph.ModelGraph` back into a live model of the
framework that wrote the file.

* ``tf_keras`` (:mod:`.tf_keras`) for Keras 2.x / tf.keras files: their configs stay in
  their own dialect, so nothing is translated and the ONNX is what tf2onnx makes
  from tf.keras itself (one Resize for UpSampling2D, native GRU/LSTM, ...);
* ``keras`` (:mod:`.keras3`) for Keras 3 files, and for the Keras 2 -> 3 migration
  (:mod:`.migrate`) that a ``.keras`` output of a legacy file asks for.

Every layer is created once from its config (``from_config``), so shared layers
stay shared, and called per node with that call's own args and kwargs: unlike a
config round trip, call kwargs such as ``training`` and ``mask`` survive.
Framework-neutral ops the passes create (:func:`bnrewrite.graph.reshape_op`) are
rendered natively by each builder.
"""

from __future__ import annotations

from ..graph import ModelGraph
from .base import Builder, effective_options, rebuild_options


def builder(framework_or_graph) -> Builder:
    """The builder for ``"tf_keras"``, ``"keras"`` or a graph's framework."""
    fw = framework_or_graph.framework if isinstance(framework_or_graph, ModelGraph) else framework_or_graph
    if fw == "tf_keras":
        from .tf_keras import TfKerasBuilder

        return TfKerasBuilder()
    if fw == "keras":
        from .keras3 import Keras3Builder

        return Keras3Builder()
    raise ValueError(f"unknown framework {fw!r}")


def build_model(mg: ModelGraph, custom_objects: dict | None = None):
    """Rebuild ``mg`` as a model of its framework, with its weights set."""
    return builder(mg).build_model(mg, custom_objects)


def build_live(mg: ModelGraph, custom_objects: dict | None = None):
    """``(tensors, {layer name: live layer})`` with weights set; see :meth:`Builder.build_live`."""
    return builder(mg).build_live(mg, custom_objects)


def infer_shapes(mg: ModelGraph, custom_objects: dict | None = None) -> dict:
    """Static shape of every tensor ``(node, out)`` (batch and unknown dims are None)."""
    return builder(mg).infer_shapes(mg, custom_objects)


__all__ = ["Builder", "builder", "build_model", "build_live", "infer_shapes", "rebuild_options",
           "effective_options"]
