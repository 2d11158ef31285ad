"""Keras 2 / tf.keras -> Keras 3: the migration a ``.keras`` output of a legacy file asks for.

A legacy model is rebuilt by tf_keras for every other output (no translation at
all). Only ``.keras`` needs Keras 3, and then each layer config is translated by
the table below -- every semantic difference is either handled exactly or refused
with the reason and the output formats that work instead; nothing is approximated.
The result is verified against tf_keras's own reading of the original file, so a
difference this table missed still fails the conversion (exit 3) instead of
passing silently.

==============================================  ==========================================================
tf.keras / Keras 2                              Keras 3 (what this module does)
==============================================  ==========================================================
``BatchNormalizationV1``/``V2`` (TF 1.13)       ``BatchNormalization`` (the same inference math)
``LeakyReLU(alpha=a)``                          ``LeakyReLU(negative_slope=a)`` (Keras 3 would drop it:
                                                default 0.3)
``hard_sigmoid`` (clip(0.2x + 0.5, 0, 1)) as    Keras 3's ``hard_sigmoid`` (clip(x/6 + 0.5, 0, 1)) of 1.2x, exactly
``activation``/``recurrent_activation`` of a    the old one: the weights whose output it takes are scaled
layer whose pre-activation is linear in its     by 1.2 (LSTM/ConvLSTM gates i, f, o; GRU gates z, r, or
weights (Dense, Conv*, SeparableConv*,          its candidate for ``activation``; all of them otherwise).
DepthwiseConv*, SimpleRNN, GRU, LSTM and        The LSTM/GRU/ConvLSTM ``recurrent_activation`` default in
ConvLSTM gates), also wrapped or as an RNN cell Keras 2.0-2.2. See :data:`HARD_SIGMOID_FOLD`
``hard_sigmoid`` elsewhere (``Activation``      refused: no weights take the factor
layer, LSTM/ConvLSTM ``activation``: applied
to the cell state)
``hard_silu``/``hard_swish``                    refused (built on the old ``hard_sigmoid``)
``ThresholdedReLU(theta)`` (x if x > theta,     ``ReLU(threshold=theta)`` (Keras 3: x if x > threshold,
else 0)                                         else 0); a NaN input gives 0 instead of NaN
``LocallyConnected1D/2D``                       refused: not in Keras 3
``Embedding(input_dim, input_length)``          ``input_dim`` kept; ``input_length`` dropped (shape only)
initializer configs with ``dtype``              ``dtype`` dropped (initializers only matter for training)
wrapped layers without ``module``               ``module: keras.layers`` added (Keras 3 cannot locate them)
``BatchNormalization(axis=[3])``                ``axis=3``; several axes refused
``InputLayer(batch_input_shape)``               ``batch_shape``; ``ragged=True`` refused
dtype policy ``{"class_name": "Policy"}``       its name
``DepthwiseConv*D`` weight ``depthwise_kernel``  ``kernel``
``BatchNormalization(renorm, virtual_batch_     dropped: they change training only; bnrewrite exports
size, adjustment, fused)``                      inference with the moving statistics
``batch_input_shape``/``input_shape``/          dropped (the input layer carries the shape)
``input_dim``/``batch_size`` on other layers
``Random*`` augmentation ``rng_type``            dropped (training-time augmentation's random generator)
``RandomCrop``                                  refused: its inference-time resize and crop differs
``MultiHeadAttention`` ``query/key/value_shape``  dropped (build shapes; Keras 3 builds from the call)
``MultiHeadAttention``: softmax masking         tf.keras adds -1e9 to masked scores (default), Keras 3 puts
                                                -1e9 there (tf.keras's ``softmax_robust_masking=True``):
                                                a query with every key masked differs. Migrated (the key
                                                dropped) when no mask can reach the layer (no
                                                ``attention_mask``: tf.keras keeps its nonzero values,
                                                Keras 3 those > 0.5; no ``Masking``/``mask_zero``
                                                ``Embedding`` unless robust; a causal mask never masks a
                                                whole row); refused otherwise
RNN ``implementation``, ``DepthwiseConv groups  dropped (computation layout only / the default)
=1``, ``dynamic``
``trainable`` where Keras 3 takes none           dropped (``SpatialDropout*D``; training only)
``*_initializer``/``*_regularizer``/            dropped where Keras 3 has no such argument (e.g.
``*_constraint``, keys set to ``None``          SeparableConv2D ``kernel_constraint``): training only /
                                                unset
RNN ``time_major=True``                         refused
RNN/``Bidirectional`` called on ``[x, *states]``  ``layer(x, initial_state=states)``: tf.keras records
(tf.keras's record of ``initial_state=``)       ``initial_state`` as extra inputs, Keras 3 takes it only
                                                as the keyword (Bidirectional: forward states first,
                                                in both); ``constants`` (``num_constants``) refused
``TFOpLambda``/``SlicingOpLambda`` (``tf.*``)   the same Keras 3 op (``keras.ops.*``, tf.keras's call
                                                arguments; :func:`.keras3.tf_op_as_keras`); ops
                                                without one are refused
``Lambda`` with tf.keras bytecode (``--unsafe``)  the same bytecode in Keras 3's form; code that needs
                                                tf.keras's globals (``K``) fails to rebuild, and any
                                                other difference fails verification against tf_keras
layer names with ``/`` (``conv1/conv``)         ``/`` -> ``_`` (Keras 3 refuses ``/`` in names)
``Custom>CustomScaleLayer`` (tf_keras's         Keras 3's ``CustomScaleLayer`` of ``keras.applications``
InceptionResNetV2: ``x + r * scale``)           (the same call)
any other key Keras 3 does not take             refused, naming layer, key and value
==============================================  ==========================================================
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from ..errors import UnsupportedModelError
from ..graph import INPUT_CLASS, MODEL_CLASSES, OPS_MODULE, Layer, ModelGraph, is_op
from ..io.allowlist import APP_LAYERS, LAYERS

WRAPPERS = ("TimeDistributed", "Bidirectional")
#: tf_keras.applications layers -> the Keras 3 application layer with the same call
APP_MIGRATIONS = {"Custom>CustomScaleLayer": "CustomScaleLayer"}
WEIGHT_RENAMES = {("DepthwiseConv1D", "depthwise_kernel"): "kernel", ("DepthwiseConv2D", "depthwise_kernel"): "kernel"}
_ALWAYS_KEPT = {"name", "trainable", "dtype"}
#: (class or None for any, key) whose legacy value has no effect on inference in Keras 3
_DROP = {
    (None, "batch_input_shape"), (None, "input_shape"), (None, "batch_size"), (None, "dynamic"),
    (None, "autocast"), ("Embedding", "input_length"), (None, "implementation"),
    ("BatchNormalization", "renorm"), ("BatchNormalization", "renorm_clipping"),
    ("BatchNormalization", "renorm_momentum"), ("BatchNormalization", "virtual_batch_size"),
    ("BatchNormalization", "adjustment"), ("BatchNormalization", "fused"),
    *(("MultiHeadAttention", f"{t}_shape") for t in ("query", "key", "value")),  # build shapes only
    *((c, "rng_type") for c in LAYERS if c.startswith("Random")),  # the augmentation layers we read
}
_OLD_HARD = ("hard_sigmoid", "hard_silu", "hard_swish")
#: tf.keras hard_sigmoid(z) = clip(0.2z + 0.5, 0, 1) = clip(1.2z/6 + 0.5, 0, 1) = Keras 3 hard_sigmoid(1.2z)
HARD_SIGMOID_SLOPE = 1.2
_RNN_WEIGHTS = ("kernel", "recurrent_kernel", "bias")
_CONV = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_LSTM = ("LSTM", "LSTMCell", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
#: (class, activation key) -> (the weights whose output is that activation's input, which gates of
#: their last axis: (number of gates, the gates scaled), or None for all of it). A pre-activation
#: that is linear in these weights (bias included) becomes 1.2x when they are scaled by 1.2.
HARD_SIGMOID_FOLD = {
    **{(c, "activation"): (("kernel", "bias"), None) for c in ("Dense", *_CONV)},
    **{(c, "activation"): (("pointwise_kernel", "bias"), None) for c in ("SeparableConv1D", "SeparableConv2D")},
    **{(c, "activation"): (("depthwise_kernel", "bias"), None) for c in ("DepthwiseConv1D", "DepthwiseConv2D")},
    **{(c, "activation"): (_RNN_WEIGHTS, None) for c in ("SimpleRNN", "SimpleRNNCell")},
    # GRU: z, r = rec_act(.), h~ = act(x W_h + r * (h U_h + b)) -- linear in W_h, U_h, b either way
    **{(c, "recurrent_activation"): (_RNN_WEIGHTS, (3, (0, 1))) for c in ("GRU", "GRUCell")},
    **{(c, "activation"): (_RNN_WEIGHTS, (3, (2,))) for c in ("GRU", "GRUCell")},
    # LSTM gates i, f, c, o: i, f, o through rec_act; ``activation`` also takes the cell state: refused
    **{(c, "recurrent_activation"): (_RNN_WEIGHTS, (4, (0, 1, 3))) for c in _LSTM},
}
_HOW = "write .onnx or .h5 instead (rebuilt by tf_keras, no migration needed)"


def refuse(layer: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"cannot migrate layer {layer!r} to Keras 3 (.keras): {why}; {_HOW}")


def migrate(mg: ModelGraph) -> tuple[ModelGraph, list[str]]:
    """A Keras 3 copy of a tf_keras graph, and notes of what was translated."""
    if mg.framework != "tf_keras":
        return mg, []
    out = mg.copy()
    out.framework = "keras"
    notes: list[str] = []
    _states_as_keyword(out)
    done: set[int] = set()
    for node in out.topo():
        layer = out.layer(node)
        if id(layer) in done or is_op(layer):
            continue
        done.add(id(layer))
        if "/" in layer.name:
            new = out.unique_name(layer.name.replace("/", "_"))
            notes.append(f"layer {layer.name!r} renamed {new!r} (Keras 3 refuses '/' in names)")
            layer.name = new
            layer.config["name"] = new
        if layer.class_name in ("TFOpLambda", "SlicingOpLambda"):
            from .keras3 import tf_op_as_keras

            fn = layer.config.get("function")
            if tf_op_as_keras(str(fn)) is None:
                raise refuse(layer.name, f"tf.keras op layer tf.{fn} has no Keras 3 op in bnrewrite's table")
            # call args/kwargs stay tf.keras's; the Keras 3 op takes them as tf.<fn> did
            layer.class_name, layer.module = "TFOp", OPS_MODULE
            layer.config = {"name": layer.name, "function": fn}
            continue
        if layer.class_name == "MultiHeadAttention":
            why = _masking_differs(out, layer)
            if why:
                raise refuse(layer.name, "tf.keras and Keras 3 mask attention scores differently (a query whose "
                                         "keys are all masked; non-binary mask values), and " + why)
            layer.config = {k: v for k, v in layer.config.items() if k != "softmax_robust_masking"}
        cls, config, weights = migrate_layer(layer.class_name, layer.config, layer.name, layer.weights, notes,
                                             top=True)
        layer.class_name, layer.config, layer.weights = cls, config, weights
        layer.module = None if cls == INPUT_CLASS else _keras3_module(cls)
    return out, notes


#: layers whose tf.keras call takes its initial states as extra inputs (``RNN.__call__``)
RECURRENT = frozenset({"RNN", "SimpleRNN", "GRU", "LSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "Bidirectional"})


def _states_as_keyword(mg: ModelGraph) -> None:
    """tf.keras's ``RNN.__call__`` turns ``initial_state=[h, c]`` into the inputs ``[x, h, c]``, and
    its file records that list (seq2seq encoder-decoder models); Keras 3's RNN takes one input and the
    states only as ``initial_state``. Each such call is given its states back as the keyword."""
    for node in mg.graph:
        layer = mg.layer(node)
        data = mg.graph.nodes[node]
        args = data["args"]
        if layer.class_name not in RECURRENT or len(args) != 1 or not isinstance(args[0], list) or len(args[0]) < 2:
            continue
        if layer.config.get("num_constants") or (layer.config.get("layer") or {}).get("config", {}).get(
                "num_constants"):
            raise refuse(layer.name, "its call passes constants (num_constants), which Keras 3's RNN does not take")
        kwargs = {k: v for k, v in data["kwargs"].items() if v is not None}
        if "initial_state" in kwargs or "constants" in kwargs:
            raise refuse(layer.name, "its call gives states both as inputs and as initial_state")
        data["args"] = [args[0][0]]
        data["kwargs"] = {**kwargs, "initial_state": list(args[0][1:])}


def _masking_differs(mg: ModelGraph, layer: Layer) -> str | None:
    """Why a tf.keras ``MultiHeadAttention`` may see a mask (where its softmax and Keras 3's differ), or
    None. An ``attention_mask`` always counts (tf.keras keeps nonzero values, Keras 3 values > 0.5);
    Keras's own boolean masks count unless ``softmax_robust_masking=True`` (Keras 3's form); a causal
    mask alone never masks a whole row; without any mask the two are the same function."""
    g = mg.graph
    if any(mg.layer(n) is layer and g.nodes[n].get("kwargs", {}).get("attention_mask") is not None for n in g):
        # also in the robust form: tf.keras keeps every nonzero mask value, Keras 3 those > 0.5
        return "it is called with an attention_mask"
    if layer.config.get("softmax_robust_masking"):
        return None
    for n in g:
        other = mg.layer(n)
        if other.class_name == "Masking" or other.class_name == "Embedding" and other.config.get("mask_zero"):
            return f"layer {other.name!r} makes a Keras mask that may reach it"
    return None


def _keras3_module(class_name: str) -> str:
    """Where Keras 3 finds a migrated class: its own application module, else ``keras.layers``."""
    module = APP_LAYERS.get(class_name, ("",))[0]
    return module if module.startswith("keras.") else "keras.layers"


def migrate_layer(class_name: str, config: dict, name: str, weights: dict | None, notes: list[str],
                  top: bool = False):
    """``(class_name, keras3_config, weights)`` for one legacy layer (``top``: a layer of the graph,
    owning ``weights``, rather than one inside a wrapper's config)."""
    from .keras3 import keras_class

    config = dict(config)
    if class_name in ("BatchNormalizationV1", "BatchNormalizationV2"):
        class_name = "BatchNormalization"
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        raise refuse(name, f"it is a tf.keras op layer (tf.{config.get('function')})")
    if class_name == "Lambda":
        config = _legacy_lambda(config)
    class_name = APP_MIGRATIONS.get(class_name, class_name)
    if top:
        weights = fold_old_hard_sigmoid(class_name, config, name, weights, notes)
    if class_name == "ThresholdedReLU":  # Keras 3's ReLU with a threshold keeps x where x > threshold
        class_name = "ReLU"
        config["threshold"] = float(config.pop("theta", 1.0))
        notes.append(f"layer {name!r}: ThresholdedReLU theta={config['threshold']} -> ReLU(threshold)")
    if class_name in MODEL_CLASSES:  # top-level nested models are flattened by the reader
        raise refuse(name, f"a {class_name} model nested inside a wrapper (TimeDistributed/Bidirectional) is not "
                           "migrated by bnrewrite")
    cls = keras_class(class_name, _keras3_module(class_name))
    if cls is None:
        raise refuse(name, f"Keras 3 has no layer class {class_name!r}")
    if "dtype" in config:
        config["dtype"] = _dtype_name(config["dtype"])
    if class_name == INPUT_CLASS:
        if config.get("ragged"):
            raise refuse(name, "ragged inputs do not exist in Keras 3")
        config.pop("ragged", None)
        if "batch_input_shape" in config:
            config["batch_shape"] = config.pop("batch_input_shape")
        config["dtype"] = config.get("dtype") or "float32"
    if class_name == "LeakyReLU" and "alpha" in config:
        config["negative_slope"] = config.pop("alpha")
        notes.append(f"layer {name!r}: LeakyReLU alpha={config['negative_slope']} -> negative_slope")
    if class_name == "BatchNormalization":
        axis = config.get("axis", -1)
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                raise refuse(name, f"BatchNormalization over several axes {list(axis)}")
            config["axis"] = int(axis[0])
    if class_name == "RandomCrop":  # verification against tf_keras fails by ~3e-2 on the same image
        raise refuse(name, "RandomCrop resizes and crops at inference differently in tf.keras and Keras 3")
    if config.get("time_major"):
        raise refuse(name, "time_major=True recurrent layers do not exist in Keras 3")
    config = _strip_initializer_dtype(config)
    for key in ("layer", "backward_layer"):
        inner = config.get(key)
        if class_name in WRAPPERS and isinstance(inner, dict) and "class_name" in inner:
            inner_name = (inner.get("config") or {}).get("name", key)
            icls, icfg, _ = migrate_layer(inner["class_name"], inner.get("config") or {}, f"{name}/{inner_name}",
                                          None, notes)
            # tf.keras records a wrapped layer's build shape per step, which Keras 3 would build with
            config[key] = {"module": "keras.layers", "class_name": icls, "config": icfg, "registered_name": None}
    allowed = accepted_keys(cls)
    if allowed is not None and "trainable" not in allowed:
        config.pop("trainable", None)  # Keras 3's SpatialDropout*D take none (and it changes training only)
    if allowed is not None:
        for k in sorted(k for k in config if k not in allowed and k not in _ALWAYS_KEPT):
            value = config.pop(k)
            if (None, k) in _DROP or (class_name, k) in _DROP or (k == "groups" and value == 1) or \
                    (k == "input_dim" and class_name != "Embedding") or value is None or \
                    k.endswith(("_initializer", "_regularizer", "_constraint")):
                continue
            if k == "time_major" and not value:
                continue
            raise refuse(name, f"Keras 3 {class_name} has no argument {k}={_short(value)}")
    new_weights = None
    if weights is not None:
        new_weights = {WEIGHT_RENAMES.get((class_name, k), k): v for k, v in weights.items()}
    return class_name, config, new_weights


def fold_old_hard_sigmoid(class_name: str, config: dict, name: str, weights: dict | None,
                          notes: list[str]) -> dict | None:
    """``weights`` with tf.keras's ``hard_sigmoid`` slope folded in (:data:`HARD_SIGMOID_FOLD`), so that
    the config's ``"hard_sigmoid"``, read by Keras 3 as clip(x/6 + 0.5), computes the old function;
    any other old hard activation in the config (nested ones included) is refused."""
    given, weights = weights, dict(weights or {})
    folded: set[tuple[int, str]] = set()
    for cls, cfg, keys in _weight_owners(class_name, config, weights):
        for key in ("activation", "recurrent_activation"):
            if cfg.get(key) != "hard_sigmoid" or (cls, key) not in HARD_SIGMOID_FOLD:
                continue
            roles, gates = HARD_SIGMOID_FOLD[(cls, key)]
            scaled = [k for k in keys if k.rsplit("/", 1)[-1] in roles]
            if not any(k.rsplit("/", 1)[-1] == roles[0] for k in scaled):
                raise refuse(name, f"{key}='hard_sigmoid' (tf.keras: clip(0.2x + 0.5, 0, 1)) and no {roles[0]} "
                                   "weight to take the slope")
            for k in scaled:
                if gates is not None and np.shape(weights[k])[-1] % gates[0]:
                    raise refuse(name, f"weight {k} of shape {np.shape(weights[k])} is not {gates[0]} gates")
                weights[k] = _scale_gates(weights[k], gates)
            folded.add((id(cfg), key))
            which = "" if gates is None else " gates " + ", ".join(
                ("zrh" if gates[0] == 3 else "ifco")[g] for g in gates[1])
            notes.append(f"layer {name!r}: {key} hard_sigmoid (tf.keras: clip(0.2x + 0.5, 0, 1)) -> Keras 3 "
                         f"hard_sigmoid of 1.2x:{which} of {', '.join(k for k in scaled)} scaled by 1.2")
    for cfg, key, value in _walk_dicts(config):
        if key in ("activation", "recurrent_activation") and value in _OLD_HARD and (id(cfg), key) not in folded:
            raise refuse(name, f"{key}={value!r} means clip(0.2x + 0.5, 0, 1) in tf.keras but clip(x/6 + 0.5, 0, 1) "
                               "in Keras 3, and this layer has no weights that produce its input alone")
    return None if given is None else weights


def _weight_owners(class_name: str, config: dict, weights: dict) -> list[tuple[str, dict, list[str]]]:
    """``(class, config, weight keys)`` of the layer and of the layers a wrapper or RNN holds."""
    inner = config.get("layer") if class_name in WRAPPERS else config.get("cell") if class_name == "RNN" else None
    if not isinstance(inner, dict) or "class_name" not in inner:
        return [(class_name, config, list(weights))]
    forward = (inner["class_name"], inner.get("config") or {})
    if class_name != "Bidirectional":
        return [(*forward, list(weights))]
    back = config.get("backward_layer")
    backward = (back["class_name"], back.get("config") or {}) if isinstance(back, dict) else forward
    is_back = [k.startswith("backward_") for k in weights]
    return [(*forward, [k for k, b in zip(weights, is_back) if not b]),
            (*backward, [k for k, b in zip(weights, is_back) if b])]


def _scale_gates(w, gates):
    """``w`` times 1.2 (in float64, rounded once), on the gates' slices of its last axis, or all of it."""
    w = np.asarray(w)
    out = np.array(w, dtype=np.float64)
    if gates is None:
        out *= HARD_SIGMOID_SLOPE
    else:
        n, which = gates
        units = out.shape[-1] // n
        for g in which:
            out[..., g * units:(g + 1) * units] *= HARD_SIGMOID_SLOPE
    return out.astype(w.dtype)


def _walk_dicts(obj):
    """``(dict, key, value)`` for every item of every dict in ``obj``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield obj, k, v
            yield from _walk_dicts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_dicts(v)


def _strip_initializer_dtype(config: dict) -> dict:
    for k, v in list(config.items()):
        if k.endswith("_initializer") and isinstance(v, dict) and isinstance(v.get("config"), dict):
            config[k] = {**v, "config": {a: b for a, b in v["config"].items() if a != "dtype"}}
    return config


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
        if not any(p.kind == p.VAR_KEYWORD for p in params) or klass is keras.layers.Layer:
            return frozenset(keys - {"self"})
    return None


def _dtype_name(dtype):
    """Legacy policy dicts become their name (Keras 3 reads ``"mixed_float16"`` as the same policy:
    float16 compute, float32 variables); Keras 3 policy dicts are kept. tf_keras 2.x writes
    ``{"module": "keras.mixed_precision", "class_name": "Policy", ...}``, which Keras 3 cannot read."""
    if isinstance(dtype, dict) and ("module" not in dtype or dtype.get("class_name") == "Policy"
                                    or str(dtype.get("module")).startswith("keras.mixed_precision")):
        return (dtype.get("config") or {}).get("name", "float32")
    return dtype


def _legacy_lambda(config: dict) -> dict:
    """tf.keras ``Lambda`` config -> the Keras 3 form (function objects as dicts; bytecode as
    Keras 3's ``__lambda__``, only reachable with ``unsafe``: the reader refuses it otherwise)."""
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
                           "config": {"code": code, "defaults": _tuple(defaults), "closure": closure}}
        elif kind == "function":
            config[key] = {"module": "builtins", "class_name": "function", "config": value,
                           "registered_name": "function"}
    return config


def _tuple(v):
    """Keras 3 needs a Lambda's default arguments as a tuple ("defaults must be None or tuple")."""
    return tuple(v) if isinstance(v, list) else v


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
