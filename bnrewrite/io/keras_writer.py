"""Graph -> Keras 3 functional model, and saving it as ``.keras`` / ``.h5``.

Every layer is created once from its normalized config (``from_config``), so
shared layers stay shared, and called per node with that call's own args and
kwargs -- unlike a plain config round trip, call kwargs such as ``training``
survive. Weights are assigned by variable key (:mod:`bnrewrite.io.weights`),
falling back to position only when the keys differ but the shapes agree.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import INPUT_CLASS, Layer, ModelGraph, map_refs
from .normalize import keras_class
from .weights import live_weights


def make_layer(layer: Layer, custom_objects: dict | None = None):
    import keras

    cls = keras_class(layer.class_name, layer.module) or (custom_objects or {}).get(layer.class_name)
    if cls is None:
        raise UnsupportedModelError(
            f"layer {layer.name!r} has unknown class {layer.class_name!r}; provide it with --custom-objects"
        )
    config = copy.deepcopy(layer.config)
    try:
        with keras.saving.custom_object_scope(custom_objects or {}):
            return cls.from_config(config)
    except Exception as e:
        raise UnsupportedModelError(
            f"layer {layer.name!r} ({layer.class_name}) cannot be rebuilt in Keras 3: {_first_line(e)}"
        ) from e


def build_keras(mg: ModelGraph, custom_objects: dict | None = None):
    """Rebuild ``mg`` as a ``keras.Model`` with its weights set."""
    import keras

    tensors, live = _trace(mg, custom_objects)
    model = keras.Model(
        inputs=[tensors[(n, 0)] for n in mg.inputs],
        outputs=[tensors[o] for o in mg.outputs],
        name=mg.name,
    )
    for name, klayer in live.items():
        if isinstance(klayer, keras.layers.Layer):
            assign_weights(klayer, mg.layer(mg.calls(name)[0]))
    return model


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
        by_port = {p: tensors[(src, out)] for p, (src, out) in enumerate(mg.inbound(node))}
        args = map_refs(data["args"], lambda r: by_port[r.port])
        kwargs = map_refs(data["kwargs"], lambda r: by_port[r.port])
        try:
            result = live[layer.name](*args, **kwargs)
        except Exception as e:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({layer.class_name}) failed when called in Keras 3: {_first_line(e)}"
            ) from e
        for i, t in enumerate(keras.tree.flatten(result)):
            tensors[(node, i)] = t
    return tensors, live


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
