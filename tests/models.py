"""Tiny test models, built with the framework that writes them.

Every builder takes ``K`` (``tf_keras`` for legacy Keras 2 ``.h5`` files,
``keras`` for Keras 3 ``.keras`` files; both APIs agree on everything used
here), builds a small functional model with explicit layer names, gives every
BatchNormalization random gamma/beta/moving statistics (a fresh BN is the
identity at inference, so an export that dropped or mangled it would otherwise
pass by luck), saves it, and records the *writing framework's own*
``model.predict`` on seeded inputs, for two batch sizes.

Reference outputs are never computed by bnrewrite.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: batch size of the reference inputs used by most checks
BATCH = 4
#: a different batch size, used when running the ONNX file directly
BATCH_ALT = 3

#: model id prefix -> (writing framework, file suffix)
FRAMEWORKS = {"tk": ("tf_keras", ".h5"), "k3": ("keras", ".keras"), "k3h5": ("keras", ".h5")}


@dataclass
class Built:
    """A saved model plus what the tests know about it."""

    id: str  # e.g. "tk-conv_bn"
    framework: str  # "tf_keras" or "keras"
    path: Path
    input_names: list[str]  # model order
    inputs: dict[str, np.ndarray]  # batch BATCH, keyed by input name
    outputs: list[np.ndarray]  # framework predict on ``inputs``, model order
    inputs_alt: dict[str, np.ndarray]  # batch BATCH_ALT
    outputs_alt: list[np.ndarray]
    #: every node id bnrewrite.load must produce (one per layer call, inputs included)
    expected_nodes: set[str]
    #: ModelGraph.outputs: (node id, output index) in model order
    expected_outputs: list[tuple[str, int]] = field(default_factory=list)
    #: node id -> path tuple for layers of flattened nested models
    nested_paths: dict[str, tuple] = field(default_factory=dict)
    #: node id -> expected ``training`` kwarg: False where a nested call fixed it,
    #: None where nothing set it (it must then not be True)
    training: dict[str, bool | None] = field(default_factory=dict)
    #: names of the nested models that must have been flattened away
    nested_models: list[str] = field(default_factory=list)
    #: shared layer name -> its node ids (first call first)
    shared: dict[str, list[str]] = field(default_factory=dict)
    #: BN layer name -> {"gamma": ..., "beta": ..., "moving_mean": ..., "moving_variance": ...}
    #: as written (keys absent for scale=False / center=False)
    bn_weights: dict[str, dict] = field(default_factory=dict)
    #: layer name -> class name of the layer feeding each BN (Conv2D, Dense, ...)
    bn_after: dict[str, str] = field(default_factory=dict)

    def feed(self, alt: bool = False) -> list[np.ndarray]:
        src = self.inputs_alt if alt else self.inputs
        return [src[n] for n in self.input_names]


# --------------------------------------------------------------------------
# framework helpers
# --------------------------------------------------------------------------

def framework(name: str):
    warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy.*")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if name == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):  # nested Model / Sequential
            yield from _all_layers(layer)
        else:
            yield layer


def _var_key(w) -> str:
    return w.name.split("/")[-1].split(":")[0]


BN_DRAW = {
    "gamma": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "beta": lambda rng, shape: rng.normal(0.0, 0.5, shape),
    "moving_mean": lambda rng, shape: rng.normal(0.0, 0.5, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 2.0, shape),
}


def randomize_bn(model, K, rng) -> dict[str, dict]:
    """gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5), mean ~ N(0, 0.5), var ~ U(0.5, 2).

    Works by variable name, so BNs without gamma (scale=False) or beta
    (center=False) are handled too. Returns {layer name: {key: array}}.
    """
    written = {}
    for layer in _all_layers(model):
        if isinstance(layer, K.layers.BatchNormalization):
            ws = {}
            for w in layer.weights:
                key = _var_key(w)
                ws[key] = BN_DRAW[key](rng, tuple(w.shape)).astype("float32")
            layer.set_weights([ws[_var_key(w)] for w in layer.weights])
            written[layer.name] = ws
    return written


def _inputs(model, names, rng, batch):
    return {
        n: rng.normal(0.0, 1.0, (batch,) + tuple(t.shape[1:])).astype("float32")
        for n, t in zip(names, model.inputs)
    }


def _predict(model, names, inputs):
    xs = [inputs[n] for n in names]
    x = xs if len(xs) > 1 else xs[0]
    out = model.predict(x, verbose=0, batch_size=64)
    out = [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
    # Guard against the framework disagreeing with itself (graph vs eager):
    # the reference must be the model's unambiguous inference output.
    eager = model(x, training=False)
    eager = eager if isinstance(eager, (list, tuple)) else [eager]
    for o, e in zip(out, eager):
        np.testing.assert_allclose(o, np.asarray(e), atol=1e-5, rtol=1e-5)
    return out


# --------------------------------------------------------------------------
# model definitions (K = tf_keras or keras)
# --------------------------------------------------------------------------

def dense_stack(K, rng):
    """x(6) -> Dense(8) -> bn1 -> relu -> Dense(5) -> bn2 -> Dense(3), random BN statistics: two BN levels
    (calibration tests compare it with a numpy layer-by-layer AdaBN)."""
    x = K.Input((6,), name="x")
    h = K.layers.Dense(8, name="d1")(x)
    h = K.layers.BatchNormalization(name="bn1")(h)
    h = K.layers.ReLU(name="relu")(h)
    h = K.layers.Dense(5, name="d2")(h)
    h = K.layers.BatchNormalization(name="bn2")(h)
    y = K.layers.Dense(3, name="out")(h)
    m = K.Model(x, y)
    randomize_bn(m, K, rng)
    return m


def def_conv_bn(K):
    """BN after Conv2D, DepthwiseConv2D and Dense; single input, single output."""
    L = K.layers
    img = L.Input((8, 8, 3), name="img")
    x = L.Conv2D(4, 3, padding="same", name="conv")(img)
    x = L.BatchNormalization(name="bn_conv")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="bn_dw")(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(6, name="fc")(x)
    x = L.BatchNormalization(name="bn_fc")(x)
    out = L.Dense(3, name="logits")(x)
    model = K.Model(img, out, name="conv_bn")
    meta = dict(
        input_names=["img"],
        expected_outputs=[("logits", 0)],
        expected_nodes={"img", "conv", "bn_conv", "relu1", "dw", "bn_dw", "relu2",
                        "gap", "fc", "bn_fc", "logits"},
        bn_after={"bn_conv": "Conv2D", "bn_dw": "DepthwiseConv2D", "bn_fc": "Dense"},
    )
    return model, meta


def def_nested(K):
    """A frozen functional base (trainable=False) called with training=False,
    followed by a nested Sequential head (Dense + BN)."""
    L = K.layers
    b_in = L.Input((8, 8, 3), name="base_in")
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="base_conv")(b_in)
    x = L.BatchNormalization(name="base_bn1")(x)
    x = L.ReLU(name="base_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="base_dw")(x)
    x = L.BatchNormalization(name="base_bn2")(x)
    x = L.GlobalAveragePooling2D(name="base_gap")(x)
    base = K.Model(b_in, x, name="base")
    base.trainable = False

    head = K.Sequential(
        [L.Dense(6, name="head_fc"), L.BatchNormalization(name="head_bn"), L.ReLU(name="head_relu")],
        name="head",
    )

    inp = L.Input((8, 8, 3), name="image")
    x = base(inp, training=False)
    x = head(x)
    out = L.Dense(3, name="probs", activation="softmax")(x)
    model = K.Model(inp, out, name="nested")
    base_nodes = ["base_conv", "base_bn1", "base_relu", "base_dw", "base_bn2", "base_gap"]
    head_nodes = ["head_fc", "head_bn", "head_relu"]
    meta = dict(
        input_names=["image"],
        expected_outputs=[("probs", 0)],
        expected_nodes={"image", "probs", *base_nodes, *head_nodes},
        nested_paths={**{n: ("base",) for n in base_nodes}, **{n: ("head",) for n in head_nodes}},
        training={"base_bn1": False, "base_bn2": False, "head_bn": None},
        nested_models=["base", "head"],
        bn_after={"base_bn1": "Conv2D", "base_bn2": "DepthwiseConv2D", "head_bn": "Dense"},
    )
    return model, meta


def def_shared_multi(K):
    """Two inputs, two outputs; a Dense and a BN both shared by two branches;
    BN after Conv1D and Dense."""
    L = K.layers
    seq = L.Input((10, 4), name="seq")
    vec = L.Input((6,), name="vec")
    a = L.Conv1D(5, 3, padding="same", name="conv1d")(seq)
    a = L.BatchNormalization(name="bn_conv1d")(a)
    a = L.ReLU(name="relu_a")(a)
    a = L.GlobalAveragePooling1D(name="gap1d")(a)
    b = L.Dense(5, name="vec_fc")(vec)
    b = L.BatchNormalization(name="bn_vec")(b)
    shared = L.Dense(4, name="shared")
    shared_bn = L.BatchNormalization(name="shared_bn")
    sa = shared_bn(shared(a))
    sb = shared_bn(shared(b))
    out_a = L.Dense(2, name="out_a")(L.Concatenate(name="concat")([sa, sb]))
    out_b = L.Add(name="out_b")([sa, sb])
    model = K.Model([seq, vec], [out_a, out_b], name="shared_multi")
    meta = dict(
        input_names=["seq", "vec"],
        expected_outputs=[("out_a", 0), ("out_b", 0)],
        expected_nodes={"seq", "vec", "conv1d", "bn_conv1d", "relu_a", "gap1d", "vec_fc",
                        "bn_vec", "shared", "shared#1", "shared_bn", "shared_bn#1",
                        "concat", "out_a", "out_b"},
        shared={"shared": ["shared", "shared#1"], "shared_bn": ["shared_bn", "shared_bn#1"]},
        bn_after={"bn_conv1d": "Conv1D", "bn_vec": "Dense", "shared_bn": "Dense"},
    )
    return model, meta


def def_siamese(K):
    """One nested model (a tower with Conv1D + BN) called twice: every inner
    layer becomes two nodes; only the second call passes training=False."""
    L = K.layers
    t_in = L.Input((5, 4), name="t_in")
    t = L.Conv1D(3, 2, name="t_conv")(t_in)
    t = L.BatchNormalization(name="t_bn")(t)
    t = L.GlobalAveragePooling1D(name="t_gap")(t)
    tower = K.Model(t_in, t, name="tower")

    left = L.Input((5, 4), name="left")
    right = L.Input((5, 4), name="right")
    tl = tower(left)
    tr = tower(right, training=False)
    d = L.Subtract(name="diff")([tl, tr])
    out = L.Dense(1, name="score")(d)
    model = K.Model([left, right], [out, tl], name="siamese")
    inner = ["t_conv", "t_bn", "t_gap"]
    nodes = inner + [f"{n}#1" for n in inner]
    meta = dict(
        input_names=["left", "right"],
        expected_outputs=[("score", 0), ("t_gap", 0)],  # t_gap: the *first* tower call
        expected_nodes={"left", "right", "diff", "score", *nodes},
        nested_paths={n: ("tower",) for n in nodes},
        training={"t_bn": None, "t_bn#1": False},
        nested_models=["tower"],
        shared={n: [n, f"{n}#1"] for n in inner},
        bn_after={"t_bn": "Conv1D"},
    )
    return model, meta


def def_fold_traps(K):
    """BNs that a careless folder gets wrong: an activation between conv and BN,
    a conv whose output is also read elsewhere, a bias-free conv and Dense, a BN
    over a non-channel axis, a BN without gamma, a BN output that is a model output."""
    L = K.layers
    x = L.Input((6, 6, 3), name="x")
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_act")(x)
    a = L.BatchNormalization(name="bn_after_act")(a)
    c = L.Conv2D(4, 1, name="conv_fan")(a)
    c1 = L.BatchNormalization(name="bn_fan")(c)
    d = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv_h")(c1)
    d = L.BatchNormalization(name="bn_h")(d)
    e = L.Concatenate(name="concat")([d, c])  # conv_fan's output is read twice
    r = L.Reshape((36, 8), name="reshape")(e)
    r = L.Conv1D(3, 1, name="conv_t")(r)
    # axis=1 normalizes over the 36 positions, not over conv_t's channels.
    # (On a 3-D tensor: tf_keras' fused BN with axis=1 on 4-D inputs gives
    # different results in graph-mode predict than in an eager call.)
    r = L.BatchNormalization(axis=1, name="bn_axis1")(r)
    g = L.GlobalAveragePooling1D(name="gap")(r)
    f = L.Dense(5, use_bias=False, name="fc_nobias")(g)
    f = L.BatchNormalization(scale=False, name="bn_noscale")(f)
    out = L.Dense(2, name="out")(f)
    model = K.Model(x, [out, f], name="fold_traps")
    meta = dict(
        input_names=["x"],
        expected_outputs=[("out", 0), ("bn_noscale", 0)],
        expected_nodes={"x", "conv_act", "bn_after_act", "conv_fan", "bn_fan", "conv_h", "bn_h",
                        "concat", "reshape", "conv_t", "bn_axis1", "gap", "fc_nobias",
                        "bn_noscale", "out"},
        bn_after={"bn_after_act": "Conv2D", "bn_fan": "Conv2D", "bn_h": "Conv2D",
                  "bn_axis1": "Conv1D", "bn_noscale": "Dense"},
    )
    return model, meta


KINDS = {"conv_bn": def_conv_bn, "nested": def_nested, "shared_multi": def_shared_multi,
         "siamese": def_siamese, "fold_traps": def_fold_traps}
SEEDS = {"conv_bn": 11, "nested": 12, "shared_multi": 13, "siamese": 14, "fold_traps": 15}
#: kinds with a layer called more than once / with nested models flattened in
SHARED_KINDS = ("shared_multi", "siamese")
NESTED_KINDS = ("nested", "siamese")
#: all model ids, "<framework>-<kind>": every kind from tf_keras (.h5) and
#: Keras 3 (.keras), and two from Keras 3 written as .h5
MODEL_IDS = [f"{fw}-{kind}" for fw in ("tk", "k3") for kind in KINDS] + [
    "k3h5-nested", "k3h5-shared_multi",
]


def build(model_id: str, directory: Path) -> Built:
    """Build, randomize, save model ``model_id`` into ``directory``; record references."""
    fw, kind = model_id.split("-", 1)
    fw_name, suffix = FRAMEWORKS[fw]
    K = framework(fw_name)
    K.backend.clear_session()
    seed = SEEDS[kind] + {"tk": 0, "k3": 100, "k3h5": 200}[fw]
    K.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    model, meta = KINDS[kind](K)
    bn_weights = randomize_bn(model, K, rng)
    assert bn_weights, f"{model_id}: no BatchNormalization to randomize"

    path = Path(directory) / f"{fw}_{kind}{suffix}"
    model.save(path)

    names = meta.pop("input_names")
    inputs = _inputs(model, names, rng, BATCH)
    inputs_alt = _inputs(model, names, rng, BATCH_ALT)
    return Built(
        id=model_id, framework=fw_name, path=path, input_names=names,
        inputs=inputs, outputs=_predict(model, names, inputs),
        inputs_alt=inputs_alt, outputs_alt=_predict(model, names, inputs_alt),
        bn_weights=bn_weights, **meta,
    )
