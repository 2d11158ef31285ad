"""In-memory models (issue 13, part 1): ``bnrewrite.load/inspect/convert/rewrite`` on a live
Keras 3 ``keras.Model`` and a tf_keras ``Model`` (functional, Sequential, nested).

Every expected output is the framework's own: ``model.predict`` of the caller's model (which
must not change), of a twin built in the test without the baked ``training=True``, or numpy
statistics put into such a twin; ONNX files run in onnxruntime. Never bnrewrite with itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import models
from conftest import assert_close

import bnrewrite

FRAMEWORKS = ["tf_keras", "keras"]


def _predict(model, x):
    return np.asarray(model.predict(x, verbose=0))


def _nested(fw):
    K = models.framework(fw)
    model, meta = models.def_nested(K)
    models.randomize_bn(model, K, np.random.default_rng(0))
    return K, model, meta


def _baked(K, training):
    """Dense -> BN (called with ``training``) -> Dense; the BN's statistics are randomized."""
    L = K.layers
    i = L.Input((6,), name="x")
    h = L.Dense(5, name="d")(i)
    h = L.BatchNormalization(name="bn")(h, training=training) if training is not None else \
        L.BatchNormalization(name="bn")(h)
    o = L.Dense(2, name="o")(h)
    return K.Model(i, o, name="baked")


def _snapshot(model):
    return [np.array(w, copy=True) for w in model.get_weights()]


def _same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_rewrite_nested_leaves_caller_untouched(fw):
    K, model, meta = _nested(fw)
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    weights0, want = _snapshot(model), _predict(model, x)
    trainable0 = [layer.trainable for layer in model.layers]

    new, rep = bnrewrite.rewrite(model, return_report=True)

    assert new is not model and isinstance(new, K.Model)  # same framework
    assert_close(_predict(new, x), want, f"{fw} rewritten vs the caller's model")
    assert rep.verification["ok"] and rep.verification["reference"].endswith("copy of the original in-memory model")
    # the caller's model: same weights, same predictions, same flags
    assert _same_weights(model.get_weights(), weights0)
    assert_close(_predict(model, x), want, "caller's model after rewrite")
    assert [layer.trainable for layer in model.layers] == trainable0
    # passes ran: the BNs after the conv/dense layers are folded away
    flat = [lay.__class__.__name__ for lay in models._all_layers(new)]
    assert "BatchNormalization" not in flat, flat


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_load_and_convert_live_model(fw, tmp_path):
    import onnxruntime as ort

    K, model, meta = _nested(fw)
    mg = bnrewrite.load(model)
    assert mg.framework == fw
    assert set(mg.graph.nodes) == meta["expected_nodes"]
    assert mg.outputs == meta["expected_outputs"]
    assert mg.source["format"] == "memory"

    x = np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype("float32")
    want = _predict(model, x)
    out = tmp_path / "m.onnx"
    rep = bnrewrite.convert(model, out)
    assert rep.ok and out.is_file()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert_close(got, want, f"{fw} onnx vs the framework's predict")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_baked_training_true(fw, tmp_path):
    """The caller's model keeps its ``training=True``; bnrewrite's result is the inference
    function, as a twin built without the flag computes it."""
    K = models.framework(fw)
    model = _baked(K, True)
    models.randomize_bn(model, K, np.random.default_rng(3))
    twin = _baked(K, None)
    twin.set_weights(model.get_weights())
    x = np.random.default_rng(4).normal(size=(4, 6)).astype("float32")
    weights0 = _snapshot(model)  # (calling the model itself would update its moving statistics)

    audit = bnrewrite.inspect(model)
    assert any(f["code"] == "TRAINING_BAKED_IN" and f["layer"] == "bn" for f in audit.findings), audit.findings

    new = bnrewrite.rewrite(model)
    assert_close(_predict(new, x), _predict(twin, x), f"{fw} rewrite vs the framework's inference twin")
    assert _same_weights(model.get_weights(), weights0)

    out = tmp_path / ("m.keras" if fw == "keras" else "m.h5")
    bnrewrite.convert(model, out)
    loaded = K.models.load_model(str(out), compile=False)
    assert_close(_predict(loaded, x), _predict(twin, x), f"{fw} {out.suffix} vs twin")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_sequential_and_calibration(fw):
    """A Sequential model, re-estimated on data: the expected model is the framework's own
    twin with numpy's mean and unbiased variance of the calibration data put in its BN."""
    K = models.framework(fw)
    L = K.layers
    model = K.Sequential([L.Input((5,), name="feat"), L.BatchNormalization(name="bn"), L.Dense(3, name="fc")],
                         name="seq")
    models.randomize_bn(model, K, np.random.default_rng(5))
    weights0 = _snapshot(model)
    data = np.random.default_rng(6).normal(3.0, 2.0, size=(64, 5)).astype("float32")

    new = bnrewrite.rewrite(model, calibration=data, fold=False)

    twin = K.Sequential([L.Input((5,), name="feat"), L.BatchNormalization(name="bn"), L.Dense(3, name="fc")])
    twin.set_weights(model.get_weights())
    bn = twin.get_layer("bn")
    g, b, _, _ = bn.get_weights()
    bn.set_weights([g, b, data.mean(0), data.var(0, ddof=1)])
    x = np.random.default_rng(7).normal(3.0, 2.0, size=(4, 5)).astype("float32")
    assert_close(_predict(new, x), _predict(twin, x), f"{fw} calibrated rewrite vs numpy statistics")
    assert _same_weights(model.get_weights(), weights0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_subclassed_model_is_refused_by_name(fw):
    K = models.framework(fw)

    class MyNet(K.Model):
        def __init__(self):
            super().__init__()
            self.fc = K.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = MyNet()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(bnrewrite.UnsupportedModelError, match="MyNet is a subclassed model"):
        bnrewrite.rewrite(net)
    with pytest.raises(bnrewrite.UnsupportedModelError, match="MyNet"):
        bnrewrite.convert(net, "never-written.onnx")


def test_unbuilt_sequential_is_refused():
    import keras

    with pytest.raises(bnrewrite.InputError, match="never built"):
        bnrewrite.load(keras.Sequential([keras.layers.Dense(2)]))


def test_live_lambda_goes_through_the_same_checks():
    """A live model's config passes the allowlist like a file's: a Lambda is code, refused unless unsafe."""
    import keras

    i = keras.Input((3,), name="x")
    model = keras.Model(i, keras.layers.Lambda(lambda t: t * 2.0, name="double")(i))
    with pytest.raises(bnrewrite.UnsupportedModelError, match="'double' is a Lambda"):
        bnrewrite.load(model)
    assert [f["code"] for f in bnrewrite.inspect(model).findings] == ["UNSAFE_LAMBDA_CODE"]
