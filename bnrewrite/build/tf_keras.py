"""tf_keras builder: a graph of a Keras 2.x / tf.keras file -> ``tf_keras.Model``.

tf_keras (Keras 2, kept on TensorFlow's minor version) reads the legacy config
dialect natively, so each layer is rebuilt by the framework that wrote it from
its own config: no translation, hence nothing to get wrong (LeakyReLU ``alpha``,
``hard_sigmoid``, initializer ``dtype``, wrappers without ``module``, ...), and
tf2onnx exports what it exports for tf.keras itself.

Classes come from ``tf_keras.layers`` (after the reader's allowlist,
:mod:`bnrewrite.io.allowlist`) or the user's ``custom_objects``. ``TFOpLambda``
and ``SlicingOpLambda`` (the ``tf.*`` calls tf.keras records in functional
graphs) resolve their TensorFlow function by name, so they are rebuilt only
after the reader checked the name against the allowlist of pure TF functions.
Every ``from_config`` runs in tf_keras's safe mode unless the user passed
``unsafe``; with ``unsafe``, a ``Lambda``'s bytecode sees the globals Keras 2
gave it (``K``, ``tf``, ``np``), as when the file was written.
"""

from __future__ import annotations

import copy
import functools

from ..errors import UnsupportedModelError
from ..graph import Layer
from ..io.weights import relative_variable_name
from .base import Builder, check_custom_framework, effective_options, lambda_error, module_class


@functools.lru_cache(maxsize=None)
def require_tf_keras() -> None:
    """tf_keras must be on TensorFlow's minor version (it is built against it)."""
    import tensorflow as tf

    try:
        import tf_keras
    except ImportError as e:
        raise UnsupportedModelError(
            "this file was written by Keras 2 / tf.keras and is rebuilt by tf_keras, which is not "
            f"installed (pip install 'tf_keras~={tf.__version__.rsplit('.', 1)[0]}.0')") from e
    if tf_keras.__version__.split(".")[:2] != tf.__version__.split(".")[:2]:
        raise UnsupportedModelError(
            f"tf_keras {tf_keras.__version__} does not match TensorFlow {tf.__version__}: install "
            f"tf_keras~={'.'.join(tf.__version__.split('.')[:2])}.0")


def tf_keras_class(class_name: str):
    """The tf_keras class for a (reader-allowlisted) class name, as tf_keras's own
    deserializer resolves it: its registry also knows the names older tf.keras wrote
    (``BatchNormalizationV1`` in TF 1.13, ...)."""
    import tf_keras
    from tf_keras.src.layers import serialization

    from ..io.allowlist import app_layer

    app = app_layer(class_name, None)
    if app is not None and app[0].startswith("tf_keras."):  # a tf_keras.applications layer
        return module_class(*app, tf_keras.layers.Layer)
    serialization.populate_deserializable_objects()
    cls = serialization.LOCAL.ALL_OBJECTS.get(class_name) or getattr(tf_keras.layers, class_name, None)
    if isinstance(cls, type) and issubclass(cls, tf_keras.layers.Layer):
        return cls
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        from tf_keras.src.layers.core import tf_op_layer

        return getattr(tf_op_layer, class_name)
    return None


def safe_mode(safe: bool):
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(safe)


