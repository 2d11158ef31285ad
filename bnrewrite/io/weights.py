"""Variable keys: how a layer's weights are named in the graph.

A weight's key is its variable path relative to the layer, without the
TensorFlow ``:0`` suffix, shortened to the last component when that is unique
within the layer: ``"kernel"``, ``"gamma"``, ``"moving_variance"`` for nearly
every layer; ``"forward_lstm/lstm_cell/kernel"`` where two share a last name.
The readers (from file names) and the Keras writer (from live variables) both
key through :func:`key_weights`, so they always agree.
"""

from __future__ import annotations

import numpy as np

from .normalize import weight_key


def relative_name(full: str, layer_name: str) -> str:
    """``"td/batch_normalization/gamma:0"`` for layer ``td`` -> ``"batch_normalization/gamma"``."""
    name = full[:-2] if full.endswith(":0") else full
    parts = name.split("/")
    if layer_name in parts[:-1]:
        parts = parts[parts.index(layer_name) + 1:]
    return "/".join(parts)


def key_weights(class_name: str, items: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Key ``(relative name, value)`` pairs; order is kept (dicts are ordered)."""
    last = [n.rsplit("/", 1)[-1] for n, _ in items]
    unique = len(set(last)) == len(last)
    out: dict[str, np.ndarray] = {}
    for (name, value), short in zip(items, last):
        key = weight_key(class_name, short if unique else name)
        out[key] = np.asarray(value)
    return out


def live_weights(layer) -> dict[str, np.ndarray]:
    """Weights of a live Keras 3 layer, keyed as in the graph."""
    base = layer.path if getattr(layer, "path", None) else layer.name
    items = []
    for v in layer.weights:
        path = v.path
        rel = path[len(base) + 1:] if path.startswith(base + "/") else relative_name(path, layer.name)
        items.append((rel, np.asarray(v.numpy())))
    return key_weights(layer.__class__.__name__, items)
