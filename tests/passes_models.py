"""Model builders for tests/test_passes.py (the rewrite passes).

Every builder takes ``K`` -- ``tf_keras`` (legacy Keras 2, saved as ``.h5``) or
``keras`` (Keras 3, saved as ``.keras``) -- and returns an unsaved functional
model with explicit layer names. :func:`save_with_reference` randomizes every
BatchNormalization (also inside TimeDistributed wrappers), saves the model and
records the *writing framework's own* ``predict`` on seeded inputs. bnrewrite
never computes a reference.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAMEWORKS = {"tk": ("tf_keras", ".h5"), "k3": ("keras", ".keras")}


def framework(fw: str):
    """``"tk"`` -> tf_keras, ``"k3"`` -> keras (Keras 3)."""
    warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy.*")
    warnings.filterwarnings("ignore", message=".*structure of `inputs`.*")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if FRAMEWORKS[fw][0] == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def all_layers(layer):
    """Every layer, recursing into nested models and wrappers (TimeDistributed)."""
    subs = getattr(layer, "layers", None)
    if subs is not None:  # a Model / Sequential
        for s in subs:
            yield from all_layers(s)
        return
    yield layer
    inner = getattr(layer, "layer", None)  # TimeDistributed, Bidirectional, ...
    if inner is not None and inner is not layer:
        yield from all_layers(inner)


def randomize_bn(model, K, rng) -> dict[str, tuple]:
    """gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5), mean ~ N(0, 0.5), var ~ U(0.5, 2) for every BN."""
    written = {}
    for layer in all_layers(model):
        if isinstance(layer, K.layers.BatchNormalization):
            shape = layer.get_weights()[0].shape
            ws = [
                rng.uniform(0.5, 1.5, shape),
                rng.normal(0.0, 0.5, shape),
                rng.normal(0.0, 0.5, shape),
                rng.uniform(0.5, 2.0, shape),
            ]
            ws = [w.astype("float32") for w in ws]
            layer.set_weights(ws)
            written[layer.name] = tuple(ws)
    return written


def copy_weights_by_name(src, dst) -> None:
    """Give every layer of ``dst`` the weights of the same-named layer of ``src``."""
    for layer in dst.layers:
        ws = src.get_layer(layer.name).get_weights()
        layer.set_weights(ws)


def make_inputs(model, rng, batch: int) -> list[np.ndarray]:
    return [
        rng.normal(0.0, 1.0, (batch,) + tuple(int(d) for d in t.shape[1:])).astype("float32")
        for t in model.inputs
    ]


def predict(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    out = model.predict(xs if len(xs) > 1 else xs[0], verbose=0, batch_size=64)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


@dataclass
class Saved:
    """A saved model with the writing framework's predictions on seeded inputs."""

    fw: str  # "tk" / "k3"
    path: Path
    input_names: list[str]
    xs: list[np.ndarray]  # model input order
    ys: list[np.ndarray]  # framework predict on xs, model output order
    bn_weights: dict

    def feed(self) -> dict[str, np.ndarray]:
        return dict(zip(self.input_names, self.xs))


def save_with_reference(model, K, fw: str, path: Path, seed: int, batch: int = 5,
                        reference=None) -> Saved:
    """Randomize BNs, save ``model`` to ``path``, record predictions.

    ``reference``: a model of the same architecture *without* baked-in
    ``training=True``; it receives ``model``'s weights (by layer name) and its
    predictions are the reference. Otherwise ``model`` itself predicts.
    Saving and copying happen before any predict, since tf.keras updates the
    moving statistics of a BN that runs in training mode.
    """
    rng = np.random.default_rng(seed)
    bn = randomize_bn(model, K, rng)
    assert bn, "model has no BatchNormalization to randomize"
    model.save(str(path))
    ref = model
    if reference is not None:
        copy_weights_by_name(model, reference)
        ref = reference
    xs = make_inputs(model, rng, batch)
    names = [t.name.split(":")[0] for t in model.inputs]
    return Saved(fw=fw, path=Path(path), input_names=names, xs=xs, ys=predict(ref, xs), bn_weights=bn)


# --------------------------------------------------------------------------
# model definitions
# --------------------------------------------------------------------------

def td_training(K, T: int, training: bool):
    """TimeDistributed(BN) over T steps, Conv1D -> BN (called with training=True
    when ``training``), Dense -> BN. Same layer names either way."""
    L = K.layers
    inp = L.Input((T, 5), name="x")
    x = L.TimeDistributed(L.BatchNormalization(name="td_bn_inner"), name="td_bn")(inp)
    x = L.Conv1D(6, 3, padding="same", name="conv1d")(x)
    bn = L.BatchNormalization(name="bn_train")
    x = bn(x, training=True) if training else bn(x)
    x = L.ReLU(name="relu")(x)
    x = L.Dense(4, name="fc")(x)
    x = L.BatchNormalization(name="bn_fc")(x)
    return K.Model(inp, x, name="td_training")


