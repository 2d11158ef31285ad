"""Turn a Keras model config (JSON) into a :class:`~bnrewrite.graph.ModelGraph`.

Both serialization dialects are read here:

* Keras 2 / tf.keras ("legacy"): ``inbound_nodes`` is a list of calls, each a
  list of ``[layer_name, node_index, tensor_index, kwargs]``. A nested
  Functional (or Sequential with an input) counts the node it was built with,
  so references to its calls start at node index 1.
* Keras 3: each call is ``{"args": [...], "kwargs": {...}}`` with tensors as
  ``{"class_name": "__keras_tensor__", "config": {"keras_history": [...]}}``;
  node indices count only the calls listed, except in ``output_layers``, where
  a nested Functional's calls count from 1 (Keras re-indexes only there).

Nested models are flattened: their layers become calls in the one graph, with
``path`` naming the enclosing models, a model-level ``trainable: false`` carried
down to the inner layers, and a ``training=`` given to the nested call carried
down to inner calls that take ``training`` and did not set it themselves.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import InputError, UnsupportedModelError
from ..graph import INPUT_CLASS, Layer, ModelGraph, TensorRef
from .normalize import is_keras_op, normalize_layer

MODEL_CLASSES = ("Functional", "Model", "Sequential")
# Layers whose call takes ``training``; a nested call's training flag reaches them.
TRAINING_AWARE = (
    "BatchNormalization", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "TimeDistributed", "Bidirectional", "LSTM", "GRU", "SimpleRNN",
)
# tf.keras wrappers of raw TF ops: they carry Python/TF-op code, not a Keras layer.
UNSUPPORTED = {
    "TFOpLambda": "a raw TensorFlow op recorded by tf.keras",
    "SlicingOpLambda": "a tensor slice recorded by tf.keras",
}

WeightsLookup = Callable[[tuple, str, str], dict]


def build_graph(
    model_config: dict,
    weights: WeightsLookup,
    *,
    legacy: bool,
    source: dict | None = None,
    unsafe: bool = False,
    custom_classes: frozenset = frozenset(),
) -> ModelGraph:
    """Build the graph of a whole model.

    ``weights(path, layer_name, class_name)`` returns the numpy weights of the
    layer named ``layer_name`` defined inside the nested models ``path``.
    """
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise InputError("model config is not a Keras model config (no 'class_name')")
    cls = model_config["class_name"]
    if cls not in MODEL_CLASSES:
        raise UnsupportedModelError(
            f"the file holds a {cls!r}, not a Functional or Sequential model"
        )
    cfg = model_config.get("config") or {}
    mg = ModelGraph(name=cfg.get("name", "model"), source=source)
    builder = _Builder(mg, weights, legacy, unsafe, custom_classes)
    builder.reserve(model_config)
    mg.outputs = builder.expand(model_config, path=(), inputs=None, training=None, trainable=True)
    builder.mg.source.setdefault("notes", []).extend(builder.notes)
    return mg


class _Builder:
    def __init__(self, mg: ModelGraph, weights: WeightsLookup, legacy: bool, unsafe: bool, custom):
        self.mg = mg
        self.weights = weights
        self.legacy = legacy
        self.unsafe = unsafe
        self.custom = custom
        self.taken: set[str] = set()
        self.flat_names: dict[tuple, str] = {}
        self.layers: dict[tuple, Layer] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------ naming
    def reserve(self, model_config: dict) -> None:
        """Top-level names keep their spelling; nested ones yield on collision."""
        for lc in _layer_list(model_config):
            self.taken.add(lc.get("name") or lc.get("config", {}).get("name"))

    def flat_name(self, path: tuple, name: str) -> str:
        key = (path, name)
        if key in self.flat_names:
            return self.flat_names[key]
        flat = name
        if path:
            if flat in self.taken:
                flat = f"{path[-1]}_{name}"
            i = 1
            base = flat
            while flat in self.taken:
                flat = f"{base}_{i}"
                i += 1
        self.taken.add(flat)
        self.flat_names[key] = flat
        return flat

    # ------------------------------------------------------------ layers
    def make_layer(self, path: tuple, lc: dict, trainable: bool) -> Layer:
        name = lc.get("name") or lc["config"]["name"]
        key = (path, name)
        if key in self.layers:
            return self.layers[key]
        cls = lc["class_name"]
        _refuse_unsupported(lc)
        flat = self.flat_name(path, name)
        cls, config, notes = normalize_layer(
            cls, lc.get("config", {}), legacy=self.legacy, layer_name=name,
            unsafe=self.unsafe, custom_classes=self.custom, module=lc.get("module"),
        )
        self.notes.extend(notes)
        config["name"] = flat
        if not trainable:
            config["trainable"] = False
        has_weights = cls != INPUT_CLASS and not is_keras_op(lc.get("module"))
        weights = self.weights(path, name, cls) if has_weights else {}
        layer = Layer(
            name=flat, class_name=cls, config=config, weights=weights,
            module=lc.get("module"), registered_name=lc.get("registered_name"),
        )
        self.layers[key] = layer
        return layer

    # ------------------------------------------------------------ models
    def expand(self, model_config, path, inputs, training, trainable) -> list[tuple[str, int]]:
        """Add the calls of a (nested) model; return its output tensors.

        ``inputs`` are the outer tensors fed to a nested call, or None at top
        level, where InputLayer nodes are created instead.
        """
        cfg = model_config.get("config") or {}
        trainable = trainable and cfg.get("trainable", True) is not False
        if model_config["class_name"] == "Sequential":
            return self._expand_sequential(model_config, path, inputs, training, trainable)
        return self._expand_functional(model_config, path, inputs, training, trainable)

    def _input_node(self, path, lc, trainable) -> tuple[str, int]:
        layer = self.make_layer(path, lc, trainable)
        return (self.mg.add_input(layer), 0)

    def _expand_sequential(self, mc, path, inputs, training, trainable):
        layer_cfgs = list(_layer_list(mc))
        if not layer_cfgs:
            raise InputError(f"Sequential model {mc['config'].get('name')!r} has no layers")
        if layer_cfgs[0]["class_name"] == INPUT_CLASS:
            first = layer_cfgs.pop(0)
        else:
            shape = layer_cfgs[0].get("config", {}).get("batch_input_shape") or layer_cfgs[0].get(
                "config", {}).get("batch_shape")
            first = None
            if shape is not None:
                lname = layer_cfgs[0]["config"]["name"] + "_input"
                first = {"class_name": INPUT_CLASS, "name": lname, "config": {
                    "batch_input_shape": shape, "name": lname,
                    "dtype": _dtype_name(layer_cfgs[0]["config"].get("dtype")) or "float32"}}
        if inputs is None:
            if first is None:
                raise InputError(
                    "Sequential model has no input shape (it was never built); cannot rebuild it"
                )
            tensors = [self._input_node(path, first, trainable)]
        else:
            tensors = list(inputs)
        x = tensors
        for lc in layer_cfgs:
            out = self._call(path, lc, x, None, {}, training, trainable)
            x = [(out, 0)] if isinstance(out, str) else out
        return x

    def _expand_functional(self, mc, path, inputs, training, trainable):
        cfg = mc["config"]
        layer_cfgs = {(_lname(lc)): lc for lc in _layer_list(mc)}
        for lc in layer_cfgs.values():  # before parsing their calls (TFOpLambda's differ)
            _refuse_unsupported(lc)
        in_refs = _ref_list(cfg.get("input_layers"))
        out_refs = _ref_list(cfg.get("output_layers"))
        if self.legacy:
            out_refs = [(n, i - _legacy_offset(layer_cfgs.get(n)), t) for n, i, t in out_refs]
        else:  # Keras 3 counts a nested Functional's built-in node in output_layers only
            out_refs = [
                (n, i - (1 if (layer_cfgs.get(n) or {}).get("class_name") == "Functional" else 0), t)
                for n, i, t in out_refs
            ]
        # (layer, call) -> a node id (its outputs are (node, i)) or a list of
        # tensors (the outputs of a flattened nested model or an input).
        made: dict[tuple[str, int], str | list] = {}

        def tensor(ref):
            got = made.get(ref[:2])
            if got is None:
                return None
            if isinstance(got, str):
                return (got, ref[2])
            return got[ref[2]] if ref[2] < len(got) else None

        if inputs is None:
            for name, _, _ in in_refs:
                if name not in layer_cfgs:
                    raise InputError(f"model input {name!r} is not among the layers")
                made[(name, 0)] = [self._input_node(path, layer_cfgs[name], trainable)]
        else:
            if len(inputs) != len(in_refs):
                raise InputError(
                    f"nested model {cfg.get('name')!r} takes {len(in_refs)} inputs, called with {len(inputs)}"
                )
            for (name, _, _), t in zip(in_refs, inputs):
                made[(name, 0)] = [t]

        # Keras lists layers roughly in order, but a shared layer's later calls
        # may need layers listed after it: sweep until nothing moves.
        pending = {
            name: list(lc.get("inbound_nodes") or [])
            for name, lc in layer_cfgs.items() if lc["class_name"] != INPUT_CLASS
        }
        done = {name: 0 for name in pending}
        progress = True
        while progress and any(pending.values()):
            progress = False
            for name, calls in pending.items():
                lc = layer_cfgs[name]
                while calls:
                    parsed = self._parse_call(calls[0], layer_cfgs)
                    if parsed is None:
                        break
                    refs, args, kwargs = parsed
                    ins = [tensor(r) for r in refs]
                    if any(t is None for t in ins):
                        break
                    calls.pop(0)
                    made[(name, done[name])] = self._call(path, lc, ins, args, kwargs, training, trainable)
                    done[name] += 1
                    progress = True
        stuck = [n for n, c in pending.items() if c]
        if stuck:
            raise InputError(f"model config is inconsistent: calls of {stuck[:3]} reference missing tensors")
        outs = [tensor(r) for r in out_refs]
        for r, t in zip(out_refs, outs):
            if t is None:
                raise InputError(f"model output {r[0]!r} is not produced by any layer call")
        return outs

    # ------------------------------------------------------------ calls
    def _call(self, path, lc, in_tensors, args, kwargs, training, trainable):
        """Add one call of layer config ``lc``; return its node id, or a nested model's outputs."""
        cls = lc["class_name"]
        kwargs = dict(kwargs)
        if training is not None and "training" not in kwargs and (
            cls in TRAINING_AWARE or cls in MODEL_CLASSES
        ):
            kwargs["training"] = training
        if cls in MODEL_CLASSES:
            inner_training = kwargs.get("training", training)
            return self.expand(lc, path + (_lname(lc),), in_tensors, inner_training, trainable)
        layer = self.make_layer(path, lc, trainable)
        return self.mg.add_call(layer, in_tensors, args=args, kwargs=kwargs, path=path)

    def _parse_call(self, call, layer_cfgs):
        """-> (tensor refs by port, args or None, kwargs), or None if unreadable."""
        if isinstance(call, dict):  # Keras 3
            refs: list[tuple[str, int, int]] = []

            def conv(obj):
                if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
                    h = obj["config"]["keras_history"]
                    refs.append((h[0], int(h[1]), int(h[2])))
                    return TensorRef(len(refs) - 1)
                if isinstance(obj, list):
                    return [conv(o) for o in obj]
                if isinstance(obj, dict):
                    return {k: conv(v) for k, v in obj.items()}
                return obj

            args = conv(call.get("args", []))
            kwargs = conv(call.get("kwargs", {}))
            return refs, args, kwargs
        if isinstance(call, list):  # legacy: [[name, node_index, tensor_index, kwargs], ...]
            refs = []
            kwargs: dict = {}
            for entry in call:
                name, ni, ti = entry[0], int(entry[1]), int(entry[2])
                refs.append((name, ni - _legacy_offset(layer_cfgs.get(name)), ti))
                if len(entry) > 3 and entry[3]:
                    kwargs = dict(entry[3])
            # Tensors inside kwargs were written as [layer, node, tensor] triples.
            for k, v in list(kwargs.items()):
                if _is_legacy_tensor(v, layer_cfgs):
                    refs.append((v[0], int(v[1]) - _legacy_offset(layer_cfgs.get(v[0])), int(v[2])))
                    kwargs[k] = TensorRef(len(refs) - 1)
            n = len(call)
            args = [TensorRef(0)] if n == 1 else [[TensorRef(i) for i in range(n)]]
            return refs, args, kwargs
        return None


