"""Variable keys: how a layer's weights are named in the graph.

A weight's key is its variable path relative to the layer, without the
TensorFlow ``:0`` suffix, shortened to the last component when that is unique
within the layer: ``"kernel"``, ``"gamma"``, ``"moving_variance"`` for nearly
every layer; ``"forward_lstm/lstm_cell/kernel"`` where two share a last name.
Keys are the writing framework's own names (tf_keras's ``DepthwiseConv2D`` has
``depthwise_kernel``, Keras 3's ``kernel``; :mod:`bnrewrite.build.migrate`
renames). The readers (from file names) and the builders (from live variables)
both key through :func:`key_weights`, so they always agree.
"""

from __future__ import annotations

import numpy as np


def relative_name(full: str, layer_name: str) -> str:
    """``"td/batch_normalization/gamma:0"`` for layer ``td`` -> ``"batch_normalization/gamma"``."""
    name = full[:-2] if full.endswith(":0") else full
    if name.startswith(layer_name + "/"):  # also for names with "/" ("conv1/conv/kernel")
        return name[len(layer_name) + 1:]
    parts = name.split("/")
    if layer_name in parts[:-1]:
        parts = parts[parts.index(layer_name) + 1:]
    return "/".join(parts)


def relative_variable_name(path: str, base: str, layer_name: str) -> str:
    """A variable's name relative to its layer (``"td/bn/gamma:0"`` for ``td`` -> ``"bn/gamma"``)."""
    path = path[:-2] if path.endswith(":0") else path
    if base and path.startswith(base + "/"):
        return path[len(base) + 1:]
    return relative_name(path, layer_name)


def weight_keys(names: list[str]) -> list[str]:
    """Keys for a layer's relative variable names, in the same order."""
    last = [n.rsplit("/", 1)[-1] for n in names]
    return last if len(set(last)) == len(last) else list(names)


def key_weights(items: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Key ``(relative name, value)`` pairs; order is kept (dicts are ordered)."""
    keys = weight_keys([n for n, _ in items])
    return {k: np.asarray(v) for k, (_, v) in zip(keys, items)}


def live_weights(layer) -> dict[str, np.ndarray]:
    """Weights of a live layer, keyed as in the graph (the ``.keras`` reader takes a file's weights
    from the model the framework builds from it, since the archive stores them by position).
    Keras 3 variables have a ``path``; tf_keras's are named ``layer/.../kernel:0``."""
    base = layer.path if getattr(layer, "path", None) else layer.name
    return key_weights([(relative_variable_name(getattr(v, "path", None) or v.name, base, layer.name),
                         np.asarray(v.numpy())) for v in layer.weights])
