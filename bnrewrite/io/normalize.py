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

Layers that would run code from the file are refused unless the caller opted
in with ``unsafe=True``: any layer config holding serialized Python bytecode
(Keras 3 ``{"class_name": "__lambda__"}``, tf.keras ``Lambda`` with
``function_type: "lambda"``). Loading it means ``marshal.loads`` + running the
code, the hole Keras's ``safe_mode`` exists for (CVE-2024-3660). tf.keras
``Lambda`` configs are rewritten to the Keras 3 form so that, with ``unsafe``,
Keras 3 can load the bytecode -- which only works if the file was written by
the same Python minor version (marshal is version specific). A ``Lambda``
that names a Python function instead needs it from the user (``custom_objects``).
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
    if class_name == "Lambda" and legacy:
        config = _legacy_lambda(config)
    code = bytecode_keys(config)
    if code and not unsafe:
        what = "a Lambda carrying Python code" if class_name == "Lambda" else f"a {class_name} carrying Python code"
        raise UnsupportedModelError(
            f"layer {layer_name!r} is {what} (serialized bytecode in {', '.join(code)}); refusing to "
            "run code from a model file (pass --unsafe / unsafe=True only for files you trust)"
        )
    if class_name == "Lambda":
        for key in ("function", "output_shape", "mask"):
            fn = _named_function(config.get(key), key)
            if fn is not None and not (set(fn) & set(custom_classes)):
                raise UnsupportedModelError(
                    f"layer {layer_name!r} is a Lambda calling the Python function {fn[0]!r} ({key}); "
                    "provide it with --custom-objects module.py (a module-level custom_objects dict; "
                    "API: custom_objects={...})"
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


def bytecode_keys(config, where: str = "") -> list[str]:
    """Config keys (dotted) holding serialized Python bytecode (``__lambda__`` objects)."""
    found: list[str] = []
    if isinstance(config, dict):
        if config.get("class_name") == "__lambda__":
            return [where or "config"]
        for k, v in config.items():
            found += bytecode_keys(v, f"{where}.{k}" if where else str(k))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            found += bytecode_keys(v, f"{where}[{i}]")
    return found


def _legacy_lambda(config: dict) -> dict:
    """tf.keras ``Lambda`` config -> the Keras 3 form (function objects as dicts)."""
    config = dict(config)
    for key in ("function", "output_shape", "mask"):
        kind = config.pop(f"{key}_type", None)
        config.pop(f"{key}_module" if key != "function" else "module", None)
        value = config.get(key)
        if value is None:
            if key != "function":
                config.pop(key, None)
            continue
        if kind == "lambda":
            code, defaults, closure = (list(value) + [None, None])[:3] if isinstance(value, (list, tuple)) \
                else (value, None, None)
            config[key] = {"class_name": "__lambda__",
                           "config": {"code": code, "defaults": defaults, "closure": closure}}
        elif kind == "function":
            config[key] = {"module": "builtins", "class_name": "function", "config": value,
                           "registered_name": "function"}
    return config


def _named_function(value, key: str) -> tuple[str, ...] | None:
    """Names a Lambda's ``function``/``output_shape``/``mask`` is looked up by, unless Keras's own."""
    if isinstance(value, str) and key == "function":
        return (value,)
    if isinstance(value, dict) and value.get("class_name") == "function":
        module = value.get("module") or ""
        if module == "keras" or module.startswith("keras."):
            return None
        if module == "builtins" and _keras_builtin(value.get("config")):
            return None
        names = tuple(n for n in (value.get("config"), value.get("registered_name")) if isinstance(n, str)
                      and n != "function")
        return names or ("?",)
    return None


def _keras_builtin(name) -> bool:
    """Whether Keras resolves a ``builtins`` function ``name`` itself (``relu``, ...)."""
    import keras

    return isinstance(name, str) and any(
        callable(getattr(getattr(keras, mod), name, None)) for mod in ("activations", "ops")
    )


def weight_key(class_name: str, key: str) -> str:
    return WEIGHT_RENAMES.get((class_name, key), key)