def _refuse_unsupported(lc: dict) -> None:
    cls = lc.get("class_name")
    if cls in UNSUPPORTED:
        raise UnsupportedModelError(
            f"layer {_lname(lc)!r} is {cls} ({UNSUPPORTED[cls]}); bnrewrite rebuilds only Keras layers"
        )


def _layer_list(model_config: dict):
    layers = (model_config.get("config") or {}).get("layers")
    if not isinstance(layers, list):
        raise InputError(f"model {model_config.get('class_name')} config has no 'layers' list")
    return layers


def _lname(lc: dict) -> str:
    return lc.get("name") or lc["config"]["name"]


def _ref_list(refs: Any) -> list[tuple[str, int, int]]:
    """input_layers/output_layers: one ``[name, ni, ti]``, a list of them, or a dict of them."""
    if refs is None:
        return []
    if isinstance(refs, dict):
        refs = list(refs.values())
    if refs and isinstance(refs[0], str):
        refs = [refs]
    return [(r[0], int(r[1]), int(r[2])) for r in refs]


def _legacy_offset(lc: dict | None) -> int:
    """tf.keras counts the node a nested model was built with (see module docstring)."""
    if not lc or lc["class_name"] not in MODEL_CLASSES:
        return 0
    if lc["class_name"] == "Sequential":
        layers = lc.get("config", {}).get("layers") or []
        has_input = bool(layers) and (
            layers[0]["class_name"] == INPUT_CLASS
            or "batch_input_shape" in layers[0].get("config", {})
        )
        return 1 if has_input else 0
    return 1


def _is_legacy_tensor(v, layer_cfgs) -> bool:
    return (
        isinstance(v, list) and len(v) == 3 and isinstance(v[0], str) and v[0] in layer_cfgs
        and isinstance(v[1], int) and isinstance(v[2], int)
    )


def _dtype_name(dtype) -> str | None:
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict):
        return (dtype.get("config") or {}).get("name")
    return None
