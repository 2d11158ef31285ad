"""unwrap_timedistributed: replace ``TimeDistributed(layer)`` by the layer itself.

``TimeDistributed(f)`` applies ``f`` to every time step: for x of shape
(B, T, *d) it is ``reshape(f(reshape(x, (B*T, *d))), (B, T, *f_d))``. Keras 3
exports it unrolled, one slice-and-call per step (T=256 -> 1027 ONNX nodes), so
the pass writes that reshape -> layer -> reshape with the same weights; the
ONNX size no longer grows with T. Nested TimeDistributed layers collapse the
same way (all time axes merge into the batch).

For layers that act on the last axis or elementwise, the two reshapes are the
identity on the result and are left out:

* BatchNormalization over axis a of a step: over (B*T, *d) it normalizes the
  same channel as BN over axis a+1 (a+depth when nested) of (B, T, *d), with
  statistics over batch *and* time, in training as in inference;
* Dense (acts on the last axis of any rank), activations, Dropout-like layers
  (elementwise), Softmax / LayerNormalization (axis shifted like BN).

Other per-sample layers (Conv*, pooling, Flatten, Reshape, padding, ...) get
the explicit reshapes (framework-neutral reshape ops: ``keras.ops.reshape`` in
Keras 3, ``tf.reshape`` in tf_keras, both saved and reloaded without custom
code); they need the step shape to be static, and the time length to be known
for the reshape back (tf_keras's own TimeDistributed already reshapes instead of
unrolling, so a wrapper left in place costs nothing there). With ``open_time``
(set for ONNX output) a Keras 3 wrapper whose time length is open is unwrapped
too: the reshape back reads B and T from the wrapper's input at run time
(:func:`~bnrewrite.graph.reshape_like_op`). Keras 3 runs such a wrapper as a
``vectorized_map``, which tf2onnx exports as a ``pfor`` loop that onnxruntime
can refuse to run; a Keras file could not store the run-time reshape, so Keras
outputs keep the wrapper. Keras 3's ``.h5`` stores layers only, no op nodes: for that
output (``keras3_ops=False``) a Keras 3 wrapper that needs reshapes is kept, with the
reason (a wrapped BN or Dense needs none and is still unwrapped). The shape table is
updated after each rewrite, so consecutive wrappers unwrap too.
A model inside the wrapper (a per-frame encoder, ``TimeDistributed(Sequential[Conv,
BN, ...])``) that holds BN layers is inlined between the same two reshapes: its layers
become graph calls on (B*T, *d), so its BNs fold and calibrate like any other (their
statistics over batch and time, as in training). Its weights are taken per inner layer
from the wrapper as the framework itself assigned them (the live wrapper's inner
model), so no naming or ordering rule of the file is assumed; the calls of a wrapper
called more than once share the inlined layers. A model with several inputs or outputs,
and a model without BN, are left wrapped.
Anything else (recurrent layers, masks) is left wrapped, with the reason in the report.

In a tf_keras graph, TimeDistributed already runs as one reshape (no unrolling),
and unwrapping e.g. a Dense would make tf2onnx export a dynamic tensordot instead:
there only a wrapped BN, and a wrapped layer that feeds a BN (so the BN can fold
into it), are unwrapped.
"""

from __future__ import annotations

import copy

import networkx as nx
import numpy as np

from ..graph import BN_CLASSES, MODEL_CLASSES, Layer, ModelGraph, TensorRef, bn_axis, reshape_like_op, reshape_op
from ..io.config import TRAINING_AWARE, ModelInliner
from ..io.original import bn_subclass_names
from ..io.weights import weight_keys
from .base import Pass, PassContext

# Act on the last axis or elementwise: no reshape needed.
DIRECT = {
    "Dense", "EinsumDense", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU",
    "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Identity", "Embedding",
}
# Take an ``axis`` (int) that must move with the merged dimensions.
AXIS = {*BN_CLASSES, "Softmax", "LayerNormalization", "UnitNormalization"}
# Per-sample layers that need the explicit (B*T, ...) reshape.
RESHAPED = {
    "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
    "SeparableConv2D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "Flatten", "Reshape",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "Permute", "RepeatVector",
}
# Layers that accept any rank only along these constraints.
_LAST_AXIS_ONLY = {"Softmax", "LayerNormalization", "UnitNormalization"}



