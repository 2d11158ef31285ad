"""Keras 3 model -> ONNX through tf2onnx.

The input signature is explicit: one ``tf.TensorSpec`` per model input, named
after the Keras input, with a dynamic (``None``) batch dimension, so the ONNX
file takes any batch size. Other dimensions keep what the model declares.
"""

from __future__ import annotations

import logging

from ..errors import UnsupportedModelError

DEFAULT_OPSET = 17


def input_signature(model):
    import tensorflow as tf

    specs = []
    for t in model.inputs:
        shape = [None, *list(t.shape)[1:]]
        name = t.name.split(":")[0]
        specs.append(tf.TensorSpec(shape, tf.as_dtype(t.dtype), name=name))
    return tuple(specs)


def to_onnx(model, opset: int = DEFAULT_OPSET):
    """Return an ``onnx.ModelProto`` for ``model``."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature(model), opset=opset)
    except Exception as e:
        raise UnsupportedModelError(f"tf2onnx could not export the model: {_describe(e)}") from e
    return proto


def _describe(e: BaseException) -> str:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    # tf2onnx names the unsupported TF op; keep the line that does.
    for l in lines:
        if "op" in l.lower() and ("unsupported" in l.lower() or "not supported" in l.lower()):
            return l.strip()[:300]
    return (lines[0] if lines else type(e).__name__)[:300]
