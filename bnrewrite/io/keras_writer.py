"""Graph -> Keras 3 functional model, and saving it as ``.keras`` / ``.h5``.

Every layer is created once from its normalized config (``from_config``), so
shared layers stay shared, and called per node with that call's own args and
kwargs -- unlike a plain config round trip, call kwargs such as ``training``
survive. Weights are assigned by variable key (:mod:`bnrewrite.io.weights`),
falling back to position only when the keys differ but the shapes agree.

Layers the user vouched for -- custom classes (``custom_objects``) and, with
``unsafe``, ``Lambda`` layers whose Python bytecode Keras deserializes -- are
rebuilt inside :func:`rebuild_options`. ``convert`` opens that scope around
the whole pipeline, so the passes (which rebuild layers to infer shapes) see
the same objects without threading them through every call.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import sys
import types

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import INPUT_CLASS, Layer, ModelGraph, map_refs
from .normalize import keras_class
from .weights import live_weights

# (custom_objects, unsafe) for layers rebuilt without explicit arguments
_OPTIONS: contextvars.ContextVar[tuple[dict, bool]] = contextvars.ContextVar(
    "bnrewrite_rebuild_options", default=({}, False)
)


@contextlib.contextmanager
def rebuild_options(custom_objects: dict | None = None, unsafe: bool = False):
    """Within this scope, layers are rebuilt with ``custom_objects`` and, if ``unsafe``,
    Keras's safe mode off (``Lambda`` bytecode is loaded)."""
    token = _OPTIONS.set((dict(custom_objects or {}), bool(unsafe)))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def effective_options(custom_objects: dict | None, unsafe: bool | None) -> tuple[dict, bool]:
    """``(custom_objects, unsafe)``: explicit arguments over the :func:`rebuild_options` scope."""
    scoped_objects, scoped_unsafe = _OPTIONS.get()
    objects = {**scoped_objects, **(custom_objects or {})}
    return objects, scoped_unsafe if unsafe is None else unsafe


def make_layer(layer: Layer, custom_objects: dict | None = None, unsafe: bool | None = None):
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
    config = copy.deepcopy(layer.config)
    try:
        with keras.saving.custom_object_scope(custom_objects), _safe_mode(not unsafe):
            klayer = cls.from_config(config)
        if layer.class_name == "Lambda":
            _keep_as_bytecode(klayer, layer.config)
        return klayer
    except Exception as e:
        if layer.class_name == "Lambda" and unsafe and _is_marshal_error(e):
            raise UnsupportedModelError(
                f"layer {layer.name!r} (Lambda): its Python bytecode cannot be loaded by Python "
                f"{sys.version_info.major}.{sys.version_info.minor} ({_first_line(e)}); it was "
                "probably saved by another Python version: re-save the model with this Python "
                "version, or replace the Lambda by a custom layer (--custom-objects)"
            ) from e
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({layer.class_name}) cannot be rebuilt in Keras 3: {_first_line(e)}"
        ) from e


