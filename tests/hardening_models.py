"""Model files for the hardening tests, each written by the framework it
stands for (tf_keras for legacy ``.h5``, Keras 3 for ``.keras`` / Keras 3
``.h5``), with the writing framework's own ``predict`` as the reference for
the files that must convert.

Everything here is a *bad or risky* input for bnrewrite: Lambda layers with
bytecode, custom layer classes, raw TensorFlow ops, a layer tf2onnx cannot
export, a subclassed model, weights-only HDF5. ``CUSTOM_MODULE`` is the text
of the ``--custom-objects`` file the user would write for the custom ones.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from models import framework

#: the --custom-objects file: Keras 3 versions of the custom objects the models use
CUSTOM_MODULE = textwrap.dedent('''
    """Custom objects for the hardening test models (what a user would write)."""
    import keras


    class Scale(keras.layers.Layer):
        """x * w * factor, w per channel."""

        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}


    def triple(t):
        return t * 3.0 - 1.0


    custom_objects = {"triple": triple}
''')

#: the same custom layer for a model written by tf.keras (rebuilt by tf_keras)
CUSTOM_MODULE_TF_KERAS = CUSTOM_MODULE.replace("import keras\n", "import tf_keras as keras\n")

#: Python 3.10's marshal of ``lambda t: t * 2.0 + 1.0`` (base64), as tf.keras 2.x on
#: Python 3.10 would have stored it; Python 3.11's marshal rejects it ("bad marshal data").
PY310_LAMBDA = (
    "4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMMAAAAfABkARQAZAIXAFMAKQNO5wAAAAAAAABA5wAAAAAAAPA/"
    "qQApAdoBdHIDAAAAcgMAAADaCDxzdHJpbmc+2gg8bGFtYmRhPgIAAABzAgAAAAwA"
)


def _randomize(model, K, rng):
    for layer in model.layers:
        if isinstance(layer, K.layers.BatchNormalization):
            g, b, m, v = (w.shape for w in layer.get_weights())
            layer.set_weights([
                rng.uniform(0.5, 1.5, g).astype("float32"), rng.normal(0, 0.5, b).astype("float32"),
                rng.normal(0, 0.5, m).astype("float32"), rng.uniform(0.5, 2.0, v).astype("float32"),
            ])
        elif layer.weights and not isinstance(layer, K.layers.BatchNormalization):
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])


def _save(model, K, path: Path, seed: int, batch: int = 3):
    """Save; return (path, inputs, outputs) with the framework's predict as the outputs."""
    model.save(path)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=(batch, *model.inputs[0].shape[1:])).astype("float32")
    return path, {model.inputs[0].name.split(":")[0]: x}, [np.asarray(model.predict(x, verbose=0))]


def dense_bn(K, tail, name="model"):
    """Input x (4) -> Dense(3) d -> BN bn -> tail(...)."""
    L = K.layers
    x = L.Input((4,), name="x")
    y = L.BatchNormalization(name="bn")(L.Dense(3, name="d")(x))
    return K.Model(x, tail(y), name=name)


def lambda_models(out: Path) -> dict:
    """Lambda(t * 2 + 1) after Dense+BN: Keras 3 .keras and .h5, tf_keras .h5."""
    made = {}
    for fw, suffix in (("keras", ".keras"), ("keras", ".h5"), ("tf_keras", ".h5")):
        K = framework(fw)
        K.backend.clear_session()
        K.utils.set_random_seed(5)
        model = dense_bn(K, lambda y: K.layers.Lambda(lambda t: t * 2.0 + 1.0, name="lam")(y))
        _randomize(model, K, np.random.default_rng(5))
        made[f"{fw}{suffix}"] = _save(model, K, out / f"lambda_{fw}{suffix}", 5)
    return made


def lambda_other_python(src: Path, dst: Path) -> Path:
    """``src`` (a tf_keras Lambda .h5) with the Lambda's bytecode from Python 3.10."""
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"][0] = PY310_LAMBDA
        f.attrs["model_config"] = json.dumps(cfg)
    return dst


def lambda_named_function(out: Path):
    """Keras 3 Lambda calling the module-level function ``triple`` (saved by name, no bytecode)."""
    K = framework("keras")
    K.backend.clear_session()
    K.utils.set_random_seed(6)

    def triple(t):
        return t * 3.0 - 1.0

    model = dense_bn(K, lambda y: K.layers.Lambda(triple, name="lam_fn")(y))
    _randomize(model, K, np.random.default_rng(6))
    return _save(model, K, out / "lambda_named.keras", 6)


def custom_models(out: Path) -> dict:
    """A custom layer ``Scale`` (class name as in CUSTOM_MODULE) after Dense+BN."""
    made = {}
    for fw, suffix in (("keras", ".keras"), ("tf_keras", ".h5")):
        K = framework(fw)
        K.backend.clear_session()
        K.utils.set_random_seed(7)
        Scale = _scale_class(K)
        model = dense_bn(K, lambda y: Scale(3.0, name="scale")(y))
        _randomize(model, K, np.random.default_rng(7))
        made[f"{fw}{suffix}"] = _save(model, K, out / f"custom_{fw}{suffix}", 7)
    return made


def _scale_class(K):
    class Scale(K.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return x * self.w * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    return Scale


def tf_op_model(path: Path):
    """tf_keras functional model with a raw TensorFlow op (saved as TFOpLambda);
    returns (path, inputs, tf_keras's outputs)."""
    import tensorflow as tf

    K = framework("tf_keras")
    K.backend.clear_session()
    model = dense_bn(K, lambda y: tf.math.sin(y), name="tfop")
    _randomize(model, K, np.random.default_rng(9))
    return _save(model, K, path, 9)


def unexportable_model(path: Path) -> Path:
    """Keras 3: Dense -> BN -> Discretization (TF op Bucketize, which tf2onnx cannot convert)."""
    K = framework("keras")
    K.backend.clear_session()
    model = dense_bn(K, lambda y: K.layers.Discretization(bin_boundaries=[-1.0, 0.0, 1.0], name="disc")(y))
    model.save(path)
    return path


def subclassed_model(path: Path) -> Path:
    """A Keras 3 subclassed model: no functional graph in the file."""
    K = framework("keras")
    K.backend.clear_session()

    class Tiny(K.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d = K.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Tiny(name="tiny")
    m(np.zeros((1, 3), "float32"))
    m.save(path)
    return path


def weights_only(path: Path) -> Path:
    """tf_keras ``model.save_weights("....h5")``: weights, no model config."""
    K = framework("tf_keras")
    K.backend.clear_session()
    dense_bn(K, lambda y: y).save_weights(path)
    return path