def lambda_globals() -> dict:
    """What a Keras 2 ``Lambda`` body could name without importing it: Keras 2's
    ``keras/layers/core.py`` had ``K`` (the backend), ``np`` and, with tf.keras, ``tf``."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    return {"K": tf_keras.backend, "backend": tf_keras.backend, "tf": tf, "np": np, "keras": tf_keras}


def model_from_config(config: dict, custom_objects=None, unsafe: bool = False):
    """tf_keras's own model for a legacy model config (its deserializer, in its safe mode
    unless ``unsafe``; Keras 2.0/2.1 list-form Sequential configs too). No weights."""
    import tf_keras

    require_tf_keras()
    objects = {**(lambda_globals() if unsafe else {}), **(custom_objects or {})}
    with tf_keras.utils.custom_object_scope(objects), safe_mode(not unsafe):
        if isinstance(config.get("config"), list) or config.get("class_name") == "Sequential":
            return tf_keras.Sequential.from_config(config["config"], custom_objects=objects)
        return tf_keras.models.model_from_config(config, custom_objects=objects)


#: GPU-only recurrent layers of Keras 2 / tf.keras 1.x -> (the standard layer they equal, gates)
CUDNN_RNN = {"CuDNNLSTM": ("LSTM", 4), "CuDNNGRU": ("GRU", 3)}


def cudnn_as_standard(class_name: str, config: dict) -> tuple[str, dict]:
    """``(class, config)`` of the standard layer a CuDNN layer equals (see
    :mod:`bnrewrite.passes.cudnn_rnn` for the math): cuDNN's fixed tanh/sigmoid activations,
    GRU in its reset-after form; the rest of the config (units, return_*, go_backwards, stateful,
    time_major, initializers, regularizers, constraints) carries over."""
    config = dict(config)
    config.update(activation="tanh", recurrent_activation="sigmoid", use_bias=True)
    if class_name == "CuDNNGRU":
        config["reset_after"] = True
        config.pop("unit_forget_bias", None)
    return CUDNN_RNN[class_name][0], config


def cudnn_config_as_standard(config):
    """A model config (any depth: wrappers, nested models) with every CuDNN layer replaced by
    :func:`cudnn_as_standard`, for tf_keras's own loader, which converts the weights itself."""
    if isinstance(config, list):
        return [cudnn_config_as_standard(c) for c in config]
    if not isinstance(config, dict):
        return config
    out = {k: cudnn_config_as_standard(v) for k, v in config.items()}
    if out.get("class_name") in CUDNN_RNN and isinstance(out.get("config"), dict):
        out["class_name"], out["config"] = cudnn_as_standard(out["class_name"], out["config"])
    return out


class TfKerasBuilder(Builder):
    framework = "tf_keras"

    def make_layer(self, layer: Layer, custom_objects=None, unsafe=None):
        require_tf_keras()
        import tf_keras

        custom_objects, unsafe = effective_options(custom_objects, unsafe)
        cls = custom_objects.get(layer.class_name) or tf_keras_class(layer.class_name)
        if cls is None:
            raise UnsupportedModelError(
                f"layer {layer.name!r} has unknown class {layer.class_name!r}; provide it with "
                "--custom-objects module.py (API: custom_objects={...})"
            )
        if layer.class_name in custom_objects:
            check_custom_framework(layer, cls, self.framework)
        objects = dict(custom_objects)
        if unsafe and _has_lambda(layer.config, layer.class_name):
            objects = {**lambda_globals(), **objects}
        config = copy.deepcopy(layer.config)
        try:
            # the scope reaches what a wrapper deserializes inside (TimeDistributed's layer, ...)
            with tf_keras.utils.custom_object_scope(objects), safe_mode(not unsafe):
                return cls.from_config(config)
        except Exception as e:
            raise lambda_error(layer, e, "tf_keras") from e

    def make_op(self, layer: Layer):
        import tensorflow as tf

        if layer.class_name == "Reshape":
            shape = list(layer.config["newshape"])
            # on a tf_keras KerasTensor this records a TFOpLambda(tf.reshape): saved and reloaded as data
            return lambda x: tf.reshape(x, shape)
        raise UnsupportedModelError(f"unknown bnrewrite op {layer.class_name!r}")

    def input(self, layer: Layer):
        import tf_keras

        cfg = layer.config
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape") or [None, *cfg.get("shape", [])]
        dtype = cfg.get("dtype") or "float32"
        if isinstance(dtype, dict):
            dtype = (dtype.get("config") or {}).get("name", "float32")
        return tf_keras.Input(batch_shape=tuple(shape), dtype=dtype, name=layer.name,
                              sparse=bool(cfg.get("sparse", False)), ragged=bool(cfg.get("ragged", False)))

    def flatten(self, result) -> list:
        import tensorflow as tf

        return tf.nest.flatten(result)

    def model(self, inputs, outputs, name):
        import tf_keras

        return tf_keras.Model(inputs=inputs, outputs=outputs, name=name)

    def variables(self, klayer) -> list:
        return [(relative_variable_name(v.name, "", klayer.name), v) for v in getattr(klayer, "weights", [])]

    def assign_weights(self, klayer, layer: Layer) -> None:
        import tf_keras

        if isinstance(klayer, tf_keras.layers.Layer):
            super().assign_weights(klayer, layer)


def _has_lambda(config, class_name) -> bool:
    if class_name == "Lambda":
        return True
    inner = config.get("layer") if isinstance(config, dict) else None
    return isinstance(inner, dict) and _has_lambda(inner.get("config") or {}, inner.get("class_name"))
