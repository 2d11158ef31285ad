"""Keras 3 builder: a graph of a Keras 3 file (or of a migrated legacy file) -> ``keras.Model``.

Layers come from ``keras.layers``; Keras's own ops that Keras 3 functional graphs
record (``keras.ops.reshape`` saved as module ``keras.src.ops.numpy``, class
``Reshape``) from their Keras module only; custom classes only from the user's
``custom_objects``. Every ``from_config`` runs inside Keras's safe mode unless
the user passed ``unsafe``.
"""

from __future__ import annotations

import contextlib
import copy
import types

from ..errors import UnsupportedModelError
from ..graph import Layer, is_op
from ..io.weights import relative_variable_name
from .base import Builder, check_custom_framework, effective_options, lambda_error, module_class


_RESHAPE_LIKE = None


def _reshape_like(layer: Layer):
    """A live layer for :func:`bnrewrite.graph.reshape_like_op`: ``reshape(x, (*shape(like)[:lead],
    *shape))``, the leading dimensions read at run time (a functional Keras 3 graph has no op for a
    shape that is only known then)."""
    global _RESHAPE_LIKE
    if _RESHAPE_LIKE is None:
        import keras

        class ReshapeLike(keras.layers.Layer):
            def __init__(self, lead: int, shape: tuple, **kwargs):
                super().__init__(**kwargs)
                self.lead, self.target = int(lead), tuple(shape)

            def call(self, x, like):
                lead = keras.ops.shape(like)[:self.lead]
                return keras.ops.reshape(x, (*lead, *self.target))

            def compute_output_shape(self, x_shape, like_shape):
                return (*like_shape[:self.lead], *self.target)

            def get_config(self):
                return {**super().get_config(), "lead": self.lead, "shape": list(self.target)}

        _RESHAPE_LIKE = ReshapeLike
    cfg = layer.config
    return _RESHAPE_LIKE(cfg["lead"], cfg["shape"], name=layer.name.replace("/", "_"))


def keras_class(class_name: str, module: str | None = None):
    """The Keras 3 class for ``class_name`` (a layer, or one of Keras's own ops), or None."""
    import keras

    from ..io.allowlist import app_layer
    from ..io.layercheck import is_keras_op

    app = app_layer(class_name, module)
    if app is not None:  # a keras.applications layer, from the module that defines it
        return module_class(*app, keras.layers.Layer)
    if is_keras_op(module):
        return module_class(module, class_name, keras.Operation)
    cls = getattr(keras.layers, class_name, None)
    if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
        return cls
    return None


