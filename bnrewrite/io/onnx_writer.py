"""Keras 3 model -> ONNX through tf2onnx.

The input signature is explicit: one ``tf.TensorSpec`` per model input, named
after the Keras input, with a dynamic (``None``) batch dimension, so the ONNX
file takes any batch size. Other dimensions keep what the model declares.

tf2onnx does not fail on a TensorFlow op it has no ONNX mapping for: it logs
an error and leaves the op in the graph, so the file is written and only
onnxruntime notices. :func:`to_onnx` listens to tf2onnx's log instead and
refuses such a model (exit 2), naming the Keras layer the op came from (TF
node names carry the layer's name scope; for Keras ops outside any layer
scope, the nearest upstream layer).
"""

from __future__ import annotations

import logging
import re

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


class _Capture(logging.Handler):
    """Collects tf2onnx's per-node errors: unsupported ops and nodes that failed to convert."""

    UNSUPPORTED = re.compile(r"Tensorflow op \[(?P<node>.+?): (?P<op>[^\]]+)\] is not supported")
    FAILED = re.compile(r"Failed to convert node '?(?P<node>[^'\s]+)'?")

    def __init__(self):
        super().__init__(logging.ERROR)
        self.unsupported: list[tuple[str, str]] = []
        self.failed: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if m := self.UNSUPPORTED.search(msg):
            self.unsupported.append((m["node"], m["op"]))
        elif m := self.FAILED.search(msg):
            self.failed.append(m["node"])


def to_onnx(model, opset: int = DEFAULT_OPSET):
    """Return an ``onnx.ModelProto`` for ``model``; raise :class:`UnsupportedModelError`
    naming the layer when tf2onnx cannot export part of it."""
    import tf2onnx

    log = logging.getLogger("tf2onnx")
    log.setLevel(logging.ERROR)
    capture, propagate = _Capture(), log.propagate
    log.addHandler(capture)
    log.propagate = False  # its errors become one message below, not lines on stderr
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature(model), opset=opset)
    except Exception as e:
        where = _where(model, None, capture.failed[0]) if capture.failed else ""
        raise UnsupportedModelError(f"tf2onnx could not export the model{where}: {_describe(e)}") from e
    finally:
        log.removeHandler(capture)
        log.propagate = propagate
    if capture.unsupported:
        node, op = capture.unsupported[0]
        more = len({o for _, o in capture.unsupported}) - 1
        raise UnsupportedModelError(
            f"tf2onnx cannot export{_where(model, proto, node)}: TensorFlow op {op} (node {node}) has no "
            f"ONNX conversion at opset {opset}" + (f" ({more} more unsupported op types)" if more > 0 else "")
        )
    return proto


def _layer_of(model, node_name: str):
    """The Keras layer whose name scope holds TF node ``node_name`` (``model/disc_1/Bucketize``)."""
    layers = {l.name: l for l in model.layers}
    for part in reversed(node_name.split("/")[:-1]):
        for cand in (part, re.sub(r"_\d+$", "", part)):
            if cand in layers and cand != model.name:
                return layers[cand]
    return None


def _where(model, proto, node_name: str) -> str:
    """' layer 'x' (Class)' for a TF node, else the nearest upstream layer's name."""
    layer = _layer_of(model, node_name)
    if layer is not None:
        return f" layer {layer.name!r} ({type(layer).__name__})"
    if proto is not None:  # a Keras op outside a layer scope: walk up to a producer that has one
        producer = {out: n for n in proto.graph.node for out in n.output}
        by_name = {n.name: n for n in proto.graph.node}
        todo, seen = [by_name.get(node_name)], set()
        while todo:
            n = todo.pop(0)
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            up = _layer_of(model, n.name) if n.name != node_name else None
            if up is not None:
                return f" the op after layer {up.name!r} ({type(up).__name__})"
            todo.extend(producer.get(i) for i in n.input)
    return f" node {node_name!r}"


def _describe(e: BaseException) -> str:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    # tf2onnx names the unsupported TF op; keep the line that does.
    for l in lines:
        if "op" in l.lower() and ("unsupported" in l.lower() or "not supported" in l.lower()):
            return l.strip()[:300]
    return (lines[0] if lines else type(e).__name__)[:300]
