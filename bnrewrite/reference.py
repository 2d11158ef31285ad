"""The verification reference: the original model, as the framework that wrote the file reads it.

A check that compares bnrewrite's output with bnrewrite's own rebuild cannot find
bnrewrite's bugs. So the reference is rebuilt from the *original* config and
weights (:class:`bnrewrite.io.original.Original`) by the writing framework's own
deserializer and weight loader:

* tf.keras / Keras 2 ``.h5``: ``tf_keras`` ``model_from_config`` and its
  order-based ``load_weights_from_hdf5_group`` (which also applies Keras's own
  conversions of old weight layouts);
* Keras 3 ``.h5``: Keras 3's legacy-H5 ``model_from_config`` and loader;
* Keras 3 ``.keras``: Keras 3's own deserialization of ``config.json`` and its
  state loader (:func:`bnrewrite.io.keras_zip.build_original`); a ``.keras`` written by
  tf.keras 2.14/2.15: tf_keras's own (``keras_zip._tf_keras_original``).

The weights come from the vetted extraction (rebuilt as an in-memory HDF5 file),
never from the original file handed to a framework loader, and everything is
deserialized in the framework's safe mode unless ``unsafe``. Two edits are made,
both the point of the conversion: call-site ``training`` arguments are removed
(:func:`strip_training`, so the reference is the model's inference function), and
with calibration the re-estimated statistics are put into its BN layers
(:func:`set_statistics`).
"""

from __future__ import annotations

import copy
import json

import numpy as np

from .build.base import numpy_dtype
from .errors import UnsupportedModelError, root_cause
from .graph import framework_label
from .io.budget import BudgetError
from .io.original import Original


class NoReference(Exception):
    """No independent reference can be built; the message says why."""


def strip_training(config: dict) -> dict:
    """A copy of a model config with every call-site ``training`` argument removed, at any depth."""
    config = copy.deepcopy(config)

    def legacy_leaves(node):
        if isinstance(node, list) and len(node) == 4 and isinstance(node[0], str) and isinstance(node[3], dict):
            node[3].pop("training", None)
        elif isinstance(node, list):
            for n in node:
                legacy_leaves(n)
        elif isinstance(node, dict):
            for n in node.values():
                legacy_leaves(n)

    def walk(mc):
        if not isinstance(mc, dict):
            return
        cfg = mc.get("config")
        layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers") if isinstance(cfg, dict) else None
        for lc in layers or []:
            if not isinstance(lc, dict):
                continue
            for node in lc.get("inbound_nodes") or []:
                if isinstance(node, dict):
                    (node.get("kwargs") or {}).pop("training", None)
                else:
                    legacy_leaves(node)
            walk(lc)  # nested models
            if isinstance(lc.get("config"), dict):  # models inside wrappers (TimeDistributed(encoder))
                for key in ("layer", "backward_layer"):
                    walk(lc["config"].get(key))

    walk(config)
    return config


def build_reference(original: Original, *, custom_objects: dict | None = None, unsafe: bool = False):
    """The writing framework's own model of the original file (training flags removed)."""
    if original is None:
        raise NoReference("the model was not read from a file")
    config = strip_training(original.config)
    try:
        if original.format == "memory":  # a live model: a copy of it (bnrewrite.io.memory)
            from .io.memory import build_original

            return build_original(config, original.weights, original.framework, unsafe=unsafe,
                                  custom_objects=custom_objects)
        if original.format == "savedmodel":  # tf_keras: metadata config + load_weights(variables/)
            from .io.savedmodel import build_original as savedmodel_original

            return savedmodel_original(config, original.weights, unsafe=unsafe, custom_objects=custom_objects)
        if original.format == "keras":
            from .io.keras_zip import build_original

            return build_original(config, original.weights, unsafe=unsafe, custom_objects=custom_objects,
                                  framework=original.framework)
        weights = _model_weights_h5(original)
        if original.framework == "tf_keras":
            return _tf_keras_h5(config, weights, custom_objects, unsafe)
        return _keras3_h5(config, weights, custom_objects, unsafe)
    except (NoReference, BudgetError):
        raise
    except Exception as e:
        raise NoReference(f"{_label(original)} could not rebuild the original model: {root_cause(e)}") from e


def _label(original: Original) -> str:
    return framework_label(original.framework)


def _tf_keras_h5(config, weights, custom_objects, unsafe):
    from tf_keras.src.saving.legacy import hdf5_format

    from .build.tf_keras import cudnn_config_as_standard, model_from_config

    # CuDNN layers have no CPU kernel: tf_keras builds the standard layers they equal, and its
    # loader converts their weights from the CuDNN layout itself (independently of bnrewrite's pass)
    model = model_from_config(cudnn_config_as_standard(config), custom_objects, unsafe)
    with weights as f:
        hdf5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    return model


def _keras3_h5(config, weights, custom_objects, unsafe):
    from keras.src.legacy.saving import json_utils, legacy_h5_format, saving_options, saving_utils
    from keras.src.saving import serialization_lib

    config = json_utils.decode(json.dumps(config))
    with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(not unsafe):
        model = saving_utils.model_from_config(config, custom_objects=custom_objects)
        with weights as f:
            legacy_h5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    return model


def _model_weights_h5(original: Original):
    """An in-memory HDF5 file holding the vetted ``model_weights`` group, laid out as in
    the original file, for the framework's own loader."""
    from .io.safe_files import memory_h5, model_weights_tree

    return memory_h5(model_weights_tree(original.weights, original.path))


def set_statistics(model, stats: dict) -> None:
    """Put re-estimated BN statistics into the reference: ``stats`` maps a layer's origin
    ``(enclosing models or wrappers of a model, name)`` to ``{"moving_mean": ..., "moving_variance": ...}``."""
    for (path, name), values in stats.items():
        layer = model
        try:
            for p in (*path, name):
                while not hasattr(layer, "get_layer") and hasattr(layer, "layer"):
                    layer = layer.layer  # the model inside a wrapper (TimeDistributed(encoder))
                layer = layer.get_layer(p)
        except (ValueError, AttributeError) as e:
            raise UnsupportedModelError(f"reference model has no layer {'/'.join((*path, name))}") from e
        for v in layer.weights:
            vname = (getattr(v, "path", None) or v.name).split(":")[0].rsplit("/", 1)[-1]
            if vname in values:
                v.assign(np.asarray(values[vname]).astype(numpy_dtype(v.dtype)))