#: producer kind -> (input shape, layer factory, use_bias)
FOLD_CASES = {
    "dense": ((6,), lambda L, b: L.Dense(5, use_bias=b, name="prod"), True),
    "dense_nobias": ((6,), lambda L, b: L.Dense(5, use_bias=b, name="prod"), False),
    "conv1d": ((7, 3), lambda L, b: L.Conv1D(4, 3, padding="same", use_bias=b, name="prod"), True),
    "conv2d": ((6, 6, 3), lambda L, b: L.Conv2D(4, 3, strides=1, use_bias=b, name="prod"), True),
    "conv2d_nobias": ((6, 6, 3), lambda L, b: L.Conv2D(4, 3, padding="same", use_bias=b, name="prod"), False),
    "conv3d": ((4, 4, 4, 2), lambda L, b: L.Conv3D(3, 2, use_bias=b, name="prod"), True),
    "depthwise2d": ((6, 6, 3), lambda L, b: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=b, name="prod"), True),
    "conv2dtranspose": ((4, 4, 3), lambda L, b: L.Conv2DTranspose(5, 3, strides=2, use_bias=b, name="prod"), True),
}
#: the layer class each fold case produces with
FOLD_CLASS = {
    "dense": "Dense", "dense_nobias": "Dense", "conv1d": "Conv1D", "conv2d": "Conv2D",
    "conv2d_nobias": "Conv2D", "conv3d": "Conv3D", "depthwise2d": "DepthwiseConv2D",
    "conv2dtranspose": "Conv2DTranspose",
}


def fold_model(K, kind: str):
    """input -> producer ``prod`` -> BN ``bn`` (-> tanh ``post`` when the producer has a bias)."""
    L = K.layers
    shape, make, use_bias = FOLD_CASES[kind]
    inp = L.Input(shape, name="inp")
    x = make(L, use_bias)(inp)
    x = L.BatchNormalization(name="bn")(x)
    if use_bias:  # the BN in the middle of the graph; without a bias it is the model output
        x = L.Activation("tanh", name="post")(x)
    return K.Model(inp, x, name=f"fold_{kind}")


#: BN layer -> words its fold_bn skip reason must contain
NEGATIVE_REASONS = {
    "bn_after_relu": ["activation", "relu"],
    "bn_branch": ["used elsewhere"],
    "bn_axis1": ["axis 1"],
    "bn_time": ["axis 1"],
}


def negatives_model(K):
    """BNs fold_bn must leave alone: after a relu, after a tensor used twice,
    on a non-channel axis (Conv2D channels_last; Dense on a 3D tensor)."""
    L = K.layers
    img = L.Input((6, 6, 3), name="img")
    seq = L.Input((5, 4), name="seq")
    a = L.Conv2D(4, 3, activation="relu", name="conv_relu")(img)
    a = L.BatchNormalization(name="bn_after_relu")(a)
    c = L.Conv2D(4, 3, name="conv_twice")(img)
    b = L.BatchNormalization(name="bn_branch")(c)
    b = L.Add(name="add")([b, L.ReLU(name="side")(c)])
    d = L.Conv2D(5, 3, name="conv_axis")(img)  # (B, 4, 4, 5): axis 1 is spatial
    d = L.BatchNormalization(axis=1, name="bn_axis1")(d)
    e = L.Dense(6, name="fc_seq")(seq)  # (B, 5, 6): axis 1 is time
    e = L.BatchNormalization(axis=1, name="bn_time")(e)
    return K.Model([img, seq], [a, b, d, e], name="negatives")


#: TimeDistributed layer names in td_mix
TD_LAYERS = ["td_conv", "td_td_bn", "td_flat", "td_dense", "td_bn"]


def td_mix(K, T: int):
    """TimeDistributed(Conv2D), nested TimeDistributed(TimeDistributed(BN)),
    TimeDistributed(Flatten), TimeDistributed(Dense), TimeDistributed(BN)."""
    L = K.layers
    TD = L.TimeDistributed
    inp = L.Input((T, 5, 5, 3), name="frames")
    x = TD(L.Conv2D(4, 3, padding="same", name="conv_inner"), name="td_conv")(inp)
    x = TD(TD(L.BatchNormalization(name="bn_inner2"), name="td_bn_mid"), name="td_td_bn")(x)
    x = TD(L.Flatten(name="flat_inner"), name="td_flat")(x)
    x = TD(L.Dense(3, name="dense_inner"), name="td_dense")(x)
    x = TD(L.BatchNormalization(name="bn_inner"), name="td_bn")(x)
    return K.Model(inp, x, name="td_mix")


def td_lstm(K, T: int = 3):
    """TimeDistributed(LSTM): not sample-by-sample along the inner axis."""
    L = K.layers
    inp = L.Input((T, 4, 2), name="seqs")
    x = L.TimeDistributed(L.LSTM(3, name="lstm_inner"), name="td_lstm")(inp)
    x = L.BatchNormalization(name="bn_after")(x)
    return K.Model(inp, x, name="td_lstm")