def safe_mode(safe: bool):
    """Keras's safe-mode scope (without it Keras stays safe: Lambdas fail closed)."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - other Keras versions
        return contextlib.nullcontext()
    return SafeModeScope(safe)


class Keras3Builder(Builder):
    framework = "keras"

    def make_layer(self, layer: Layer, custom_objects=None, unsafe=None):
        import keras

        custom_objects, unsafe = effective_options(custom_objects, unsafe)
        cls = keras_class(layer.class_name, layer.module) or custom_objects.get(layer.class_name)
        if cls is None and layer.registered_name:
            cls = custom_objects.get(layer.registered_name)
        if cls is None:
            raise UnsupportedModelError(
                f"layer {layer.name!r} has unknown class {layer.class_name!r}; provide it with "
                "--custom-objects module.py (API: custom_objects={...})"
            )
        check_custom_framework(layer, cls, self.framework)
        config = copy.deepcopy(layer.config)
        try:
            with keras.saving.custom_object_scope(custom_objects), safe_mode(not unsafe):
                klayer = cls.from_config(config)
            if layer.class_name == "Lambda":
                _keep_as_bytecode(klayer, layer.config)
            return klayer
        except Exception as e:
            raise lambda_error(layer, e, "Keras 3") from e

    def make_op(self, layer: Layer):
        import keras

        if layer.class_name == "Reshape":
            shape = tuple(layer.config["newshape"])
            return lambda x: keras.ops.reshape(x, shape)
        if layer.class_name == "ReshapeLike":
            return _reshape_like(layer)
        if layer.class_name == "TFOp":  # a migrated tf.keras TFOpLambda
            fn = tf_op_as_keras(layer.config["function"])
            if fn is None:
                raise UnsupportedModelError(f"layer {layer.name!r}: no Keras 3 op for tf.{layer.config['function']}")
            return fn
        raise UnsupportedModelError(f"unknown bnrewrite op {layer.class_name!r}")

    def input(self, layer: Layer):
        import keras

        cfg = layer.config
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape") or [None, *cfg.get("shape", [])]
        return keras.Input(batch_shape=tuple(shape), dtype=cfg.get("dtype") or "float32", name=layer.name,
                           sparse=bool(cfg.get("sparse", False)))

    def flatten(self, result) -> list:
        import keras

        return keras.tree.flatten(result)

    def call_node(self, mg, node, fn, tensors) -> None:
        super().call_node(mg, node, fn, tensors)
        layer = mg.layer(node)
        if is_op(layer):
            # keras.ops calls name themselves ("multiply"), which may clash with a layer of the
            # model; the op takes the graph's (unique) name of the node instead
            out = tensors.get((node, 0))
            history = getattr(out, "_keras_history", None)
            if history is not None and history.operation is not None:
                history.operation.name = layer.name.replace("/", "_")

    def model(self, inputs, outputs, name):
        import keras

        return keras.Model(inputs=inputs, outputs=outputs, name=name)

    def variables(self, klayer) -> list:
        base = klayer.path if getattr(klayer, "path", None) else klayer.name
        return [(relative_variable_name(v.path, base, klayer.name), v) for v in getattr(klayer, "weights", [])]

    def assign_weights(self, klayer, layer: Layer) -> None:
        import keras

        if isinstance(klayer, keras.layers.Layer):
            super().assign_weights(klayer, layer)


def _keep_as_bytecode(klayer, config: dict) -> None:
    """Functions loaded from bytecode keep the name they were defined with (``my_fn``), and
    Keras 3 would save them by that name, which no reader can resolve; as ``<lambda>`` they
    are saved as bytecode again, as in the input file."""
    for key, attr in (("function", "function"), ("output_shape", "_output_shape"), ("mask", "mask")):
        fn = getattr(klayer, attr, None)
        if isinstance(config.get(key), dict) and config[key].get("class_name") == "__lambda__" \
                and isinstance(fn, types.FunctionType):
            fn.__name__ = "<lambda>"



def _binary(op):
    return lambda x, y=None, name=None, **kw: op(x, y)


def _reduce(op):
    def call(x, axis=None, keepdims=False, name=None, **kw):
        return op(x, axis=_axis(axis), keepdims=bool(keepdims or kw.get("keep_dims", False)))
    return call


def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    """tf.math.l2_normalize: x / sqrt(max(sum(x**2, axis), epsilon)), exactly."""
    import keras

    o = keras.ops
    axis = _axis(dim if axis is None else axis)
    return o.multiply(x, o.rsqrt(o.maximum(o.sum(o.square(x), axis=axis, keepdims=True), epsilon)))


def _getitem(x, slice_spec=None, **kw):
    def conv(s):
        return slice(s["start"], s["stop"], s["step"]) if isinstance(s, dict) else s
    spec = tuple(conv(s) for s in slice_spec) if isinstance(slice_spec, list) else conv(slice_spec)
    return x[spec]


def _silu(features, beta=1.0, name=None):
    import keras

    o = keras.ops
    return o.silu(features) if beta == 1.0 else o.multiply(features, o.sigmoid(o.multiply(features, beta)))


def _sort(values, axis=-1, direction="ASCENDING", name=None):
    """tf.sort; descending as the negation of the ascending sort of the negation (exact)."""
    import keras

    o = keras.ops
    if direction == "DESCENDING":
        return o.negative(o.sort(o.negative(values), axis=axis))
    return o.sort(values, axis=axis)


def _cumsum(x, axis=0, exclusive=False, reverse=False, name=None):
    """tf.math.cumsum: the same running sums in the same order (``reverse`` sums from the end,
    ``exclusive`` shifts them by one with a leading zero), so exact."""
    import keras

    o = keras.ops
    if reverse:
        x = o.flip(x, axis=axis)
    c = o.cumsum(x, axis=axis)
    if exclusive:
        first = [slice(None)] * len(x.shape)
        first[axis] = slice(0, 1)
        c = o.concatenate([o.zeros_like(x[tuple(first)]), c], axis=axis)
        drop_last = [slice(None)] * len(x.shape)
        drop_last[axis] = slice(0, -1)
        c = c[tuple(drop_last)]
    return o.flip(c, axis=axis) if reverse else c


def _one_hot(indices, depth, on_value=None, off_value=None, axis=None, dtype=None, name=None):
    """tf.one_hot: float32 unless ``dtype`` or the on/off values say otherwise; those values are
    selected, not computed, so the result is exact."""
    import keras
    import tensorflow as tf

    o = keras.ops
    given = on_value if on_value is not None else off_value
    dtype = tf.as_dtype(dtype or (tf.convert_to_tensor(given).dtype if given is not None else tf.float32)).name
    y = o.one_hot(indices, depth, axis=-1 if axis is None else axis, dtype=dtype)
    if on_value is None and off_value is None:
        return y
    on = o.cast(1 if on_value is None else on_value, dtype)
    off = o.cast(0 if off_value is None else off_value, dtype)
    return o.where(o.greater(y, 0), on, off)


def tf_op_as_keras(function: str):
    """The Keras 3 op computing what tf.keras's ``TFOpLambda(tf.<function>)`` computes, with
    tf.keras's call arguments, or None. Each is the same math (no approximation)."""
    import keras

    o = keras.ops
    for prefix in ("compat.v1.", "compat.v2."):
        if function.startswith(prefix):
            function = function[len(prefix):]
    table = {
        "__operators__.add": _binary(o.add), "math.add": _binary(o.add),
        "math.subtract": _binary(o.subtract), "math.multiply": _binary(o.multiply),
        "math.truediv": _binary(o.true_divide), "math.divide": _binary(o.true_divide),
        "math.maximum": _binary(o.maximum), "math.minimum": _binary(o.minimum),
        "math.pow": _binary(o.power), "math.squared_difference": _binary(lambda a, b: o.square(o.subtract(a, b))),
        "math.negative": lambda x, name=None: o.negative(x), "math.square": lambda x, name=None: o.square(x),
        "math.sqrt": lambda x, name=None: o.sqrt(x), "math.rsqrt": lambda x, name=None: o.rsqrt(x),
        "math.exp": lambda x, name=None: o.exp(x), "math.log": lambda x, name=None: o.log(x),
        "math.abs": lambda x, name=None: o.abs(x), "math.sigmoid": lambda x, name=None: o.sigmoid(x),
        "math.tanh": lambda x, name=None: o.tanh(x), "nn.relu": lambda features, name=None: o.relu(features),
        "nn.relu6": lambda features, name=None: o.relu6(features),
        "nn.sigmoid": lambda x, name=None: o.sigmoid(x), "nn.tanh": lambda x, name=None: o.tanh(x),
        # tf.nn.silu(x, beta) = x * sigmoid(beta * x) (``keras.activations.swish`` called on a tensor)
        "nn.silu": _silu, "nn.swish": _silu,
        "nn.gelu": lambda features, approximate=False, name=None: o.gelu(features, approximate=approximate),
        "nn.elu": lambda features, name=None: o.elu(features), "nn.selu": lambda features, name=None: o.selu(features),
        "nn.softplus": lambda features, name=None: o.softplus(features),
        "math.softplus": lambda features, name=None: o.softplus(features),
        "nn.leaky_relu": lambda features, alpha=0.2, name=None: o.leaky_relu(features, negative_slope=alpha),
        "math.erf": lambda x, name=None: o.erf(x), "math.reciprocal": lambda x, name=None: o.reciprocal(x),
        "nn.softmax": lambda logits, axis=None, name=None: o.softmax(logits, axis=-1 if axis is None else axis),
        "math.reduce_mean": _reduce(o.mean), "math.reduce_sum": _reduce(o.sum),
        "math.reduce_max": _reduce(o.max), "math.reduce_min": _reduce(o.min),
        "reduce_mean": _reduce(o.mean), "reduce_sum": _reduce(o.sum),
        "concat": lambda values, axis, name=None: o.concatenate(list(values), axis=axis),
        "stack": lambda values, axis=0, name=None: o.stack(list(values), axis=axis),
        "reshape": lambda tensor, shape, name=None: o.reshape(tensor, tuple(shape)),
        "transpose": lambda a, perm=None, conjugate=False, name=None: o.transpose(a, axes=perm),
        "expand_dims": lambda input, axis, name=None: o.expand_dims(input, axis),
        "squeeze": lambda input, axis=None, name=None: o.squeeze(input, axis=_axis(axis)),
        "cast": lambda x, dtype, name=None: o.cast(x, dtype),
        "math.cumsum": _cumsum, "cumsum": _cumsum, "sort": _sort,
        "one_hot": _one_hot, "ones_like": lambda input, dtype=None, name=None: o.ones_like(input, dtype=dtype),
        "zeros_like": lambda input, dtype=None, name=None: o.zeros_like(input, dtype=dtype),
        "clip_by_value": lambda t, clip_value_min, clip_value_max, name=None: o.clip(t, clip_value_min,
                                                                                      clip_value_max),
        "identity": lambda input, name=None: o.copy(input),
        "__operators__.getitem": _getitem,
        "math.equal": _binary(o.equal), "math.not_equal": _binary(o.not_equal),
        "math.greater": _binary(o.greater), "math.greater_equal": _binary(o.greater_equal),
        "math.less": _binary(o.less), "math.less_equal": _binary(o.less_equal),
        "math.logical_and": _binary(o.logical_and), "math.logical_or": _binary(o.logical_or),
        "math.logical_not": lambda x, name=None: o.logical_not(x),
        "math.reduce_any": _reduce(o.any), "math.reduce_all": _reduce(o.all),
        "math.l2_normalize": _l2_normalize, "nn.l2_normalize": _l2_normalize,
        "linalg.l2_normalize": _l2_normalize,
    }
    return table.get(function)