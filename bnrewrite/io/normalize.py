"""Normalize layer configs from the Keras 2 / tf.keras dialect to Keras 3.

Keras 3 refuses several things tf.keras wrote (that is why ``keras.models.load_model``
fails on many legacy ``.h5`` files):

* ``BatchNormalization.axis`` saved as a list (``[3]``; TimeDistributed(BN) always);
* ``InputLayer.batch_input_shape`` (Keras 3: ``batch_shape``);
* dtype policies as ``{"class_name": "Policy", "config": {"name": ...}}``;
* constructor keys Keras 3 no longer takes (``DepthwiseConv2D.groups``, ...),
  which are dropped with a note in the report;
* the names of a few variables (``DepthwiseConv2D.depthwise_kernel`` is
  ``kernel`` in Keras 3), see :data:`WEIGHT_RENAMES`.

Layers that would run code from the file (``Lambda`` with serialized bytecode)
are refused unless the caller opted in with ``unsafe=True``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from ..errors import UnsupportedModelError

#: (class name, legacy variable key) -> Keras 3 variable key
WEIGHT_RENAMES = {
    ("DepthwiseConv2D", "depthwise_kernel"): "kernel",
}
WRAPPERS = ("TimeDistributed", "Bidirectional")
_NEVER_DROP = {"name", "trainable", "dtype"}
# Legacy keys whose value is what Keras 3 does anyway: dropped without a note.
_HARMLESS = {("groups", 1)}


def is_keras_op(module: str | None) -> bool:
    """Whether a config's ``module`` names one of Keras's own ops (not a layer)."""
    return (module or "").startswith("keras.src.ops.")


def keras_class(class_name: str, module: str | None = None):
    """The Keras 3 class for ``class_name``, or None when unknown.

    Layers come from ``keras.layers``. Functional graphs may also hold Keras's
    own ops (``keras.ops.reshape`` is saved as module ``keras.src.ops.numpy``,
    class ``Reshape``); those are looked up in their Keras module, never in
    any other module a file names.
    """
    import importlib

    import keras

    if is_keras_op(module):
        try:
            cls = getattr(importlib.import_module(module), class_name, None)
        except ImportError:
            return None
        return cls if isinstance(cls, type) and issubclass(cls, keras.Operation) else None
    cls = getattr(keras.layers, class_name, None)
    if isinstance(cls, type) and issubclass(cls, keras.layers.Layer):
        return cls
    return None


@functools.lru_cache(maxsize=None)
def accepted_keys(cls) -> frozenset | None:
    """Constructor keywords ``cls`` takes, or None if it takes anything."""
    import keras

    keys: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        keys.update(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return frozenset(keys - {"self"})
        if klass is keras.layers.Layer:
            return frozenset(keys - {"self"})
    return None


def dtype_name(dtype: Any) -> Any:
    """Legacy policy dicts become their name; Keras 3 policy dicts are kept."""
    if isinstance(dtype, dict) and "module" not in dtype:
        return (dtype.get("config") or {}).get("name", "float32")
    return dtype


def normalize_layer(
    class_name: str,
    config: dict,
    *,
    legacy: bool,
    layer_name: str,
    unsafe: bool = False,
    custom_classes=frozenset(),
    module: str | None = None,
) -> tuple[str, dict, list[str]]:
    """Return ``(class_name, keras3_config, notes)`` for one layer config."""
    notes: list[str] = []
    config = dict(config)
    if class_name == "Lambda" and not unsafe:
        raise UnsupportedModelError(
            f"layer {layer_name!r} is a Lambda carrying Python code; refusing to run code from a "
            "model file (pass --unsafe / unsafe=True only for files you trust)"
        )
    cls = keras_class(class_name, module)
    if cls is None and class_name not in custom_classes:
        raise UnsupportedModelError(
            f"layer {layer_name!r} has unknown class {class_name!r}; provide it with "
            "--custom-objects module.py (API: custom_objects={...})"
        )
    if "dtype" in config:
        config["dtype"] = dtype_name(config["dtype"])

    if class_name == "InputLayer":
        if "batch_input_shape" in config:
            config["batch_shape"] = config.pop("batch_input_shape")
        config["dtype"] = config.get("dtype") or "float32"
    else:
        for key in ("batch_input_shape", "input_shape", "input_dim", "batch_size"):
            config.pop(key, None)

    if class_name == "BatchNormalization":
        axis = config.get("axis", -1)
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                raise UnsupportedModelError(
                    f"layer {layer_name!r}: BatchNormalization over several axes {list(axis)} "
                    "has no Keras 3 equivalent"
                )
            config["axis"] = int(axis[0])

    if class_name in WRAPPERS:
        for key in ("layer", "backward_layer"):
            inner = config.get(key)
            if isinstance(inner, dict) and "class_name" in inner:
                inner_name = (inner.get("config") or {}).get("name", key)
                icls, icfg, inotes = normalize_layer(
                    inner["class_name"], inner.get("config") or {}, legacy=legacy,
                    layer_name=f"{layer_name}/{inner_name}", unsafe=unsafe,
                    custom_classes=custom_classes,
                )
                # tf.keras records a nested wrapper's build shape per step ([None, F]),
                # which Keras 3 would build with; the outer call builds it right.
                keep = {k: v for k, v in inner.items()
                        if k not in ("class_name", "config") and not (legacy and k == "build_config")}
                config[key] = {**keep, "class_name": icls, "config": icfg}
                notes += inotes

    if cls is not None and not is_keras_op(module):
        allowed = accepted_keys(cls)
        if allowed is not None:
            dropped = sorted(k for k in config if k not in allowed and k not in _NEVER_DROP)
            for k in dropped:
                value = config.pop(k)
                if (k, value) in _HARMLESS:
                    continue
                notes.append(
                    f"layer {layer_name!r}: dropped config key {k}={value!r} that Keras 3 "
                    f"{class_name} does not take"
                )
    return class_name, config, notes


def weight_key(class_name: str, key: str) -> str:
    return WEIGHT_RENAMES.get((class_name, key), key)