def _safe_mode(safe: bool):
    """Keras's safe-mode scope (private API; without it Keras stays safe: Lambdas fail closed)."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - other Keras versions
        return contextlib.nullcontext()
    return SafeModeScope(safe)


def _keep_as_bytecode(klayer, config: dict) -> None:
    """Functions loaded from bytecode keep the name they were defined with (``my_fn``), and
    Keras 3 would save them by that name, which no reader can resolve; as ``<lambda>`` they
    are saved as bytecode again, as in the input file."""
    for key, attr in (("function", "function"), ("output_shape", "_output_shape"), ("mask", "mask")):
        fn = getattr(klayer, attr, None)
        if isinstance(config.get(key), dict) and config[key].get("class_name") == "__lambda__" \
                and isinstance(fn, types.FunctionType):
            fn.__name__ = "<lambda>"


def _is_marshal_error(e: BaseException) -> bool:
    """marshal/base64 failures of ``func_load`` (bytecode from another Python version)."""
    while e is not None:
        if isinstance(e, (EOFError, TypeError, ValueError)) and (
            "marshal" in str(e) or "code object" in str(e) or isinstance(e, EOFError)
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def build_keras(mg: ModelGraph, custom_objects: dict | None = None):
    """Rebuild ``mg`` as a ``keras.Model`` with its weights set."""
    import keras

    tensors, _ = build_live(mg, custom_objects)
    return keras.Model(
        inputs=[tensors[(n, 0)] for n in mg.inputs],
        outputs=[tensors[o] for o in mg.outputs],
        name=mg.name,
    )


def build_live(mg: ModelGraph, custom_objects: dict | None = None):
    """Live Keras 3 layers of ``mg`` with their weights set, and the symbolic
    tensor of every ``(node, out)``: ``(tensors, {layer name: layer})``."""
    import keras

    tensors, live = _trace(mg, custom_objects)
    first = {}
    for node in mg.topo():
        first.setdefault(mg.layer(node).name, node)
    for name, klayer in live.items():
        if isinstance(klayer, keras.layers.Layer):
            assign_weights(klayer, mg.layer(first[name]))
    return tensors, live


def infer_shapes(mg: ModelGraph, custom_objects: dict | None = None) -> dict[tuple[str, int], tuple]:
    """Static shape of every tensor ``(node, out)`` (batch and unknown dims are None)."""
    tensors, _ = _trace(mg, custom_objects)
    return {k: tuple(t.shape) for k, t in tensors.items()}


def _trace(mg: ModelGraph, custom_objects):
    """Call every layer on symbolic tensors in topological order."""
    import keras

    tensors: dict[tuple[str, int], object] = {}
    live: dict[str, object] = {}
    for node in mg.topo():
        data = mg.graph.nodes[node]
        layer: Layer = data["layer"]
        if layer.class_name == INPUT_CLASS:
            cfg = layer.config
            shape = cfg.get("batch_shape") or [None, *cfg.get("shape", [])]
            tensors[(node, 0)] = keras.Input(
                batch_shape=tuple(shape), dtype=cfg.get("dtype") or "float32", name=layer.name,
                sparse=bool(cfg.get("sparse", False)),
            )
            continue
        if layer.name not in live:
            live[layer.name] = make_layer(layer, custom_objects)
        try:
            call_node(mg, node, live[layer.name], tensors)
        except Exception as e:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({layer.class_name}) failed when called in Keras 3: {_first_line(e)}"
            ) from e
    return tensors, live


def call_node(mg: ModelGraph, node: str, fn, tensors: dict) -> None:
    """Call ``fn`` (the node's live layer) with the node's args/kwargs, reading its
    inputs from ``tensors`` and storing its outputs there, as ``(node, out)``."""
    import keras

    data = mg.graph.nodes[node]
    by_port = {p: tensors[(src, out)] for p, (src, out) in enumerate(mg.inbound(node))}
    args = map_refs(data["args"], lambda r: by_port[r.port])
    kwargs = map_refs(data["kwargs"], lambda r: by_port[r.port])
    result = fn(*args, **kwargs)
    for i, t in enumerate(keras.tree.flatten(result)):
        tensors[(node, i)] = t


def assign_weights(klayer, layer: Layer) -> None:
    """Set the live layer's variables from ``layer.weights``."""
    variables = list(klayer.weights)
    if not variables and not layer.weights:
        return
    want = live_weights(klayer)
    if set(want) == set(layer.weights):
        values = [layer.weights[k] for k in want]
    elif len(want) == len(layer.weights) and all(
        np.shape(a) == np.shape(b) for a, b in zip(want.values(), layer.weights.values())
    ):
        values = list(layer.weights.values())  # same layout, other names: by position
    else:
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({layer.class_name}): file has weights {sorted(layer.weights)}, "
            f"Keras 3 expects {sorted(want)}"
        )
    for v, value, (k, expect) in zip(variables, values, want.items()):
        if tuple(np.shape(value)) != tuple(v.shape):
            raise UnsupportedModelError(
                f"layer {layer.name!r}: weight {k} has shape {np.shape(value)}, Keras 3 expects {tuple(v.shape)}"
            )
        v.assign(np.asarray(value, dtype=v.dtype))


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]