def _strip(layer: Layer) -> tuple[dict, int]:
    """Innermost wrapped layer config and how many TimeDistributed wrap it."""
    inner, depth = layer.config["layer"], 1
    while inner.get("class_name") == "TimeDistributed":
        inner, depth = inner["config"]["layer"], depth + 1
    return inner, depth


class UnwrapTimeDistributed(Pass):
    name = "unwrap_timedistributed"
    description = "TimeDistributed(layer) -> reshape (B*T, ...) -> layer -> reshape back"

    def __init__(self, open_time: bool = False, keras3_ops: bool = True):
        self.open_time = open_time  # unwrap Keras 3 wrappers of open time length too (ONNX output only)
        self.keras3_ops = keras3_ops  # Keras 3 reshape op nodes may be made (not for Keras 3's .h5)

    @classmethod
    def from_options(cls, options: dict) -> "UnwrapTimeDistributed | None":
        if options.get("keep_timedistributed", False):
            return None
        fmt = options.get("output_format")
        return cls(open_time=fmt == "onnx", keras3_ops=fmt != "h5")

    def candidates(self, mg: ModelGraph):
        return [n for n in mg.topo() if mg.layer(n).class_name == "TimeDistributed"]

    def run(self, mg, ctx):
        from ..build import builder
        from ..build.base import static_shapes

        # one symbolic trace of the whole model, only when there is something to unwrap; live
        # layers with their weights when a wrapped model may be inlined (its per-layer weights)
        candidates = self.candidates(mg)
        self._builder, self._live = builder(mg), {}
        if any(mg.layer(n).wrapped_model_bns() for n in candidates):
            tensors, self._live = self._builder.build_live(mg)
            self._shapes = static_shapes(tensors)
        else:
            self._shapes = self._builder.infer_shapes(mg) if candidates else {}
        self._made: dict[str, Layer] = {}  # one unwrapped layer per shared wrapper
        self._inliners: dict[str, ModelInliner] = {}  # one per wrapped model: its calls share the layers
        result = super().run(mg, ctx)
        # why a wrapper was kept, for calibration's refusal of BNs it cannot reach
        ctx.artifacts["timedistributed_kept"] = {s["layer"]: s["reason"] for s in result.skipped}
        return result

    def check(self, mg: ModelGraph, node: str, ctx: PassContext) -> str | None:
        layer = mg.layer(node)
        inner, depth = _strip(layer)
        cls = inner.get("class_name")
        if mg.framework == "tf_keras" and not (layer.wraps_bn() or _feeds_bn(mg, node) or layer.wrapped_model_bns()):
            return "tf_keras runs TimeDistributed as one reshape already; unwrapping gains nothing here"
        kwargs = mg.graph.nodes[node]["kwargs"]
        if kwargs.get("mask") is not None:
            return "the call passes a mask"
        if len(mg.inbound(node)) != 1:
            return "the call has more than one input tensor"
        if cls in AXIS or layer.bn_subclass:
            axis = bn_axis(inner["config"])
            if isinstance(axis, list):
                return f"{cls} over several axes {axis}"
            return None
        if cls in DIRECT:
            return None
        if cls in MODEL_CLASSES:
            if not layer.wrapped_model_bns():
                return "a nested model without BatchNormalization inside TimeDistributed is left wrapped"
            kmodel = _wrapped_live(self._live.get(layer.name))
            if kmodel is None or len(kmodel.inputs) != 1 or len(kmodel.outputs) != 1:
                return "the wrapped model does not have exactly one input and one output"
        if cls in RESHAPED or cls in MODEL_CLASSES:
            if mg.framework == "keras" and not self.keras3_ops:
                return (f"unwrapping {cls} needs reshape op nodes, which Keras 3's .h5 format cannot store; "
                        "the wrapper is kept (a .keras or .onnx output unwraps it)")
            if _mask_upstream(mg, node):
                return "a Keras mask reaches it (Masking / Embedding(mask_zero)); reshapes would drop the mask"
            shape = self._shapes.get(mg.inbound(node)[0])
            out = self._shapes.get((node, 0))
            if shape is None or out is None or any(d is None for d in (*shape[depth + 1:], *out[depth + 1:])):
                return f"the step shape {shape} -> {out} is not static, needed to reshape around {cls}"
            if any(d is None for d in out[1:depth + 1]) and not (self.open_time and mg.framework == "keras"):
                return f"the time length of {out} is unknown, needed to reshape back after {cls}"
            return None
        return f"{cls} is not known to act sample by sample"

    def rewrite(self, mg: ModelGraph, node: str, ctx: PassContext) -> list[str]:
        td = mg.layer(node)
        inner, depth = _strip(td)
        cls = inner["class_name"]
        if cls in MODEL_CLASSES:
            return self._inline(mg, node, td, inner, depth)
        config = copy.deepcopy(inner["config"])
        config["name"] = td.name  # the unwrapped layer keeps the wrapper's name
        if td.config.get("trainable") is False:
            config["trainable"] = False
        data = mg.graph.nodes[node]
        kwargs = {k: v for k, v in data["kwargs"].items() if k == "training"}
        src = mg.inbound(node)[0]
        if cls in AXIS or td.bn_subclass:
            axis = bn_axis(config)
            # An axis counted from the front of one step moves back by the merged time axes.
            config["axis"] = axis + depth if axis >= 0 else axis
        new_layer = self._made.get(td.name) or Layer(
            td.name, cls, config, td.weights, module=inner.get("module"),
            registered_name=inner.get("registered_name"), origin=td.origin,
            bn_subclass=td.bn_subclass)
        self._made[td.name] = new_layer
        if cls in AXIS or td.bn_subclass or cls in DIRECT:
            self._replace(mg, node, new_layer, [src], kwargs)
            return [td.name]

        order, path = data["order"], data["path"]
        m = self._merge_time(mg, node, td, depth)
        inner_node = self._replace(mg, node, new_layer, [(m, 0)], kwargs)
        # the inner layer's output took the wrapper's node id: its readers move to the reshape back
        self._split_time(mg, td, depth, src, (inner_node, 0), (inner_node, 0), order, path)
        self._shapes[(inner_node, 0)] = (None, *self._shapes[(inner_node, 0)][depth + 1:])
        return [td.name]

    def _merge_time(self, mg: ModelGraph, node: str, td: Layer, depth: int) -> str:
        """The (B, T, *d) -> (B*T, *d) reshape of the wrapper's input; the shape table is kept true for
        later wrappers that read these tensors."""
        data, src = mg.graph.nodes[node], mg.inbound(node)[0]
        shape = self._shapes[src]
        merge = reshape_op(mg.unique_name(f"{td.name}_merge_time"), [-1, *shape[depth + 1:]])
        m = mg.add_call(merge, [src], path=data["path"])
        mg.graph.nodes[m]["order"] = data["order"] - 0.5
        self._shapes[(m, 0)] = (None, *shape[depth + 1:])
        return m

    def _split_time(self, mg: ModelGraph, td: Layer, depth: int, src, out, old, order, path) -> str:
        """The (B*T, *e) -> (B, T, *e) reshape of ``out``; the readers of ``old`` (the wrapper's output,
        whose shape the table holds) read it instead."""
        out_shape = self._shapes[old]
        if any(d is None for d in out_shape[1:depth + 1]):  # open time length: B and T read at run time
            split = reshape_like_op(mg.unique_name(f"{td.name}_split_time"), depth + 1, out_shape[depth + 1:])
            sp = mg.add_call(split, [out, src], args=[TensorRef(0), TensorRef(1)], path=path)
        else:
            split = reshape_op(mg.unique_name(f"{td.name}_split_time"),
                               [-1, *out_shape[1:depth + 1], *out_shape[depth + 1:]])
            sp = mg.add_call(split, [out], path=path)
        mg.rewire(old, (sp, 0))
        mg.graph.nodes[sp]["order"] = order + 0.5
        self._shapes[(sp, 0)] = out_shape
        return sp

    def _inline(self, mg: ModelGraph, node: str, td: Layer, inner: dict, depth: int) -> list[str]:
        """reshape (B*T, *d) -> the wrapped model's layers as graph calls -> reshape back."""
        data = mg.graph.nodes[node]
        src = mg.inbound(node)[0]
        m = self._merge_time(mg, node, td, depth)
        kmodel = _wrapped_live(self._live[td.name])
        prefix = (*td.origin[0], td.origin[1]) if td.origin else (*data["path"], td.name)

        def weights(path, name, _cls):  # as the framework assigned them to the wrapper's inner layers
            live = kmodel
            for p in (*path[len(prefix):], name):
                live = live.get_layer(p)
            named = self._builder.variables(live)
            return {k: np.asarray(v.numpy()) for k, (_, v) in zip(weight_keys([n for n, _ in named]), named)}

        if td.name not in self._inliners:
            self._inliners[td.name] = ModelInliner(mg, weights, bn_classes=_bn_subclasses(kmodel))
        before = set(mg.graph)
        trainable = td.config.get("trainable", True) is not False
        (out,) = self._inliners[td.name].call(inner, [(m, 0)], path=prefix, training=False, trainable=trainable)
        for n in set(mg.graph) - before:  # inference semantics, as inference_mode gave the wrapper's call
            kwargs = mg.graph.nodes[n]["kwargs"]
            if mg.layer(n).class_name in TRAINING_AWARE and kwargs.get("training") is True:
                kwargs["training"] = False
        self._split_time(mg, td, depth, src, out, (node, 0), data["order"], data["path"])
        mg.remove(node)
        return [td.name]

    @staticmethod
    def _replace(mg, node, new_layer, inputs, kwargs) -> str:
        """Swap the TimeDistributed call for a call of ``new_layer`` on ``inputs``."""
        data = mg.graph.nodes[node]
        order, path, call = data["order"], data["path"], data["call"]
        tmp = mg.add_call(new_layer, inputs, kwargs=kwargs, path=path, node=f"{node}__unwrapped")
        mg.rewire((node, 0), (tmp, 0))
        mg.remove(node)
        mg.graph.nodes[tmp].update(order=order, call=call)
        nx.relabel_nodes(mg.graph, {tmp: node}, copy=False)
        mg.outputs = [(node, o) if n == tmp else (n, o) for n, o in mg.outputs]
        return node


