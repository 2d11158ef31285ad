"""Reader for in-memory models: a live Keras 3 ``keras.Model`` or a tf_keras ``Model``.

The graph is made exactly as the file readers make it, from what the file would hold:

* the config is the model's own serialization, ``json.loads(model.to_json())`` -- for
  tf_keras the legacy dialect of an ``.h5``'s ``model_config`` (``_updated_config``),
  for Keras 3 ``serialize_keras_object(model)``, the dialect of a ``.keras``'s
  ``config.json``; it goes through the same :func:`~bnrewrite.io.config.build_graph`
  and allowlist checks (:mod:`bnrewrite.io.layercheck`) as a file's;
* the weights are copies of the live variables' values, keyed by
  :mod:`bnrewrite.io.weights` as the readers key a file's;
* ``mg.original`` (format ``"memory"``) holds the config and a *copy* of every
  top-level layer's weights: :func:`build_original` makes the verification
  reference from them with the framework's own deserializer (``from_config``, in
  safe mode) and ``set_weights``, call-site ``training`` flags removed
  (:func:`bnrewrite.reference.strip_training`). The caller's model is only read,
  never called, mutated or kept.

Only Functional and Sequential models have a graph to read; a subclassed model (its
``call`` is Python code) is refused with one line naming its class.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from ..errors import InputError, UnsupportedModelError, root_cause, with_path
from ..graph import ModelGraph
from .config import build_graph
from .weights import key_weights, live_weights, relative_name

#: classes whose instances carry a functional graph, per framework
_GRAPH_CLASSES = ("Functional", "Sequential")


def model_framework(obj) -> str | None:
    """``"tf_keras"`` or ``"keras"`` when ``obj`` is a model of that framework, else None.

    Decided by the classes' modules, so neither framework is imported for a path."""
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        return None
    for cls in type(obj).__mro__:
        mod = cls.__module__ or ""
        if cls.__name__ == "Model" and (mod == "tf_keras" or mod.startswith("tf_keras.")):
            return "tf_keras"
        if cls.__name__ == "Model" and (mod == "keras" or mod.startswith("keras.")):
            return "keras"
    return None


def is_model(obj) -> bool:
    return model_framework(obj) is not None


def _graph_class(model, framework: str) -> str | None:
    """``"Functional"``/``"Sequential"`` when ``model`` is exactly one of them (not a subclass)."""
    name = type(model).__name__
    if framework == "tf_keras":
        from tf_keras.src.engine import functional, sequential

        exact = (functional.Functional, sequential.Sequential)
    else:
        from keras.src.models import functional, sequential

        exact = (functional.Functional, sequential.Sequential)
    return name if type(model) in exact else None


def read_memory(model, *, unsafe: bool = False, custom_objects: dict | None = None) -> ModelGraph:
    """Read a live model into a graph (see the module docstring)."""
    framework = model_framework(model)
    if framework is None:
        raise InputError(f"not a Keras model or a model path: {type(model).__name__}")
    cls = type(model).__name__
    label = f"in-memory {cls} {getattr(model, 'name', '?')!r}"
    if _graph_class(model, framework) is None:
        raise UnsupportedModelError(
            f"{label}: {cls} is a subclassed model ({type(model).__module__}.{cls}), which has no functional "
            "graph to read (its call() is Python code); build it with the functional API or as a Sequential")
    if not getattr(model, "built", True) or (cls == "Sequential" and not getattr(model, "inputs", None)):
        raise InputError(f"{label}: the Sequential model was never built (no input shape); "
                         "give its first layer an Input or call model.build(shape) first")
    try:
        config = json.loads(model.to_json())
    except Exception as e:  # noqa: BLE001 - a layer without get_config, an unserializable value
        raise InputError(f"{label}: {framework} cannot serialize the model's config ({root_cause(e)})") from None
    legacy = framework == "tf_keras"
    if legacy:
        import tf_keras

        version = str(getattr(tf_keras, "__version__", "2"))
    else:
        import keras

        version = str(keras.__version__)
    source = {"path": "", "format": "memory", "model_class": cls, "keras_version": version,
              "framework": framework}

    def lookup(nest: tuple, name: str, class_name: str) -> dict:
        layer = model
        for p in (*nest, name):
            layer = layer.get_layer(p)
        if not legacy:
            return {k: np.array(v, copy=True) for k, v in live_weights(layer).items()}
        return key_weights([(relative_name(w.name, name), np.array(w.numpy(), copy=True)) for w in layer.weights])

    from .original import Original, bn_subclass_names

    try:
        mg = build_graph(config, lookup, legacy=legacy, source=source, unsafe=unsafe,
                         custom_classes=frozenset(custom_objects or ()),
                         bn_classes=bn_subclass_names(custom_objects))
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise InputError(f"{label}: malformed model config ({type(e).__name__}: {root_cause(e, 200)})") from None
    except InputError as e:
        raise with_path(e, label) from None
    weights = {layer.name: [np.array(w, copy=True) for w in layer.get_weights()] for layer in model.layers}
    mg.original = Original(framework=framework, format="memory", config=config, weights=weights, path="")
    return mg


def build_original(config: dict, weights: dict, framework: str, *, unsafe: bool = False,
                   custom_objects: dict | None = None):
    """The framework's own copy of the model read by :func:`read_memory`: ``config`` (already
    stripped of training flags by the caller) deserialized in safe mode, then each top-level
    layer's weights set from the copies taken when the model was read."""
    if framework == "tf_keras":
        from ..build.tf_keras import model_from_config

        model = model_from_config(copy.deepcopy(config), custom_objects, unsafe)
    else:
        from .keras_zip import deserialize_model

        model = deserialize_model(config, unsafe=unsafe, custom_objects=custom_objects)
    for layer in model.layers:
        values = weights.get(layer.name)
        if values is None:
            raise UnsupportedModelError(f"the copy of the model has a layer {layer.name!r} the model did not have")
        layer.set_weights([np.array(v, copy=True) for v in values])
    return model