def _mask_upstream(mg: ModelGraph, node: str) -> bool:
    """Whether a layer that creates a Keras mask feeds ``node`` (masks propagate implicitly)."""
    for a in nx.ancestors(mg.graph, node):
        lay = mg.layer(a)
        if lay.class_name == "Masking" or (lay.class_name == "Embedding" and lay.config.get("mask_zero")):
            return True
    return False


def _feeds_bn(mg: ModelGraph, node: str) -> bool:
    """Whether the call's output is read only by a BN (wrapped or not) that could fold into it."""
    readers = mg.consumers(node, 0)
    return len(readers) == 1 and mg.uses(node, 0) == 1 and (
        mg.layer(readers[0][0]).is_bn() or mg.layer(readers[0][0]).wraps_bn())


def _wrapped_live(klayer):
    """The live model inside a (nested) TimeDistributed wrapper, or None."""
    while klayer is not None and not hasattr(klayer, "get_layer"):
        klayer = getattr(klayer, "layer", None)
    return klayer


def _bn_subclasses(kmodel) -> frozenset:
    """Class names of the wrapped model's layers that subclass BatchNormalization (custom classes), by
    the readers' own rule (:func:`~bnrewrite.io.original.bn_subclass_names`) over its live classes."""
    classes, todo = {}, list(kmodel.layers)
    while todo:
        lay = todo.pop()
        todo.extend(getattr(lay, "layers", ()))
        classes[type(lay).__name__] = type(lay)
    return bn_subclass_names(classes)
